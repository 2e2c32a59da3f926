"""``jaxrl eval RUN_DIR --episodes 100 [--deterministic] [--seed S] [--record PATH]``:
evaluate a checkpoint, and optionally record expert demonstrations from it.

Rebuilds the algorithm, env, config and hyperparameters from ``RUN_DIR/config.json`` (as
``--resume`` does), restores the newest checkpoint, evaluates every run of the batch in
one vmapped program (:func:`jaxrl.runner.evaluate.evaluate_runs`: whole episodes only),
prints a per-seed table and writes ``RUN_DIR/eval.json`` atomically. ``--record PATH``
then plays ``--episodes`` more whole episodes with the first run's policy (same
``--deterministic`` and ``--seed``; each within ``--max-steps``, default 1,000) and
writes their state-action pairs to ``PATH`` (:func:`jaxrl.algorithms.demos.save`), the
demonstrations GAIL and behavioural cloning read. Every input problem is a one-line
:class:`~jaxrl.errors.ConfigError`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jaxrl.errors import ConfigError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``eval`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    p = subparsers.add_parser("eval", help="evaluate the newest checkpoint of a run directory")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a directory `jaxrl train` wrote")
    p.add_argument("--episodes", type=int, default=100, help="complete episodes per run")
    p.add_argument(
        "--deterministic", action="store_true",
        help="the policy's mode (argmax / Gaussian mean / greedy actor) instead of sampling",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="evaluation seed (env resets, sampling)")
    p.add_argument(
        "--max-steps", type=int, default=None,
        help="safety bound on episode length; an episode still running is an error (NaN)",
    )  # fmt: skip
    p.add_argument(
        "--record", type=Path, metavar="PATH",
        help="also write --episodes episodes of the first run as demonstrations (.npz)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no table")
    return p


def _rebuild(run_dir: Path):
    """``(algo, env, env_name, cfg, hp, algo_name, num_seeds, seed)`` from ``config.json``."""
    from jaxrl.runner import cli

    ns = argparse.Namespace(resume=run_dir, algo=None, quiet=True, checkpoint_every=1)
    try:
        targs = cli._resume_args(ns)
        algo, env, env_name, cfg, hp = cli._prepare(targs)
    except ConfigError as err:
        raise ConfigError(str(err).replace("--resume ", "eval ", 1)) from None
    return algo, env, env_name, cfg, hp, targs.algo, targs.num_seeds, targs.seed


def run(args: argparse.Namespace) -> int:
    """Runs ``jaxrl eval``; returns the exit status. Raises ConfigError for bad input."""
    import jax
    import numpy as np

    from jaxrl.checkpoint import io as checkpoint_io
    from jaxrl.logger import writers
    from jaxrl.runner import evaluate, sweep

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be a positive integer, got {args.episodes}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError(f"--max-steps must be a positive integer, got {args.max_steps}")
    run_dir = Path(args.run_dir)
    algo, env, env_name, cfg, hp, algo_name, num_seeds, seed = _rebuild(run_dir)
    runs = sweep.grid(hp, range(seed, seed + num_seeds))
    template = sweep.init_runs(algo, cfg, env, runs.keys, runs.hps)
    expected = {"algo": algo_name, "env": env_name, "num_runs": len(runs)}
    state, step, _ = checkpoint_io.restore(run_dir, template, expected)

    seeds = jax.numpy.asarray([label["seed"] for label in runs.labels])
    keys = jax.vmap(lambda s: evaluate.eval_key(args.seed, s))(seeds)
    fn = jax.jit(
        lambda s, h, k: evaluate.evaluate_runs(
            algo, cfg, env, s, h, k, args.episodes, args.deterministic, args.max_steps
        )
    )
    t0 = time.perf_counter()
    returns = np.asarray(jax.device_get(fn(state, runs.hps, keys)))  # [R, episodes]
    seconds = time.perf_counter() - t0

    per_run = []
    for label, r in zip(runs.labels, returns, strict=True):
        finished = np.isfinite(r)
        per_run.append({
            **label,
            "mean": float(np.mean(r)) if finished.all() else None,
            "std": float(np.std(r)) if finished.all() else None,
            "unfinished": int((~finished).sum()),
            "returns": r.tolist(),
        })  # fmt: skip
    means = np.asarray([p["mean"] if p["mean"] is not None else np.nan for p in per_run])
    result = {
        "algo": algo_name,
        "env": env_name,
        "checkpoint_update": step,
        "env_steps_per_run": step * cfg.steps_per_update,
        "episodes": args.episodes,
        "deterministic": bool(args.deterministic),
        "eval_seed": args.seed,
        "seconds": seconds,
        "mean_over_runs": float(np.mean(means)) if np.isfinite(means).all() else None,
        "std_over_runs": float(np.std(means)) if np.isfinite(means).all() else None,
        "runs": per_run,
    }
    writers.write_json(run_dir / "eval.json", result)
    if not args.quiet:
        print(format_table(result))
        print(f"wrote {run_dir / 'eval.json'}")
    if any(p["unfinished"] for p in per_run):
        print(
            "jaxrl: warning: some episodes did not end within --max-steps (reported as null)",
            flush=True,
        )
    if args.record is not None:
        record(args, algo, cfg, env, state, runs.hps, int(seeds[0]))
    return 0


def record(args, algo, cfg, env, state, hps, seed: int) -> None:
    """Writes ``--episodes`` episodes of the first run's policy to ``args.record``."""
    import jax

    from jaxrl.algorithms import demos
    from jaxrl.runner import evaluate

    if not args.record.parent.is_dir():
        raise ConfigError(f"--record: directory {str(args.record.parent)!r} does not exist")
    first = jax.tree.map(lambda x: x[0], (state, hps))
    run, hp = first
    data, returns = demos.record(
        algo, cfg, env, run.params, jax.random.fold_in(evaluate.eval_key(args.seed, seed), 1),
        args.episodes, deterministic=args.deterministic,
        env_params=getattr(run, "env_params", None),
        max_steps=args.max_steps or demos.DEFAULT_MAX_STEPS,
        obs_stats=evaluate.obs_stats(getattr(run, "env_state", None)), hp=hp,
    )  # fmt: skip
    demos.save(args.record, data)
    if not args.quiet:
        print(
            f"wrote {args.record}: {data.size} state-action pairs from {args.episodes} "
            f"episodes of run 0 (mean return {returns.mean():.2f})"
        )


def format_table(result: dict) -> str:
    """Per-seed mean ± std of the evaluation returns, then the mean over runs."""
    mode = "deterministic" if result["deterministic"] else "stochastic"
    lines = [
        f"{result['algo']} on {result['env']} at update {result['checkpoint_update']}: "
        f"{result['episodes']} {mode} episodes per run",
        f"{'run':>4} {'seed':>6}  {'mean return':>12}  {'std':>8}",
    ]
    for r in result["runs"]:
        if r["mean"] is None:
            left = f"{r['unfinished']} of {result['episodes']} episodes unfinished"
            lines.append(f"{r['run']:>4} {r['seed']:>6}  {'-':>12}  {'-':>8}  ({left})")
        else:
            lines.append(f"{r['run']:>4} {r['seed']:>6}  {r['mean']:>12.2f}  {r['std']:>8.2f}")
    if result["mean_over_runs"] is not None:
        m, s = result["mean_over_runs"], result["std_over_runs"]
        lines.append(f"{'mean':>11}  {m:>12.2f} ± {s:.2f} (over runs)")
    return "\n".join(lines)
