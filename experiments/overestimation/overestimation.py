"""Overestimation of learned values, and the double estimators that cure it.

Two published figures, one measurement:

* ``--algo ddpg``: Fujimoto et al. 2018 (TD3, arXiv:1802.09477, §4.1, Fig. 1). An
  actor-critic with one critic (DDPG) overestimates the value of its policy; Clipped Double
  Q-learning (CDQ: two critics, the target takes their minimum) removes the bias. gymnax
  Pendulum-v1 with the preset ``ddpg/pendulum`` (30,000 env steps, Gaussian noise 0.1, Adam
  1e-3, 256-256 nets) as **ddpg**, and the same with ``num_critics=2`` as **ddpg_cdq** (no
  target smoothing, no policy delay: only the twin-critic minimum differs). The estimate is
  ``Q_1(s, μ(s))``, the first critic, which the actor follows.
* ``--algo dqn``: van Hasselt, Guez and Silver 2016 (Double DQN, arXiv:1509.06461, §6,
  Fig. 3). DQN's ``max_a Q(s, a)`` overestimates the return of its greedy policy; Double DQN
  (the online network picks the next action, the target network rates it) reduces it.
  gymnax CartPole-v1 with the preset ``dqn/cartpole`` (1e5 env steps) as **dqn**, and the
  same with ``double=True`` as **double_dqn**. With ``γ = 0.99`` no value exceeds 100.
  ``--algo dqn_minatar``: the same on Breakout-MinAtar with ``dqn/breakout_minatar``
  (128,000 env steps, hard target updates every 250, the MinAtar conv torso).

Every ``--every`` env steps, on 100 fixed reset states (the same for every run), the
estimate's mean is set against the true value's: the discounted return of the noise-free
greedy policy from each state (:func:`jaxrl.runner.evaluate.discounted_return`: until
termination, ``--horizon`` steps, through the time limit, which the learners bootstrap
through too; the envs are deterministic, so one rollout per state is exact up to
``γ^horizon``). Bias = estimate − true. Seeds run vmapped in one program per variant,
split over the CPU cores.

    python experiments/overestimation/overestimation.py --algo ddpg --seeds 8 \\
        --json experiments/overestimation/results_ddpg.json \\
        --plot experiments/overestimation/ddpg.png
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
from jaxrl.algorithms import ddpg, dqn, td3  # noqa: E402
from jaxrl.distributed import run_mesh, shard_runs  # noqa: E402
from jaxrl.logger.stats import mean_difference  # noqa: E402
from jaxrl.runner import config, sweep  # noqa: E402
from jaxrl.runner.evaluate import discounted_return  # noqa: E402

NUM_STATES = 100


def ddpg_estimate(cfg, env, params, obs):
    """``Q_1(s, μ(s)) [S]``: the first critic at the actor's action."""
    actor, _ = td3.networks(cfg, env)
    return td3.first_critic(cfg, env, params.critic, obs, actor.apply(params.actor, obs))


def dqn_estimate(cfg, env, params, obs):
    """``max_a Q(s, a) [S]`` of the online network."""
    return jnp.max(dqn.q_values(cfg, env, params.online, obs, None), axis=-1)


# algo -> (module, env, preset, default --every, estimate, {variant: Config overrides})
SETUPS = {
    "ddpg": (
        ddpg, "Pendulum-v1", "ddpg/pendulum", 2000, ddpg_estimate,
        {"ddpg": {"num_critics": 1}, "ddpg_cdq": {"num_critics": 2}},
    ),
    "dqn": (
        dqn, "CartPole-v1", "dqn/cartpole", 5000, dqn_estimate,
        {"dqn": {"double": False}, "double_dqn": {"double": True}},
    ),
    "dqn_minatar": (
        dqn, "Breakout-MinAtar", "dqn/breakout_minatar", 8000, dqn_estimate,
        {"dqn": {"double": False}, "double_dqn": {"double": True}},
    ),
}  # fmt: skip


def measure(algo, estimate, cfg, env, params, obs, states, discount, horizon: int):
    """``(estimate, true)``, each the mean over the start states."""
    env_params = env.default_params()
    act = lambda o: algo.act(cfg, env, params, o)
    true = jax.vmap(lambda s, o: discounted_return(act, env, env_params, s, o, discount, horizon))
    return jnp.mean(estimate(cfg, env, params, obs)), jnp.mean(true(states, obs))


def run_variant(algo_name: str, overrides: dict, seeds: int, steps, every: int, horizon: int):
    """One variant, ``seeds`` runs vmapped: estimates and true values ``[seeds, points]``."""
    algo, env_id, preset, _, estimate, _ = SETUPS[algo_name]
    env, _ = envs.make(env_id)
    cfg, hp = config.resolve(algo, config.load_preset(preset), {}, steps)
    cfg = dataclasses.replace(cfg, **overrides)
    if every % cfg.steps_per_update or cfg.total_timesteps % every:
        raise SystemExit(f"--every must divide {cfg.total_timesteps} into whole updates")
    keys = jax.random.split(jax.random.key(12345), NUM_STATES)
    obs, states = jax.vmap(env.reset, in_axes=(0, None))(keys, env.default_params())
    run_keys = jnp.stack([sweep.seed_key(s) for s in range(seeds)])

    init = jax.jit(jax.vmap(lambda k: algo.init(cfg, env, k, hp)))
    chunk = every // cfg.steps_per_update
    train = jax.jit(jax.vmap(lambda s: algo.train(cfg, env, s, hp, chunk)))
    meas = jax.jit(
        jax.vmap(
            lambda p: measure(algo, estimate, cfg, env, p, obs, states, hp.discount, horizon)
        )
    )
    state = shard_runs(init(run_keys), run_mesh())  # seeds split over the devices (CPU cores)
    steps_at, est, true, returns = [], [], [], []
    for k in range(cfg.total_timesteps // every):
        state, metrics = train(state)
        q, v = meas(state.params)
        steps_at.append((k + 1) * every)
        est.append(np.asarray(q))
        true.append(np.asarray(v))
        returns.append(np.nanmean(np.asarray(metrics["episode/return"], np.float64), axis=1))
    est, true = np.stack(est, 1), np.stack(true, 1)  # [seeds, points]
    return {
        "steps": steps_at,
        "estimate": est.tolist(),
        "true": true.tolist(),
        "bias": (est - true).tolist(),
        "training_return": np.stack(returns, 1).tolist(),
    }


def second_half(res: dict) -> np.ndarray:
    """Per seed, the mean bias over the points after half the budget ``[seeds]``."""
    late = np.asarray(res["steps"]) > res["steps"][-1] // 2
    return np.asarray(res["bias"])[:, late].mean(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=sorted(SETUPS), required=True)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, help="env steps per run (default: the preset's)")
    parser.add_argument("--every", type=int, help="env steps between measurements")
    parser.add_argument("--horizon", type=int, default=1000, help="steps of each true rollout")
    parser.add_argument("--json", help="write per-seed estimates and true values here")
    parser.add_argument("--plot", help="write the estimate-vs-true figure (PNG) here")
    args = parser.parse_args()
    _, env_id, preset, every, _, variants = SETUPS[args.algo]
    every = args.every or every

    out = {"env": env_id, "preset": preset, "seeds": args.seeds, "horizon": args.horizon}
    late = {}
    for name, overrides in variants.items():
        t0 = time.time()
        res = run_variant(args.algo, overrides, args.seeds, args.steps, every, args.horizon)
        res["wall_s"] = time.time() - t0
        out[name] = res
        late[name] = second_half(res)
        bias = np.asarray(res["bias"])
        print(
            f"{name} ({res['wall_s']:.0f} s): bias (estimate − true) over the second half "
            f"{late[name].mean():+.2f} ± {late[name].std(ddof=1) / np.sqrt(args.seeds):.2f}"
            f" s.e.; at the end {bias[:, -1].mean():+.2f}; per seed "
            f"{np.round(late[name], 2).tolist()}",
            flush=True,
        )
    single, double = variants
    diff, se = mean_difference(late[single], late[double])
    out["second_half_bias"] = {k: v.tolist() for k, v in late.items()}
    out[f"{single}_minus_{double}"] = {"diff": diff, "se": se}
    print(f"second-half bias of {single} − {double}: {diff:+.2f} ± {se:.2f} s.e.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.plot:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, color in zip(variants, ("C0", "C1"), strict=True):
            steps = out[name]["steps"]
            for key, style in (("estimate", "-"), ("true", "--")):
                y = np.asarray(out[name][key])
                mean, se_c = y.mean(0), y.std(0, ddof=1) / np.sqrt(len(y))
                ax.plot(steps, mean, style, color=color, label=f"{name} {key}")
                ax.fill_between(steps, mean - se_c, mean + se_c, color=color, alpha=0.2)
        ax.set(xlabel="env steps", ylabel="value", title=f"{env_id}, {args.seeds} seeds")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)


if __name__ == "__main__":
    main()
