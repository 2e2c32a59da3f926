"""DQN throughput on gymnax CartPole-v1: jaxrl against Rejax, with raw env stepping as the ceiling.

Config: Rejax's own CartPole DQN config (``configs/gymnax/cartpole.yaml`` in the Rejax repo,
the one ``/work/shared/perf_baseline.md`` measured): 10 envs, replay 50,000, batch 100,
5 gradient steps per vectorised step (per 10 env steps), Adam 1e-3, gradient clip 10,
gamma 0.99, 1e5 env steps per seed, learning from env step 5,000, epsilon 1 -> 0.05 over
the first half of the run, soft target update (polyak 0.98) after every vectorised step,
Double DQN, 64-64 MLP. For each vmapped seed count ``S`` (default 1 and 8) it measures,
in env steps per second of all seeds together, after compilation (timed apart):

(a) ``rejax``: ``rejax.DQN.create(**REJAX_CONFIG)``, ``jit(vmap(algo.train))`` over ``S``
    keys (init inside). Periodic evaluation off: ``eval_freq == total_timesteps`` and
    ``skip_initial_evaluation`` give one evaluation (128 episodes, epsilon 0.005) at the
    end, inside the timed program; its mean is Rejax's final return.
(b) ``jaxrl``: ``dqn.init`` (``lax.map`` over seeds) + ``vmap(dqn.train)`` in one ``jit``,
    with the matched :func:`jaxrl_config`. Final return: 128 greedy episodes per seed of
    the final network, untimed.
(c) ``raw``: gymnax's own ``step`` with random actions, ``[S, 10]`` envs, 1e5 steps per
    seed in a jitted ``lax.scan``: what no training loop can beat.

Both trainers take exactly 47,495 gradient steps per seed (9,499 of 10,000 updates learn);
the table shows the counts each actually took.

rejax 0.1.3 (the latest) expects gymnax's old five-value ``step`` and fails on gymnax 1.x,
which jaxrl needs, so Rejax runs in its own venv and each part runs in its own process,
appending JSON lines to one file; ``--combine`` prints the table. Set up the Rejax venv once
(same jax/flax/optax/chex/distrax as jaxrl's venv, gymnax 0.0.9)::

    python -m venv /work/venv_bench
    /work/venv_bench/bin/pip install rejax==0.1.3 gymnax==0.0.9 jax==0.10.2 jaxlib==0.10.2 \\
        flax==0.12.8 optax==0.2.8 chex==0.1.92 distrax==0.1.9

Then either run the parts by hand (any order, repeat invocations add repeats)::

    B=experiments/benchmarks/dqn_throughput.py
    /work/venv/bin/python $B --only raw --out /tmp/dqn.jsonl
    /work/venv/bin/python $B --only jaxrl --out /tmp/dqn.jsonl
    /work/venv_bench/bin/python $B --only rejax --out /tmp/dqn.jsonl
    /work/venv/bin/python $B --combine /tmp/dqn.jsonl

or let the script do it, alternating the parts for ``--rounds`` rounds so that machine load
hits all of them alike (each round recompiles; compile is timed apart)::

    /work/venv/bin/python $B --rounds 3 --out /tmp/dqn.jsonl \\
        [--rejax-python /work/venv_bench/bin/python] [--parts rejax,raw]

Flags: ``--seeds 1,8``, ``--repeats N`` (timed runs per compiled program, default 1),
``--total-timesteps N`` (per seed, default 1e5), ``--jaxrl-dueling`` (jaxrl's dueling head,
which adds a 64-unit hidden layer to each stream; Rejax's dueling streams are single
linear layers, so the default plain head is the closer match in work).

This file imports jaxrl only for ``--only jaxrl``, rejax only for ``--only rejax``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ENV_ID = "CartPole-v1"
NUM_ENVS = 10
TOTAL_TIMESTEPS = 100_000
EVAL_EPISODES = 128  # Rejax's evaluation: 128 episodes per seed
REJAX_PYTHON = Path("/work/venv_bench/bin/python")
PERF_BASELINE = {1: 6_800, 8: 7_800}  # Rejax steps/s, /work/shared/perf_baseline.md
PARTS = ("raw", "jaxrl", "rejax")

# Rejax's CartPole DQN config (configs/gymnax/cartpole.yaml); eval settings are set below.
REJAX_CONFIG = dict(
    env=ENV_ID,
    agent="DuelingQNetwork",  # value and advantage heads are single Dense layers
    agent_kwargs={"activation": "swish"},  # hidden_layer_sizes default (64, 64)
    num_envs=NUM_ENVS,
    buffer_size=50_000,
    fill_buffer=5_000,  # learns once global_step (before the step) > 5000
    batch_size=100,
    max_grad_norm=10.0,  # optax.clip: element-wise
    learning_rate=1e-3,
    num_epochs=5,  # gradient steps per vectorised env step
    polyak=0.98,  # target <- 0.98 target + 0.02 online ...
    # target_update_freq: default 1 env step, i.e. after every vectorised step
    eps_start=1.0,
    eps_end=0.05,
    exploration_fraction=0.5,  # linear over the first 50% of env steps
    gamma=0.99,
    ddqn=True,
    normalize_observations=False,
)


def jaxrl_config(dqn, total_timesteps: int, dueling: bool):
    """``(dqn.Config, dqn.HParams)`` matched to :data:`REJAX_CONFIG`.

    * ``learning_starts=5020``: Rejax learns in iteration ``i`` iff ``10 i > 5000`` (step
      count before the env step); jaxrl iff ``10 (i + 1) >= learning_starts`` (after it).
      Both learn from iteration 501 on: 9,499 updates x 5 = 47,495 gradient steps per seed.
    * Target: ``tau=0.02`` every ``target_update_period=5`` gradient steps, i.e. after each
      update's 5 steps, as Rejax's polyak 0.98 after every vectorised step.
    * Epsilon: 1 -> 0.05 over ``0.5 * total_timesteps`` env steps, counted from step 0,
      uniform random before learning starts (both).
    * ``double=True`` (Rejax ``ddqn``), ``loss="l2"`` (Rejax: ``optax.l2_loss``),
      ``max_grad_norm=10`` (jaxrl: global norm; Rejax: element-wise), Adam eps 1e-8 (both).
    * Not matched: activation (jaxrl's Config has none: ReLU; Rejax swish) and the dueling
      head (see the module docstring).
    """
    cfg = dqn.Config(
        total_timesteps=total_timesteps,
        num_envs=NUM_ENVS,
        train_freq=1,
        gradient_steps=5,
        buffer_size=50_000,
        batch_size=100,
        learning_starts=5_020,
        target_update_period=5,
        hidden=(64, 64),
        double=True,
        dueling=dueling,
        loss="l2",
    )
    hp = dqn.HParams.make(
        learning_rate=1e-3,
        discount=0.99,
        tau=0.02,
        eps_start=1.0,
        eps_end=0.05,
        eps_fraction=0.5,
        max_grad_norm=10.0,
    )
    return cfg, hp


# --------------------------------------------------------------------------- helpers


def jaxrl_revision() -> str:
    """The commit measured, with ``+dirty`` if ``jaxrl/`` has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        git = lambda *a: subprocess.run(
            ["git", *a], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = "+dirty" if git("status", "--porcelain", "jaxrl") else ""
        return git("rev-parse", "--short", "HEAD") + dirty
    except (OSError, subprocess.CalledProcessError):
        return "?"


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def versions() -> dict[str, str]:
    names = ("jax", "jaxlib", "flax", "optax", "chex", "gymnax", "flashbax", "rejax")
    return {name: version(name) for name in names if version(name) != "-"}


def compile_timed(fn, args: tuple):
    """``jax.jit(fn).lower(*args).compile()``; returns ``(compiled, lower_s, compile_s)``."""
    import jax

    start = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return compiled, lowered_at - start, time.perf_counter() - lowered_at


def run_timed(compiled, args: tuple, repeats: int) -> tuple[list[float], object]:
    """Runs ``compiled(*args)`` ``repeats`` times; returns the seconds and the last output."""
    import jax

    seconds, output = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        output = jax.block_until_ready(compiled(*args))
        seconds.append(time.perf_counter() - start)
    return seconds, output


# ------------------------------------------------------------------------ (a) Rejax


def measure_rejax(seeds: int, total_timesteps: int, repeats: int, base_seed: int) -> dict:
    """Rejax DQN, ``jit(vmap(algo.train))`` over ``seeds`` keys."""
    import jax
    import numpy as np
    from rejax import get_algo

    algo = get_algo("dqn").create(
        **REJAX_CONFIG,
        total_timesteps=total_timesteps,
        eval_freq=total_timesteps,  # one evaluation, after the last iteration
        skip_initial_evaluation=True,
    )
    keys = jax.random.split(jax.random.PRNGKey(base_seed), seeds)
    compiled, lower_s, compile_s = compile_timed(jax.vmap(algo.train), (keys,))
    run_s, (ts, (_, returns)) = run_timed(compiled, (keys,), repeats)
    return {
        "env_steps": int(np.asarray(ts.global_step).sum()),
        "grad_steps_per_seed": np.asarray(ts.q_ts.step).tolist(),
        "run_s": run_s,
        "lower_s": lower_s,
        "compile_s": compile_s,
        # returns: [seeds, evaluations=1, 128 episodes]
        "final_return": float(np.mean(np.asarray(returns)[:, -1])),
    }


# ------------------------------------------------------------------------ (b) jaxrl


def measure_jaxrl(
    seeds: int, total_timesteps: int, repeats: int, base_seed: int, dueling: bool
) -> dict:
    """jaxrl DQN: init (``lax.map``) + ``vmap(dqn.train)`` in one program."""
    import jax
    import numpy as np

    from jaxrl.algorithms import dqn
    from jaxrl.envs import make

    env, env_params = make(ENV_ID)
    cfg, hp = jaxrl_config(dqn, total_timesteps, dueling)

    def run(keys, hp):
        states = jax.vmap(lambda key: dqn.init(cfg, env, key, hp, env_params))(keys)
        return jax.vmap(lambda state: dqn.train(cfg, env, state, hp, cfg.num_updates))(states)

    keys = jax.random.split(jax.random.key(base_seed), seeds)
    compiled, lower_s, compile_s = compile_timed(run, (keys, hp))
    run_s, (state, metrics) = run_timed(compiled, (keys, hp), repeats)
    returns = np.asarray(metrics["episode/return"])[:, -1000:]  # last 1e4 env steps
    return {
        "env_steps": int(np.asarray(state.env_steps).sum()),
        "grad_steps_per_seed": np.asarray(state.grad_steps).tolist(),
        "run_s": run_s,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "final_return": evaluate_jaxrl(dqn, cfg, env, env_params, state, keys),
        "training_return": float(np.nanmean(returns)),
        "config": {
            "cfg": repr(cfg),
            "hp": {f.name: float(getattr(hp, f.name)) for f in dataclasses.fields(hp)},
        },
    }


def evaluate_jaxrl(dqn, cfg, env, env_params, state, keys) -> float:
    """Mean return of ``EVAL_EPISODES`` greedy episodes per seed (Rejax: epsilon 0.005)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrl.envs.wrappers import make_vec_env

    venv = make_vec_env(env, EVAL_EPISODES)
    max_steps = int(env_params.max_steps_in_episode)

    def run_one(params, key):
        key, key_reset = jax.random.split(key)
        obs, env_state = venv.reset(key_reset, env_params)

        def body(carry, _):
            env_state, obs, key, total, running = carry
            key, key_step = jax.random.split(key)
            action = dqn.act(cfg, env, params, obs)
            obs, env_state, step = venv.step(key_step, env_state, action, env_params)
            total = total + jnp.where(running, step.reward, 0.0)
            return (env_state, obs, key, total, running & ~step.done), None

        init = (env_state, obs, key, jnp.zeros(EVAL_EPISODES), jnp.ones(EVAL_EPISODES, bool))
        (*_, total, _), _ = jax.lax.scan(body, init, None, max_steps)
        return total.mean()

    eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    return float(np.mean(jax.jit(jax.vmap(run_one))(state.params, eval_keys)))


# -------------------------------------------------------------------------- (c) raw


def measure_raw(seeds: int, total_timesteps: int, repeats: int, base_seed: int) -> dict:
    """gymnax's own auto-resetting ``step``, random actions, ``[seeds, 10]`` envs."""
    import gymnax
    import jax
    import jax.numpy as jnp

    env, env_params = gymnax.make(ENV_ID)
    shape = (seeds, NUM_ENVS)
    num_actions = env.action_space(env_params).n
    length = total_timesteps // NUM_ENVS
    nested = lambda fn, in_axes: jax.vmap(jax.vmap(fn, in_axes), in_axes)
    reset = nested(env.reset, (0, None))
    step = nested(env.step, (0, 0, 0, None))
    split = lambda key: jax.random.split(key, seeds * NUM_ENVS).reshape(*shape, -1)

    def run(key):
        key, key_reset = jax.random.split(key)
        obs, state = reset(split(key_reset), env_params)

        def body(carry, _):
            state, obs, key, total = carry
            key, key_act, key_step = jax.random.split(key, 3)
            action = jax.random.randint(key_act, shape, 0, num_actions)
            obs, state, reward, *_ = step(split(key_step), state, action, env_params)  # 5 or 6
            return (state, obs, key, total + reward.sum()), None

        carry, _ = jax.lax.scan(body, (state, obs, key, jnp.zeros(())), None, length)
        return carry[1], carry[3]

    key = jax.random.PRNGKey(base_seed)
    compiled, lower_s, compile_s = compile_timed(run, (key,))
    run_s, _ = run_timed(compiled, (key,), repeats)
    return {
        "env_steps": seeds * length * NUM_ENVS,
        "run_s": run_s,
        "lower_s": lower_s,
        "compile_s": compile_s,
    }


# ----------------------------------------------------------------------- driver


def run_part(args) -> None:
    """``--only PART``: measures each seed count, appends one JSON line per seed count."""
    log = lambda msg: print(f"[{args.only}] {msg}", file=sys.stderr, flush=True)
    for seeds in (int(s) for s in args.seeds.split(",")):
        load_before = os.getloadavg()[0]
        kw = dict(
            seeds=seeds,
            total_timesteps=args.total_timesteps,
            repeats=args.repeats,
            base_seed=args.base_seed,
        )
        if args.only == "rejax":
            result = measure_rejax(**kw)
        elif args.only == "jaxrl":
            result = measure_jaxrl(**kw, dueling=args.jaxrl_dueling)
        else:
            result = measure_raw(**kw)
        expected = seeds * (args.total_timesteps // NUM_ENVS) * NUM_ENVS
        if result["env_steps"] != expected:
            raise RuntimeError(f"{args.only} took {result['env_steps']} env steps, not {expected}")
        rates = [result["env_steps"] / s for s in result["run_s"]]
        record = {
            "part": args.only,
            "seeds": seeds,
            "round": args.round,
            "run_id": args.run_id,
            "total_timesteps": args.total_timesteps,
            **result,
            "steps_per_s": rates,
            "load_avg_1min": [load_before, os.getloadavg()[0]],
            "versions": versions(),
            "machine": f"{os.cpu_count()}-core {platform.machine()}, Python "
            f"{platform.python_version()}",
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if args.only == "jaxrl":
            record["dueling"] = args.jaxrl_dueling
            record["jaxrl"] = jaxrl_revision()
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
        compile_s = result["lower_s"] + result["compile_s"]
        extra = f", return {result['final_return']:.0f}" if "final_return" in result else ""
        log(
            f"S={seeds}: {', '.join(f'{r / 1e3:.1f}k' for r in rates)} steps/s, "
            f"compile {compile_s:.1f} s{extra}"
        )


def run_rounds(args) -> None:
    """Runs each part in its own process, alternating, ``--rounds`` times; then combines."""
    parts = args.parts.split(",")
    python = {"raw": sys.executable, "jaxrl": sys.executable, "rejax": str(args.rejax_python)}
    if "rejax" in parts and not Path(python["rejax"]).exists():
        raise SystemExit(f"{python['rejax']} not found: create the Rejax venv (see --help)")
    common = [
        f"--seeds={args.seeds}",
        f"--repeats={args.repeats}",
        f"--total-timesteps={args.total_timesteps}",
        f"--base-seed={args.base_seed}",
        f"--out={args.out}",
        f"--run-id={time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
    ] + (["--jaxrl-dueling"] if args.jaxrl_dueling else [])
    for r in range(args.rounds):
        for part in parts:
            print(f"[round {r + 1}/{args.rounds}] {part}", file=sys.stderr, flush=True)
            command = [python[part], __file__, f"--only={part}", f"--round={r}", *common]
            subprocess.run(command, check=True)
    print(combine(args.out))


def fmt_rate(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def combine(path: Path) -> str:
    """Markdown tables from a JSON-lines file: medians over every run of each part."""
    runs = defaultdict(list)  # (part, seeds) -> records
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            runs[(record["part"], record["seeds"])].append(record)
    seed_counts = sorted({seeds for _, seeds in runs})

    def rates(part, seeds) -> list[float]:
        return [r for rec in runs.get((part, seeds), []) for r in rec["steps_per_s"]]

    def med(part, seeds) -> float:
        values = rates(part, seeds)
        return statistics.median(values) if values else float("nan")

    def best(part, seeds) -> float:
        values = rates(part, seeds)
        return max(values) if values else float("nan")

    def field(part, seeds, name, fmt) -> str:
        values = [rec[name] for rec in runs.get((part, seeds), []) if name in rec]
        return fmt(statistics.median(values)) if values else "-"

    compile_of = lambda rec: rec["lower_s"] + rec["compile_s"]
    lines = [
        "| seeds | Rejax | jaxrl | raw gymnax | Rejax best | jaxrl best "
        "| compile Rejax / jaxrl | return Rejax / jaxrl | grad steps/seed Rejax / jaxrl | runs |",
        "|" + " --- |" * 10,
    ]
    for seeds in seed_counts:
        compile_s, grads = [], []
        for part in ("rejax", "jaxrl"):
            recs = runs.get((part, seeds), [])
            compile_s.append(f"{statistics.median(map(compile_of, recs)):.1f} s" if recs else "-")
            steps = sorted({g for rec in recs for g in rec["grad_steps_per_seed"]})
            grads.append(",".join(f"{g:,}" for g in steps) or "-")
        count = "/".join(str(len(rates(p, seeds))) for p in ("rejax", "jaxrl", "raw"))
        fmt0 = lambda x: f"{x:.0f}"
        lines.append(
            "| "
            + " | ".join(
                [
                    str(seeds),
                    fmt_rate(med("rejax", seeds)),
                    fmt_rate(med("jaxrl", seeds)),
                    fmt_rate(med("raw", seeds)),
                    fmt_rate(best("rejax", seeds)),
                    fmt_rate(best("jaxrl", seeds)),
                    " / ".join(compile_s),
                    f"{field('rejax', seeds, 'final_return', fmt0)} / "
                    f"{field('jaxrl', seeds, 'final_return', fmt0)}",
                    " / ".join(grads),
                    count,
                ]
            )
            + " |"
        )
    lines += [
        "",
        "| seeds | jaxrl / Rejax | jaxrl / Rejax per round | jaxrl / raw | Rejax / raw "
        "| Rejax / perf_baseline.md |",
        "|" + " --- |" * 6,
    ]
    for seeds in seed_counts:
        ratio = lambda a, b: (
            "-" if not math.isfinite(a / b) else f"{a / b:.2g}" if a < 0.1 * b else f"{a / b:.2f}"
        )
        per_round = []
        by_round = defaultdict(dict)
        for part in ("rejax", "jaxrl"):
            for rec in runs.get((part, seeds), []):
                if rec.get("round") is not None:  # set by the driver, paired within a run
                    key = (rec.get("run_id"), rec["round"])
                    by_round[key][part] = statistics.median(rec["steps_per_s"])
        per_round = [v["jaxrl"] / v["rejax"] for v in by_round.values() if len(v) == 2]
        paired = (
            f"{statistics.median(per_round):.2f} ({min(per_round):.2f}-{max(per_round):.2f})"
            if per_round
            else "-"
        )
        baseline = PERF_BASELINE.get(seeds, float("nan"))
        lines.append(
            f"| {seeds} | {ratio(med('jaxrl', seeds), med('rejax', seeds))} | {paired} "
            f"| {ratio(med('jaxrl', seeds), med('raw', seeds))} "
            f"| {ratio(med('rejax', seeds), med('raw', seeds))} "
            f"| {ratio(med('rejax', seeds), baseline)} |"
        )
    lines.append("")
    lines.append("Steps/s: env steps of all seeds together per second, medians over every run.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", choices=PARTS, help="measure one part in this process")
    parser.add_argument("--combine", type=Path, metavar="JSONL", help="print the tables")
    parser.add_argument("--out", type=Path, default=Path("/tmp/dqn_throughput.jsonl"))
    parser.add_argument("--seeds", default="1,8", help="comma-separated vmapped seed counts")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per program")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (driver)")
    parser.add_argument("--parts", default=",".join(PARTS), help="parts the driver runs")
    parser.add_argument("--total-timesteps", type=int, default=TOTAL_TIMESTEPS)
    parser.add_argument("--base-seed", type=int, default=0)
    parser.add_argument("--jaxrl-dueling", action="store_true", help="jaxrl's dueling head")
    parser.add_argument("--rejax-python", type=Path, default=REJAX_PYTHON)
    parser.add_argument("--round", type=int, help=argparse.SUPPRESS)  # set by the driver
    parser.add_argument("--run-id", help=argparse.SUPPRESS)  # set by the driver
    args = parser.parse_args()
    if args.total_timesteps % NUM_ENVS:
        parser.error(f"--total-timesteps must be a multiple of {NUM_ENVS}")
    if args.combine:
        print(combine(args.combine))
    elif args.only:
        run_part(args)
    else:
        run_rounds(args)


if __name__ == "__main__":
    main()
