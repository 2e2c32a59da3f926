"""``jaxrl sweep``: a grid or random search over traced hyperparameters, in one program.

Every (seed, setting) pair is one run on the run axis of a single vmapped, compiled
program (:mod:`jaxrl.runner.sweep`, :mod:`jaxrl.runner.search`, :func:`jaxrl.runner.loop.run`).
Only traced hyperparameters (an algorithm's ``HParams``) can be swept this way; ``Config``
fields change shapes or the program, so they are fixed per sweep (``--set``).

Outputs in the run directory, besides those of ``loop.run`` (``metrics.jsonl`` with the
setting in every row, ``summary.json``, ``curve.png``, checkpoints): ``config.json``,
``results.md`` (per setting: mean, std, IQM with a 95% bootstrap CI of the final return),
``results.json`` (the same numbers) and ``results.png``.

``jaxrl sweep --resume RUN_DIR`` rebuilds the sweep from ``RUN_DIR/config.json`` (the same
settings, seeds and random draws), continues it from the newest checkpoint and writes the
same numbers an uninterrupted sweep writes.

On several processes (``--coordinator-address``, ``--num-processes``, ``--process-id``, or
their ``JAX_*`` variables) every process runs the same command and process 0 writes the
files; see :mod:`jaxrl.distributed.multihost`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jaxrl.errors import ConfigError

BOOTSTRAP_REPS = 2000


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``sweep`` command to ``subparsers`` (from ``add_subparsers``); returns it."""
    p = subparsers.add_parser(
        "sweep", help="grid or random search over traced hyperparameters, one program"
    )
    p.add_argument("algo", nargs="?", help="algorithm name, e.g. ppo (see `jaxrl list`)")
    p.add_argument("--env", help="environment name, e.g. CartPole-v1 (see `jaxrl list`)")
    p.add_argument(
        "--resume", type=Path, metavar="RUN_DIR",
        help="continue the interrupted sweep in RUN_DIR from its newest checkpoint",
    )  # fmt: skip
    p.add_argument("--preset", help="named settings, e.g. ppo/cartpole (see `jaxrl list`)")
    p.add_argument(
        "--grid", action="append", default=[], metavar="NAME=V1,V2,...",
        help="values of one traced hyperparameter (repeatable; the grid is their product)",
    )  # fmt: skip
    p.add_argument(
        "--random", action="append", default=[], metavar="NAME=LOW:HIGH[:log]",
        help="random search range of one traced hyperparameter (repeatable)",
    )  # fmt: skip
    p.add_argument("--num-samples", type=int, help="settings drawn by random search")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the random-search draws")
    p.add_argument("--num-seeds", type=int, default=1, help="seeds per setting")
    p.add_argument("--seed", type=int, default=0, help="first seed; runs use seed..seed+N-1")
    p.add_argument("--total-timesteps", type=int, help="env steps per run")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="fix a Config or HParams field for every run (repeatable)",
    )  # fmt: skip
    p.add_argument("--run-dir", type=Path, help="output directory (default runs/<...>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.add_argument(
        "--checkpoint-every", type=int, default=1, metavar="CHUNKS",
        help="checkpoint the full state every CHUNKS chunks and at the end (0: never)",
    )  # fmt: skip
    p.add_argument(
        "--bootstrap-reps", type=int, default=BOOTSTRAP_REPS, help="resamples per interval"
    )
    from jaxrl.runner.cli import add_distributed_flags

    add_distributed_flags(p)
    return p


def parse_grid(items: list[str]) -> dict[str, list[float]]:
    """``["lr=1e-4,3e-4", "ent_coef=0"]`` -> ``{"lr": [1e-4, 3e-4], "ent_coef": [0.0]}``."""
    out: dict[str, list[float]] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name or not raw.strip():
            raise ConfigError(f"--grid expects NAME=V1,V2,..., got {item!r}")
        if name in out:
            raise ConfigError(f"--grid {name} given twice; put all its values in one --grid")
        values = []
        for part in raw.split(","):
            try:
                value = float(part)
            except ValueError:
                raise ConfigError(f"--grid {item}: {part.strip()!r} is not a number") from None
            if not math.isfinite(value):
                raise ConfigError(f"--grid {item}: {part.strip()!r} is not finite")
            values.append(value)
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {item}: repeated value")
        out[name] = values
    return out


def parse_ranges(items: list[str]) -> dict[str, tuple[float, float, bool]]:
    """``["lr=1e-5:1e-3:log"]`` -> ``{"lr": (1e-5, 1e-3, True)}``."""
    out: dict[str, tuple[float, float, bool]] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        parts = raw.split(":")
        if not sep or not name or len(parts) not in (2, 3):
            raise ConfigError(f"--random expects NAME=LOW:HIGH[:log], got {item!r}")
        if len(parts) == 3 and parts[2].strip().lower() not in ("log", "lin", "linear"):
            raise ConfigError(f"--random {item}: scale must be 'log' or 'lin', got {parts[2]!r}")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"--random {item}: LOW and HIGH must be numbers") from None
        if name in out:
            raise ConfigError(f"--random {name} given twice")
        out[name] = (low, high, len(parts) == 3 and parts[2].strip().lower() == "log")
    return out


def _check_names(algo: Any, names: list[str], flag: str, sets: list[str]) -> None:
    """Swept names must be traced hyperparameters, and not also fixed by ``--set``."""
    import dataclasses

    traced = sorted(algo.HPARAM_DEFAULTS)
    static = {f.name for f in dataclasses.fields(algo.Config)}
    fixed = {s.partition("=")[0].strip() for s in sets}
    for name in names:
        if name in static:
            raise ConfigError(
                f"{flag} {name}: a Config field (static: it changes the program) cannot be "
                f"swept in one program; traced hyperparameters: {', '.join(traced)}"
            )
        if name not in traced:
            raise ConfigError(
                f"{flag}: unknown hyperparameter {name!r}; traced hyperparameters: "
                f"{', '.join(traced)}"
            )
        if name in fixed:
            raise ConfigError(f"{name} is both swept ({flag}) and fixed (--set)")


def _build_runs(args, algo, cfg, hp):
    from jaxrl.runner import search, sweep

    grid = parse_grid(args.grid)
    ranges = parse_ranges(args.random)
    seeds = range(args.seed, args.seed + args.num_seeds)
    if ranges:
        if args.num_samples is None:
            raise ConfigError("--random needs --num-samples K")
        import jax

        runs = search.random_search(
            hp, seeds, args.num_samples, jax.random.key(args.search_seed), **ranges
        )
        names = sorted(ranges)
    else:
        runs = sweep.grid(hp, seeds, **grid)
        names = list(grid)
    algo.check(cfg, runs.hps)  # every swept value in range, before compiling
    return runs, names


def _validate(args):
    """Everything cheap, before compiling: returns ``(algo, env, env_name, cfg, hp)``."""
    from jaxrl import algorithms
    from jaxrl.runner.cli import _prepare

    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.bootstrap_reps < 1:
        raise ConfigError(f"--bootstrap-reps must be positive, got {args.bootstrap_reps}")
    grid, ranges = parse_grid(args.grid), parse_ranges(args.random)
    if grid and ranges:
        raise ConfigError("use either --grid or --random in one sweep, not both")
    if not grid and not ranges:
        raise ConfigError("a sweep needs at least one --grid NAME=V1,V2 or --random NAME=LOW:HIGH")
    if args.num_samples is not None and not ranges:
        raise ConfigError("--num-samples goes with --random")
    try:
        algo = algorithms.get(args.algo)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _check_names(algo, list(grid), "--grid", args.set)
    _check_names(algo, list(ranges), "--random", args.set)
    return _prepare(args)


def group_settings(labels: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Runs grouped by setting, in first-seen order: ``[{"setting": {...}, "runs": [i...]}]``.

    A random-search setting is identified by its ``sample`` index, a grid setting by its values.
    """
    groups: dict[tuple, dict[str, Any]] = {}
    for i, label in enumerate(labels):
        ident = (label["sample"],) if "sample" in label else tuple(label[n] for n in names)
        setting = {n: label[n] for n in names}
        groups.setdefault(ident, {"setting": setting, "runs": []})["runs"].append(i)
    return list(groups.values())


def summarise(
    final: np.ndarray, labels: list[dict[str, Any]], names: list[str], reps: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Per setting: n, mean, std, IQM and its stratified-bootstrap 95% CI of ``final`` ``[R]``.

    Runs with no finished episode (NaN) are left out and counted in ``missing``.
    """
    from jaxrl.logger import stats

    rows = []
    for group in group_settings(labels, names):
        values = np.asarray(final, np.float64)[group["runs"]]
        ok = values[np.isfinite(values)]
        row = {
            "setting": group["setting"],
            "n": int(ok.size),
            "missing": int(values.size - ok.size),
        }
        if ok.size:
            est = stats.interval_estimate(ok, stats.iqm, reps=reps, seed=seed)
            row |= {
                "mean": float(ok.mean()),
                "std": float(ok.std()),
                "iqm": est.point,
                "iqm_low": est.low,
                "iqm_high": est.high,
            }
        else:
            row |= dict.fromkeys(("mean", "std", "iqm", "iqm_low", "iqm_high"))
        rows.append(row)
    return rows


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4g}" if abs(x) < 1e-2 and x != 0 else f"{x:.2f}"


def _fmt_value(x: float) -> str:
    return f"{x:.4g}"


def results_markdown(rows: list[dict[str, Any]], names: list[str], title: str) -> str:
    """The ``results.md`` text: one table row per setting, best IQM in bold."""
    scored = [r["iqm"] for r in rows if r["iqm"] is not None]
    best = max(scored) if scored else None
    head = [*names, "n", "mean", "std", "IQM", "IQM 95% CI"]
    lines = [
        f"# {title}",
        "",
        "Final return per run (mean return of the episodes finished in the last 5% of updates).",
        "IQM: interquartile mean over seeds; CI: percentile bootstrap over seeds.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" for _ in head) + "|",
    ]
    for r in rows:
        iqm = _fmt(r["iqm"])
        if r["iqm"] is not None and r["iqm"] == best:
            iqm = f"**{iqm}**"
        ci = "n/a" if r["iqm_low"] is None else f"[{_fmt(r['iqm_low'])}, {_fmt(r['iqm_high'])}]"
        n = f"{r['n']}" + (f" ({r['missing']} without episodes)" if r["missing"] else "")
        cells = [_fmt_value(r["setting"][k]) for k in names]
        cells += [n, _fmt(r["mean"]), _fmt(r["std"]), iqm, ci]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_plot(
    path: Path, rows: list[dict[str, Any]], final: np.ndarray, names: list[str], title: str
) -> None:
    """``results.png``: per setting, each run's final return (dots) and the IQM with its CI."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.0, 0.9 * len(rows) + 2), 4), dpi=120)
    ax = fig.subplots()
    xs = np.arange(len(rows))
    for x, r in zip(xs, rows, strict=True):
        if r["iqm"] is None:
            continue
        ax.errorbar(
            x, r["iqm"], yerr=[[r["iqm"] - r["iqm_low"]], [r["iqm_high"] - r["iqm"]]],
            fmt="o", color="C0", capsize=4, label="IQM, 95% CI" if x == 0 else None,
        )  # fmt: skip
    for x, r in zip(xs, rows, strict=True):
        vals = np.asarray(final, np.float64)[_run_index(r)]
        jitter = np.linspace(-0.08, 0.08, len(vals)) if len(vals) > 1 else np.zeros(len(vals))
        ax.scatter(x + 0.25 + jitter, vals, s=8, color="C1", alpha=0.6, lw=0)
    ax.scatter([], [], s=8, color="C1", label="final return per seed")
    labels = ["\n".join(f"{k}={_fmt_value(r['setting'][k])}" for k in names) for r in rows]
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_ylabel("final episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _run_index(row: dict[str, Any]) -> list[int]:
    return row["_runs"]


def run(args: argparse.Namespace) -> int:
    """Runs the sweep described by ``args`` (from :func:`add_parser`); returns the exit status.

    Bad input is one line on stderr (``jaxrl: error: ...``) and status 2, before compiling.
    """
    try:
        return _sweep(args)
    except ConfigError as err:
        print(f"jaxrl: error: {err}", file=sys.stderr)
        return 2


def _resume_args(args: argparse.Namespace) -> tuple[argparse.Namespace, list[dict]]:
    """The arguments of the sweep in ``args.resume`` and its run labels, from ``config.json``."""
    import json

    from jaxrl.runner.cli import _set_value

    path = args.resume / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume {args.resume}: no config.json there (not a jaxrl run dir)")
    try:
        saved = json.loads(path.read_text())
        spec = saved["sweep"]
        swept = set(spec["grid"]) | set(spec["random"])
        fixed = {**saved["config"], **saved["hparams"]}
        sets = [f"{k}={_set_value(v)}" for k, v in fixed.items() if k not in swept]
        grid = [f"{k}={','.join(repr(float(v)) for v in vs)}" for k, vs in spec["grid"].items()]
        ranges = [
            f"{k}={float(lo)!r}:{float(hi)!r}:{'log' if log else 'lin'}"
            for k, (lo, hi, log) in spec["random"].items()
        ]
        rebuilt = argparse.Namespace(
            algo=saved["algo"], env=saved["env"], preset=None, grid=grid, random=ranges,
            num_samples=spec["num_samples"], search_seed=spec["search_seed"],
            num_seeds=saved["num_seeds"], seed=saved["seed"], total_timesteps=None, set=sets,
            run_dir=args.resume, resume=args.resume, quiet=args.quiet,
            checkpoint_every=args.checkpoint_every, bootstrap_reps=args.bootstrap_reps,
            primary=getattr(args, "primary", True),
        )  # fmt: skip
        labels = spec["runs"]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"--resume {args.resume}: not a sweep's config.json ({err})") from None
    if args.algo not in (None, rebuilt.algo):
        raise ConfigError(f"--resume {args.resume} is a {rebuilt.algo} sweep, not {args.algo}")
    return rebuilt, labels


def _sweep(args: argparse.Namespace) -> int:
    from jaxrl.logger import writers
    from jaxrl.runner import loop

    saved_labels = None
    if args.resume is not None:
        args, saved_labels = _resume_args(args)
    elif args.algo is None:
        raise ConfigError("an algorithm name is required (or --resume RUN_DIR)")
    algo, env, env_name, cfg, hp = _validate(args)
    runs, names = _build_runs(args, algo, cfg, hp)
    from jaxrl.distributed import multihost
    from jaxrl.runner.cli import default_run_dir, run_config

    run_dir = args.run_dir or default_run_dir(f"sweep-{args.algo}-{env_name.replace('/', '_')}")
    resume = saved_labels is not None
    if resume:
        if json_normal(runs.labels) != json_normal(saved_labels):
            raise ConfigError(f"--resume {run_dir}: the rebuilt runs differ from config.json's")
        return _finish(args, algo, env, env_name, cfg, runs, names, run_dir, resume=True)
    loop.check_fresh_run_dir(run_dir)
    multihost.barrier("jaxrl-sweep-run-dir-checked")  # every process checked before writing
    if not getattr(args, "primary", True):
        multihost.barrier("jaxrl-sweep-run-dir-ready")
        return _finish(args, algo, env, env_name, cfg, runs, names, run_dir, resume=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    writers.write_json(
        run_dir / "config.json",
        {
            **run_config(args, env_name, cfg, hp),
            "sweep": {
                "grid": parse_grid(args.grid),
                "random": {k: list(v) for k, v in parse_ranges(args.random).items()},
                "num_samples": args.num_samples,
                "search_seed": args.search_seed,
                "num_runs": len(runs),
                "runs": runs.labels,
            },
        },
    )
    multihost.barrier("jaxrl-sweep-run-dir-ready")
    return _finish(args, algo, env, env_name, cfg, runs, names, run_dir, resume=False)


def json_normal(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons."""
    import json

    return json.loads(json.dumps(value))


def _finish(args, algo, env, env_name, cfg, runs, names, run_dir: Path, resume: bool) -> int:
    """Trains (or continues) the sweep's runs, then writes its results table and plot."""
    from jaxrl.logger import writers
    from jaxrl.runner import loop

    if not args.quiet:
        print(f"sweep: {len(runs)} runs ({len(runs) // args.num_seeds} settings x "
              f"{args.num_seeds} seeds) in one program")  # fmt: skip
    result = loop.run(
        algo, env, cfg, runs, env_name=env_name, algo_name=args.algo, run_dir=run_dir,
        quiet=args.quiet, checkpoint_every=args.checkpoint_every, resume=resume,
    )  # fmt: skip
    if not getattr(args, "primary", True):
        return 0  # process 0 writes the results
    final = np.asarray(result.summary["final_return"]["per_run"], np.float64)
    rows = summarise(final, runs.labels, names, args.bootstrap_reps)
    for row, group in zip(rows, group_settings(runs.labels, names), strict=True):
        row["_runs"] = group["runs"]
    title = f"{args.algo} on {env_name}: {len(rows)} settings x {args.num_seeds} seeds"
    text = results_markdown(rows, names, title)
    writers.atomic_write_text(run_dir / "results.md", text)
    writers.write_json(
        run_dir / "results.json",
        {"names": names, "settings": [{k: v for k, v in r.items() if k != "_runs"} | {
            "runs": r["_runs"]} for r in rows]},
    )  # fmt: skip
    results_plot(run_dir / "results.png", rows, final, names, title)
    if not args.quiet:
        print(text)
        print(f"run directory: {run_dir}  (results.md, results.png, metrics.jsonl, ...)")
    return 0
