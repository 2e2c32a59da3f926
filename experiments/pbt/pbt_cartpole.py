"""PBT vs independent training: PPO on CartPole-v1 from a spread of learning rates.

A population of 8 PPO agents starts from learning rates spaced log-uniformly over
[1e-5, 1e-2] (the ends are too slow or unstable). Two arms with the same budget, the same
member keys and the same starting hyperparameters:

* ``independent``: every member trains alone (``train_pbt`` with ``fraction=0``, which the
  tests show equals a vmapped ``ppo.train`` bitwise);
* ``pbt``: every ``--updates-per-round`` updates the bottom 25% copy a top-25% member and
  perturb ``learning_rate`` (and ``ent_coef``) by 0.8 or 1.25.

Each arm of each seed is one compiled program (``jax.jit(train_pbt)``). ``anneal_lr`` is off
so the learning rate PBT reports is the one Adam uses.

    python experiments/pbt/pbt_cartpole.py --seeds 0 1 2 --json experiments/pbt/results.json \
        --plot experiments/pbt/pbt_cartpole.png

Prints a markdown table; RESULTS.md in this folder records a run.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl import envs
from jaxrl.algorithms import ppo
from jaxrl.runner import pbt, sweep

POP = 8


def run_arm(
    arm: str,
    seed: int,
    rounds: int,
    per_round: int,
    cfg,
    env,
    *,
    lrs=None,
    base_hps=None,
    names: tuple[str, ...] = ("learning_rate", "ent_coef"),
    **pbt_options,
) -> dict:
    """One arm of one seed. ``lrs`` (``[POP]``, default ``geomspace(1e-5, 1e-2)``) are the
    starting learning rates, ``base_hps`` (default ``ppo.HParams.make()``) the other starting
    hyperparameters, ``names`` the ones PBT's explore perturbs; ``pbt_options`` are other
    ``PBTConfig`` fields for the PBT arm (``factors``, ``keep``, ...)."""
    lrs = np.geomspace(1e-5, 1e-2, POP).astype(np.float32) if lrs is None else lrs
    base_hps = ppo.HParams.make() if base_hps is None else base_hps
    pop_size = len(lrs)
    hps = jax.tree.map(lambda x: jnp.broadcast_to(x, (pop_size,)), base_hps)
    hps = hps.replace(learning_rate=jnp.asarray(lrs, jnp.float32))
    keys = jnp.stack([sweep.seed_key(1000 * seed + i) for i in range(pop_size)])
    options = dict(fraction=0.25 if arm == "pbt" else 0.0, score_decay=0.8)
    options |= pbt_options if arm == "pbt" else {}
    fn = jax.jit(
        lambda k, h, key: pbt.train_pbt(
            ppo, cfg, env, k, h, rounds, per_round, tuple(names), key=key, **options
        )
    )
    start = time.perf_counter()
    compiled = fn.lower(keys, hps, jax.random.key(seed)).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    pop, hist = jax.block_until_ready(compiled(keys, hps, jax.random.key(seed)))
    run_s = time.perf_counter() - start
    ret = np.asarray(hist["return"])  # [rounds, P]
    last = max(1, rounds // 10)  # final return: the last 10% of rounds
    final = np.nanmean(ret[-last:], axis=0)
    return {
        "arm": arm,
        "seed": seed,
        "compile_s": compile_s,
        "run_s": run_s,
        "final_return": final.tolist(),
        "mean_final": float(np.nanmean(final)),
        "best_final": float(np.nanmax(final)),
        "round_return": np.where(np.isnan(ret), None, ret).tolist(),
        "learning_rate": np.asarray(hist["hps"].learning_rate).tolist(),
        **{n: np.asarray(getattr(hist["hps"], n)).tolist() for n in ("ent_coef", *names)},
        "source": np.asarray(hist["source"]).tolist(),
        "final_learning_rate": np.asarray(pop.hps.learning_rate).tolist(),
        "num_copies": np.asarray(pop.num_copies).tolist(),
    }


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        ret = np.asarray(r["round_return"], dtype=float)
        style = "-" if r["arm"] == "pbt" else "--"
        color = "C0" if r["arm"] == "pbt" else "C1"
        axes[0].plot(np.nanmean(ret, axis=1), style, color=color, alpha=0.7,
                     label=f"{r['arm']} seed {r['seed']}")  # fmt: skip
        if r["arm"] == "pbt" and r["seed"] == results[0]["seed"]:
            axes[1].semilogy(np.asarray(r["learning_rate"]), alpha=0.8)
    axes[0].set(xlabel="round", ylabel="population mean return", title="CartPole-v1, P=8")
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="round", ylabel="learning rate", title="PBT learning rate per member")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--updates-per-round", type=int, default=5)
    parser.add_argument("--rollout-len", type=int, default=128)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    env, _ = envs.make("CartPole-v1")
    updates = args.rounds * args.updates_per_round
    cfg = ppo.Config(
        total_timesteps=updates * 4 * args.rollout_len,
        num_envs=4,
        rollout_len=args.rollout_len,
        anneal_lr=False,
    )
    print(f"{POP} members x {cfg.total_timesteps} env steps each, {jax.devices()[0].device_kind}")
    results = []
    for seed in args.seeds:
        for arm in ("independent", "pbt"):
            r = run_arm(arm, seed, args.rounds, args.updates_per_round, cfg, env)
            results.append(r)
            print(
                f"seed {seed} {arm:11s} mean {r['mean_final']:6.1f} best {r['best_final']:6.1f}"
                f"  compile {r['compile_s']:.1f}s run {r['run_s']:.1f}s"
                f"  final lr {np.round(r['final_learning_rate'], 6).tolist()}",
                flush=True,
            )
    print("\n| arm | mean final return (pop. mean) | best member | run s |")
    print("|---|---|---|---|")
    for arm in ("independent", "pbt"):
        rs = [r for r in results if r["arm"] == arm]
        means = np.asarray([r["mean_final"] for r in rs])
        bests = np.asarray([r["best_final"] for r in rs])
        secs = np.asarray([r["run_s"] for r in rs])
        print(
            f"| {arm} | {means.mean():.1f} ± {means.std():.1f} | {bests.mean():.1f} ± "
            f"{bests.std():.1f} | {secs.mean():.0f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
