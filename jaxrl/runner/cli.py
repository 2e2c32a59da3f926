"""Command line: ``jaxrl train ALGO --env ENV ...``, ``sweep``, ``plot`` and ``list``.

Every input problem (unknown algorithm, environment, preset or ``--set`` key, a value of
the wrong type, an impossible setting) is reported as one line before anything
compiles, with exit status 2 and no traceback.

``train`` and ``sweep`` run on several processes (hosts) as one program when given
``--coordinator-address``, ``--num-processes`` and ``--process-id`` (or
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; ``--num-processes
auto`` on SLURM, Open MPI or a TPU pod): every process runs the same command, process 0
prints and writes the run directory (see :mod:`jaxrl.distributed.multihost`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from jaxrl import __version__
from jaxrl.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train an algorithm on an environment, many seeds at once")
    train.add_argument("algo", nargs="?", help="algorithm name, e.g. ppo (see `jaxrl list`)")
    train.add_argument("--env", help="environment name, e.g. CartPole-v1 (see `jaxrl list`)")
    train.add_argument("--preset", help="named settings, e.g. ppo/pendulum (see `jaxrl list`)")
    train.add_argument("--num-seeds", type=int, default=1, help="runs vmapped in one program")
    train.add_argument("--seed", type=int, default=0, help="first seed; runs use seed..seed+N-1")
    train.add_argument("--total-timesteps", type=int, help="env steps per run")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a Config or HParams field (repeatable)",
    )  # fmt: skip
    train.add_argument("--run-dir", type=Path, help="output directory (default runs/<...>)")
    train.add_argument("--quiet", action="store_true", help="no progress bar or table")
    train.add_argument(
        "--resume", type=Path, metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its newest checkpoint (its config.json decides "
        "everything else)",
    )  # fmt: skip
    train.add_argument(
        "--checkpoint-every", type=int, default=1, metavar="CHUNKS",
        help="checkpoint the full state every CHUNKS chunks and at the end (0: never)",
    )  # fmt: skip
    _add_logging_flags(train)
    add_distributed_flags(train)
    sub.add_parser("list", help="list algorithms, environments and presets")
    from jaxrl.runner import cli_eval, cli_pbt, cli_plot, cli_sebulba, cli_sweep

    cli_sweep.add_parser(sub)
    cli_pbt.add_parser(sub)
    cli_plot.add_parser(sub)
    cli_eval.add_parser(sub)
    cli_sebulba.add_parser(sub)
    parser.add_argument("--version", action="version", version=f"jaxrl {__version__}")
    return parser


LOGGING_DEFAULTS = dict(csv=False, tensorboard=False, wandb=False, eval_every=0, eval_episodes=10)


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """``--coordinator-address``, ``--num-processes``, ``--process-id`` (multi-process runs)."""
    group = parser.add_argument_group(
        "several processes (hosts)",
        "run one program on several processes; each flag falls back to its JAX_* variable",
    )
    group.add_argument(
        "--coordinator-address", metavar="HOST:PORT",
        help="process 0's address and a free port, the same on every process "
        "(JAX_COORDINATOR_ADDRESS)",
    )  # fmt: skip
    group.add_argument(
        "--num-processes", metavar="N|auto",
        help="number of processes; 'auto': detect from SLURM, Open MPI or a TPU pod "
        "(JAX_NUM_PROCESSES)",
    )  # fmt: skip
    group.add_argument(
        "--process-id", metavar="I", help="this process's index, 0..N-1 (JAX_PROCESS_ID)"
    )


def start_processes(args) -> bool:
    """Joins the other processes if the flags or environment say so; returns whether this
    is process 0. Non-primary processes become ``--quiet``. Raises ConfigError."""
    from jaxrl.distributed import multihost

    procs = multihost.initialize(
        getattr(args, "coordinator_address", None),
        getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
    )
    args.process_index = procs.process_id
    if not procs.is_primary:
        args.quiet = True
    return procs.is_primary


def default_run_dir(name: str) -> Path:
    """``runs/<name>-<time>``, the time being process 0's so that every process agrees."""
    from jaxrl.distributed import multihost

    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(multihost.agreed_time()))
    return Path("runs") / f"{name}-{stamp}"


def _add_logging_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", action="store_true", help="also write csv/run###.csv")
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard logs to tb/ (tensorboardX)",
    )
    parser.add_argument(
        "--wandb", action="store_true", help="also log to Weights & Biases, offline, in wandb/"
    )
    parser.add_argument(
        "--eval-every", type=int, default=0, metavar="CHUNKS",
        help="evaluate both policies every CHUNKS chunks into eval.jsonl (0: never)",
    )  # fmt: skip
    parser.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation")


def _extras(args, algo, cfg, env, run_dir: Path):
    """The optional writers and periodic evaluator the flags ask for (every process builds
    them, which only checks the imports; ``loop.run`` writes through them on process 0)."""
    from jaxrl.logger import writers
    from jaxrl.runner.evaluate import PeriodicEval

    extra = []
    if args.csv:
        extra.append(writers.CsvWriter(run_dir / "csv"))
    try:
        if args.tensorboard:
            extra.append(writers.TensorBoardWriter(run_dir / "tb"))
        if args.wandb:
            extra.append(writers.WandbWriter(run_dir / "wandb", group=run_dir.name))
    except ImportError as err:
        raise ConfigError(str(err)) from None
    if args.eval_every < 0:
        raise ConfigError(f"--eval-every must be >= 0, got {args.eval_every}")
    evaluator = None
    if args.eval_every:
        evaluator = PeriodicEval(
            algo, cfg, env, num_episodes=args.eval_episodes, every=args.eval_every,
            path=run_dir / "eval.jsonl",
        )  # fmt: skip
    return extra, evaluator


def _list() -> None:
    from jaxrl.algorithms import ALGORITHMS
    from jaxrl.envs import list_envs
    from jaxrl.runner.config import list_presets

    print("algorithms:   " + ", ".join(sorted(ALGORITHMS)))
    print("environments: " + ", ".join(list_envs()))
    print("presets:      " + ", ".join(list_presets()))


def _prepare(args):
    """Validates everything cheap first; returns what the run needs. Raises ConfigError."""
    from jaxrl import algorithms, envs
    from jaxrl.envs.registry import check_name
    from jaxrl.runner import config as config_lib

    try:
        algo = algorithms.get(args.algo)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    preset = config_lib.load_preset(args.preset) if args.preset else None
    env_name = args.env or (preset or {}).get("env")
    if env_name is None:
        raise ConfigError("--env is required (or a --preset that names one)")
    try:
        check_name(env_name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if args.num_seeds < 1:
        raise ConfigError(f"--num-seeds must be a positive integer, got {args.num_seeds}")
    if args.total_timesteps is not None and args.total_timesteps < 1:
        raise ConfigError(f"--total-timesteps must be positive, got {args.total_timesteps}")
    sets = config_lib.parse_sets(args.set)
    cfg, hp = config_lib.resolve(algo, preset, sets, args.total_timesteps)
    try:
        env, _ = envs.make(env_name)
    except ImportError as err:
        raise ConfigError(f"{env_name} needs an optional extra: {err}") from None
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return algo, env, env_name, cfg, hp


def run_config(args, env_name: str, cfg, hp) -> dict:
    """What ``config.json`` records of a run; ``--resume`` and ``jaxrl eval`` rebuild from it."""
    from jaxrl.runner import config as config_lib

    return {
        "jaxrl_version": __version__,
        "algo": args.algo,
        "env": env_name,
        "preset": args.preset,
        "num_seeds": args.num_seeds,
        "seed": args.seed,
        "env_steps_requested": cfg.total_timesteps,
        "env_steps_per_run": cfg.num_updates * cfg.steps_per_update,
        "config": config_lib.config_dict(cfg),
        "hparams": {k: float(v) for k, v in vars(hp).items()},
    }


def _resume_args(args) -> argparse.Namespace:
    """The arguments of the run in ``args.resume``, from its ``config.json``."""
    import json

    path = args.resume / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume {args.resume}: no config.json there (not a jaxrl run dir)")
    try:
        saved = json.loads(path.read_text())
        algo, env = saved["algo"], saved["env"]
        sets = [f"{k}={_set_value(v)}" for k, v in {**saved["config"], **saved["hparams"]}.items()]
        num_seeds, seed = saved["num_seeds"], saved["seed"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"--resume {args.resume}: unreadable config.json ({err})") from None
    if args.algo not in (None, algo):
        raise ConfigError(f"--resume {args.resume} is a {algo} run, not {args.algo}")
    return argparse.Namespace(
        algo=algo, env=env, preset=None, num_seeds=num_seeds, seed=seed, total_timesteps=None,
        set=sets, run_dir=args.resume, quiet=args.quiet, resume=args.resume,
        checkpoint_every=getattr(args, "checkpoint_every", 1),
        primary=getattr(args, "primary", True),
        **{name: getattr(args, name, default) for name, default in LOGGING_DEFAULTS.items()},
    )  # fmt: skip


def _set_value(value) -> str:
    """A config.json value as ``--set`` text (lists of ints as ``64,64``)."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _train(args) -> int:
    from jaxrl.runner import loop, sweep

    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.resume is not None:
        args = _resume_args(args)
    elif args.algo is None:
        raise ConfigError("an algorithm name is required (or --resume RUN_DIR)")
    algo, env, env_name, cfg, hp = _prepare(args)
    requested = cfg.total_timesteps
    ran = cfg.num_updates * cfg.steps_per_update
    if ran != requested and not args.quiet:
        print(
            f"note: {requested:,} env steps rounded down to {ran:,} "
            f"({cfg.num_updates} updates x {cfg.steps_per_update} steps per update)"
        )
    run_dir = args.run_dir or default_run_dir(f"{args.algo}-{env_name.replace('/', '_')}")
    if args.resume is None:
        loop.check_fresh_run_dir(run_dir)
    from jaxrl.distributed import multihost
    from jaxrl.logger import writers

    multihost.barrier("jaxrl-cli-run-dir-checked")  # every process checked before writing
    primary = getattr(args, "primary", True)
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
    runs = sweep.grid(hp, range(args.seed, args.seed + args.num_seeds))
    resume = args.resume is not None
    if not resume and primary:
        writers.write_json(run_dir / "config.json", run_config(args, env_name, cfg, hp))
    multihost.barrier("jaxrl-cli-run-dir-ready")
    extra_writers, evaluator = _extras(args, algo, cfg, env, run_dir)
    result = loop.run(
        algo, env, cfg, runs, env_name=env_name, algo_name=args.algo, run_dir=run_dir,
        quiet=args.quiet, checkpoint_every=args.checkpoint_every, resume=resume,
        extra_writers=extra_writers, evaluator=evaluator,
    )  # fmt: skip
    if not args.quiet:
        print(format_table(result.summary))
        print(
            f"run directory: {run_dir}  (config.json, metrics.jsonl, summary.json, curve.png, "
            "checkpoints/)"
        )
    return 0


def format_table(summary: dict) -> str:
    """The console results table: final return per run, then mean ± std."""
    s = summary
    speed = s["steps_per_second"]
    speed = f"{speed:,.0f} steps/s" if speed is not None else "no steps left to run"
    if s.get("resumed_at_update"):
        speed += f" (resumed at update {s['resumed_at_update']:,})"
    lines = [
        f"{s['algo']} on {s['env']}: {s['num_runs']} runs x {s['env_steps_per_run']:,} env steps, "
        f"{speed}, compile {s['compile_seconds']:.1f} s, run {s['run_seconds']:.1f} s",
        f"{'seed':>6}  {'final return':>12}",
    ]
    for label, value in zip(s["runs"], s["final_return"]["per_run"], strict=False):
        lines.append(f"{label['seed']:>6}  {value:>12.1f}")
    mean, std = s["final_return"]["mean"], s["final_return"]["std"]
    if mean is not None:
        lines.append(f"{'mean':>6}  {mean:>12.1f} ± {std:.1f}")
    return "\n".join(lines)


def use_compile_cache() -> Path | None:
    """Keeps compiled programs in ``$XDG_CACHE_HOME/jaxrl/xla`` (default ``~/.cache``).

    A rerun with the same shapes (other seeds, other hyperparameter values) then loads
    its programs instead of compiling them. ``JAXRL_COMPILE_CACHE=off`` turns the cache
    off, ``JAXRL_COMPILE_CACHE=DIR`` moves it; a directory set through JAX's own
    ``JAX_COMPILATION_CACHE_DIR`` wins over the default. Returns the directory in use.
    """
    import jax

    choice = os.environ.get("JAXRL_COMPILE_CACHE", "")
    if choice.lower() in ("off", "0", "false", "no"):
        return None
    if choice:
        path = Path(choice)
    elif jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        path = root / "jaxrl" / "xla"
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxrl`` command; returns the exit status."""
    from jaxrl.distributed.mesh import use_all_cpu_cores

    use_all_cpu_cores()  # before anything starts JAX: runs are spread over every core
    use_compile_cache()
    args = _parser().parse_args(argv)
    if args.command == "list":
        _list()
        return 0
    from jaxrl.distributed import multihost

    try:
        status = _run_command(args)
    except multihost.Preempted as err:  # every process stops at the same chunk
        print(f"jaxrl: {err}", file=sys.stderr)
        return 130
    except multihost.Aborted as err:  # another process stopped
        print(f"jaxrl: stopping: {err}", file=sys.stderr)
        return 1
    except BaseException as err:  # a bug: the others must not wait for this process
        multihost.abort(f"process {getattr(args, 'process_index', 0)} failed: {err!r}")
        raise
    if status != 0:
        why = "was interrupted" if status == 130 else f"stopped with exit status {status}"
        multihost.abort(f"process {getattr(args, 'process_index', 0)} {why}")
    return status


def _run_command(args) -> int:
    """Runs ``args.command``; returns the exit status (130: Ctrl-C). Raises
    :class:`~jaxrl.distributed.multihost.Preempted` and ``Aborted`` (see :func:`main`)."""
    from jaxrl.distributed import multihost

    try:
        if args.command in ("train", "sweep"):
            args.primary = start_processes(args)  # before anything starts JAX
        if args.command in ("sweep", "pbt", "plot", "eval", "sebulba"):
            from jaxrl.runner import cli_eval, cli_pbt, cli_plot, cli_sebulba, cli_sweep

            commands = {"sweep": cli_sweep.run, "plot": cli_plot.run, "eval": cli_eval.run}
            commands["pbt"] = cli_pbt.run
            commands["sebulba"] = cli_sebulba.run
            return commands[args.command](args)
        return _train(args)
    except ConfigError as err:
        print(f"jaxrl: error: {err}", file=sys.stderr)
        return 2
    except multihost.Preempted:
        raise
    except KeyboardInterrupt:
        print("jaxrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
