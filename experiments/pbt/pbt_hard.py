"""PBT against the best fixed learning rate: PPO on Pendulum-v1 without learning-rate annealing.

On CartPole (``pbt_cartpole.py``) every learning rate from 5e-4 upwards reaches the 500 cap
alone, so PBT could only raise the population mean. Pendulum-v1 with the ``ppo/pendulum``
preset and ``anneal_lr=False`` is a task where the schedule matters (experiments/ppo: turning
annealing off costs about 160 return at the preset's 1e-3): a high constant learning rate
learns fast but is noisy late, a low one is slow. Two arms with the same budget, member keys
and starting hyperparameters (``pbt_cartpole.run_arm``):

* ``independent``: 8 members, each a fixed learning rate from a log grid (``fraction=0``);
* ``best_fixed``: 8 members all at the grid learning rate that did best in ``independent``
  (8 seeds of the best fixed learning rate: the baseline a tuned sweep would give);
* ``pbt``: the same 8 starts as ``independent``; every ``--updates-per-round`` updates the
  bottom 25% copy a top-25% member and multiply the hyperparameters in ``--names`` by 0.8 or
  1.25.

The question is whether the PBT population's best (and mean) final return beats the best
fixed-learning-rate member of the independent arm, per seed.

    python experiments/pbt/pbt_hard.py --seeds 0 1 2 --rounds 15 --updates-per-round 10 \
        --copy-env-state --json experiments/pbt/results_hard.json \
        --plot experiments/pbt/pbt_hard.png

RESULTS.md in this folder records the run (150 updates = 153,600 env steps per member).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbt_cartpole import POP, run_arm  # noqa: E402

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import ppo  # noqa: E402
from jaxrl.runner import config, pbt  # noqa: E402


def quantiles(lr: np.ndarray, rounds: list[int]) -> str:
    """``median [min, max]`` of the population's learning rate at the given rounds."""
    return " → ".join(
        f"{np.median(lr[t]):.1e} [{lr[t].min():.0e}, {lr[t].max():.0e}]" for t in rounds
    )


def plot(results: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({r["seed"] for r in results})
    fig, axes = plt.subplots(2, len(seeds), figsize=(4.2 * len(seeds), 7), squeeze=False)
    for j, seed in enumerate(seeds):
        for r in (r for r in results if r["seed"] == seed):
            ret = np.asarray(r["round_return"], dtype=float)
            if r["arm"] == "independent":
                best = int(np.nanargmax(r["final_return"]))
                lr0 = r["learning_rate"][0][best]
                axes[0, j].plot(ret[:, best], "--", color="C1", label=f"best fixed lr {lr0:.1e}")
            elif r["arm"] == "best_fixed":
                axes[0, j].plot(np.nanmean(ret, axis=1), ":", color="C2", label="best lr x8 mean")
            else:
                axes[0, j].plot(np.nanmax(ret, axis=1), color="C0", label="PBT best member")
                axes[0, j].plot(np.nanmean(ret, axis=1), color="C0", alpha=0.4, label="PBT mean")
                axes[1, j].semilogy(np.asarray(r["learning_rate"]), alpha=0.7)
        axes[0, j].set(xlabel="round", ylabel="return", title=f"{title}, seed {seed}")
        axes[0, j].legend(fontsize=7)
        axes[1, j].set(xlabel="round", ylabel="learning rate", title="PBT lr per member")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--preset", default="ppo/pendulum")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--updates-per-round", type=int, default=10)
    parser.add_argument("--lr-range", type=float, nargs=2, default=(1e-5, 1e-2))
    parser.add_argument("--names", nargs="+", default=["learning_rate"])
    parser.add_argument("--factors", type=float, nargs="+", default=[0.8, 1.25])
    parser.add_argument(
        "--copy-env-state",
        action="store_true",
        help="a replaced member also copies the donor's env_state and obs (with the observation "
        "normaliser and reward-scaling statistics); default: it keeps its own (pbt.KEEP)",
    )
    parser.add_argument("--arms", nargs="+", default=["independent", "best_fixed", "pbt"])
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    preset = config.load_preset(args.preset)
    env, _ = envs.make(preset["env"])
    cfg = ppo.Config(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in preset["config"].items()}
    )
    updates = args.rounds * args.updates_per_round
    cfg = dataclasses.replace(
        cfg, anneal_lr=False, total_timesteps=updates * cfg.num_envs * cfg.rollout_len
    )
    base_hps = ppo.HParams.make(**preset["hparams"])
    lrs = np.geomspace(*args.lr_range, POP).astype(np.float32)
    print(
        f"{preset['env']}: {POP} members x {cfg.total_timesteps} env steps, lrs "
        f"{np.round(lrs, 6).tolist()}, PBT perturbs {args.names}",
        flush=True,
    )
    options = dict(factors=tuple(args.factors))
    if args.copy_env_state:
        options["keep"] = tuple(k for k in pbt.KEEP if k not in ("env_state", "obs"))
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            arm_lrs = lrs
            if arm == "best_fixed":  # every member at this seed's best grid lr: 8 seeds of it
                ind = next(r for r in results if r["seed"] == seed and r["arm"] == "independent")
                arm_lrs = np.full(POP, lrs[int(np.nanargmax(ind["final_return"]))], np.float32)
            r = run_arm(
                arm, seed, args.rounds, args.updates_per_round, cfg, env,
                lrs=arm_lrs, base_hps=base_hps, names=tuple(args.names), **options,
            )  # fmt: skip
            r["env_steps"] = cfg.total_timesteps
            results.append(r)
            print(
                f"seed {seed} {arm:11s} mean {r['mean_final']:7.1f} best {r['best_final']:7.1f}"
                f"  compile {r['compile_s']:.0f}s run {r['run_s']:.0f}s"
                f"  final per member {np.round(r['final_return']).astype(int).tolist()}",
                flush=True,
            )
            if arm == "pbt":
                lr = np.asarray(r["learning_rate"])
                marks = sorted({0, args.rounds // 4, args.rounds // 2, 3 * args.rounds // 4})
                print(f"  lr median [min, max] at rounds {marks + [args.rounds - 1]}: "
                      f"{quantiles(lr, marks + [args.rounds - 1])}", flush=True)  # fmt: skip
    print(
        "\n| seed | best grid lr (its final return) | independent mean | best lr x8: best | "
        "best lr x8: mean | PBT best | PBT mean |"
    )
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        arms = {r["arm"]: r for r in results if r["seed"] == seed}
        cells = ["–"] * 6
        if "independent" in arms:
            ind = arms["independent"]
            best = int(np.nanargmax(ind["final_return"]))
            cells[0] = f"{lrs[best]:.1e} ({ind['best_final']:.1f})"
            cells[1] = f"{ind['mean_final']:.1f}"
        for i, arm in ((2, "best_fixed"), (4, "pbt")):
            if arm in arms:
                cells[i] = f"{arms[arm]['best_final']:.1f}"
                cells[i + 1] = f"{arms[arm]['mean_final']:.1f}"
        print(f"| {seed} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    if args.plot:
        plot(results, args.plot, preset["env"])


if __name__ == "__main__":
    main()
