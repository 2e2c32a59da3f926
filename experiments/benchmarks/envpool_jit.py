"""envpool inside ``jit`` against envpool on the host: env steps/s, compile time apart.

For each PPO setting it measures, on ``envpool/CartPole-v1`` and the same number of env
steps ``S``:

(a) raw envpool stepping on the host, no policy: ``pool.step`` (random actions) in a Python
    loop, and, for reference, the same through jaxrl's host adapter (``EnvpoolEnv.step``,
    which also resets finished envs), envpool's bare XLA ``step`` in a jitted ``lax.scan``
    (its next-step auto-reset left as is) and ``EnvpoolXlaEnv.step`` in a jitted scan (with
    the host reset callback on steps where an episode ended);
(b) the compiled PPO loop on the pool (``jaxrl.envs.envpool_xla``: init, then all updates in
    one ``jit``'d ``lax.scan``);
(c) the Sebulba path (``jaxrl.sebulba.run("ppo", "envpool/CartPole-v1", ...)``, one actor
    thread by default): host actor, one jitted policy call per step, learner in the main
    thread.

Settings: ``light`` (8 envs x 32 steps, 1 epoch x 1 minibatch: acting and env stepping set
the pace, as in ``experiments/sebulba/throughput.py``) and ``preset`` (``ppo/cartpole``: 4
envs x 128, 4 epochs x 4 minibatches: SGD sets it). Rates exclude compilation, which is
reported apart: for (b) ``lower().compile()`` of init and train, for (c) the time
``sebulba.run`` spends before its actors start (it compiles ``act`` and ``learn`` then).
Each measurement is repeated; tables show medians (all values in the JSON).

Usage::

    python experiments/benchmarks/envpool_jit.py --json /tmp/envpool_jit.json
    python experiments/benchmarks/envpool_jit.py --settings light --steps 100000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

TASK = "CartPole-v1"
SETTINGS = {
    "light": dict(num_envs=8, rollout_len=32, num_epochs=1, num_minibatches=1),
    "preset": dict(num_envs=4, rollout_len=128, num_epochs=4, num_minibatches=4),
}


def _median(xs):
    return float(np.median(xs))


def raw_host(num_envs: int, steps: int) -> dict[str, float]:
    """(a) envpool's own ``step`` and jaxrl's host adapter, random actions."""
    from jaxrl.envs import envpool as host_envpool

    n = steps // num_envs
    actions = np.random.default_rng(0).integers(0, 2, (n, num_envs), dtype=np.int32)
    env = host_envpool.make(TASK, num_envs=num_envs, seed=0)
    env.pool.reset()
    t = time.perf_counter()
    for a in actions:
        env.pool.step(a)
    raw = n * num_envs / (time.perf_counter() - t)
    env.reset()
    t = time.perf_counter()
    for a in actions:
        env.step(a)
    adapter = n * num_envs / (time.perf_counter() - t)
    env.close()
    return {"envpool_step": raw, "host_adapter": adapter}


def raw_jit(num_envs: int, steps: int) -> dict[str, float]:
    """(a) envpool's bare XLA step and ``EnvpoolXlaEnv.step`` in a jitted scan."""
    import envpool

    from jaxrl.envs import envpool_xla

    n = steps // num_envs
    actions = jnp.asarray(np.random.default_rng(0).integers(0, 2, (n, num_envs), np.int32))
    pool = envpool.make(TASK, env_type="gymnasium", num_envs=num_envs, seed=0)
    handle, _, _, xla_step = pool.xla()
    pool.reset()

    @jax.jit
    def bare(handle, actions):
        return jax.lax.scan(lambda h, a: (xla_step(h, a)[0], None), handle, actions)[0]

    env = envpool_xla.make(TASK, num_envs=num_envs, seed=0)

    @jax.jit
    def wrapped(actions):
        obs, state = env.reset(jax.random.key(0))

        def body(state, a):
            _, state, step = env.step(jax.random.key(0), state, a)
            return state, step.done.sum()

        return jax.lax.scan(body, state, actions)[1].sum()

    out = {}
    for name, fn, args in (("xla_bare", bare, (handle, actions)), ("xla_env", wrapped, (actions,))):
        compiled = fn.lower(*args).compile()
        t = time.perf_counter()
        result = jax.block_until_ready(compiled(*args))
        out[name] = n * num_envs / (time.perf_counter() - t)
    out["xla_env_episodes"] = int(result)  # episodes that ended in the timed xla_env run
    return out


def compiled_ppo(cfg, hp, repeats: int) -> dict:
    """(b) init + ``num_updates`` PPO updates on the pool as one jitted scan (``ppo.train``)."""
    from jaxrl.algorithms import ppo
    from jaxrl.envs import envpool_xla
    from jaxrl.logger import metrics as metric_utils

    env = envpool_xla.make(TASK, num_envs=cfg.num_envs, seed=0)
    key = jax.random.key(0)
    t = time.perf_counter()
    init = jax.jit(lambda k: ppo.init(cfg, env, k, hp)).lower(key).compile()
    state = init(key)
    train = jax.jit(lambda s: ppo.train(cfg, env, s, hp, cfg.num_updates))
    train = train.lower(state).compile()
    compile_s = time.perf_counter() - t
    rates, finals = [], []
    for r in range(repeats):
        state = init(jax.random.key(r))  # resets the pool
        jax.block_until_ready(state)
        t = time.perf_counter()
        state, metrics = train(state)
        jax.block_until_ready(metrics)
        rates.append(cfg.num_updates * cfg.steps_per_update / (time.perf_counter() - t))
        ret = np.asarray(metrics["episode/return"])[None]
        finals.append(
            float(metric_utils.final_return(ret, np.asarray(metrics["episode/count"])[None])[0])
        )
    return {"steps_per_s": rates, "compile_s": compile_s, "final_return": finals}


def sebulba_ppo(cfg, hp, repeats: int, num_actors: int) -> dict:
    """(c) ``sebulba.run`` with envpool host envs; rate = trained env steps / its wall_s."""
    from jaxrl import sebulba

    rates, setup, finals = [], [], []
    for r in range(repeats):
        t = time.perf_counter()
        result = sebulba.run("ppo", f"envpool/{TASK}", cfg, hp, num_actors=num_actors, seed=r)
        total = time.perf_counter() - t
        rates.append(result.env_steps / result.wall_s)
        setup.append(total - result.wall_s)
        finals.append(float(result.summary["final_return"]))
    return {"steps_per_s": rates, "setup_compile_s": setup, "final_return": finals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="light,preset")
    parser.add_argument("--steps", type=int, default=200_000, help="env steps per run, S")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--actors", type=int, default=1, help="Sebulba actor threads")
    parser.add_argument("--sync-dispatch", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.sync_dispatch:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    from jaxrl.algorithms import ppo

    hp = ppo.HParams.make(learning_rate=2.5e-4)
    rows = []
    for name in args.settings.split(","):
        kw = SETTINGS[name]
        cfg = ppo.Config(total_timesteps=args.steps, **kw)
        steps = cfg.num_updates * cfg.steps_per_update
        host = [raw_host(cfg.num_envs, steps) for _ in range(args.repeats)]
        jit_raw = [raw_jit(cfg.num_envs, steps) for _ in range(args.repeats)]
        row = {"setting": name, "config": kw, "env_steps": steps}
        for k in ("envpool_step", "host_adapter"):
            row[k] = [h[k] for h in host]
        for k in ("xla_bare", "xla_env"):
            row[k] = [j[k] for j in jit_raw]
        row["xla_env_episodes"] = jit_raw[0]["xla_env_episodes"]
        row["compiled"] = compiled_ppo(cfg, hp, args.repeats)
        row["sebulba"] = sebulba_ppo(cfg, hp, args.repeats, args.actors)
        row["load_avg"] = os.getloadavg()
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "sync_dispatch": args.sync_dispatch,
        "args": vars(args),
    }
    print(f"\n{meta}\n")
    print(
        "| setting | S | (a) envpool.step | (a) host adapter | (a) XLA step in jit "
        "| (a) EnvpoolXlaEnv in jit | (b) compiled PPO | (c) Sebulba PPO | (b)/(c) | (b)/(a) "
        "| (c)/(a) | compile (b) / (c) |"
    )
    print("| --- " * 12 + "|")
    for r in rows:
        a, b, c = _median(r["envpool_step"]), r["compiled"], r["sebulba"]
        rb, rc = _median(b["steps_per_s"]), _median(c["steps_per_s"])
        print(
            f"| {r['setting']} | {r['env_steps']:,} | {a:,.0f} | {_median(r['host_adapter']):,.0f} "
            f"| {_median(r['xla_bare']):,.0f} | {_median(r['xla_env']):,.0f} | {rb:,.0f} "
            f"| {rc:,.0f} | {rb / rc:.2f} | {rb / a:.2f} | {rc / a:.2f} "
            f"| {b['compile_s']:.1f} s / {_median(c['setup_compile_s']):.1f} s |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
