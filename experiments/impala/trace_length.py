"""Why 1-step importance sampling beat V-trace at lag 256: trace length or TD weighting?

``off_policy_correction.py`` found the paper's "1-step IS" baseline (policy gradient
weighted by ``min(1, ρ_s)``, value targets uncorrected) ahead of V-trace at a policy lag of
256 updates on CartPole. The two differ only in the value targets, in two ways:

* **traces:** V-trace's ``c_s = λ min(c̄, ρ_s)`` cut the multi-step return where the
  ratios are small; the uncorrected targets use ``c_s = λ``;
* **TD weighting:** V-trace weights each TD error by ``min(ρ̄, ρ_s)`` (its fixed point is
  the value of the clipped target policy); the uncorrected targets weight them by 1 (the
  behaviour policy's value).

Setting ``λ`` = 0 removes the first difference (both targets become one-step) and keeps the
second. This script runs both target kinds (``target_correction_on`` 1: V-trace, 0: 1-step
IS; ``pg_correction_on`` = 1 for both) x ``--lambdas`` x ``--seeds`` seeds as ONE compiled
program (the gate and ``vtrace_lambda`` are traced), everything else the preset
``impala/cartpole`` at ``--lag``.

    python experiments/impala/trace_length.py --lag 256 --lambdas 1,0.5,0 --seeds 16 \\
        --first-seed 16 --json experiments/impala/results_trace_length.json
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
TARGETS = {"vtrace": 1.0, "one_step_is": 0.0}  # name -> target_correction_on


def final_return(returns: np.ndarray) -> np.ndarray:
    """``[R, U]`` per-update mean episode returns (NaN: none ended) -> per run, the mean
    over the last 5 % of updates (as ``off_policy_correction.py``)."""
    return np.nanmean(returns[:, -max(1, returns.shape[1] // 20) :], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lag", type=int, default=256)
    parser.add_argument("--lambdas", default="1,0.5,0")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--first-seed", type=int, default=16)
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--json", help="write per-seed results here")
    args = parser.parse_args()
    lambdas = [float(x) for x in args.lambdas.split(",")]

    cfg, hp = config.resolve(impala, config.load_preset(PRESET), {}, args.steps)
    cfg = dataclasses.replace(cfg, lag=args.lag)
    runs = sweep.grid(
        hp,
        seeds=range(args.first_seed, args.first_seed + args.seeds),
        target_correction_on=list(TARGETS.values()),
        vtrace_lambda=lambdas,
    )
    env, _ = envs.make(ENV)
    t0 = time.time()
    result = loop.run(impala, env, cfg, runs, env_name=ENV, algo_name="impala", quiet=True)
    wall = time.time() - t0
    returns = np.asarray(result.metrics["episode/return"], np.float64)  # [R, U]
    final, area = final_return(returns), np.nanmean(returns, axis=1)
    out = {"env": ENV, "preset": PRESET, "lag": args.lag, "steps": args.steps, "wall_s": wall}
    cells = {}
    print(f"lag {args.lag}, {len(runs.labels)} runs in {wall:.0f} s; final return mean ± s.d.")
    for name, gate in TARGETS.items():
        for lam in lambdas:
            rows = [
                i for i, label in enumerate(runs.labels)
                if label["target_correction_on"] == gate and label["vtrace_lambda"] == lam
            ]  # fmt: skip
            key = f"{name}/lambda={lam:g}"
            cells[key] = final[rows]
            out[key] = {
                "seeds": [runs.labels[i]["seed"] for i in rows],
                "final": final[rows].tolist(),
                "all_update_mean": area[rows].tolist(),
            }
            f, a = final[rows], area[rows]
            print(
                f"  {key:22s} final {f.mean():6.1f} ± {f.std(ddof=1):5.1f}   "
                f"all-update {a.mean():6.1f} ± {a.std(ddof=1):5.1f}"
            )
    contrasts = {}
    for lam in lambdas:
        contrasts[f"vtrace − one_step_is at λ={lam:g}"] = (
            cells[f"vtrace/lambda={lam:g}"], cells[f"one_step_is/lambda={lam:g}"]
        )  # fmt: skip
    for name in TARGETS:
        lo, hi = min(lambdas), max(lambdas)
        contrasts[f"{name}: λ={lo:g} − λ={hi:g}"] = (
            cells[f"{name}/lambda={lo:g}"], cells[f"{name}/lambda={hi:g}"]
        )  # fmt: skip
    out["contrasts"] = {}
    for label, (x, y) in contrasts.items():
        diff, se = mean_difference(x, y)
        out["contrasts"][label] = {"diff": diff, "se": se}
        print(f"  {label}: {diff:+.1f} ± {se:.1f} s.e. ({diff / se:+.1f} s.e.)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
