"""Sebulba learning runs on host CartPole with the in-JAX presets' settings.

Each algorithm runs its in-JAX CartPole preset (``ppo/cartpole``, ``impala/cartpole`` with
``lag=0`` because the lag is now real, ``dqn/cartpole``) on host envs, the preset's
``num_envs`` split over ``--actors`` actor threads, for the preset's env-step budget. It
reports per seed the training "final return" (mean return of the episodes finished in the
last 5% of updates, the PPO/IMPALA learning tests' measure), the greedy return over 16 fresh
host episodes (the DQN learning test's measure), wall time, steps/s and the policy lag.

Usage::

    python experiments/sebulba/learning.py --algo ppo --env envpool/CartPole-v1 --seeds 0,1
    python experiments/sebulba/learning.py --algo dqn --env gymnasium/CartPole-v1 --seeds 0
    python experiments/sebulba/learning.py --algo dqn --seeds 0,1 --max-policy-lag 0
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np

PRESETS = {"ppo": ("ppo/cartpole", {}), "impala": ("impala/cartpole", {"lag": "0"}),
           "dqn": ("dqn/cartpole", {})}  # fmt: skip


def preset(algo: str):
    """``(cfg, hp)`` of ``algo``'s CartPole preset, as the in-JAX learning tests build them."""
    from jaxrl import algorithms
    from jaxrl.runner import config

    name, sets = PRESETS[algo]
    return config.resolve(algorithms.get(algo), config.load_preset(name), sets, None)


def train_one(algo: str, env_id: str, num_actors: int, seed: int, max_policy_lag=None) -> dict:
    from jaxrl import sebulba

    cfg, hp = preset(algo)
    result = sebulba.run(algo, env_id, cfg, hp, num_actors=num_actors, seed=seed,
                         max_policy_lag=max_policy_lag)  # fmt: skip
    greedy = sebulba.evaluate(
        result.agent, result.state.params, "gymnasium/CartPole-v1", 16, seed=100
    )
    return {
        "algo": algo,
        "env": env_id,
        "actors": num_actors,
        "seed": seed,
        "max_policy_lag": max_policy_lag,
        "env_steps": result.env_steps,
        "final_return": result.summary["final_return"],
        "greedy_return": float(np.mean(greedy)),
        "wall_s": result.wall_s,
        "steps_per_s": result.summary["steps_per_second"],
        "policy_lag_mean": result.summary["policy_lag_mean"],
        "policy_lag_max": result.summary["policy_lag_max"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=sorted(PRESETS), required=True)
    parser.add_argument("--env", default="envpool/CartPole-v1")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--seeds", default="0")
    parser.add_argument(
        "--max-policy-lag",
        type=int,
        default=None,
        help="0: lock-step, deterministic (default: actors run free)",
    )
    parser.add_argument(
        "--sync-dispatch",
        action="store_true",
        help="jax_cpu_enable_async_dispatch=False (faster tiny policy calls)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.sync_dispatch:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    rows = []
    for seed in map(int, args.seeds.split(",")):
        rows.append(train_one(args.algo, args.env, args.actors, seed, args.max_policy_lag))
        print(json.dumps(rows[-1]), flush=True)
    finals = [r["final_return"] for r in rows]
    greedy = [r["greedy_return"] for r in rows]
    print(f"{args.algo} {args.env} x{args.actors} actors: final {np.mean(finals):.1f} "
          f"{np.round(finals, 1).tolist()}, greedy {np.mean(greedy):.1f}, "
          f"wall {np.mean([r['wall_s'] for r in rows]):.0f} s per seed")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sync_dispatch": args.sync_dispatch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
