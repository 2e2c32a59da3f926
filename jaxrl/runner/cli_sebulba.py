"""``jaxrl sebulba ALGO --env envpool/<task>|gymnasium/<id>``: the Sebulba actor-learner.

Trains PPO, IMPALA or DQN on host environments (envpool, any Gymnasium id) with
:func:`jaxrl.sebulba.run`: ``--actors`` threads of ``--envs-per-actor`` envs each act with one
jitted policy call per step, one learner trains on their trajectories (``docs/sebulba.md``).
``Config`` and ``HParams`` are the algorithm's own, from ``--preset`` and ``--set`` as for
``jaxrl train``; ``num_envs = actors x envs_per_actor``. Every input problem is one line
(exit status 2) before any env is made or anything compiles.

Outputs in the run directory:

* ``config.json``: the command's settings and the resolved ``Config`` / ``HParams`` (written
  before the run starts);
* ``checkpoints/<updates>/``: the learner's state every ``--checkpoint-every`` updates and at
  the end, and on Ctrl-C (written by the orchestrator; exit status 130);
* ``metrics.jsonl``: one row per learner update (``update``, ``env_steps``, the algorithm's
  ``train/…`` and ``episode/…`` metrics, ``sebulba/…`` host metrics such as the policy lag);
* ``summary.json``: env steps trained on, steps/s, final return, policy lag, each actor's
  env steps and timings; ``curve.png``: the training return.

``metrics.jsonl``, ``summary.json`` and ``curve.png`` are written when the run ends (the
learner's metrics stay on the device until then).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxrl.errors import ConfigError

ALGOS = ("ppo", "impala", "dqn")  # jaxrl.sebulba.agents.ALGOS, without importing JAX here
ENV_PREFIXES = ("envpool/", "gymnasium/")
EXPLORATIONS = ("schedule", "apex")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``sebulba`` command to ``subparsers`` (from ``add_subparsers``); returns it."""
    p = subparsers.add_parser(
        "sebulba",
        help="actor threads on host envs (envpool, Gymnasium), one learner",
        description=(
            "Sebulba / SEED RL: ACTORS threads step ENVS_PER_ACTOR host envs each and act with "
            "one jitted policy call per step; one learner trains PPO, IMPALA or DQN on their "
            "trajectories with the algorithm's own update. Config and HParams are the "
            "algorithm's (--preset, --set); num_envs = ACTORS x ENVS_PER_ACTOR."
        ),
    )
    p.add_argument("algo", help=f"one of {', '.join(ALGOS)}")
    p.add_argument(
        "--env", metavar="ENV_ID",
        help="host env: envpool/<task> or gymnasium/<id>, e.g. gymnasium/CartPole-v1",
    )  # fmt: skip
    p.add_argument("--preset", help="named settings, e.g. ppo/cartpole (see `jaxrl list`)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a Config or HParams field (repeatable)",
    )  # fmt: skip
    p.add_argument("--actors", type=int, default=1, help="actor threads (default 1)")
    p.add_argument(
        "--envs-per-actor", type=int, metavar="N",
        help="host envs per actor; num_envs = actors x N (default: the Config's num_envs "
        "split over the actors)",
    )  # fmt: skip
    p.add_argument("--total-timesteps", type=int, help="env steps to train on")
    p.add_argument("--seed", type=int, default=0, help="learner key and env seeds")
    p.add_argument(
        "--queue-size", type=int, default=1, help="trajectories per actor queue (default 1)"
    )
    p.add_argument(
        "--max-policy-lag", type=int, metavar="K",
        help="actors wait for parameters at most K updates old (0: lock-step, reproducible; "
        "default: free-running)",
    )  # fmt: skip
    p.add_argument(
        "--exploration", default="schedule", metavar="|".join(EXPLORATIONS),
        help="dqn only: the epsilon schedule (default), or Ape-X's fixed epsilon per env",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint-every", type=int, default=0, metavar="UPDATES",
        help="checkpoint every UPDATES learner updates (default 0: only at the end)",
    )  # fmt: skip
    p.add_argument("--run-dir", type=Path, help="output directory (default runs/sebulba-<...>)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def check_env_id(env_id: str) -> None:
    """Raises ``ConfigError`` unless ``env_id`` is ``envpool/<task>`` of an installed envpool
    task or ``gymnasium/<id>`` of a registered Gymnasium id (makes no env)."""
    prefix = next((p for p in ENV_PREFIXES if env_id.startswith(p)), None)
    if prefix is None:
        raise ConfigError(
            f"unknown host env {env_id!r}; use envpool/<task> or gymnasium/<id>, "
            "e.g. gymnasium/CartPole-v1 or envpool/CartPole-v1"
        )
    name = env_id.removeprefix(prefix)
    if prefix == "gymnasium/":
        import gymnasium

        valid = list(gymnasium.registry)
    else:
        try:
            import envpool
        except ImportError:
            raise ConfigError(f"{env_id} needs envpool (pip install envpool)") from None
        valid = list(envpool.list_all_envs())
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=3)
        hint = f"did you mean {', '.join(prefix + c for c in close)}?" if close else ""
        raise ConfigError(
            f"unknown {prefix.rstrip('/')} id {name!r} in {env_id!r}; "
            + (hint or f"e.g. {prefix}CartPole-v1")
        )


def _preset(algo: str, name: str | None) -> dict[str, Any] | None:
    """The preset ``name`` (``<algo>/<name>`` or just ``<name>``), which must be ``algo``'s."""
    from jaxrl.runner import config as config_lib

    if name is None:
        return None
    full = name if "/" in name else f"{algo}/{name}"
    valid = [p for p in config_lib.list_presets() if p.startswith(f"{algo}/")]
    if full not in valid:
        raise ConfigError(f"unknown {algo} preset {name!r}; valid: {', '.join(valid) or '(none)'}")
    return config_lib.load_preset(full)


def _validate(args) -> tuple[Any, Any, bool]:
    """Everything cheap, before any env is made: returns ``(cfg, hp, lag_replaced)``.

    Raises:
        ConfigError: one line naming the problem (and the valid names where there is a list).
    """
    from jaxrl import algorithms
    from jaxrl.runner import config as config_lib

    if args.algo not in ALGOS:
        raise ConfigError(f"unknown Sebulba algorithm {args.algo!r}; valid: {', '.join(ALGOS)}")
    if args.env is None:
        raise ConfigError(
            "--env is required: envpool/<task> or gymnasium/<id>, e.g. gymnasium/CartPole-v1"
        )
    check_env_id(args.env)
    positive = {"--actors": args.actors, "--queue-size": args.queue_size}
    positive |= {"--envs-per-actor": args.envs_per_actor, "--total-timesteps": args.total_timesteps}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be a positive integer, got {value}")
    for flag, value in {
        "--checkpoint-every": args.checkpoint_every,
        "--max-policy-lag": args.max_policy_lag,
    }.items():
        if value is not None and value < 0:
            raise ConfigError(f"{flag} must be >= 0, got {value}")
    if args.exploration not in EXPLORATIONS:
        raise ConfigError(
            f"unknown --exploration {args.exploration!r}; valid: {', '.join(EXPLORATIONS)}"
        )
    if args.exploration != "schedule" and args.algo != "dqn":
        raise ConfigError(f"--exploration is for dqn only, not {args.algo}")
    preset = _preset(args.algo, args.preset)
    sets = config_lib.parse_sets(args.set)
    if args.envs_per_actor is not None:
        num_envs = args.actors * args.envs_per_actor
        if "num_envs" in sets and sets["num_envs"].strip() != str(num_envs):
            raise ConfigError(
                f"--set num_envs={sets['num_envs']} contradicts --actors {args.actors} x "
                f"--envs-per-actor {args.envs_per_actor} = {num_envs}; give one of them"
            )
        sets["num_envs"] = str(num_envs)
    cfg, hp = config_lib.resolve(algorithms.get(args.algo), preset, sets, args.total_timesteps)
    # IMPALA's in-JAX Config.lag simulates the actor-learner lag; here the lag is real. A lag
    # from a preset or the default becomes 0; one given with --set is the user's (an error).
    lag_replaced = args.algo == "impala" and "lag" not in sets and cfg.lag != 0
    if lag_replaced:
        cfg = dataclasses.replace(cfg, lag=0)
    from jaxrl.sebulba import agents

    agents.check(args.algo, cfg, args.actors)
    return cfg, hp, lag_replaced


def _fresh_run_dir(args) -> Path:
    if args.run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return Path("runs") / f"sebulba-{args.algo}-{args.env.replace('/', '_')}-{stamp}"
    taken = [
        n for n in ("config.json", "metrics.jsonl", "checkpoints") if (args.run_dir / n).exists()
    ]
    if taken:
        raise ConfigError(
            f"run directory {args.run_dir} already holds a run ({', '.join(taken)}); "
            "choose another --run-dir"
        )
    return args.run_dir


def run_config(args, cfg, hp) -> dict[str, Any]:
    """What ``config.json`` records of a Sebulba run."""
    from jaxrl import __version__
    from jaxrl.runner import config as config_lib

    return {
        "jaxrl_version": __version__,
        "command": "sebulba",
        "algo": args.algo,
        "env": args.env,
        "preset": args.preset,
        "seed": args.seed,
        "num_actors": args.actors,
        "envs_per_actor": cfg.num_envs // args.actors,
        "queue_size": args.queue_size,
        "max_policy_lag": args.max_policy_lag,
        "exploration": args.exploration if args.algo == "dqn" else None,
        "checkpoint_every": args.checkpoint_every,
        "env_steps_requested": cfg.total_timesteps,
        "env_steps_per_run": cfg.num_updates * cfg.steps_per_update,
        "config": config_lib.config_dict(cfg),
        "hparams": {k: float(v) for k, v in vars(hp).items()},
    }


def _progress(num_updates: int, steps_per_update: int):
    """A ``log_fn`` printing one line per logged update."""

    def log(update: int, metrics: dict[str, float]) -> None:
        ret = metrics.get("episode/return", float("nan"))
        ret_text = f"{ret:8.1f}" if np.isfinite(ret) else "     n/a"
        print(
            f"update {update:>6}/{num_updates}  env steps {update * steps_per_update:>11,}  "
            f"return {ret_text}  policy lag {metrics['sebulba/policy_lag_mean']:.1f}",
            flush=True,
        )

    return log


def write_outputs(run_dir: Path, args, result, steps_per_update: int, requested: int) -> dict:
    """Writes ``metrics.jsonl``, ``summary.json`` and ``curve.png``; returns the summary."""
    from jaxrl.logger import metrics as metric_utils
    from jaxrl.logger import plots, writers

    label = {"seed": args.seed}
    if result.num_updates:
        writers.JsonlWriter(run_dir / "metrics.jsonl").write_chunk(
            {name: np.asarray(v)[None] for name, v in result.metrics.items()},
            first_update=0,
            steps_per_update=steps_per_update,
            run_labels=[label],
        )
    summary = {
        "algo": f"sebulba/{args.algo}",
        "env": args.env,
        "seed": args.seed,
        "num_actors": args.actors,
        "envs_per_actor": result.agent.envs_per_actor,
        "num_updates": result.num_updates,
        "env_steps_requested": requested,
        "env_steps": result.env_steps,
        "actor_env_steps": result.actor_env_steps,
        "wall_seconds": result.wall_s,
        **result.summary,
        "timings": result.timings,
    }
    writers.write_json(run_dir / "summary.json", summary)
    if "episode/return" in result.metrics:
        steps = np.arange(1, result.num_updates + 1) * steps_per_update
        returns = metric_utils.forward_fill(np.asarray(result.metrics["episode/return"])[None])
        title = f"sebulba {args.algo} on {args.env}"
        plots.learning_curve(run_dir / "curve.png", steps, returns, title)
    return summary


def run(args) -> int:
    """Runs the ``sebulba`` command; returns the exit status (raises ConfigError)."""
    cfg, hp, lag_replaced = _validate(args)
    run_dir = _fresh_run_dir(args)
    requested = cfg.total_timesteps
    steps_per_update = cfg.steps_per_update
    ran = cfg.num_updates * steps_per_update
    if not args.quiet:
        if lag_replaced:
            print(
                "note: impala's simulated lag (Config.lag) set to 0: the actor-learner lag is real"
            )
        if ran != requested:
            print(
                f"note: {requested:,} env steps rounded down to {ran:,} ({cfg.num_updates} "
                f"updates x {steps_per_update} steps per update)"
            )
    from jaxrl import sebulba
    from jaxrl.logger import writers

    run_dir.mkdir(parents=True, exist_ok=True)
    writers.write_json(run_dir / "config.json", run_config(args, cfg, hp))
    result = sebulba.run(
        args.algo, args.env, cfg, hp, num_actors=args.actors, seed=args.seed,
        agent_kwargs={"exploration": args.exploration} if args.algo == "dqn" else None,
        queue_size=args.queue_size, max_policy_lag=args.max_policy_lag, run_dir=run_dir,
        checkpoint_every=args.checkpoint_every,
        log_fn=None if args.quiet else _progress(cfg.num_updates, steps_per_update),
        log_every=max(1, cfg.num_updates // 10),
    )  # fmt: skip
    summary = write_outputs(run_dir, args, result, steps_per_update, requested)
    if not args.quiet:
        final = summary.get("final_return")
        final_text = f"{final:.1f}" if final is not None and np.isfinite(final) else "n/a"
        print(
            f"sebulba {args.algo} on {args.env}: {args.actors} actors x "
            f"{summary['envs_per_actor']} envs, {result.env_steps:,} env steps in "
            f"{result.wall_s:.1f} s ({summary['steps_per_second']:,.0f} steps/s), final return "
            f"{final_text}, policy lag mean {summary.get('policy_lag_mean', float('nan')):.2f}"
        )
        print(
            f"run directory: {run_dir}  (config.json, metrics.jsonl, summary.json, curve.png, "
            "checkpoints/)"
        )
    return 0
