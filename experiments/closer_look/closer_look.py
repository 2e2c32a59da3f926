"""Gradient-estimate quality and value-prediction error along PPO and TRPO training runs.

A CPU-scale take on "A Closer Look at Deep Policy Gradients" (Ilyas et al., ICLR 2020,
arXiv:1811.02553), issue 6 item 7. For each algorithm (``ppo/pendulum`` and
``trpo/pendulum`` presets, one seed), training runs in equal jitted chunks
(``jax.jit(algo.train)``); at each checkpoint (including the initial policy) the agent is
frozen and, with fresh env keys and the training run's observation-normalisation and
reward-scale statistics frozen:

1. ``N_true + K * E_max`` envs are reset and rolled out with the current policy for
   ``200 + L`` steps (Pendulum episodes are 200 steps). Each env contributes one window of
   ``L`` consecutive steps starting at a uniformly random step of its first episode, so the
   windows cover the on-policy state distribution of the whole episode and are
   independent of each other (different envs, different keys);
2. the **"true" gradient** is the algorithm's own gradient estimate on the ``N_true``
   windows together (``N_true * L`` state-action pairs): advantages from the algorithm's
   ``make_batch`` (truncation-aware GAE, per window), then for PPO the actor part of
   ``jax.grad(ppo.loss)`` (at θ = θ_old the clipped surrogate's gradient is the policy
   gradient; the value loss does not touch the actor, the preset's entropy coefficient
   is 0), for TRPO ``trpo.policy_gradient``; advantages normalised over the batch as the
   algorithm does;
3. for each batch size ``m = L * E`` (``E = 1, 2, 4, ..., E_max`` envs), ``K`` **independent
   batches** of ``E`` disjoint windows each, every one a fresh rollout as the algorithm
   would collect it (``E`` envs x ``L`` steps), give ``K`` estimates (``vmap`` over the
   batches). Reported: the mean pairwise cosine similarity among the ``K`` estimates and
   their mean cosine similarity to the true gradient;
4. **value prediction**: on the first, complete episode of every env, the critic's ``V(s)``
   against the discounted Monte-Carlo return ``G`` (of the rewards the critic is trained
   on, i.e. scaled by the frozen reward scale for PPO) at the states with at least 100
   steps left before the time limit (so the cut tail weighs at most ``γ^100``), and against
   the GAE targets ``V_old + A`` of the same episodes that the critic is trained to fit.
   Errors are given as MSE, MSE over the target's variance (``1 − R²``) and
   ``mean |V − G| / mean |G|``.

Everything per checkpoint is one jitted function. ``--smoke`` runs a tiny configuration
(< 60 s); without it the real configuration runs (about 10 minutes on a 2-core CPU).

    python experiments/closer_look/closer_look.py --json experiments/closer_look/results.json \\
        --plot-dir experiments/closer_look

RESULTS.md in this folder records a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.flatten_util import ravel_pytree

from jaxrl import envs
from jaxrl.algorithms import ppo, trpo
from jaxrl.algorithms import rollout as rollout_lib
from jaxrl.envs.base import Wrapper
from jaxrl.runner import config

EPISODE = 200  # Pendulum-v1's time limit
MC_MARGIN = 100  # MC returns only where >= this many steps remain before the time limit
ALGOS = {"PPO": (ppo, "ppo/pendulum"), "TRPO": (trpo, "trpo/pendulum")}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Static sizes of one measurement."""

    window: int = 64  # L: steps per env in a batch (the ppo/pendulum rollout_len)
    num_true: int = 16384  # N_true windows for the true gradient (1,048,576 pairs)
    num_batches: int = 16  # K independent batches per batch size
    max_envs: int = 256  # E_max windows per batch at the largest batch size
    checkpoints: int = 5  # including the initial policy

    @property
    def env_counts(self) -> list[int]:
        return [2**i for i in range(int(math.log2(self.max_envs)) + 1)]

    @property
    def batch_sizes(self) -> list[int]:
        return [self.window * e for e in self.env_counts]


REAL = Settings()
SMOKE = Settings(window=32, num_true=128, num_batches=4, max_envs=8, checkpoints=2)


class FrozenState(struct.PyTreeNode):
    env_state: object
    obs_mean: jax.Array
    obs_var: jax.Array
    reward_scale: jax.Array


@dataclasses.dataclass(frozen=True)
class FrozenNormalization(Wrapper):
    """The training stack's ``NormalizeObs`` / ``ScaleReward`` with their statistics frozen
    (held in the state, never updated), around a plain vector env."""

    normalize_obs: bool = True
    clip: float = 10.0
    epsilon: float = 1e-8

    def normalize(self, obs: jax.Array, state: FrozenState) -> jax.Array:
        """``obs [N, D]`` normalised with the frozen statistics (identity if switched off)."""
        if not self.normalize_obs:
            return obs
        mean, var = jnp.expand_dims(state.obs_mean, 0), jnp.expand_dims(state.obs_var, 0)
        return jnp.clip((obs - mean) / jnp.sqrt(var + self.epsilon), -self.clip, self.clip)

    def step(self, key, state, action, params):
        obs, env_state, step = self.env.step(key, state.env_state, action, params)
        step = step.replace(
            final_obs=self.normalize(step.final_obs, state),
            reward=step.reward * state.reward_scale,
            info=dict(step.info) | {"raw_reward": step.reward},  # as ScaleReward reports it
        )
        return self.normalize(obs, state), state.replace(env_state=env_state), step


class Actor(struct.PyTreeNode):
    """What ``rollout.collect`` needs of an algorithm state."""

    params: dict
    env_state: object
    obs: jax.Array
    env_params: object
    key: jax.Array


def frozen_statistics(cfg, env_state) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(obs_mean, obs_var, reward_scale)`` of a training env stack's state."""
    scale = jnp.float32(1.0)
    if cfg.scale_reward:
        scale = 1.0 / jnp.sqrt(env_state.stats.var + 1e-8)
        env_state = env_state.env_state
    if cfg.normalize_obs:
        return env_state.stats.mean, env_state.stats.var, scale
    return jnp.zeros(()), jnp.ones(()), scale


def batch_cfg(cfg, num_envs: int, rollout_len: int):
    """``cfg`` for a batch of ``num_envs x rollout_len`` (``make_batch`` flattens by it)."""
    steps = max(cfg.total_timesteps, num_envs * rollout_len)  # only the budget check reads it
    return dataclasses.replace(
        cfg, num_envs=num_envs, rollout_len=rollout_len, num_minibatches=1, total_timesteps=steps
    )


def flat_gradient(algo, cfg, env, params, batch, hp) -> jax.Array:
    """The algorithm's policy-gradient estimate (ascent direction) on ``batch``, flat ``[P]``."""
    if algo is ppo:
        grads = jax.grad(lambda p: ppo.loss(cfg, env, p, batch, hp)[0])(params)
        actor = jax.tree.map(jnp.negative, trpo.split_params(grads)[0])
    else:
        actor = trpo.policy_gradient(cfg, env, params, batch, hp)
    return ravel_pytree(actor)[0]


def unit(x: jax.Array) -> jax.Array:
    """Rows of ``x [..., P]`` scaled to unit norm."""
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def mean_pairwise_cosine(grads: jax.Array) -> jax.Array:
    """Mean cosine similarity over the ``K (K - 1)`` ordered pairs of rows of ``grads [K, P]``."""
    u = unit(grads)
    k = grads.shape[0]
    gram = u @ u.T
    return (jnp.sum(gram) - jnp.trace(gram)) / (k * (k - 1))


def discounted_returns(reward: jax.Array, done: jax.Array, discount: jax.Array) -> jax.Array:
    """``G_t = r_t + γ (1 − done_t) G_{t+1}``, ``G_T = 0``; inputs and output ``[T, N]``."""

    def back(g, x):
        r, d = x
        g = r + discount * (1.0 - d) * g
        return g, g

    _, out = jax.lax.scan(back, jnp.zeros_like(reward[0]), (reward, done), reverse=True)
    return out


def value_errors(prediction: jax.Array, target: jax.Array, mask: jax.Array) -> dict:
    """MSE, MSE / Var(target) and mean|error| / mean|target| over ``mask`` (all ``[T, N]``)."""
    w = mask.astype(jnp.float32)
    n = jnp.sum(w)
    mse = jnp.sum(w * jnp.square(prediction - target)) / n
    mean_t = jnp.sum(w * target) / n
    var_t = jnp.sum(w * jnp.square(target - mean_t)) / n
    rel = jnp.sum(w * jnp.abs(prediction - target)) / jnp.sum(w * jnp.abs(target))
    return {"mse": mse, "nmse": mse / var_t, "rel_abs": rel, "target_var": var_t}


def windows(rollout, offsets: jax.Array, length: int):
    """Per env ``n``, steps ``offsets[n] ... offsets[n] + length − 1`` of ``rollout [T, N]``."""
    take = lambda x, o: jax.lax.dynamic_slice_in_dim(x, o, length, axis=0)
    return jax.tree.map(lambda x: jax.vmap(take, in_axes=(1, 0), out_axes=1)(x, offsets), rollout)


def measure(algo, cfg, env, s: Settings, params, frozen: tuple, hp, key) -> dict:
    """Every statistic of one frozen checkpoint (see the module docstring)."""
    env_params = env.default_params()
    num_est = s.num_batches * s.max_envs
    num_envs = s.num_true + num_est
    base = envs.make_vec_env(env, num_envs)
    venv = FrozenNormalization(base, normalize_obs=cfg.normalize_obs)
    net = algo.network(cfg, env)
    key_reset, key_roll, key_offsets = jax.random.split(key, 3)
    raw_obs, inner = base.reset(key_reset, env_params)
    state = FrozenState(inner, *frozen)
    actor = Actor(params, state, venv.normalize(raw_obs, state), env_params, key_roll)
    _, rollout = rollout_lib.collect(venv, net, actor, EPISODE + s.window)

    # value prediction on the first, complete episode of every env
    episode = jax.tree.map(lambda x: x[:EPISODE], rollout)
    done = jnp.logical_or(episode.terminated, episode.truncated).astype(jnp.float32)
    returns = discounted_returns(episode.reward, done, hp.discount)  # [200, N]
    gae = batch_cfg(cfg, num_envs, EPISODE)
    gae_target = algo.make_batch(gae, env, params, episode, hp).target.reshape(EPISODE, num_envs)
    steps = jnp.arange(EPISODE)[:, None]
    mask = jnp.broadcast_to(steps < EPISODE - MC_MARGIN, returns.shape)
    mask = jnp.logical_and(mask, jnp.cumsum(done, axis=0) == 0)  # before the first episode ends
    out = {
        "value_vs_mc": value_errors(episode.value, returns, mask),
        "value_vs_gae": value_errors(episode.value, gae_target, mask),
        "gae_vs_mc": value_errors(gae_target, returns, mask),
        "episode_return": jnp.mean(episode.info["episode_return"][EPISODE - 1]),
    }

    # gradients: windows of L steps from a random start in the first episode
    offsets = jax.random.randint(key_offsets, (num_envs,), 0, EPISODE)
    win = windows(rollout, offsets, s.window)
    true_part = jax.tree.map(lambda x: x[:, : s.num_true], win)
    true_cfg = batch_cfg(cfg, s.num_true, s.window)
    true_batch = algo.make_batch(true_cfg, env, params, true_part, hp)
    g_true = flat_gradient(algo, cfg, env, params, true_batch, hp)
    half = s.num_true // 2  # the true gradient's own noise: cosine between its two halves
    halves = jax.tree.map(
        lambda x: jnp.moveaxis(x.reshape((s.window, 2, half) + x.shape[2:]), 1, 0), true_part
    )
    half_cfg = batch_cfg(cfg, half, s.window)
    g_halves = jax.vmap(
        lambda r: flat_gradient(
            algo, cfg, env, params, algo.make_batch(half_cfg, env, params, r, hp), hp
        )
    )(halves)
    est = jax.tree.map(lambda x: x[:, s.num_true :], win)
    pairwise, to_true, to_true_std, norms = [], [], [], []
    for e in s.env_counts:
        part = jax.tree.map(
            lambda x, e=e: jnp.moveaxis(
                x[:, : s.num_batches * e].reshape((s.window, s.num_batches, e) + x.shape[2:]), 1, 0
            ),
            est,
        )
        cfg_e = batch_cfg(cfg, e, s.window)

        def estimate(r, cfg_e=cfg_e):
            return flat_gradient(
                algo, cfg, env, params, algo.make_batch(cfg_e, env, params, r, hp), hp
            )

        grads = jax.vmap(estimate)(part)  # [K, P]
        cos_true = unit(grads) @ unit(g_true)
        pairwise.append(mean_pairwise_cosine(grads))
        to_true.append(jnp.mean(cos_true))
        to_true_std.append(jnp.std(cos_true))
        norms.append(jnp.mean(jnp.linalg.norm(grads, axis=-1)))
    out |= {
        "pairwise_cosine": jnp.stack(pairwise),
        "cosine_to_true": jnp.stack(to_true),
        "cosine_to_true_std": jnp.stack(to_true_std),
        "estimate_norm": jnp.stack(norms),
        "true_norm": jnp.linalg.norm(g_true),
        "true_halves_cosine": jnp.vdot(unit(g_halves[0]), unit(g_halves[1])),
    }
    return out


def run_algo(name: str, s: Settings, seed: int, timesteps: int | None) -> dict:
    """Trains one algorithm in chunks and measures each checkpoint; returns the record."""
    algo, preset_name = ALGOS[name]
    preset = config.load_preset(preset_name)
    cfg, hp = config.resolve(algo, preset, {}, timesteps)
    env, _ = envs.make(preset["env"])
    chunk = cfg.num_updates // (s.checkpoints - 1)
    train = jax.jit(algo.train, static_argnums=(0, 1, 4))
    meas = jax.jit(lambda p, f, k: measure(algo, cfg, env, s, p, f, hp, k))
    key_init, key_meas = jax.random.split(jax.random.PRNGKey(seed))
    state = jax.jit(algo.init, static_argnums=(0, 1))(cfg, env, key_init, hp)
    record = {"preset": preset_name, "env": preset["env"], "checkpoints": []}
    train_seconds = measure_seconds = 0.0
    train_return = float("nan")
    for c in range(s.checkpoints):
        if c:
            t0 = time.perf_counter()
            state, metrics = train(cfg, env, state, hp, chunk)
            ret = np.asarray(metrics["episode/return"])
            train_return = float(np.nanmean(ret[-max(1, len(ret) // 10) :]))
            train_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        frozen = frozen_statistics(cfg, state.env_state)
        out = jax.device_get(meas(state.params, frozen, jax.random.fold_in(key_meas, c)))
        measure_seconds += time.perf_counter() - t0
        out = jax.tree.map(lambda x: np.asarray(x).tolist(), out)
        steps = c * chunk * cfg.steps_per_update
        record["checkpoints"].append(
            {"update": c * chunk, "env_steps": steps, "train_return": train_return} | out
        )
        print(
            f"{name} ckpt {c} steps {steps:>7,} eval return {out['episode_return']:8.1f} "
            f"cos@{s.batch_sizes[0]}={out['cosine_to_true'][0]:.3f} "
            f"cos@{s.batch_sizes[-1]}={out['cosine_to_true'][-1]:.3f} "
            f"halves={out['true_halves_cosine']:.3f} V nmse(MC)={out['value_vs_mc']['nmse']:.3f}",
            file=sys.stderr,
            flush=True,
        )
    record |= {
        "config": dataclasses.asdict(cfg),
        "hparams": {k: float(v) for k, v in vars(hp).items()},
        "train_seconds": train_seconds,
        "measure_seconds": measure_seconds,
        "typical_batches": {
            "update batch": cfg.steps_per_update,
            "minibatch": cfg.minibatch_size if algo is ppo else cfg.steps_per_update,
        },
        "num_actor_params": None,
    }
    actor, _ = trpo.split_params(state.params)
    record["num_actor_params"] = int(ravel_pytree(actor)[0].size)
    return record


def plot(result: dict, plot_dir: Path) -> list[Path]:
    """The gradient figure (cosine vs m, one line per checkpoint) and the value figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["settings"]["batch_sizes"]
    names = list(result["algos"])
    fig, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 8), squeeze=False)
    for j, name in enumerate(names):
        rec = result["algos"][name]
        cmap = plt.get_cmap("viridis")
        n = len(rec["checkpoints"])
        for row, (field, title) in enumerate(
            (
                ("pairwise_cosine", "mean pairwise cosine of K estimates"),
                ("cosine_to_true", "mean cosine to the 'true' gradient"),
            )
        ):
            ax = axes[row, j]
            for i, ck in enumerate(rec["checkpoints"]):
                ax.plot(
                    sizes, ck[field], "o-", ms=3, color=cmap(i / max(1, n - 1)),
                    label=f"{ck['env_steps'] / 1e3:.0f}k steps (ret {ck['episode_return']:.0f})",
                )  # fmt: skip
            for label, m in rec["typical_batches"].items():
                ax.axvline(m, color="grey", ls="--", lw=0.8)
                ax.text(m, 1.0, f" {label}", fontsize=7, va="top", rotation=90, color="grey")
            ax.set_xscale("log", base=2)
            ax.set_ylim(-0.05, 1.02)
            ax.set_xlabel("state-action pairs per estimate")
            ax.set_title(f"{name} ({rec['env']}): {title}", fontsize=9)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.legend(fontsize=7, title="checkpoint", title_fontsize=7)
    fig.tight_layout()
    grad_path = plot_dir / "gradient_cosine.png"
    fig.savefig(grad_path, dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in names:
        rec = result["algos"][name]
        x = [ck["env_steps"] / 1e3 for ck in rec["checkpoints"]]
        for ax, (field, title) in zip(
            axes,
            (
                ("value_vs_mc", "V vs Monte-Carlo returns"),
                ("value_vs_gae", "V vs GAE targets (what the critic fits)"),
            ),
            strict=False,
        ):
            ax.plot(x, [ck[field]["nmse"] for ck in rec["checkpoints"]], "o-", label=name)
            ax.set_title(f"{title}: MSE / Var(target)", fontsize=9)
        axes[2].plot(x, [ck["value_vs_mc"]["rel_abs"] for ck in rec["checkpoints"]], "o-",
                     label=f"{name}: V vs MC")  # fmt: skip
        axes[2].plot(x, [ck["value_vs_gae"]["rel_abs"] for ck in rec["checkpoints"]], "s--",
                     label=f"{name}: V vs GAE")  # fmt: skip
    axes[2].set_title("mean |V - target| / mean |target|", fontsize=9)
    for ax in axes:
        ax.set_xlabel("env steps (thousands)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    value_path = plot_dir / "value_error.png"
    fig.savefig(value_path, dpi=120)
    plt.close(fig)
    return [grad_path, value_path]


def report(result: dict) -> str:
    """Markdown tables of a result."""
    sizes = result["settings"]["batch_sizes"]
    lines = []
    for name, rec in result["algos"].items():
        for field, title in (
            ("pairwise_cosine", "mean pairwise cosine among K estimates"),
            ("cosine_to_true", "mean cosine to the true gradient"),
        ):
            header = " | ".join(f"m={m}" for m in sizes)
            lines += [f"\n{name}, {title}:\n", f"| env steps | return | {header} | true halves |"]
            lines.append("| --- " * (len(sizes) + 3) + "|")
            for ck in rec["checkpoints"]:
                cells = " | ".join(f"{v:.3f}" for v in ck[field])
                lines.append(
                    f"| {ck['env_steps']:,} | {ck['episode_return']:.0f} | {cells} "
                    f"| {ck['true_halves_cosine']:.3f} |"
                )
    lines += [
        "\nValue prediction (states with >= 100 steps left in the episode):\n",
        "| algo | env steps | return | V vs MC: MSE | NMSE | rel | V vs GAE: MSE | NMSE | rel "
        "| GAE vs MC: NMSE | Var(G) | MSE(V, G) / mean A² |",
        "| --- " * 12 + "|",
    ]
    for name, rec in result["algos"].items():
        for ck in rec["checkpoints"]:
            mc, gae, gm = ck["value_vs_mc"], ck["value_vs_gae"], ck["gae_vs_mc"]
            lines.append(
                f"| {name} | {ck['env_steps']:,} | {ck['episode_return']:.0f} | {mc['mse']:.3g} "
                f"| {mc['nmse']:.3f} | {mc['rel_abs']:.3f} | {gae['mse']:.3g} | {gae['nmse']:.3f} "
                f"| {gae['rel_abs']:.3f} | {gm['nmse']:.3f} | {mc['target_var']:.3g} "
                f"| {mc['mse'] / gae['mse']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and budget (< 60 s)")
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--plot-dir", help="write gradient_cosine.png and value_error.png here")
    args = parser.parse_args()

    s = SMOKE if args.smoke else REAL
    timesteps = 8 * 2048 if args.smoke else None
    t0 = time.perf_counter()
    result = {
        "settings": dataclasses.asdict(s) | {"batch_sizes": s.batch_sizes, "smoke": args.smoke},
        "seed": args.seed,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
        },
        "algos": {},
    }
    for name in args.algos:
        result["algos"][name] = run_algo(name, s, args.seed, timesteps)
    result["wall_seconds"] = time.perf_counter() - t0
    print(report(result))
    print(f"\nwall time {result['wall_seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot_dir:
        for path in plot(result, Path(args.plot_dir)):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
