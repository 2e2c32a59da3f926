"""Steps/s of one PPO CartPole agent, data-parallel over host CPU devices.

Three ways to train the same agent, each compiled apart and timed on ``--updates``
updates (median of ``--repeats``, interleaved so machine load hits all alike):

* ``D=1``: ``data_shards = 1``, one device (the single-device program);
* ``D=N vmap``: ``data_shards = N``, the shards vmapped on one device (the reference);
* ``D=N shard_map``: ``data_shards = N``, one shard per device (``--devices N``).

Usage (the script sets ``XLA_FLAGS`` before JAX starts)::

    python experiments/benchmarks/data_parallel.py --devices 2 --num-envs 4 --updates 100
    python experiments/benchmarks/data_parallel.py --devices 2 --num-envs 64 --updates 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--rollout-len", type=int, default=128)
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="write every timing here")
    args = parser.parse_args()
    os.environ.pop("JAX_NUM_CPU_DEVICES", None)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"

    import jax

    from jaxrl.algorithms import ppo
    from jaxrl.distributed import data_parallel as dp
    from jaxrl.envs import registry

    env, _ = registry.make("CartPole-v1")
    hp = ppo.HParams.make()
    n = args.devices

    def compiled(data_shards: int, mesh):
        cfg = ppo.Config(
            num_envs=args.num_envs, rollout_len=args.rollout_len, data_shards=data_shards
        )
        init = jax.jit(lambda k, h: ppo.init(cfg, env, k, h))
        train = jax.jit(lambda s, h: ppo.train(cfg, env, s, h, args.updates))
        state = init(jax.random.key(0), hp)
        t0 = time.perf_counter()
        if mesh is None:
            fn = train.lower(state, hp).compile()
        else:
            with jax.set_mesh(mesh):
                state = dp.place(state, ppo.DATA_SHARDED, mesh)
                fn = train.lower(state, hp).compile()
        jax.block_until_ready(fn(state, hp))  # warm-up run
        return cfg, fn, state, time.perf_counter() - t0

    variants = {
        "D=1": compiled(1, None),
        f"D={n} vmap": compiled(n, None),
        f"D={n} shard_map": compiled(n, dp.data_mesh(n)),
    }
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (_, fn, state, _) in variants.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state, hp))
            times[name].append(time.perf_counter() - t0)
    steps = args.updates * args.num_envs * args.rollout_len
    rows = {
        name: {
            "steps_per_second": steps / statistics.median(times[name]),
            "seconds": times[name],
            "compile_seconds": variants[name][3],
        }
        for name in variants
    }
    print(f"PPO CartPole, {args.num_envs} envs x {args.rollout_len} steps, {steps} steps/run, "
          f"{len(jax.devices())} devices, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    for name, row in rows.items():
        print(f"  {name:>14}: {row['steps_per_second']:>10,.0f} steps/s "
              f"(compile {row['compile_seconds']:.1f} s)")  # fmt: skip
    if args.json:
        meta = {"argv": sys.argv, "jax": jax.__version__, "load": os.getloadavg()}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
