"""IMPALA's off-policy correction under policy lag: V-trace against the paper's baselines.

Espeholt et al. 2018 (arXiv:1802.01561, §5.3 and Table 2) compare V-trace with three
other ways of learning from a lagging behaviour policy: no correction (the data treated
as on-policy), ε-correction (a numerical guard on log π, not a correction) and 1-step
importance sampling (the policy gradient weighted by ρ_s, the value targets uncorrected).
V-trace was best, most clearly when the data was furthest off-policy (their replay runs).

Here the lag is explicit: the behaviour policy is the learner's parameters from ``lag``
updates ago (``impala.Config.lag``). The two correction gates of ``impala.HParams`` are
traced, so the four gate combinations x seeds are one compiled program per lag:

=================  ======================  ==================
variant            target_correction_on    pg_correction_on
=================  ======================  ==================
V-trace            1                       1
no correction      0                       0
1-step IS          0                       1
targets only       1                       0
=================  ======================  ==================

The 1-step IS variant here weights the policy gradient by ``min(ρ̄_pg, ρ_s)`` with the
preset's ``ρ̄_pg = 1``, like V-trace (the paper does not say whether its weight was
truncated). Everything else is the preset ``impala/cartpole`` (8 envs x 16 steps, RMSProp
3e-3 annealed, 5e5 env steps). Seeds run vmapped, split over the CPU cores.

    python experiments/impala/off_policy_correction.py --seeds 16 --lags 16,64,256 \\
        --json experiments/impala/results_off_policy_correction.json \\
        --plot experiments/impala/off_policy_correction.png

Prints, per lag and variant, the mean over seeds of the mean episode return over all
updates (area under the learning curve) and over the last 5 % of updates (final return),
and the V-trace minus no-correction differences with their standard errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import numpy as np  # noqa: E402

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import impala  # noqa: E402
from jaxrl.logger.stats import mean_difference  # noqa: E402
from jaxrl.runner import config, loop, sweep  # noqa: E402

ENV = "CartPole-v1"
PRESET = "impala/cartpole"
# name -> (target_correction_on, pg_correction_on)
VARIANTS = {
    "vtrace": (1.0, 1.0),
    "no_correction": (0.0, 0.0),
    "one_step_is": (0.0, 1.0),
    "targets_only": (1.0, 0.0),
}


def episode_means(returns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[R, U]`` per-update mean episode returns (NaN: none ended) -> per run, the mean
    over all updates and over the last 5 % (NaN updates skipped)."""
    last = max(1, returns.shape[1] // 20)
    return np.nanmean(returns, axis=1), np.nanmean(returns[:, -last:], axis=1)


def run_lag(lag: int, seeds: int, steps: int) -> dict:
    """All variants x ``seeds`` at one lag as one program; per variant its per-seed results
    and a 20-bin learning curve."""
    cfg, hp = config.resolve(impala, config.load_preset(PRESET), {}, steps)
    cfg = dataclasses.replace(cfg, lag=lag)
    runs = sweep.grid(
        hp, seeds=range(seeds), target_correction_on=[1.0, 0.0], pg_correction_on=[1.0, 0.0]
    )
    env, _ = envs.make(ENV)
    t0 = time.time()
    result = loop.run(impala, env, cfg, runs, env_name=ENV, algo_name="impala", quiet=True)
    returns = np.asarray(result.metrics["episode/return"], np.float64)  # [R, U]
    kl = np.asarray(result.metrics["train/approx_kl"], np.float64)  # [R, U]
    area, final = episode_means(returns)
    bins = np.array_split(np.arange(returns.shape[1]), 20)
    curve = np.stack([np.nanmean(returns[:, b], axis=1) for b in bins], axis=1)
    out = {"wall_s": time.time() - t0, "curve_steps": [
        int((b[-1] + 1) * cfg.steps_per_update) for b in bins
    ]}  # fmt: skip
    for name, gates in VARIANTS.items():
        rows = [
            i for i, label in enumerate(runs.labels)
            if (label["target_correction_on"], label["pg_correction_on"]) == gates
        ]  # fmt: skip
        out[name] = {
            "seeds": [runs.labels[i]["seed"] for i in rows],
            "all_update_mean": area[rows].tolist(),
            "final": final[rows].tolist(),
            "curve": curve[rows].tolist(),
            "approx_kl_mean": float(np.nanmean(kl[rows])),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--lags", default="16,64,256", help="comma-separated policy lags")
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--json", help="write per-seed results and binned curves here")
    parser.add_argument("--plot", help="write the learning curves (PNG) here")
    args = parser.parse_args()
    lags = [int(x) for x in args.lags.split(",")]

    out = {"env": ENV, "preset": PRESET, "steps": args.steps, "seeds": args.seeds, "lags": {}}
    for lag in lags:
        res = run_lag(lag, args.seeds, args.steps)
        out["lags"][str(lag)] = res
        print(f"lag {lag} ({res['wall_s']:.0f} s): mean ± s.d. over {args.seeds} seeds")
        for name in VARIANTS:
            area, final = (np.asarray(res[name][k]) for k in ("all_update_mean", "final"))
            print(
                f"  {name:14s} all-update {area.mean():6.1f} ± {area.std(ddof=1):5.1f}   "
                f"final {final.mean():6.1f} ± {final.std(ddof=1):5.1f}   "
                f"KL(μ‖π) {res[name]['approx_kl_mean']:.4f}"
            )
        for metric in ("all_update_mean", "final"):
            diff, se = mean_difference(res["vtrace"][metric], res["no_correction"][metric])
            res[f"vtrace_minus_no_correction_{metric}"] = {"diff": diff, "se": se}
            print(f"  V-trace - no correction, {metric}: {diff:+.1f} ± {se:.1f} s.e.", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.plot:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(lags), figsize=(4.5 * len(lags), 3.6), squeeze=False)
        for ax, lag in zip(axes[0], lags, strict=True):
            res = out["lags"][str(lag)]
            for name in VARIANTS:
                curve = np.asarray(res[name]["curve"])
                mean, se = curve.mean(0), curve.std(0, ddof=1) / np.sqrt(len(curve))
                ax.plot(res["curve_steps"], mean, label=name.replace("_", " "))
                ax.fill_between(res["curve_steps"], mean - se, mean + se, alpha=0.25)
            ax.set(xlabel="env steps", ylabel="episode return", title=f"lag {lag}")
        axes[0][0].legend()
        fig.suptitle(f"IMPALA on {ENV}, {args.seeds} seeds: off-policy corrections")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)


if __name__ == "__main__":
    main()
