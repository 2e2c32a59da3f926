"""PPO throughput on gymnax CartPole-v1: env stepping, rollout-only, jaxrl and Rejax training.

Everything uses PureJaxRL's CartPole PPO configuration, which is exactly jaxrl's
``ppo.Config()`` default: 4 envs x 128 steps per update, 4 epochs, 4 minibatches,
64-64 tanh MLPs, Adam 2.5e-4 linearly annealed, 5e5 env steps per seed. For each
vmapped seed count ``S`` (default 1, 8 and 64) it measures, in env steps per second of
all seeds together and after compilation:

(a) ``env``: random-action stepping through jaxrl's env stack (``jaxrl.envs.make`` +
    ``make_vec_env``, vmapped over seeds of 4 envs), and ``gymnax``: gymnax 1.x's own
    auto-resetting ``step``, vmapped the same way (``[S, 4]``), for reference;
(b) ``rollout``: ``ppo.collect`` (policy forward, sampling, env step) repeated
    ``num_updates`` times in a scan, with fixed parameters;
(c) ``jaxrl``: ``ppo.init`` + ``ppo.train`` for ``cfg.num_updates`` in one ``jit``,
    vmapped over seeds, compiled once with ``.lower(...).compile()`` (timed apart);
(d) ``rejax``: Rejax 0.1.3 PPO on the matched config, run by ``peers/rejax_ppo.py`` in
    a separate venv (rejax 0.1.3 needs gymnax 0.0.9; jaxrl needs gymnax 1.x), created
    once at ``experiments/benchmarks/.peer-venv`` with the same jax/flax/optax versions;
(e) ``sharded`` (with ``--host-devices N``): (c) with the seed axis sharded over ``N``
    XLA host CPU devices, i.e. one thread per device (init not timed).

Every measure covers the same env steps per seed as training. All programs of one seed
count are compiled first, then each repeat runs (a)-(e) once in turn, Rejax right after
jaxrl, so load from other processes hits every measurement alike; the table shows
medians over repeats. The Rejax process stays alive between requests (JSON lines over a
pipe) and idles while jaxrl runs. Final returns come from 128 evaluation episodes per
seed of the final policy, for both systems (Rejax's own protocol).

Usage::

    python experiments/benchmarks/ppo_throughput.py --quick --skip-peer   # smoke run
    python experiments/benchmarks/ppo_throughput.py --seeds 1,8,64 --repeats 5 \\
        --steps-override 64=131072 --host-devices 2 --json /tmp/ppo.json
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gymnax
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl import distributed
from jaxrl.algorithms import ppo
from jaxrl.envs import make
from jaxrl.envs.wrappers import make_vec_env

HERE = Path(__file__).resolve().parent
PEER_VENV = HERE / ".peer-venv"
PEER_SCRIPT = HERE / "peers" / "rejax_ppo.py"
PEER_MARKER = "jaxrl-bench-requirements.txt"  # written last: the venv is complete
ENV_ID = "CartPole-v1"
PUREJAXRL_8_SEEDS = 307_000  # steps/s, /work/shared/perf_baseline.md (same kind of machine)
PUREJAXRL_1_SEED = 242_000
RETURN_WINDOW = 10  # training return: mean episode return over the last updates
EVAL_EPISODES = 128  # final return: as rejax 0.1.3's evaluation (128 episodes per seed)
SAME_AS_JAXRL = ("jax", "jaxlib", "flax", "optax", "distrax", "chex")


# --------------------------------------------------------------------------- helpers


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def machine() -> dict[str, str]:
    """What ran the benchmark (CPU count, memory, Python and package versions)."""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        memory = f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "?"
    return {
        "cpu": f"{os.cpu_count()}-core {platform.machine()}",
        "memory": memory,
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "jaxrl": jaxrl_revision(),
        **{name: version(name) for name in (*SAME_AS_JAXRL, "gymnax")},
    }


def jaxrl_revision() -> str:
    """The commit measured, with ``+dirty`` if ``jaxrl/`` has uncommitted changes."""
    root = HERE.parents[1]
    try:
        git = lambda *a: subprocess.run(
            ["git", *a], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        return git("rev-parse", "--short", "HEAD") + (
            "+dirty" if git("status", "--porcelain", "jaxrl") else ""
        )
    except (OSError, subprocess.CalledProcessError):
        return "?"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclasses.dataclass
class Program:
    """A compiled program, what one call of it costs in env steps, and its timings."""

    compiled: Callable
    args: tuple
    env_steps: int
    lower_s: float
    compile_s: float
    run_s: list[float] = dataclasses.field(default_factory=list)
    output: object = None

    def run(self) -> float:
        """Runs once (blocking until done); records and returns the seconds taken."""
        start = time.perf_counter()
        self.output = jax.block_until_ready(self.compiled(*self.args))
        elapsed = time.perf_counter() - start
        self.run_s.append(elapsed)
        return elapsed

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / median(self.run_s)

    def summary(self) -> dict:
        return {
            "steps_per_s": self.steps_per_s,
            "best_steps_per_s": self.env_steps / min(self.run_s),
            "run_s": self.run_s,
            "lower_s": self.lower_s,
            "compile_s": self.compile_s,
        }


def compile_program(fn: Callable, args: tuple, env_steps: int) -> Program:
    """``jax.jit(fn).lower(*args).compile()``, timing tracing+lowering and compiling apart."""
    start = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return Program(compiled, args, env_steps, lowered_at - start, time.perf_counter() - lowered_at)


# ------------------------------------------------------------------- (a)-(c): jaxrl


def env_stepping_program(cfg: ppo.Config, seeds: int, key: jax.Array) -> Program:
    """(a) Random actions through jaxrl's stack: ``seeds`` x ``make_vec_env(env, 4)``."""
    env, env_params = make(ENV_ID)
    venv = make_vec_env(env, cfg.num_envs)
    num_actions = env.action_space(env_params).n
    length = cfg.num_updates * cfg.rollout_len

    def run(key):
        key, key_reset = jax.random.split(key)
        reset = jax.vmap(venv.reset, in_axes=(0, None))
        obs, state = reset(jax.random.split(key_reset, seeds), env_params)

        def body(carry, _):
            state, obs, key, total = carry
            key, key_act, key_step = jax.random.split(key, 3)
            action = jax.random.randint(key_act, (seeds, cfg.num_envs), 0, num_actions)
            step = jax.vmap(venv.step, in_axes=(0, 0, 0, None))
            obs, state, out = step(jax.random.split(key_step, seeds), state, action, env_params)
            return (state, obs, key, total + out.reward.sum()), None

        carry, _ = jax.lax.scan(body, (state, obs, key, jnp.zeros(())), None, length)
        return carry[1], carry[3]

    return compile_program(run, (key,), seeds * cfg.num_envs * length)


def gymnax_stepping_program(cfg: ppo.Config, seeds: int, key: jax.Array) -> Program:
    """(a) Reference: gymnax's own auto-resetting ``step`` in the same ``[seeds, 4]`` layout.

    The layout matters on CPU: the same ``4 * seeds`` envs vmapped flat step up to ~1.8x
    faster at 256 envs (XLA's loops over a minor dimension of 4 vectorise poorly), so
    both (a) columns use the nested layout that vmapping training over seeds produces.
    """
    env, env_params = gymnax.make(ENV_ID)
    shape = (seeds, cfg.num_envs)
    num_actions = env.action_space(env_params).n
    length = cfg.num_updates * cfg.rollout_len
    nested = lambda fn, in_axes: jax.vmap(jax.vmap(fn, in_axes), in_axes)
    reset = nested(env.reset, (0, None))
    step = nested(env.step, (0, 0, 0, None))
    split = lambda key: jax.random.split(key, seeds * cfg.num_envs).reshape(shape)

    def run(key):
        key, key_reset = jax.random.split(key)
        obs, state = reset(split(key_reset), env_params)

        def body(carry, _):
            state, obs, key, total = carry
            key, key_act, key_step = jax.random.split(key, 3)
            action = jax.random.randint(key_act, shape, 0, num_actions)
            obs, state, reward, *_ = step(split(key_step), state, action, env_params)
            return (state, obs, key, total + reward.sum()), None

        carry, _ = jax.lax.scan(body, (state, obs, key, jnp.zeros(())), None, length)
        return carry[1], carry[3]

    return compile_program(run, (key,), seeds * cfg.num_envs * length)


def init_seeds(cfg: ppo.Config, env, keys: jax.Array, hp: ppo.HParams) -> ppo.State:
    """``ppo.init`` for each key ``[S]``, stacked ``[S, ...]``; traceable (use inside ``jit``)."""
    return jax.vmap(lambda key: ppo.init(cfg, env, key, hp))(keys)


def init_states(cfg: ppo.Config, env, keys: jax.Array, hp: ppo.HParams) -> ppo.State:
    init = jax.jit(lambda keys: init_seeds(cfg, env, keys, hp))
    return jax.block_until_ready(init(keys))


def rollout_program(cfg: ppo.Config, keys: jax.Array) -> Program:
    """(b) ``ppo.collect`` ``num_updates`` times per seed with the initial parameters.

    Every rollout leaf is summed into the carry so XLA cannot drop work (the critic's
    values, log-probabilities, ...) that training would consume.
    """
    env, _ = make(ENV_ID)
    states = init_states(cfg, env, keys, ppo.HParams.make())

    def run_one(state):
        def body(carry, _):
            state, total = carry
            state, rollout = ppo.collect(cfg, env, state)
            total = total + sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(rollout))
            return (state, total), None

        (state, total), _ = jax.lax.scan(body, (state, jnp.zeros(())), None, cfg.num_updates)
        return state.obs, total

    steps = keys.shape[0] * cfg.num_updates * cfg.steps_per_update
    return compile_program(jax.vmap(run_one), (states,), steps)


def train_program(cfg: ppo.Config, keys: jax.Array) -> Program:
    """(c) ``ppo.init`` + ``ppo.train(num_updates)`` per seed in one program, ``vmap`` over seeds.

    The program returns
    the final state and every metric ``train`` reports, as a user's run would (returning
    less would let XLA skip the metric computations).
    """
    env, _ = make(ENV_ID)
    hp = ppo.HParams.make()

    def run(keys, hp):
        states = init_seeds(cfg, env, keys, hp)
        train = lambda state: ppo.train(cfg, env, state, hp, cfg.num_updates)
        return jax.vmap(train)(states)

    steps = keys.shape[0] * cfg.num_updates * cfg.steps_per_update
    return compile_program(run, (keys, hp), steps)


def sharded_train_program(cfg: ppo.Config, keys: jax.Array, num_devices: int) -> Program:
    """(e) ``ppo.train`` vmapped over seeds, the seed axis sharded over host CPU devices.

    XLA runs one host device per thread, so with one device per core each core trains
    its share of the seeds. Init runs beforehand (not timed), sharded the same way.
    """
    env, _ = make(ENV_ID)
    hp = ppo.HParams.make()
    mesh = distributed.run_mesh(jax.devices()[:num_devices])  # what loop.run does
    states = distributed.shard_runs(init_states(cfg, env, keys, hp), mesh)
    train = jax.vmap(lambda state, hp: ppo.train(cfg, env, state, hp, cfg.num_updates), (0, None))
    steps = keys.shape[0] * cfg.num_updates * cfg.steps_per_update
    return compile_program(train, (states, hp), steps)


def training_return(train: Program) -> float:
    """Mean over seeds of the training-episode return in the last ``RETURN_WINDOW`` updates."""
    _, metrics = train.output
    returns = np.asarray(metrics["episode/return"])[:, -RETURN_WINDOW:]  # [S, window]
    return float(np.nanmean(returns))


def evaluate(cfg: ppo.Config, train: Program, key: jax.Array) -> float:
    """Mean return of ``EVAL_EPISODES`` episodes per seed of the final stochastic policy.

    The same protocol as rejax 0.1.3's ``evaluate`` (which gives Rejax's final return):
    one episode in each of ``EVAL_EPISODES`` envs, sampled actions, at most the env's
    step limit. Untimed.
    """
    env, env_params = make(ENV_ID)
    venv = make_vec_env(env, EVAL_EPISODES)
    max_steps = int(env_params.max_steps_in_episode)
    final_state, _ = train.output

    def run_one(params, key):
        key, key_reset = jax.random.split(key)
        obs, state = venv.reset(key_reset, env_params)

        def body(carry, _):
            state, obs, key, total, running = carry
            key, key_act, key_step = jax.random.split(key, 3)
            action = ppo.act(cfg, env, params, obs, key_act)
            obs, state, step = venv.step(key_step, state, action, env_params)
            total = total + jnp.where(running, step.reward, 0.0)
            return (state, obs, key, total, running & ~step.done), None

        init = (state, obs, key, jnp.zeros(EVAL_EPISODES), jnp.ones(EVAL_EPISODES, bool))
        (*_, total, _), _ = jax.lax.scan(body, init, None, max_steps)
        return total.mean()

    keys = jax.random.split(key, jax.tree.leaves(final_state.params)[0].shape[0])
    returns = jax.jit(jax.vmap(run_one))(final_state.params, keys)
    return float(np.mean(returns))


# ---------------------------------------------------------------------- (d): Rejax


def peer_requirements() -> list[str]:
    """rejax 0.1.3 with gymnax 0.0.9, and jaxrl's own versions of jax, flax, optax, ..."""
    pinned = [f"{name}=={version(name)}" for name in SAME_AS_JAXRL if version(name) != "-"]
    return ["rejax==0.1.3", "gymnax==0.0.9", *pinned]


def ensure_peer_venv(venv: Path = PEER_VENV) -> Path:
    """Creates (once) the peer venv and returns its Python; reused while pins are unchanged."""
    python = venv / "bin" / "python"
    marker = venv / PEER_MARKER
    wanted = "\n".join(peer_requirements()) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"[peer] creating {venv} with: {' '.join(peer_requirements())}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *peer_requirements()], check=True)
    marker.write_text(wanted)
    return python


class Peer:
    """The Rejax benchmark in its own venv, answering JSON-lines requests over a pipe."""

    def __init__(self, python: Path):
        self.process = subprocess.Popen(
            [str(python), str(PEER_SCRIPT), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def request(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the Rejax peer exited (code {self.process.wait()})")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"the Rejax peer failed: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            self.request(op="quit")
            self.process.wait(timeout=60)


# ----------------------------------------------------------------------- driver


def parse_overrides(text: str) -> dict[int, int]:
    """``"64=125000,256=50000"`` -> ``{64: 125000, 256: 50000}`` (env steps per seed)."""
    pairs = (item.split("=") for item in text.split(",") if item)
    return {int(seeds): int(steps) for seeds, steps in pairs}


def measure(args, seeds: int, steps_per_seed: int, peer: Peer | None) -> dict:
    """Compiles every program for one seed count, then runs them in turn ``repeats`` times."""
    cfg = ppo.Config(total_timesteps=steps_per_seed)
    keys = jax.random.split(jax.random.key(args.base_seed), seeds)
    log = lambda msg: print(f"[S={seeds}] {msg}", file=sys.stderr, flush=True)
    log(f"{cfg.num_updates} updates x {cfg.steps_per_update} steps per seed; compiling")
    load_before = os.getloadavg()[0]
    programs = {
        "env": env_stepping_program(cfg, seeds, keys[0]),
        "gymnax": gymnax_stepping_program(cfg, seeds, keys[0]),
        "rollout": rollout_program(cfg, keys),
        "jaxrl": train_program(cfg, keys),
    }
    if args.host_devices > 1 and seeds % args.host_devices == 0:
        programs["sharded"] = sharded_train_program(cfg, keys, args.host_devices)
    peer_steps = cfg.num_updates * cfg.steps_per_update
    peer_compile, peer_runs = None, []
    if peer is not None:
        peer_compile = peer.request(op="compile", seeds=seeds, total_steps=peer_steps)
    compile_s = {name: p.lower_s + p.compile_s for name, p in programs.items()}
    log("compile seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in compile_s.items()))
    for repeat in range(args.repeats):
        for name, program in programs.items():
            program.run()
            if name == "jaxrl" and peer is not None:  # Rejax right after jaxrl, every repeat
                peer_runs.append(peer.request(op="run", seeds=seeds, total_steps=peer_steps))
        line = ", ".join(f"{n} {p.env_steps / p.run_s[-1] / 1e3:.0f}k" for n, p in programs.items())
        if peer_runs:
            line += f", rejax {peer_runs[-1]['steps_per_s'] / 1e3:.0f}k"
        log(f"repeat {repeat + 1}/{args.repeats} steps/s: {line}")
    result = {
        "seeds": seeds,
        "steps_per_seed": cfg.num_updates * cfg.steps_per_update,
        "num_updates": cfg.num_updates,
        "reduced": steps_per_seed != args.steps_per_seed,
        "load_avg_1min": [load_before, os.getloadavg()[0]],  # before compiling, after runs
    }
    for name, program in programs.items():
        result[name] = program.summary()
    result["jaxrl"]["final_return"] = evaluate(cfg, programs["jaxrl"], keys[-1])
    result["jaxrl"]["training_return"] = training_return(programs["jaxrl"])
    if peer is not None:
        run_s = [run["run_s"] for run in peer_runs]
        result["rejax"] = {
            "steps_per_s": peer_runs[0]["env_steps"] / median(run_s),
            "best_steps_per_s": peer_runs[0]["env_steps"] / min(run_s),
            "run_s": run_s,
            "lower_s": peer_compile["lower_s"],
            "compile_s": peer_compile["compile_s"],
            "final_return": peer_runs[-1]["final_return"],
        }
    return result


def fmt_rate(x: float | None) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k"


def table(results: list[dict]) -> str:
    """Markdown tables: steps/s (medians), compile seconds and final returns, then ratios."""
    sharded = any("sharded" in r for r in results)
    head = (
        "| seeds | steps/seed | env stack (a) | gymnax raw (a) | rollout-only (b) "
        "| jaxrl train (c) | Rejax train (d) |"
        + (" jaxrl sharded (e) |" if sharded else "")
        + " compile jaxrl / Rejax | return jaxrl / Rejax |"
    )
    lines = [head, "|" + " --- |" * (9 + sharded)]
    for r in results:
        rejax = r.get("rejax")
        jaxrl_compile = r["jaxrl"]["lower_s"] + r["jaxrl"]["compile_s"]
        rejax_compile = f"{rejax['lower_s'] + rejax['compile_s']:.1f} s" if rejax else "-"
        rejax_return = f"{rejax['final_return']:.0f}" if rejax else "-"
        steps = f"{r['steps_per_seed']:,}" + (" (reduced)" if r["reduced"] else "")
        cells = [
            str(r["seeds"]),
            steps,
            *(fmt_rate(r[name]["steps_per_s"]) for name in ("env", "gymnax", "rollout", "jaxrl")),
            fmt_rate(rejax["steps_per_s"]) if rejax else "-",
        ]
        if sharded:
            cells.append(fmt_rate(r["sharded"]["steps_per_s"]) if "sharded" in r else "-")
        cells += [
            f"{jaxrl_compile:.1f} s / {rejax_compile}",
            f"{r['jaxrl']['final_return']:.0f} / {rejax_return}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| seeds | jaxrl / Rejax | jaxrl / Rejax per repeat | train / rollout-only "
        "| rollout / env stack | env stack / gymnax | jaxrl / PureJaxRL (cross-run) |"
        + (" sharded / jaxrl | runner / Rejax | runner / PureJaxRL |" if sharded else ""),
        "|" + " --- |" * (7 + 3 * sharded),
    ]
    for r in results:
        train = r["jaxrl"]["steps_per_s"]
        vs_rejax = paired = "-"
        if "rejax" in r:
            vs_rejax = f"{train / r['rejax']['steps_per_s']:.2f}"
            pairs = [b / a for a, b in zip(r["jaxrl"]["run_s"], r["rejax"]["run_s"], strict=True)]
            paired = f"{median(pairs):.2f} ({min(pairs):.2f}-{max(pairs):.2f})"
        purejaxrl = {1: PUREJAXRL_1_SEED, 8: PUREJAXRL_8_SEEDS}.get(r["seeds"])
        full = r["steps_per_seed"] >= 499_712 and not r["reduced"]
        vs_pjr = f"{train / purejaxrl:.2f} (vs {purejaxrl // 1000}k)" if purejaxrl and full else "-"
        cells = [
            str(r["seeds"]),
            vs_rejax,
            paired,
            f"{train / r['rollout']['steps_per_s']:.2f}",
            f"{r['rollout']['steps_per_s'] / r['env']['steps_per_s']:.2f}",
            f"{r['env']['steps_per_s'] / r['gymnax']['steps_per_s']:.2f}",
            vs_pjr,
        ]
        if sharded:
            # the runner's default: runs sharded over every device when there are enough
            runner = r["sharded"]["steps_per_s"] if "sharded" in r else train
            cells += [
                f"{r['sharded']['steps_per_s'] / train:.2f}" if "sharded" in r else "-",
                f"{runner / r['rejax']['steps_per_s']:.2f}" if "rejax" in r else "-",
                f"{runner / purejaxrl:.2f}" if purejaxrl and full else "-",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", default="1,8,64", help="comma-separated vmapped seed counts")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (3; quick: 1)")
    parser.add_argument("--steps-per-seed", type=int, help="env steps per seed (5e5; quick: 16384)")
    parser.add_argument(
        "--steps-override",
        default="",
        help="fewer steps per seed for some seed counts, e.g. 64=125000 (marked in the table)",
    )
    parser.add_argument("--skip-peer", action="store_true", help="no Rejax, no peer venv")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: defaults of 16384 steps per seed, 1 repeat"
    )
    parser.add_argument(
        "--host-devices",
        type=int,
        default=1,
        help="also time jaxrl training with seeds sharded over this many host CPU devices "
        "(column e; e.g. the core count); the other columns use one device as before",
    )
    parser.add_argument("--base-seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    if args.steps_per_seed is None:
        args.steps_per_seed = 16_384 if args.quick else 500_000
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    overrides = parse_overrides(args.steps_override)
    seed_counts = [int(s) for s in args.seeds.split(",")]

    if args.host_devices > 1 and os.environ.get("JAX_NUM_CPU_DEVICES") != str(args.host_devices):
        # Importing jaxrl/gymnax already started the XLA backend with one device; the
        # device count is read at start-up, so run again with it set.
        os.environ["JAX_NUM_CPU_DEVICES"] = str(args.host_devices)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    info = machine()
    info["host_devices"] = len(jax.devices())
    peer = None
    if not args.skip_peer:
        peer = Peer(ensure_peer_venv())
        info["peer"] = peer.request(op="versions")["versions"]
    print("machine: " + json.dumps(info), file=sys.stderr)
    results = []
    try:
        for seeds in seed_counts:
            steps = overrides.get(seeds, args.steps_per_seed)
            results.append(measure(args, seeds, steps, peer))
    finally:
        if peer is not None:
            peer.close()
    command = "python " + " ".join([str(Path(sys.argv[0])), *sys.argv[1:]])
    print(f"\n{command}\nmachine: {json.dumps(info)}\nmedians of {args.repeats} repeat(s)\n")
    print(table(results))
    if args.json:
        args.json.write_text(
            json.dumps({"command": command, "machine": info, "results": results}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
