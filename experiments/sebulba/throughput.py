"""Sebulba throughput: env steps per second against actor threads, envpool vs gymnasium.

For each backend (``envpool/CartPole-v1``, ``gymnasium/CartPole-v1``) and each number of actor
threads ``A`` it trains PPO (the CartPole network, 64-64 tanh; 1 epoch x 1 minibatch so the
learner is light and the actors set the pace) with ``E`` envs per actor and rollouts of
``T`` steps, and reports the steady-state rate of env steps the learner trains on: updates
``W+1 .. U`` over the host time they took (``sebulba/time_s``), compilation excluded. The
per-actor split of wall time (policy call incl. device round trip, env step, waiting on a
full queue) comes from the actors' timers (``act`` is compiled before they start). Each
setting runs ``--repeats`` times; the table shows medians.

``--sync-dispatch`` sets ``jax_cpu_enable_async_dispatch=False``: on a CPU backend the tiny
policy call then runs in the calling thread instead of being handed to XLA's worker pool,
which cuts its latency several-fold (the actor waits for its result every step anyway).

Usage::

    python experiments/sebulba/throughput.py --json /tmp/sebulba_tp.json
    python experiments/sebulba/throughput.py --sync-dispatch --json /tmp/sebulba_tp_sync.json
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
import numpy as np


def measure(env_id: str, num_actors: int, envs_per_actor: int, rollout_len: int,
            num_updates: int, warmup: int) -> dict:  # fmt: skip
    from jaxrl import sebulba
    from jaxrl.algorithms import ppo

    cfg = ppo.Config(
        num_envs=num_actors * envs_per_actor,
        rollout_len=rollout_len,
        num_epochs=1,
        num_minibatches=1,
        total_timesteps=10**8,
    )
    result = sebulba.run("ppo", env_id, cfg, ppo.HParams.make(), num_actors=num_actors,
                         num_updates=num_updates)  # fmt: skip
    t = result.metrics["sebulba/time_s"]
    steps = (num_updates - warmup) * cfg.num_envs * rollout_len
    sps = steps / (t[-1] - t[warmup - 1])
    timings = {k: float(np.mean([tm[k] for tm in result.timings])) for k in result.timings[0]}
    calls = result.actor_env_steps[0] / envs_per_actor
    return {
        "env": env_id,
        "actors": num_actors,
        "envs_per_actor": envs_per_actor,
        "steps_per_s": sps,
        "act_us_per_step": 1e6 * timings["act_s"] / calls,
        "env_us_per_step": 1e6 * timings["env_s"] / calls,
        "put_wait_s": timings["put_s"],
        "learner_wait_s": float(np.sum(result.metrics["sebulba/learner_wait_s"][warmup:])),
        "policy_lag_mean": result.summary["policy_lag_mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default="envpool/CartPole-v1,gymnasium/CartPole-v1")
    parser.add_argument("--actors", default="1,2")
    parser.add_argument("--envs-per-actor", type=int, default=8)
    parser.add_argument("--rollout-len", type=int, default=32)
    parser.add_argument("--updates", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="median over repeats")
    parser.add_argument("--sync-dispatch", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.sync_dispatch:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    rows = []
    for env_id in args.envs.split(","):
        for actors in map(int, args.actors.split(",")):
            reps = [measure(env_id, actors, args.envs_per_actor, args.rollout_len, args.updates,
                            args.warmup) for _ in range(args.repeats)]  # fmt: skip
            row = {k: (float(np.median([r[k] for r in reps])) if isinstance(v, float) else v)
                   for k, v in reps[0].items()}  # fmt: skip
            row["steps_per_s_all"] = [r["steps_per_s"] for r in reps]
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "machine": platform.processor() or platform.machine(),
        "sync_dispatch": args.sync_dispatch,
        "args": vars(args),
    }
    print("| env | actors | env steps/s | policy call µs/step | env µs/step | policy lag |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['env']} | {r['actors']} | {r['steps_per_s']:,.0f} | "
              f"{r['act_us_per_step']:.0f} | {r['env_us_per_step']:.0f} | "
              f"{r['policy_lag_mean']:.2f} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
