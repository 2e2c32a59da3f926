"""``jaxrl pbt``: population-based training of one algorithm on one environment, one program.

The whole run (every round, every member, exploit and explore) is one ``jax.jit`` of
:func:`jaxrl.runner.pbt.train_pbt`. Outputs in the run directory, each written atomically:

* ``config.json``: the command's settings, the resolved ``Config`` and starting ``HParams``;
* ``pbt.json``: per round, every member's score, mean return, the hyperparameters it trained
  with and the member it copied from after the round (itself if not replaced); then the
  final hyperparameters, copy counts and the best member's lineage;
* ``results.md``: the final score of every member and the hyperparameter schedule that
  produced the best member's network (followed back through the members it copied).

Env steps: every member trains ``rounds * updates_per_round`` updates of
``steps_per_update`` env steps; the ``Config``'s ``total_timesteps`` is set to exactly that
(it is the horizon of learning-rate annealing). Without ``--rounds``, the rounds are
``total_timesteps // (updates_per_round * steps_per_update)`` of the resolved config.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxrl.errors import ConfigError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``pbt`` command to ``subparsers`` (from ``add_subparsers``); returns it."""
    p = subparsers.add_parser(
        "pbt",
        help="population-based training, one program",
        description=(
            "Population-based training (Jaderberg et al. 2017) as one compiled program. Every "
            "member trains ROUNDS x UPDATES_PER_ROUND updates; the config's total_timesteps is "
            "set to that many env steps (ROUNDS x UPDATES_PER_ROUND x steps per update, "
            "e.g. num_envs x rollout_len for ppo; it is the learning-rate annealing horizon). "
            "Without --rounds, ROUNDS is the config's total_timesteps // (UPDATES_PER_ROUND x "
            "steps per update), so the config's budget is kept (rounded down)."
        ),
    )
    p.add_argument("algo", help="algorithm name, e.g. ppo (see `jaxrl list`)")
    p.add_argument("--env", help="environment name, e.g. CartPole-v1 (see `jaxrl list`)")
    p.add_argument("--preset", help="named settings, e.g. ppo/cartpole (see `jaxrl list`)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="fix a Config field or a starting HParams value for every member (repeatable)",
    )  # fmt: skip
    p.add_argument("--population", type=int, default=8, help="members (>= 2; default 8)")
    p.add_argument(
        "--perturb", action="append", default=[], metavar="NAME",
        help="traced hyperparameter that explore perturbs (repeatable; at least one)",
    )  # fmt: skip
    p.add_argument("--rounds", type=int, help="exploit/explore rounds (default: from the budget)")
    p.add_argument(
        "--updates-per-round", type=int, required=True, help="updates of every member per round"
    )
    p.add_argument(
        "--fraction", type=float, default=0.25,
        help="share of members replaced (bottom) and of donors (top) each round, in (0, 0.5]",
    )  # fmt: skip
    p.add_argument(
        "--factors", default="0.8,1.25", metavar="F1,F2,...",
        help="explore multiplies a copied value by one of these (default 0.8,1.25)",
    )  # fmt: skip
    p.add_argument(
        "--score-decay", type=float, default=0.9, help="EMA coefficient of the score, in [0, 1)"
    )
    p.add_argument(
        "--init", action="append", default=[], metavar="NAME=LOW:HIGH",
        help="spread NAME's starting values log-uniformly over [LOW, HIGH] across the "
        "population (geometric spacing; a second --init is shuffled against the first)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="members use seeds seed..seed+P-1")
    p.add_argument(
        "--out", "--run-dir", dest="out", type=Path, metavar="RUN_DIR",
        help="output directory; must not exist or be empty (default runs/pbt-<...>)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def parse_init(items: list[str]) -> dict[str, tuple[float, float]]:
    """``["learning_rate=1e-5:1e-2"]`` -> ``{"learning_rate": (1e-5, 1e-2)}``."""
    out: dict[str, tuple[float, float]] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name, parts = name.strip(), raw.split(":")
        if not sep or not name or len(parts) != 2:
            raise ConfigError(f"--init expects NAME=LOW:HIGH, got {item!r}")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"--init {item}: LOW and HIGH must be numbers") from None
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise ConfigError(f"--init {item}: a log-uniform spread needs 0 < LOW <= HIGH")
        if name in out:
            raise ConfigError(f"--init {name} given twice")
        out[name] = (low, high)
    return out


def parse_factors(raw: str) -> tuple[float, ...]:
    """``"0.8,1.25"`` -> ``(0.8, 1.25)``; each factor finite and positive."""
    try:
        factors = tuple(float(x) for x in raw.split(","))
    except ValueError:
        raise ConfigError(f"--factors expects numbers F1,F2,..., got {raw!r}") from None
    if not all(math.isfinite(f) and f > 0 for f in factors):
        raise ConfigError(f"--factors must be positive numbers, got {raw!r}")
    return factors


def spread(ranges: dict[str, tuple[float, float]], num: int, seed: int) -> dict[str, np.ndarray]:
    """Starting values ``[num]`` per name: ``geomspace(low, high, num)``.

    The first name keeps member order (member 0 gets ``low``); every further name is permuted
    with ``numpy.random.default_rng(seed + i)``, so the grids are not correlated (a Latin
    hypercube in log space).
    """
    out = {}
    for i, (name, (low, high)) in enumerate(ranges.items()):
        values = np.geomspace(low, high, num).astype(np.float32)
        out[name] = values if i == 0 else np.random.default_rng(seed + i).permutation(values)
    return out


def lineage(source: np.ndarray, member: int) -> list[int]:
    """The member whose network ``member`` carries at every round.

    ``source``: ``[R, P]``, who each member copied from after round ``r``. Returns ``[R]``:
    entry ``r`` is the member that trained round ``r`` on the way to ``member``'s final state.
    """
    line = [member]
    for r in range(source.shape[0] - 1, 0, -1):
        line.append(int(source[r - 1, line[-1]]))
    return line[::-1]


def _validate(args):
    """Everything cheap, before compiling.

    Returns ``(algo, env, env_name, cfg, hp, hps, rounds, options, requested)``: ``cfg`` with
    ``total_timesteps`` set to what runs, ``hps`` the starting values (leaves ``[P]``),
    ``requested`` the ``total_timesteps`` the preset and ``--set`` gave.
    """
    from jaxrl import algorithms
    from jaxrl.runner import pbt
    from jaxrl.runner.cli import _prepare
    from jaxrl.runner.cli_sweep import _check_names

    if args.population < 2:
        raise ConfigError(f"--population must be at least 2, got {args.population}")
    if args.updates_per_round < 1:
        raise ConfigError(f"--updates-per-round must be positive, got {args.updates_per_round}")
    if args.rounds is not None and args.rounds < 1:
        raise ConfigError(f"--rounds must be positive, got {args.rounds}")
    if not 0 < args.fraction <= 0.5:
        raise ConfigError(f"--fraction must lie in (0, 0.5], got {args.fraction}")
    if not args.perturb:
        raise ConfigError("pbt needs at least one --perturb NAME (e.g. --perturb learning_rate)")
    if len(set(args.perturb)) != len(args.perturb):
        raise ConfigError(f"--perturb names repeated: {args.perturb}")
    factors = parse_factors(args.factors)
    init = parse_init(args.init)
    try:
        algo = algorithms.get(args.algo)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _check_names(algo, args.perturb, "--perturb", [])
    _check_names(algo, list(init), "--init", args.set)
    prep = argparse.Namespace(**vars(args), num_seeds=args.population, total_timesteps=None)
    algo, env, env_name, cfg, hp = _prepare(prep)
    step = args.updates_per_round * cfg.steps_per_update
    rounds = args.rounds
    if rounds is None:
        rounds = cfg.total_timesteps // step
        if rounds < 1:
            raise ConfigError(
                f"total_timesteps = {cfg.total_timesteps} is less than one round "
                f"({args.updates_per_round} updates x {cfg.steps_per_update} steps); "
                "raise it with --set total_timesteps=N or give --rounds"
            )
    requested = cfg.total_timesteps
    cfg = dataclasses.replace(cfg, total_timesteps=rounds * step)
    import jax
    import jax.numpy as jnp

    num = args.population
    hps = jax.tree.map(lambda x: jnp.broadcast_to(x, (num,)), hp)
    hps = hps.replace(**{k: jnp.asarray(v) for k, v in spread(init, num, args.seed).items()})
    try:
        algo.check(cfg, hps)  # every starting value in range
    except ConfigError as err:
        spread_names = [name for name in init if str(err).startswith(f"{name} ")]
        raise ConfigError(f"--init {spread_names[0]}: {err}" if spread_names else err) from None
    options = dict(fraction=args.fraction, factors=factors, score_decay=args.score_decay)
    pbt.check(algo, pbt.PBTConfig(tuple(args.perturb), args.updates_per_round, **options), hps)
    return algo, env, env_name, cfg, hp, hps, rounds, options, requested


def run(args: argparse.Namespace) -> int:
    """Runs the PBT described by ``args`` (from :func:`add_parser`); returns the exit status.

    Bad input is one line on stderr (``jaxrl: error: ...``) and status 2, before compiling.
    """
    try:
        return _pbt(args)
    except ConfigError as err:
        print(f"jaxrl: error: {err}", file=sys.stderr)
        return 2


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty directory; choose another")


def _pbt(args: argparse.Namespace) -> int:
    algo, env, env_name, cfg, hp, hps, rounds, options, requested = _validate(args)
    out = args.out or Path("runs") / (
        f"pbt-{args.algo}-{env_name.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    _check_out(out)
    import jax
    import jax.numpy as jnp

    from jaxrl.logger import writers
    from jaxrl.runner import pbt, sweep
    from jaxrl.runner.cli import run_config

    num, per_round = args.population, args.updates_per_round
    steps = cfg.num_updates * cfg.steps_per_update
    out.mkdir(parents=True, exist_ok=True)
    config = run_config(
        argparse.Namespace(**vars(args), num_seeds=num), env_name, cfg, hp
    ) | {
        "pbt": {
            "population": num, "rounds": rounds, "updates_per_round": per_round,
            "perturb": args.perturb, "init": parse_init(args.init), **options,
            "env_steps_per_member": steps, "env_steps_total": steps * num,
            "total_timesteps_requested": requested,
        },
        "initial_hparams": {k: np.asarray(v) for k, v in vars(hps).items()},
    }  # fmt: skip
    writers.write_json(out / "config.json", config)
    if not args.quiet:
        if requested != steps:
            print(
                f"note: total_timesteps {requested:,} replaced by {steps:,} per member "
                f"({rounds} rounds x {per_round} updates x {cfg.steps_per_update} steps)"
            )
        print(
            f"pbt: {num} members x {rounds} rounds x {per_round} updates "
            f"({steps:,} env steps each, {steps * num:,} in all) in one program"
        )
    keys = jnp.stack([sweep.seed_key(args.seed + i) for i in range(num)])
    fn = jax.jit(
        lambda k, h, key: pbt.train_pbt(
            algo, cfg, env, k, h, rounds, per_round, tuple(args.perturb), key=key, **options
        )
    )
    start = time.perf_counter()
    compiled = fn.lower(keys, hps, jax.random.key(args.seed)).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    pop, hist = jax.block_until_ready(compiled(keys, hps, jax.random.key(args.seed)))
    run_s = time.perf_counter() - start
    record = history_record(hist, pop)
    record |= {"compile_seconds": compile_s, "run_seconds": run_s}
    writers.write_json(out / "pbt.json", record)
    title = f"PBT: {args.algo} on {env_name}, {num} members x {rounds} rounds x {per_round} updates"
    text = results_markdown(record, args.perturb, title)
    writers.atomic_write_text(out / "results.md", text)
    if not args.quiet:
        print(f"compile {compile_s:.1f} s, run {run_s:.1f} s")
        print(text)
        print(f"run directory: {out}  (config.json, pbt.json, results.md)")
    return 0


def history_record(hist: dict[str, Any], pop: Any) -> dict[str, Any]:
    """``pbt.json``: ``train_pbt``'s history as per-round lists, plus the final population.

    Round ``r`` lists ``score`` ``[P]`` (the EMA ranking after training), ``return`` ``[P]``,
    ``hparams`` (name -> ``[P]``, the values the round trained with) and ``source`` ``[P]``
    (whom each member copied after the round). ``final.hparams`` are the values after the
    last explore. ``best`` is the member with the highest last score and its ``lineage``.
    """
    score = np.asarray(hist["score"], np.float64)
    ret = np.asarray(hist["return"], np.float64)
    source = np.asarray(hist["source"])
    hps = {k: np.asarray(v, np.float64) for k, v in vars(hist["hps"]).items()}
    rounds = [
        {
            "round": r,
            "score": score[r],
            "return": ret[r],
            "hparams": {k: v[r] for k, v in hps.items()},
            "source": source[r],
        }
        for r in range(score.shape[0])
    ]
    last = score[-1]
    best = int(np.nanargmax(last)) if np.any(np.isfinite(last)) else 0
    line = lineage(source, best)
    return {
        "rounds": rounds,
        "final": {
            "score": last,
            "hparams": {k: np.asarray(v, np.float64) for k, v in vars(pop.hps).items()},
            "num_copies": np.asarray(pop.num_copies),
        },
        "best": {
            "member": best,
            "lineage": line,
            "hparams": {k: [v[r, m] for r, m in enumerate(line)] for k, v in hps.items()},
        },
    }


def _fmt(x: Any) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.4g}"


def results_markdown(record: dict[str, Any], names: list[str], title: str) -> str:
    """``results.md``: final score per member, then the best member's hyperparameter schedule."""
    final, rounds = record["final"], record["rounds"]
    best = record["best"]["member"]
    head = ["member", "final score", "last-round return", "copies", *names]
    lines = [
        f"# {title}",
        "",
        "Score: EMA of the episode return over updates (the ranking PBT uses), after the last",
        "round. Hyperparameters: the values each member ends with (after the last explore).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" for _ in head) + "|",
    ]
    for i, score in enumerate(final["score"]):
        cells = [
            f"**{i}**" if i == best else f"{i}",
            _fmt(score),
            _fmt(rounds[-1]["return"][i]),
            f"{int(final['num_copies'][i])}",
            *(_fmt(final["hparams"][n][i]) for n in names),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    head = ["round", "member", "score", "return", *names]
    lines += [
        "",
        f"## Schedule of the best member ({best})",
        "",
        "The hyperparameters its network was trained with, round by round; `member` is the",
        "member that carried that network in the round (it changes where one copied another).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" for _ in head) + "|",
    ]
    for r, m in enumerate(record["best"]["lineage"]):
        row = rounds[r]
        cells = [f"{r}", f"{m}", _fmt(row["score"][m]), _fmt(row["return"][m])]
        cells += [_fmt(row["hparams"][n][m]) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
