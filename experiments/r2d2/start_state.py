"""R2D2's replay start-state strategies (Kapturowski et al. 2019, §3) on bsuite MemoryChain.

A replayed window of ``sequence_length`` steps must start its LSTM from some state. The
paper compares two strategies, each with and without a burn-in:

* ``zero``: every window starts from zeros;
* ``stored``: from the state the actor read at the window's first step (computed with the
  actor's parameters of that time, so it is stale by the age of the data);
* burn-in: the first ``burn_in`` steps only unroll the network, the rest are learned from.

It measures representational drift and state staleness by ``ΔQ``: for a window, the online
network's Q-values at a learned step ``t`` unrolled from the window's start state,
``q_hat_t``, against those from the "true" state, unrolled by the same online network from
the start of ``t``'s episode, ``q_t``:

    ΔQ_t = || q_hat_t - q_t ||_2 / max_{a, j} | q_j[a] |      (j over the learned steps)

Here the windows are every ``period``-aligned window of the agent's own replay (each env's
stream in time order; the true state is exact because every episode of the stream but the
first starts inside it). ``ΔQ`` is reported at the first and the last learned step, over
the windows whose step ``t`` lies in an episode that began before the window (in the others
both unrolls zero the state at the same reset, so ``ΔQ`` is 0 up to float error, which is
checked and printed as ``fresh max``).

The task: ``MemoryChain-bsuite`` with ``--memory-length 20`` (episodes of 21 steps, the
context bit shown in the first two observations, the reward for matching it at the last
step). Windows of ``--sequence-length 20`` (period 10) are shorter than an episode, as in
the paper's Atari setting, so a window that starts from zeros almost never holds both the
bit and the rewarded step. Everything else is the ``r2d2/memory_chain`` preset (which
solves memory 20 with windows of 80: ``RESULTS.md``). Four arms, ``--seeds`` seeds each,
one compiled program per arm vmapped over seeds; after each tenth of the budget the greedy
policy plays 256 episodes and ``ΔQ`` is measured.

    python experiments/r2d2/start_state.py --seeds 8 --json experiments/r2d2/start_state.json \
        --plot experiments/r2d2/start_state.png

RESULTS_start_state.md in this folder records the protocol and a run.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import r2d2  # noqa: E402
from jaxrl.distributed import run_mesh, shard_runs  # noqa: E402
from jaxrl.runner import config, evaluate  # noqa: E402

MEMORY_CHAIN = "MemoryChain-bsuite"
EVAL_ENVS = 64
EVAL_EPISODES_PER_ENV = 4
EVAL_MAX_STEPS = 1_000  # other envs: 256 exact episodes of at most this many steps
CHUNKS = 10
ARMS = {  # name: (start_state, burn-in as a fraction of the window)
    "zero": ("zero", 0.0),
    "zero+burn-in": ("zero", 0.5),
    "stored": ("stored", 0.0),
    "stored+burn-in": ("stored", 0.5),
}


def time_major_windows(x: jax.Array, starts: jax.Array, length: int) -> jax.Array:
    """Windows of a time-major stream ``x [S, N, ...]``: ``[length, W * N, ...]`` for
    ``starts [W]``, window ``w`` of env ``n`` at column ``w * N + n``."""
    pos = starts[:, None] + jnp.arange(length)[None, :]  # [W, L]
    win = jnp.swapaxes(x[pos], 0, 1)  # [L, W, N, ...]
    return win.reshape(length, -1, *x.shape[2:])


def delta_q(cfg: r2d2.Config, env, online: dict, buffer_state) -> dict:
    """``ΔQ`` of every ``period``-aligned window of the replay (one run).

    Returns scalars: mean ``ΔQ`` at the first and the last learned step over the windows
    where that step's episode began before the window (``dq_first``, ``dq_last``), how many such
    windows (``n_first``, ``n_last``), and the largest ``ΔQ`` at learned steps whose
    episode began inside the window (``fresh_max``, 0 up to float error).
    """
    exp = buffer_state.experience  # leaves [N, S, ...], slot order
    steps = exp.reset.shape[1]
    shift = jnp.where(buffer_state.is_full, buffer_state.current_index, 0)
    valid = jnp.where(buffer_state.is_full, steps, buffer_state.current_index)
    chrono = jax.tree.map(lambda x: jnp.swapaxes(jnp.roll(x, -shift, axis=1), 0, 1), exp)
    n = chrono.reset.shape[1]
    q_true, _ = r2d2.unroll(
        cfg, env, online, r2d2.initial_carry(cfg, (n,)), chrono.obs, chrono.reset
    )  # [S, N, A], exact after each env's first reset

    length, b = cfg.sequence_length, cfg.burn_in
    starts = jnp.arange(0, steps - length + 1, cfg.period)
    obs = time_major_windows(chrono.obs, starts, length)
    reset = time_major_windows(chrono.reset, starts, length)  # [L, W * N]
    if cfg.start_state == "stored":
        start = jax.tree.map(lambda c: time_major_windows(c, starts, 1)[0], chrono.carry)
    else:
        start = r2d2.initial_carry(cfg, (reset.shape[1],))
    q_hat, _ = r2d2.unroll(cfg, env, online, start, obs, reset)  # [L, W * N, A]
    q_ref = time_major_windows(q_true, starts, length)
    norm = jnp.max(jnp.abs(q_ref[b:]), axis=(0, 2))  # [W * N]
    dq = jnp.linalg.norm(q_hat - q_ref, axis=-1) / jnp.maximum(norm, 1e-6)  # [L, W * N]

    seen_reset = jnp.cumsum(chrono.reset, axis=0) > 0  # [S, N]: a reset at or before
    truth = time_major_windows(seen_reset, starts, 1)[0]  # [W * N] at the window start
    in_range = jnp.repeat(starts + length <= valid, n)  # [W * N]
    stale = jnp.cumsum(reset, axis=0) == 0  # [L, W * N]: no reset from the start to t
    ok = jnp.logical_and(truth, in_range)[None, :]
    stale_ok = jnp.logical_and(stale, ok)
    fresh_ok = jnp.logical_and(~stale, ok)

    def masked_mean(t):
        m = stale_ok[t]
        return jnp.sum(jnp.where(m, dq[t], 0.0)) / jnp.maximum(jnp.sum(m), 1), jnp.sum(m)

    first, n_first = masked_mean(b)
    last, n_last = masked_mean(length - 1)
    fresh_max = jnp.max(jnp.where(fresh_ok[b:], dq[b:], 0.0))
    return dict(dq_first=first, dq_last=last, n_first=n_first, n_last=n_last, fresh_max=fresh_max)


def arm_config(args, start_state: str, burn_in_frac: float):
    """The ``r2d2/memory_chain`` preset with ``--set`` and this arm's window, start state
    and burn-in."""
    preset = config.load_preset("r2d2/memory_chain")
    overrides = dict(
        sequence_length=args.sequence_length,
        period=args.sequence_length // 2,
        burn_in=int(burn_in_frac * args.sequence_length),
        start_state=start_state,
    )
    sets = dict(args.set) | {k: str(v) for k, v in overrides.items()}
    return config.resolve(r2d2, preset, sets, args.total_timesteps)


def make_env(args):
    """``(env, env_params)``; MemoryChain with ``--memory-length``."""
    env, env_params = envs.make(args.env)
    if args.env == MEMORY_CHAIN:
        env_params = env_params.replace(memory_length=args.memory_length)
    return env, env_params


def greedy_return(args, cfg, env, env_params):
    """``(params, key) -> mean greedy return`` over 256 episodes. MemoryChain's episodes
    all last ``memory_length + 1`` steps, so auto-reset play (:func:`r2d2.evaluate`) ends
    exactly 4 per env; other envs play 256 exact episodes (:mod:`jaxrl.runner.evaluate`)."""
    if args.env == MEMORY_CHAIN:
        steps = EVAL_EPISODES_PER_ENV * (args.memory_length + 1)
        return lambda p, key: r2d2.evaluate(cfg, env, p, key, EVAL_ENVS, steps, env_params)[0]
    episodes = EVAL_ENVS * EVAL_EPISODES_PER_ENV
    return lambda p, key: jnp.mean(
        evaluate.evaluate(r2d2, cfg, env, p, key, episodes, True, env_params, EVAL_MAX_STEPS)
    )


def run_arm(args, name: str, keys: jax.Array) -> dict:
    """Trains one arm over ``keys`` (one vmapped program); greedy return and ``ΔQ`` after
    each chunk, ``[chunk][seed]``."""
    cfg, hp = arm_config(args, *ARMS[name])
    env, env_params = make_env(args)
    per_chunk = cfg.num_updates // CHUNKS
    greedy_fn = greedy_return(args, cfg, env, env_params)

    init = jax.jit(jax.vmap(lambda k: r2d2.init(cfg, env, k, hp, env_params)))
    train = jax.jit(jax.vmap(lambda s: r2d2.train(cfg, env, s, hp, per_chunk)[0]))

    def measure(state, key):
        greedy = greedy_fn(state.params, key)
        return greedy, delta_q(cfg, env, state.params.online, state.buffer)

    measure = jax.jit(jax.vmap(measure))
    state = init(keys)
    t0 = time.perf_counter()
    train.lower(state).compile()
    compile_s = time.perf_counter() - t0
    out = {k: [] for k in ("greedy_return", "dq_first", "dq_last", "n_first", "n_last",
                           "fresh_max")}  # fmt: skip
    t0 = time.perf_counter()
    for i in range(CHUNKS):
        state = train(state)
        eval_keys = jax.vmap(lambda k, i=i: jax.random.fold_in(k, 1000 + i))(keys)
        greedy, dq = measure(state, eval_keys)
        out["greedy_return"].append(np.asarray(greedy).tolist())
        for k, v in dq.items():
            out[k].append(np.asarray(v).tolist())
        print(
            f"  {name:15s} chunk {i + 1:2d}/{CHUNKS}: greedy {np.mean(greedy):+.2f}, "
            f"ΔQ first {np.mean(dq['dq_first']):.3f} last {np.mean(dq['dq_last']):.3f} "
            f"(fresh max {np.max(dq['fresh_max']):.1e})",
            flush=True,
        )
    out.update(
        env_steps=[(i + 1) * per_chunk * cfg.steps_per_update for i in range(CHUNKS)],
        compile_s=compile_s,
        run_s=time.perf_counter() - t0,
        config={"sequence_length": cfg.sequence_length, "period": cfg.period,
                "burn_in": cfg.burn_in, "start_state": cfg.start_state},  # fmt: skip
    )
    return out


def report(record: dict) -> None:
    """Per arm: final greedy return, the second half's mean ``ΔQ`` (first and last learned
    step), and the paired comparisons the protocol names."""
    runs = record["runs"]
    half = CHUNKS // 2

    def late(name, key):  # [seeds]: mean over the second half of the run
        return np.mean(np.asarray(runs[name][key])[half:], axis=0)

    print("\n| arm | window / burn-in | final greedy return (mean ± sd) | per seed | "
          "ΔQ first (2nd half) | ΔQ last (2nd half) | compile + run |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, out in runs.items():
        final = np.asarray(out["greedy_return"][-1])
        c = out["config"]
        first, last = late(name, "dq_first"), late(name, "dq_last")
        print(
            f"| {name} | {c['sequence_length']} / {c['burn_in']} | {final.mean():+.2f} ± "
            f"{final.std():.2f} | {' '.join(f'{x:+.2f}' for x in final)} | "
            f"{first.mean():.3f} ± {first.std():.3f} | {last.mean():.3f} ± {last.std():.3f} | "
            f"{out['compile_s']:.0f} s + {out['run_s']:.0f} s |"
        )
    pairs = [("stored", "zero"), ("stored+burn-in", "zero+burn-in"),
             ("zero+burn-in", "zero"), ("stored+burn-in", "stored")]  # fmt: skip
    print("\nPaired by seed (ΔQ at the first learned step, second half): lower in how many")
    for a, b in pairs:
        if a in runs and b in runs:
            da, db = late(a, "dq_first"), late(b, "dq_first")
            print(f"  {a} < {b}: {int(np.sum(da < db))}/{len(da)} seeds, "
                  f"ratio of means {da.mean() / db.mean():.2f}")  # fmt: skip


def plot(record: dict, path: str) -> None:
    """Greedy return and ``ΔQ`` at the first learned step against env steps (mean and
    min-max over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, out in record["runs"].items():
        steps = np.asarray(out["env_steps"])
        for ax, key in zip(axes, ("greedy_return", "dq_first", "dq_last"), strict=True):
            y = np.asarray(out[key])
            line = ax.plot(steps, y.mean(1), label=name)[0]
            ax.fill_between(steps, y.min(1), y.max(1), color=line.get_color(), alpha=0.15)
    axes[0].set_ylabel(f"greedy return ({record['seeds']} seeds)")
    if record.get("env", MEMORY_CHAIN) == MEMORY_CHAIN:
        axes[0].set_ylim(-1.05, 1.05)
    axes[1].set_ylabel("ΔQ, first learned step")
    axes[2].set_ylabel("ΔQ, last learned step")
    for ax in axes:
        ax.set_xlabel("env steps")
    axes[0].legend(fontsize=8)
    env = record.get("env", MEMORY_CHAIN)
    task = f"{env} memory {record['memory_length']}" if env == MEMORY_CHAIN else env
    fig.suptitle(f"R2D2 start states, {task}, windows of {record['sequence_length']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="base seed of the run keys")
    parser.add_argument("--total-timesteps", type=int, default=200_000)
    parser.add_argument("--env", default=MEMORY_CHAIN, help="an env name (jaxrl.envs.make)")
    parser.add_argument("--memory-length", type=int, default=20, help="MemoryChain only")
    parser.add_argument("--sequence-length", type=int, default=20)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument(
        "--set", nargs="*", default=[], type=lambda s: tuple(s.split("=", 1)),
        metavar="KEY=VALUE", help="preset overrides for every arm (as jaxrl train --set)",
    )  # fmt: skip
    parser.add_argument("--json", help="write every curve here")
    parser.add_argument("--plot", help="write the curves (png) here")
    args = parser.parse_args()
    if args.sequence_length % 2:
        parser.error("--sequence-length must be even (period and burn-in are half of it)")

    keys = shard_runs(jax.random.split(jax.random.key(args.seed), args.seeds), run_mesh())
    record = {"seeds": args.seeds, "seed": args.seed, "total_timesteps": args.total_timesteps,
              "memory_length": args.memory_length, "sequence_length": args.sequence_length,
              "runs": {}}  # fmt: skip
    if args.env != MEMORY_CHAIN or args.set:
        record |= {"env": args.env, "set": dict(args.set)}
    for name in args.arms:
        record["runs"][name] = run_arm(args, name, keys)
        if args.json:  # after every arm, so an interrupted run keeps what it finished
            with open(f"{args.json}.tmp", "w") as f:
                json.dump(record, f, indent=1)
            os.replace(f"{args.json}.tmp", args.json)
    report(record)
    if args.plot:
        plot(record, args.plot)


if __name__ == "__main__":
    main()
