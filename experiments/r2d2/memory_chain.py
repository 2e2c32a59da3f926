"""R2D2 against feed-forward DQN on a memory task: bsuite's MemoryChain (gymnax).

An episode of ``MemoryChain-bsuite`` lasts ``memory_length + 1`` steps. The context bit
(+-1) is in the observation only at the start (gymnax shows it in the first two observations);
the last action is rewarded +1 if it equals the context and -1 otherwise (every other reward is
0). A policy without memory cannot beat a coin flip: expected return 0. One that remembers the
bit scores 1.

Both agents get the same env-step budget and ``--seeds`` seeds (one compiled program per
agent, vmapped over seeds). R2D2 uses the ``r2d2/memory_chain`` preset; DQN the ``dqn``
defaults (10 envs, 50k buffer, (64, 64) MLP, linear epsilon) with the same discount. After
every tenth of the budget each seed's greedy policy plays 256 fresh episodes.

    python experiments/r2d2/memory_chain.py --seeds 4 --memory-length 5 10 20 30 \
        --json experiments/r2d2/results.json --plot experiments/r2d2/memory_chain.png

RESULTS.md in this folder records a run.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl import envs
from jaxrl.algorithms import dqn, r2d2
from jaxrl.runner import config, evaluate

EVAL_EPISODES = 256
CHUNKS = 10


def r2d2_setup(total_timesteps: int, memory_length: int):
    """R2D2 from the preset, its greedy evaluation ``(params, key) -> mean return``."""
    preset = config.load_preset("r2d2/memory_chain")
    cfg, hp = config.resolve(r2d2, preset, {}, total_timesteps)
    env, params = envs.make(preset["env"])
    params = params.replace(memory_length=memory_length)
    envs_eval = 64
    steps = EVAL_EPISODES // envs_eval * (memory_length + 1)

    def greedy(p, key):
        return r2d2.evaluate(cfg, env, p, key, envs_eval, steps, params)[0]

    return cfg, hp, env, params, greedy


def dqn_setup(total_timesteps: int, memory_length: int, discount: float):
    """Feed-forward DQN (module defaults) and its greedy evaluation."""
    cfg = dqn.Config(total_timesteps=total_timesteps, learning_starts=2_000)
    hp = dqn.HParams.make(discount=discount)
    env, params = envs.make("MemoryChain-bsuite")
    params = params.replace(memory_length=memory_length)

    def greedy(p, key):
        returns = evaluate.evaluate(
            dqn, cfg, env, p, key, EVAL_EPISODES, True, params, max_steps=memory_length + 1
        )
        return jnp.mean(returns)

    return cfg, hp, env, params, greedy


def run(algo, cfg, hp, env, env_params, greedy, seeds: int) -> dict:
    """Trains ``seeds`` runs in one vmapped program; greedy evaluation after each chunk."""
    keys = jax.random.split(jax.random.key(0), seeds)
    init = jax.jit(jax.vmap(lambda k: algo.init(cfg, env, k, hp, env_params)))
    state = init(keys)
    per_chunk = cfg.num_updates // CHUNKS
    train = jax.jit(jax.vmap(lambda s: algo.train(cfg, env, s, hp, per_chunk)))
    score = jax.jit(jax.vmap(greedy))
    t0 = time.perf_counter()
    train.lower(state).compile()
    compile_s = time.perf_counter() - t0
    evals, train_returns = [], []
    t0 = time.perf_counter()
    for i in range(CHUNKS):
        state, metrics = train(state)
        eval_keys = jax.vmap(lambda k, i=i: jax.random.fold_in(k, 1000 + i))(keys)
        evals.append(np.asarray(score(state.params, eval_keys)).tolist())
        ret = np.asarray(metrics["episode/return"])
        train_returns.append(np.nanmean(ret, axis=1).tolist())
        print(f"  chunk {i + 1}/{CHUNKS}: greedy {np.round(evals[-1], 2)}", flush=True)
    return {
        "env_steps": [(i + 1) * per_chunk * cfg.steps_per_update for i in range(CHUNKS)],
        "greedy_return": evals,  # [chunk][seed]
        "train_return": train_returns,
        "compile_s": compile_s,
        "run_s": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--total-timesteps", type=int, default=100_000)
    parser.add_argument("--memory-length", type=int, nargs="+", default=[5])
    parser.add_argument("--json", help="write every curve here")
    parser.add_argument("--plot", help="write greedy-return curves (png) here")
    args = parser.parse_args()

    record = {"seeds": args.seeds, "total_timesteps": args.total_timesteps, "runs": {}}
    rows = []
    for length in args.memory_length:
        r2 = r2d2_setup(args.total_timesteps, length)
        agents = {
            "r2d2": (r2d2, *r2),
            "dqn": (dqn, *dqn_setup(args.total_timesteps, length, float(r2[1].discount))),
        }
        for name, (algo, cfg, hp, env, env_params, greedy) in agents.items():
            print(f"{name}, memory_length {length}", flush=True)
            out = run(algo, cfg, hp, env, env_params, greedy, args.seeds)
            record["runs"][f"{name}/memory_length={length}"] = out
            final = np.asarray(out["greedy_return"][-1])
            rows.append(
                f"| {length} | {name} | {final.mean():.2f} ± {final.std():.2f} | "
                f"{' '.join(f'{x:.2f}' for x in final)} | "
                f"{np.nanmean(out['train_return'][-1]):.2f} | "
                f"{out['compile_s']:.0f} s + {out['run_s']:.0f} s |"
            )
    print(f"\nMemoryChain-bsuite, {args.seeds} seeds x {args.total_timesteps:,} env steps\n")
    print("| memory_length | agent | final greedy return (mean ± std) | per seed | "
          "last-chunk training return | compile + run |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    if args.plot:
        plot(record, args.plot)


def plot(record: dict, path: str) -> None:
    """One panel per memory length: greedy return of each agent (mean, min-max over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({int(k.split("=")[1]) for k in record["runs"]})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4 * len(lengths), 3.5), squeeze=False)
    for ax, length in zip(axes[0], lengths, strict=True):
        for agent in ("r2d2", "dqn"):
            out = record["runs"][f"{agent}/memory_length={length}"]
            ret, steps = np.asarray(out["greedy_return"]), np.asarray(out["env_steps"])
            line = ax.plot(steps, ret.mean(1), label=agent)[0]
            ax.fill_between(steps, ret.min(1), ret.max(1), color=line.get_color(), alpha=0.2)
        ax.set_title(f"memory_length {length}")
        ax.set_xlabel("env steps")
        ax.set_ylim(-1.05, 1.05)
    axes[0, 0].set_ylabel(f"greedy return ({record['seeds']} seeds)")
    axes[0, 0].legend()
    fig.suptitle("MemoryChain-bsuite: R2D2 vs feed-forward DQN")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
