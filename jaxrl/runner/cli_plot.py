"""``jaxrl plot RUN_DIR [RUN_DIR ...]``: learning curves and aggregate statistics.

Reads ``metrics.jsonl`` (and ``config.json`` / ``summary.json`` for the algorithm and
environment) of each run directory written by ``jaxrl train`` or ``jaxrl sweep``.

- A *method* is an algorithm with one hyperparameter setting (a sweep holds one method per
  setting); a *task* is an environment. Runs of one method on one task are its seeds.
- ``curves.png``: per environment, each method's mean episode return across seeds with a
  95% bootstrap CI, against environment steps per run.
- ``aggregates.png``, ``profiles.png``, ``aggregates.md``: final returns normalised per
  environment (min-max over every given run unless ``--min``/``--max`` fix the ends), then per
  method IQM, mean, median and optimality gap with stratified-bootstrap 95% CIs, and
  performance profiles with bands (:mod:`jaxrl.logger.stats`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxrl.errors import ConfigError

NOT_LABELS = {"update", "env_steps", "run", "seed"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``plot`` command to ``subparsers`` (from ``add_subparsers``); returns it."""
    p = subparsers.add_parser("plot", help="learning curves and aggregate statistics of runs")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories")
    p.add_argument(
        "--out", type=Path,
        help="output directory (default RUN_DIR/plots for one run, ./plots for several)",
    )  # fmt: skip
    p.add_argument(
        "--min", action="append", default=[], metavar="[ENV=]VALUE",
        help="score normalised to 0 (per env with ENV=, else every env; repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--max", action="append", default=[], metavar="[ENV=]VALUE",
        help="score normalised to 1 (per env with ENV=, else every env; repeatable)",
    )  # fmt: skip
    p.add_argument("--bootstrap-reps", type=int, default=2000, help="resamples per interval")
    p.add_argument("--quiet", action="store_true", help="do not print the table")
    return p


@dataclass
class Group:
    """The runs of one method on one environment, read from one run directory."""

    method: str
    env: str
    env_steps: np.ndarray  # [U]
    returns: np.ndarray  # [N, U] episode return per update (NaN: no episode finished)
    counts: np.ndarray  # [N, U] episodes finished per update
    seeds: list[int] = field(default_factory=list)


def read_run_dir(run_dir: Path) -> list[Group]:
    """Every (method, env) group of runs in ``run_dir``. Raises ConfigError if unreadable."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no metrics.jsonl there (not a jaxrl run dir)")
    meta: dict[str, Any] = {}
    for name in ("config.json", "summary.json"):
        if (run_dir / name).is_file():
            try:
                meta = json.loads((run_dir / name).read_text())
                break
            except ValueError:
                continue
    algo, env = meta.get("algo", run_dir.name), meta.get("env", "env")
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except ValueError as err:
        raise ConfigError(f"{path}: unreadable line ({err})") from None
    if not rows:
        raise ConfigError(f"{path} is empty (the run wrote no metrics yet)")
    try:
        num_runs = max(r["run"] for r in rows) + 1
        num_updates = max(r["update"] for r in rows)
        steps = np.zeros(num_updates)
        ret = np.full((num_runs, num_updates), np.nan)
        cnt = np.zeros((num_runs, num_updates))
        labels: dict[int, dict[str, Any]] = {}
        for r in rows:
            i, u = r["run"], r["update"] - 1
            steps[u] = r["env_steps"]
            value = r.get("episode/return")
            ret[i, u] = np.nan if value is None else value
            cnt[i, u] = r.get("episode/count") or 0
            labels.setdefault(i, r)
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a jaxrl metrics file (missing {err})") from None
    groups: dict[str, Group] = {}
    for i in range(num_runs):
        if i not in labels:
            continue
        label = labels[i]
        setting = {k: v for k, v in label.items() if "/" not in k and k not in NOT_LABELS}
        method = algo + "".join(f" {k}={_fmt_value(v)}" for k, v in setting.items())
        g = groups.setdefault(
            method,
            Group(method, env, steps, np.zeros((0, num_updates)), np.zeros((0, num_updates))),
        )
        g.returns = np.concatenate([g.returns, ret[i][None]])
        g.counts = np.concatenate([g.counts, cnt[i][None]])
        g.seeds.append(label.get("seed", i))
    return list(groups.values())


def _fmt_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def parse_bounds(items: list[str], flag: str) -> tuple[float | None, dict[str, float]]:
    """``["0", "CartPole-v1=500"]`` -> ``(0.0, {"CartPole-v1": 500.0})``."""
    default, per_env = None, {}
    for item in items:
        env, sep, raw = item.rpartition("=")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{flag} expects [ENV=]VALUE, got {item!r}") from None
        if sep:
            per_env[env] = value
        else:
            default = value
    return default, per_env


def final_scores(groups: list[Group]) -> dict[str, dict[str, np.ndarray]]:
    """``{method: {env: [N] final returns}}`` (finite only; seeds of repeated groups joined)."""
    from jaxrl.logger import metrics as metric_utils

    out: dict[str, dict[str, np.ndarray]] = {}
    for g in groups:
        final = metric_utils.final_return(g.returns, g.counts)
        final = final[np.isfinite(final)]
        prev = out.setdefault(g.method, {}).get(g.env, np.zeros(0))
        out[g.method][g.env] = np.concatenate([prev, final])
    return out


def normalise(
    scores: dict[str, dict[str, np.ndarray]],
    low: tuple[float | None, dict[str, float]],
    high: tuple[float | None, dict[str, float]],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, tuple[float, float]]]:
    """Min-max normalises each env's scores over every method (or to the given ends).

    Returns the normalised scores and the ``(min, max)`` used per env. Raises ConfigError if
    an end was given (``--min``/``--max``) and an env's min is not below its max.
    """
    envs = sorted({e for per in scores.values() for e in per})
    bounds = {}
    for env in envs:
        pooled = np.concatenate([per[env] for per in scores.values() if env in per])
        lo = low[1].get(env, low[0])
        hi = high[1].get(env, high[0])
        given = lo is not None or hi is not None
        lo = float(pooled.min()) if lo is None and pooled.size else lo
        hi = float(pooled.max()) if hi is None and pooled.size else hi
        bounds[env] = (lo if lo is not None else 0.0, hi if hi is not None else 1.0)
        if given and not bounds[env][0] < bounds[env][1]:
            raise ConfigError(
                f"{env}: the score range [{bounds[env][0]:g}, {bounds[env][1]:g}] is empty; "
                f"give its own ends with --min {env}=VALUE --max {env}=VALUE"
            )
    normed = {}
    for method, per in scores.items():
        normed[method] = {}
        for env, x in per.items():
            lo, hi = bounds[env]
            normed[method][env] = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return normed, bounds


def score_matrix(per_env: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """``[N, M]`` scores of one method over its ``M`` envs, ``N`` = fewest runs of any env."""
    envs = sorted(e for e, x in per_env.items() if x.size)
    if not envs:
        return np.zeros((0, 0)), []
    n = min(per_env[e].size for e in envs)
    return np.stack([per_env[e][:n] for e in envs], axis=1), envs


def aggregate_table(normed, raw, bounds, reps: int) -> tuple[str, dict[str, Any]]:
    """Markdown text and a dict of every method's aggregates with CIs."""
    from jaxrl.logger import stats

    names = ("iqm", "mean", "median", "optimality_gap")
    results: dict[str, Any] = {}
    lines = [
        "# Aggregate results",
        "",
        "Final return per run (mean return of the episodes finished in the last 5% of updates),",
        "normalised per environment: " + "; ".join(
            f"{e}: ({lo:.4g} -> 0, {hi:.4g} -> 1)" for e, (lo, hi) in bounds.items()
        ) + ".",
        "Intervals: 95% stratified bootstrap over runs within each environment, "
        f"{reps} resamples (Agarwal et al. 2021).",
        "",
        "| method | envs | runs/env | IQM | mean | median | optimality gap |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for method, per in normed.items():
        mat, envs = score_matrix(per)
        if not envs:
            continue
        est = stats.aggregate_intervals(mat, names, reps=reps)
        results[method] = {"envs": envs, "runs_per_env": mat.shape[0], **{
            k: est[k]._asdict() for k in names}}  # fmt: skip
        cells = [f"{est[k].point:.3f} [{est[k].low:.3f}, {est[k].high:.3f}]" for k in names]
        lines.append(f"| {method} | {len(envs)} | {mat.shape[0]} | " + " | ".join(cells) + " |")
    lines += ["", "## Final return per environment (not normalised)", ""]
    lines += ["| method | env | runs | mean | std |", "|---|---|---:|---:|---:|"]
    for method, per in raw.items():
        for env, x in sorted(per.items()):
            m = f"{x.mean():.2f}" if x.size else "n/a"
            s = f"{x.std():.2f}" if x.size else "n/a"
            lines.append(f"| {method} | {env} | {x.size} | {m} | {s} |")
    return "\n".join(lines) + "\n", results


def plot_curves(path: Path, groups: list[Group], reps: int) -> None:
    """``curves.png``: one panel per env; each method's mean return with a 95% bootstrap CI."""
    from matplotlib.figure import Figure

    from jaxrl.logger import metrics as metric_utils
    from jaxrl.logger import stats

    envs = sorted({g.env for g in groups})
    fig = Figure(figsize=(5.5 * len(envs), 4), dpi=120)
    axes = np.atleast_1d(fig.subplots(1, len(envs)))
    for ax, env in zip(axes, envs, strict=True):
        for i, g in enumerate(x for x in groups if x.env == env):
            filled = metric_utils.forward_fill(g.returns)
            mean, low, high = stats.mean_interval(filled, reps=reps)
            color = f"C{i % 10}"
            ax.fill_between(g.env_steps, low, high, color=color, alpha=0.2, lw=0)
            ax.plot(g.env_steps, mean, color=color, label=f"{g.method} ({len(g.seeds)} seeds)")
        ax.set_title(env)
        ax.set_xlabel("environment steps per run")
        ax.set_ylabel("episode return (mean, 95% CI)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)


def plot_aggregates(path: Path, results: dict[str, Any]) -> None:
    """``aggregates.png``: per aggregate, each method's point estimate and 95% CI."""
    from matplotlib.figure import Figure

    names = (("iqm", "IQM"), ("median", "Median"), ("mean", "Mean"), ("optimality_gap",
             "Optimality gap"))  # fmt: skip
    methods = list(results)
    fig = Figure(figsize=(12, 1.0 + 0.45 * len(methods)), dpi=120)
    axes = fig.subplots(1, len(names), sharey=True)
    ys = np.arange(len(methods))
    for ax, (key, title) in zip(axes, names, strict=True):
        for y, m in zip(ys, methods, strict=True):
            e = results[m][key]
            ax.plot([e["low"], e["high"]], [y, y], color=f"C{y % 10}", lw=6, alpha=0.5)
            ax.plot([e["point"]], [y], "|", color="k", ms=12)
        ax.set_title(title)
        ax.set_xlabel("normalised score")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(ys, methods, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def plot_profiles(path: Path, normed: dict[str, dict[str, np.ndarray]], reps: int) -> None:
    """``profiles.png``: fraction of runs above each normalised score, with 95% bands."""
    from matplotlib.figure import Figure

    from jaxrl.logger import stats

    taus = np.linspace(0.0, 1.0, 101)
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    for i, (method, per) in enumerate(normed.items()):
        mat, envs = score_matrix(per)
        if not envs:
            continue
        est = stats.performance_profile_interval(mat, taus, reps=reps)
        ax.fill_between(taus, est.low, est.high, color=f"C{i % 10}", alpha=0.2, lw=0)
        ax.plot(taus, est.point, color=f"C{i % 10}", label=method)
    ax.set_xlabel(r"normalised score $\tau$")
    ax.set_ylabel(r"fraction of runs with score > $\tau$")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)


def run(args: argparse.Namespace) -> int:
    """Plots the runs in ``args.run_dirs`` (from :func:`add_parser`); returns the exit status.

    Bad input (a missing or unreadable run directory, a bad ``--min``) is one line on
    stderr and status 2.
    """
    try:
        return _plot(args)
    except ConfigError as err:
        print(f"jaxrl: error: {err}", file=sys.stderr)
        return 2


def _plot(args: argparse.Namespace) -> int:
    from jaxrl.logger import writers

    if args.bootstrap_reps < 1:
        raise ConfigError(f"--bootstrap-reps must be positive, got {args.bootstrap_reps}")
    low, high = parse_bounds(args.min, "--min"), parse_bounds(args.max, "--max")
    groups = [g for d in args.run_dirs for g in read_run_dir(d)]
    out = args.out or (args.run_dirs[0] / "plots" if len(args.run_dirs) == 1 else Path("plots"))
    raw = final_scores(groups)
    normed, bounds = normalise(raw, low, high)  # may raise: before anything is written
    out.mkdir(parents=True, exist_ok=True)
    reps = args.bootstrap_reps
    plot_curves(out / "curves.png", groups, reps)
    text, results = aggregate_table(normed, raw, bounds, reps)
    writers.atomic_write_text(out / "aggregates.md", text)
    writers.write_json(out / "aggregates.json", {"bounds": bounds, "methods": results})
    if results:
        plot_aggregates(out / "aggregates.png", results)
        plot_profiles(out / "profiles.png", normed, reps)
    if not args.quiet:
        print(text)
        print(f"plots: {out}  (curves.png, aggregates.png, profiles.png, aggregates.md)")
    return 0
