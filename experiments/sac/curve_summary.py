"""Learning-curve figures of a ``jaxrl train`` run directory (as quoted in RESULTS.md).

Usage: ``python experiments/sac/curve_summary.py RUN_DIR [--threshold 900]``

Reads ``metrics.jsonl`` and ``summary.json`` and prints: per-seed final returns and their
mean (the runner's ``final_return``: episodes finished in the last 5% of updates), the
env step at which the mean over seeds of each seed's latest finished-episode return first
reaches the threshold and the step from which it stays there, a table of that curve at
tenths of training, and how many late episodes fell short of the threshold.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jaxrl.logger import metrics as metric_utils
from jaxrl.logger import writers


def load_returns(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(env_steps [U], returns [R, U])``: the mean return of the episodes each run
    finished in each update (NaN where none finished)."""
    rows = writers.read_jsonl(run_dir / "metrics.jsonl")
    num_runs = max(r["run"] for r in rows) + 1
    num_updates = max(r["update"] for r in rows)
    returns = np.full((num_runs, num_updates), np.nan)
    steps = np.zeros(num_updates, np.int64)
    for r in rows:
        value = r["episode/return"]
        returns[r["run"], r["update"] - 1] = np.nan if value is None else value
        steps[r["update"] - 1] = r["env_steps"]
    return steps, returns


def crossing(steps: np.ndarray, curve: np.ndarray, threshold: float) -> tuple[int | None, ...]:
    """``(first, stays)``: the first step where ``curve [U] >= threshold`` and the first
    step from which it never drops below it again (``None`` if never)."""
    above = np.nan_to_num(curve, nan=-np.inf) >= threshold
    first = int(steps[np.argmax(above)]) if above.any() else None
    below = np.flatnonzero(~above)
    if not above[-1]:
        return first, None
    stays = int(steps[below[-1] + 1]) if below.size else int(steps[0])
    return first, stays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--threshold", type=float, default=900.0)
    args = parser.parse_args()
    summary = json.loads((args.run_dir / "summary.json").read_text())
    steps, returns = load_returns(args.run_dir)
    latest = metric_utils.forward_fill(returns)  # [R, U]
    mean = latest.mean(axis=0)
    final = summary["final_return"]
    print(f"{summary['algo']} on {summary['env']}: {summary['num_runs']} runs")
    print("final return per seed:", final["per_run"], f"mean {final['mean']:.1f}")
    print(
        f"steps/s {summary['steps_per_second']:.0f}, compile {summary['compile_seconds']:.1f} s, "
        f"run {summary['run_seconds']:.1f} s"
    )
    first, stays = crossing(steps, mean, args.threshold)
    print(f"mean latest return >= {args.threshold:g}: first at {first}, stays from {stays}")
    num_updates = len(steps)
    for tenth in range(1, 11):
        j = tenth * num_updates // 10 - 1
        cells = "  ".join(f"{x:7.1f}" for x in latest[:, j])
        print(f"{steps[j]:>8}  {cells}   mean {mean[j]:.1f}")
    late = steps > 0.7 * steps[-1]
    short = [int(np.sum(returns[i, late] < args.threshold)) for i in range(len(returns))]
    count = [int(np.sum(np.isfinite(returns[i, late]))) for i in range(len(returns))]
    print(f"episodes < {args.threshold:g} in the last 30% of steps, per seed: {short} of {count}")


if __name__ == "__main__":
    main()
