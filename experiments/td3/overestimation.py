"""Overestimation bias of DDPG's critic, and clipped double Q-learning's cure (TD3, Fig. 1).

Fujimoto et al. 2018 (arXiv:1802.09477, §4.1 and Fig. 1) show that an actor-critic with one
critic (DDPG) overestimates the value of its own policy, and that Clipped Double Q-learning
(CDQ: two critics, the target takes their minimum) removes the bias. They plot, along
training, the critic's estimate ``Q(s, μ(s))`` against the true discounted return of ``μ``
from the same states.

Here: gymnax Pendulum-v1 with the preset ``ddpg/pendulum`` (Gaussian noise 0.1, Adam 1e-3,
256-256 nets, 30,000 env steps) as "DDPG", and the same with ``num_critics=2`` as
"DDPG + CDQ" (no target smoothing, no policy delay: only the twin-critic minimum differs).
Every ``--every`` env steps, for a fixed set of 100 start states of the env (the same for
every run):

* estimate: ``mean_s Q_1(s, μ(s))``, the first critic, which the actor also follows;
* true value: ``mean_s Σ_t γ^t r_t`` of the noise-free actor ``μ`` from ``s``, rolled out for
  ``--horizon`` steps of ``env.step``, which never resets, so the time limit is lifted
  (Pendulum is deterministic, so one rollout per state is exact up to ``γ^horizon``; the
  critic bootstraps through the 200-step time limit, so it estimates this untruncated
  value).

Seeds run vmapped in one program per variant, split over the CPU cores.

    python experiments/td3/overestimation.py --seeds 8 \\
        --json experiments/td3/results_overestimation.json \\
        --plot experiments/td3/overestimation.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import ddpg, td3  # noqa: E402
from jaxrl.distributed import run_mesh, shard_runs  # noqa: E402
from jaxrl.logger.stats import mean_difference  # noqa: E402
from jaxrl.runner import config, sweep  # noqa: E402

ENV = "Pendulum-v1"
PRESET = "ddpg/pendulum"
VARIANTS = {"ddpg": 1, "ddpg_cdq": 2}  # name -> num_critics
NUM_STATES = 100


def start_states(env, env_params, num: int):
    """``num`` env states and observations from resets with fixed keys (the same every run)."""
    keys = jax.random.split(jax.random.key(12345), num)
    obs, states = jax.vmap(env.reset, in_axes=(0, None))(keys, env_params)
    return obs, states


def true_value(cfg, env, params, env_state, obs0, env_params, discount, horizon: int):
    """``Σ_{t < horizon} γ^t r_t`` of the greedy actor from one env state (scalar)."""

    def step(carry, _):
        state, obs, scale = carry
        action = td3.act(cfg, env, params, obs)
        obs, state, step_ = env.step(jax.random.key(0), state, action, env_params)
        return (state, obs, scale * discount), scale * step_.reward

    _, rewards = jax.lax.scan(step, (env_state, obs0, jnp.float32(1.0)), None, horizon)
    return jnp.sum(rewards)


def measure(cfg, env, params, obs, states, env_params, discount, horizon: int):
    """``(estimate, true)``: mean over the start states of ``Q_1(s, μ(s))`` and of the
    greedy actor's discounted return."""
    actor, _ = td3.networks(cfg, env)
    q = td3.first_critic(cfg, env, params.critic, obs, actor.apply(params.actor, obs))
    returns = jax.vmap(true_value, in_axes=(None, None, None, 0, 0, None, None, None))(
        cfg, env, params, states, obs, env_params, discount, horizon
    )
    return jnp.mean(q), jnp.mean(returns)


def run_variant(num_critics: int, seeds: int, steps: int | None, every: int, horizon: int):
    """One variant, ``seeds`` runs vmapped: estimates and true values ``[seeds, points]``."""
    env, _ = envs.make(ENV)
    cfg, hp = config.resolve(ddpg, config.load_preset(PRESET), {}, steps)
    cfg = dataclasses.replace(cfg, num_critics=num_critics)
    if every % cfg.steps_per_update or cfg.total_timesteps % every:
        raise SystemExit(f"--every must divide {cfg.total_timesteps} into whole updates")
    eval_params = env.default_params()  # env.step does not reset: the time limit is lifted
    obs, states = start_states(env, eval_params, NUM_STATES)
    keys = jnp.stack([sweep.seed_key(s) for s in range(seeds)])

    init = jax.jit(jax.vmap(lambda k: ddpg.init(cfg, env, k, hp)))
    chunk = every // cfg.steps_per_update
    train = jax.jit(jax.vmap(lambda s: ddpg.train(cfg, env, s, hp, chunk)))
    meas = jax.jit(
        jax.vmap(lambda p: measure(cfg, env, p, obs, states, eval_params, hp.discount, horizon))
    )
    state = shard_runs(init(keys), run_mesh())  # seeds split over the devices (CPU cores)
    steps, estimate, true, returns = [], [], [], []
    for k in range(cfg.total_timesteps // every):
        state, metrics = train(state)
        q, v = meas(state.params)
        steps.append((k + 1) * every)
        estimate.append(np.asarray(q))
        true.append(np.asarray(v))
        returns.append(np.nanmean(np.asarray(metrics["episode/return"], np.float64), axis=1))
    estimate, true = np.stack(estimate, 1), np.stack(true, 1)  # [seeds, points]
    return {
        "steps": steps,
        "estimate": estimate.tolist(),
        "true": true.tolist(),
        "bias": (estimate - true).tolist(),
        "training_return": np.stack(returns, 1).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, help="env steps per run (default: the preset's)")
    parser.add_argument("--every", type=int, default=2000, help="env steps between measurements")
    parser.add_argument("--horizon", type=int, default=800, help="steps of each true-value rollout")
    parser.add_argument("--json", help="write per-seed estimates and true values here")
    parser.add_argument("--plot", help="write the estimate-vs-true figure (PNG) here")
    args = parser.parse_args()

    out = {"env": ENV, "preset": PRESET, "seeds": args.seeds, "horizon": args.horizon}
    for name, num_critics in VARIANTS.items():
        t0 = time.time()
        res = run_variant(num_critics, args.seeds, args.steps, args.every, args.horizon)
        res["wall_s"] = time.time() - t0
        out[name] = res
        bias = np.asarray(res["bias"])
        print(
            f"{name} ({res['wall_s']:.0f} s): bias (estimate − true), mean over the run "
            f"{bias.mean():+.1f} ± {bias.mean(1).std(ddof=1):.1f} s.d. over seeds; at the end "
            f"{bias[:, -1].mean():+.1f}; per seed {np.round(bias.mean(1), 1).tolist()}",
            flush=True,
        )
    diff, se = mean_difference(
        np.asarray(out["ddpg"]["bias"]).mean(1), np.asarray(out["ddpg_cdq"]["bias"]).mean(1)
    )
    out["ddpg_minus_cdq_bias"] = {"diff": diff, "se": se}
    print(f"bias of DDPG − bias of DDPG + CDQ: {diff:+.1f} ± {se:.1f} s.e.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.plot:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, color in (("ddpg", "C0"), ("ddpg_cdq", "C1")):
            steps = out[name]["steps"]
            for key, style in (("estimate", "-"), ("true", "--")):
                y = np.asarray(out[name][key])
                mean, se_c = y.mean(0), y.std(0, ddof=1) / np.sqrt(len(y))
                label = f"{name.replace('_', ' + ').upper()} {key}"
                ax.plot(steps, mean, style, color=color, label=label)
                ax.fill_between(steps, mean - se_c, mean + se_c, color=color, alpha=0.2)
        ax.set(xlabel="env steps", ylabel="value", title=f"{ENV}, {args.seeds} seeds")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)


if __name__ == "__main__":
    main()
