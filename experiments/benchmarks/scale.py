"""Scaling benchmarks: steps/s against devices, actor threads, vmapped seeds; brax ant; LPG.

One script, one subcommand per sweep; each prints a markdown table (with the machine it ran
on: devices, platform, jax version, CPU count, load average) and, with ``--json PATH``,
writes every measurement (rewritten after each row, so a run cut short keeps what it did).

``devices``
    PPO CartPole (gymnax, ``ppo.Config()``) with a fixed batch of ``--runs`` seeds whose run
    axis is sharded over 1, 2, 4, 8 devices, and one data-parallel agent
    (``Config.data_shards = D``, ``--dp-envs`` envs, one shard per device under
    ``shard_map``) over the same counts. Each count runs in its own subprocess with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before JAX starts. On a CPU
    those devices are threads sharing the machine's cores, so with fewer cores than devices
    expect flat or falling steps/s. On a GPU machine (``--platform auto``) the devices are
    the GPUs; counts above the number present are skipped (``--platform cpu`` forces
    host devices there too).
``actors``
    Sebulba (``jaxrl.sebulba``) PPO on host CartPole-v1 (gymnasium and envpool) against the
    number of actor threads, via ``experiments/sebulba/throughput.py``'s ``measure`` (a
    light learner, so the actors set the pace).
``seeds``
    PPO CartPole training, ``jit(vmap(ppo.train))`` over 1, 2, 4, ... ``--max-seeds``
    seeds: ``ppo_throughput.py``'s program (init untimed, train compiled apart with
    ``.lower().compile()``, then timed). PureJaxRL's published figure is about 1e7 env
    steps/s for 2048 CartPole agents on an A100 (whole run, compile included); the target
    here is >= 2e7 steady-state on an H100/H200. Large seed counts train fewer steps per
    seed (``--max-total-steps``; marked "reduced"): throughput is per step, the learning
    curve is not the point.
``brax``
    PPO on brax ``ant`` (``jaxrl.envs.make("brax/ant", backend=...)``), one agent with
    ``--brax-envs`` envs. The defaults on an accelerator follow brax's ant PPO shape
    (4096 envs, 80 steps per update = 16 unrolls of 5, 32 minibatches, 4 epochs, observation
    normalisation); jaxrl uses one MLP width for actor and critic (``--brax-hidden``). On a
    CPU the defaults are tiny, only to show the script works (brax compiles for minutes).
``lpg``
    LPG meta-training throughput: ``lpg_throughput.py``'s ``measure_one`` and ``table``,
    in this process (so ``maxrss`` is this process's running peak).
``all``
    The sweeps in ``--sweeps`` order (default all five), ``devices`` first: its
    subprocesses must start before this process takes the accelerator.

Defaults depend on the backend (``cpu`` or an accelerator) so that each default sweep takes
a few minutes on a 2-core CPU and on one GPU. Usage::

    python experiments/benchmarks/scale.py devices --json /tmp/scale_devices.json
    python experiments/benchmarks/scale.py seeds --max-seeds 256
    python experiments/benchmarks/scale.py actors --actors 1,2,4
    python experiments/benchmarks/scale.py brax --brax-envs 4096 --brax-backends positional,mjx
    python experiments/benchmarks/scale.py lpg --lifetimes 1,32,256
    python experiments/benchmarks/scale.py all --json /tmp/scale.json      # on the GPU
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Nothing here imports JAX at module level: ``devices`` must not start a backend (on a GPU
# it would preallocate the memory its subprocesses need).

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SWEEPS = ("devices", "seeds", "actors", "brax", "lpg")
PUREJAXRL_A100_2048 = 1e7  # PureJaxRL's published CartPole figure, 2048 agents, A100
TARGET_H100_2048 = 2e7
CHILD = "_devices_child"  # hidden subcommand: one device count, JSON on stdout


# ------------------------------------------------------------------ shared helpers


def load_module(path: Path, name: str):
    """Imports a sibling script (``experiments`` is not a package) under ``name``."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def ppo_throughput():
    return load_module(HERE / "ppo_throughput.py", "jaxrl_bench_ppo_throughput")


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict:
    """The machine without starting JAX: CPUs, load, Python, package versions, revision."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": cores,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "jax": version("jax"),
        "jaxlib": version("jaxlib"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jaxrl": revision(),
    }


def revision() -> str:
    """The commit measured, ``+dirty`` if ``jaxrl/`` has uncommitted changes."""
    try:
        git = lambda *a: subprocess.run(
            ["git", *a], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        return git("rev-parse", "--short", "HEAD") + (
            "+dirty" if git("status", "--porcelain", "jaxrl") else ""
        )
    except (OSError, subprocess.CalledProcessError):
        return "?"


def jax_info() -> dict:
    """The JAX backend this process runs on (starts it)."""
    import jax

    devices = jax.devices()
    return {
        "platform": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
        "devices": [str(d) for d in devices],
        "jax_version": jax.__version__,
    }


def accelerator() -> bool:
    import jax

    return jax.default_backend() != "cpu"


def peak_memory_gib() -> float | None:
    """Peak bytes in use on device 0 so far (accelerators), else None."""
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001  (CPU devices raise or return None)
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**30


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def rate(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    return f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def powers_of_two(maximum: int) -> list[int]:
    """1, 2, 4, ... up to ``maximum`` (and ``maximum`` itself if it is not a power of 2)."""
    out, n = [], 1
    while n <= maximum:
        out.append(n)
        n *= 2
    if out and out[-1] != maximum and maximum > 0:
        out.append(maximum)
    return out


def steps_for(seeds: int, steps_per_seed: int, max_total: int, per_update: int) -> int:
    """Env steps per seed: ``steps_per_seed``, cut so ``seeds * steps <= max_total`` (0: no
    cap), a whole number of updates of ``per_update`` steps and at least 4 updates."""
    steps = steps_per_seed if max_total <= 0 else min(steps_per_seed, max_total // seeds)
    return max(4, steps // per_update) * per_update


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Report:
    """Collects every sweep's rows, prints tables, keeps ``--json`` up to date."""

    def __init__(self, args, argv: list[str]):
        self.path = Path(args.json) if args.json else None
        self.data = {
            "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *argv]),
            "host": host_info(),
            "sweeps": {},
        }

    def start(self, sweep: str, settings: dict, machine: dict | None = None) -> list:
        rows: list = []
        self.data["sweeps"][sweep] = {
            "settings": settings,
            "machine": machine,
            "load_avg_before": [round(x, 2) for x in os.getloadavg()],
            "rows": rows,
        }
        self.save()
        return rows

    def finish(self, sweep: str, table: str, notes: list[str]) -> None:
        entry = self.data["sweeps"][sweep]
        entry["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        entry["table"] = table
        self.save()
        machine = entry["machine"] or {}
        print(f"\n### {sweep}\n")
        print(f"`{self.data['command']}`\n")
        print(
            f"machine: {self.data['host']['cpu_model']}, {self.data['host']['cpu_count']} CPUs, "
            f"platform {machine.get('platform', '(per row)')}, "
            f"devices {machine.get('devices', '(per row)')}, jax {self.data['host']['jax']}, "
            f"Python {self.data['host']['python']}, jaxrl {self.data['host']['jaxrl']}; "
            f"load average (1/5/15 min) before {entry['load_avg_before']}, "
            f"after {entry['load_avg_after']}\n"
        )
        print(table)
        for note in notes:
            print(f"\n{note}")
        sys.stdout.flush()

    def save(self) -> None:
        if self.path is not None:
            self.path.write_text(json.dumps(self.data, indent=1, default=str) + "\n")


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------ devices


def child_env(count: int, platform_: str) -> dict:
    """The environment of a ``devices`` subprocess: ``count`` forced host devices."""
    env = dict(os.environ)
    env.pop("JAX_NUM_CPU_DEVICES", None)  # it would override XLA_FLAGS
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={count}"])
    if platform_ == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    return env


def sweep_devices(args, report: Report) -> None:
    settings = {k: getattr(args, k) for k in ("device_counts", "runs", "run_steps", "dp_envs",
                                               "dp_updates", "platform", "repeats")}  # fmt: skip
    settings["repeats"] = args.repeats or 3
    rows = report.start("devices", settings)
    for count in ints(args.device_counts):
        log(f"[devices] {count} device(s): subprocess")
        spec = json.dumps(settings | {"count": count, "base_seed": args.base_seed})
        proc = subprocess.run(
            [sys.executable, __file__, CHILD, spec],
            env=child_env(count, args.platform),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            rows.append({"count": count, "error": f"exit {proc.returncode}"})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        report.save()
        log(f"[devices] {count}: {json.dumps(summary_of(rows[-1]))}")
    report.finish("devices", devices_table(rows, settings), devices_notes(rows, settings))


def summary_of(row: dict) -> dict:
    out = {k: row[k] for k in ("count", "platform", "error", "skipped") if k in row}
    for name in ("run_axis", "data_parallel"):
        if name in row:
            out[name] = round(row[name]["steps_per_s"])
    return out


def devices_child(spec: dict) -> dict:
    """One device count: the sharded run axis and the data-parallel agent, interleaved."""
    import jax

    from jaxrl.algorithms import ppo

    pt = ppo_throughput()
    count = spec["count"]
    info = jax_info()
    row = {"count": count, "platform": info["platform"], "devices": info["devices"],
           "device_kind": info["device_kind"], "load_avg_before": os.getloadavg()[0]}  # fmt: skip
    if len(jax.devices()) < count:
        return row | {"skipped": f"only {len(jax.devices())} {info['platform']} device(s)"}
    programs = {}
    if spec["runs"] % count == 0:
        cfg = ppo.Config(total_timesteps=spec["run_steps"])
        keys = jax.random.split(jax.random.key(spec["base_seed"]), spec["runs"])
        programs["run_axis"] = pt.sharded_train_program(cfg, keys, count)
    try:
        dp_cfg = ppo.Config(
            num_envs=spec["dp_envs"],
            total_timesteps=spec["dp_envs"] * 128 * spec["dp_updates"],
            data_shards=count,
        )
    except Exception as e:  # noqa: BLE001  (ConfigError: shards do not divide)
        row["data_parallel_error"] = str(e)
    else:
        programs["data_parallel"] = data_parallel_program(dp_cfg, spec["base_seed"], count)
    for _ in range(spec["repeats"]):
        for program in programs.values():
            program.run()
    for name, program in programs.items():
        row[name] = program.summary()
        row[name]["env_steps"] = program.env_steps
    row["load_avg_after"] = os.getloadavg()[0]
    return row


def data_parallel_program(cfg, seed: int, count: int):
    """One PPO agent, ``cfg.data_shards`` shards, one per device (``shard_map``) when > 1."""
    import jax

    from jaxrl.algorithms import ppo
    from jaxrl.distributed import data_parallel as dp
    from jaxrl.envs import make

    pt = ppo_throughput()
    env, _ = make("CartPole-v1")
    hp = ppo.HParams.make()
    state = jax.jit(lambda k, h: ppo.init(cfg, env, k, h))(jax.random.key(seed), hp)
    train = lambda s, h: ppo.train(cfg, env, s, h, cfg.num_updates)
    steps = cfg.num_updates * cfg.steps_per_update
    if count == 1:
        return pt.compile_program(train, (state, hp), steps)
    mesh = dp.data_mesh(count)
    with jax.set_mesh(mesh):  # the mesh active while tracing picks shard_map
        state = dp.place(state, ppo.DATA_SHARDED, mesh)
        return pt.compile_program(train, (state, hp), steps)


def devices_table(rows: list[dict], settings: dict) -> str:
    base = {}
    for name in ("run_axis", "data_parallel"):
        first = next((r for r in rows if name in r), None)
        base[name] = first[name]["steps_per_s"] if first else None
    out = []
    for r in rows:
        cells = [str(r["count"]), r.get("platform", "-")]
        for name in ("run_axis", "data_parallel"):
            m = r.get(name)
            if m is None:
                cells += [r.get("error") or r.get("skipped") or r.get(f"{name}_error", "-"),
                          "-", "-"]  # fmt: skip
                continue
            ratio = m["steps_per_s"] / base[name] if base[name] else float("nan")
            cells += [f"{rate(m['steps_per_s'])} ({rate(m['best_steps_per_s'])})",
                      f"{ratio:.2f}", f"{m['lower_s'] + m['compile_s']:.1f}"]  # fmt: skip
        load = [r.get("load_avg_before"), r.get("load_avg_after")]
        cells.append(" / ".join("-" if x is None else f"{x:.1f}" for x in load))
        out.append(cells)
    head = ["devices", "platform",
            f"run axis: {settings['runs']} seeds, steps/s median (best)", "vs 1 device",
            "compile s", f"data-parallel: 1 agent, {settings['dp_envs']} envs, steps/s (best)",
            "vs 1 device", "compile s", "load 1-min before / after"]  # fmt: skip
    return markdown(head, out)


def devices_notes(rows: list[dict], settings: dict) -> list[str]:
    cores = host_info()["usable_cores"]
    notes = [
        f"PPO CartPole (`ppo.Config()`: 4 envs x 128 steps per seed, 4 epochs x 4 minibatches); "
        f"run axis: {settings['runs']} seeds x {settings['run_steps']:,} steps, seeds split "
        f"evenly over the devices (`distributed.run_mesh` + `shard_runs`); data-parallel: one "
        f"agent with {settings['dp_envs']} envs x 128 steps x {settings['dp_updates']} updates, "
        f"`data_shards` = devices under `shard_map` (1 device: the plain program). Median of "
        f"{settings['repeats']} interleaved repeats; compile (lower + XLA) timed apart."
    ]
    if any(r.get("platform") == "cpu" for r in rows):
        notes.append(
            f"Forced host devices are XLA CPU threads on the same {cores} usable core(s): past "
            f"{cores} devices there is no extra compute, so flat or falling steps/s is expected; "
            f"data-parallel steps also wait on an all-reduce between device threads every "
            f"minibatch."
        )
    return notes


# ------------------------------------------------------------------ seeds


def sweep_seeds(args, report: Report) -> None:
    import jax

    from jaxrl.algorithms import ppo

    pt = ppo_throughput()
    accel = accelerator()
    max_seeds = args.max_seeds or (2048 if accel else 256)
    counts = ints(args.seed_counts) if args.seed_counts else powers_of_two(max_seeds)
    counts = [c for c in counts if c <= max_seeds]
    steps_per_seed = args.steps_per_seed or (500_000 if accel else 32_768)
    max_total = args.max_total_steps if args.max_total_steps is not None else (
        2**28 if accel else 2**21)  # fmt: skip
    repeats = args.repeats or 2
    devices = len(jax.devices()) if args.seed_devices == "all" else int(args.seed_devices)
    settings = {"counts": counts, "steps_per_seed": steps_per_seed, "max_total_steps": max_total,
                "repeats": repeats, "devices": devices, "warmup": args.warmup}  # fmt: skip
    rows = report.start("seeds", settings, jax_info())
    per_update = ppo.Config().steps_per_update
    for seeds in counts:
        steps = steps_for(seeds, steps_per_seed, max_total, per_update)
        cfg = ppo.Config(total_timesteps=steps)
        keys = jax.random.split(jax.random.key(args.base_seed), seeds)
        n_dev = devices if seeds % devices == 0 else 1
        load_before = os.getloadavg()[0]
        program = pt.sharded_train_program(cfg, keys, n_dev)
        for _ in range(args.warmup):
            program.run()
        program.run_s.clear()
        for _ in range(repeats):
            program.run()
        row = {
            "seeds": seeds,
            "steps_per_seed": cfg.num_updates * cfg.steps_per_update,
            "reduced": cfg.num_updates * cfg.steps_per_update < steps_per_seed,
            "devices": n_dev,
            **program.summary(),
            "training_return": pt.training_return(program),
            "peak_memory_gib": peak_memory_gib(),
            "load_avg_1min": [load_before, os.getloadavg()[0]],
        }
        program.output = None  # free the device buffers before the next count
        rows.append(row)
        report.save()
        log(f"[seeds] {seeds}: {rate(row['steps_per_s'])} steps/s, "
            f"compile {row['lower_s'] + row['compile_s']:.1f} s")  # fmt: skip
    out = []
    for r in rows:
        mem = r["peak_memory_gib"]
        out.append([
            str(r["seeds"]),
            f"{r['steps_per_seed']:,}" + (" (reduced)" if r["reduced"] else ""),
            str(r["devices"]),
            f"{rate(r['steps_per_s'])} ({rate(r['best_steps_per_s'])})",
            rate(r["steps_per_s"] / r["seeds"]),
            f"{r['lower_s'] + r['compile_s']:.1f}",
            f"{r['training_return']:.0f}",
            "-" if mem is None else f"{mem:.2f}",
            " / ".join(f"{x:.1f}" for x in r["load_avg_1min"]),
        ])  # fmt: skip
    head = ["seeds", "steps/seed", "devices", "env steps/s median (best)", "per seed",
            "compile s", "training return", "peak device GiB",
            "load 1-min before / after"]  # fmt: skip
    notes = [
        f"`jit(vmap(ppo.train))` over seeds, `ppo.Config()` (PureJaxRL CartPole: 4 envs x 128 "
        f"steps, 4 epochs x 4 minibatches, 64-64 tanh); init untimed, compile (lower + XLA) "
        f"apart, median of {repeats} timed runs. Steps per seed capped so seeds x steps <= "
        f"{max_total:,} (0: no cap); training return = mean episode return of the last 10 "
        f"updates (low when the run is short).",
        f"Reference: PureJaxRL reports ~{PUREJAXRL_A100_2048:.0e} steps/s for 2048 agents on an "
        f"A100 (its timing includes compilation); target >= {TARGET_H100_2048:.0e} on an "
        f"H100/H200.",
    ]
    report.finish("seeds", markdown(head, out), notes)


# ------------------------------------------------------------------ actors


def sweep_actors(args, report: Report) -> None:
    import jax

    if args.sync_dispatch:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    sebulba_tp = load_module(ROOT / "experiments" / "sebulba" / "throughput.py",
                             "jaxrl_bench_sebulba_throughput")  # fmt: skip
    repeats = args.repeats or 1
    settings = {"actors": ints(args.actors), "host_envs": args.host_envs.split(","),
                "envs_per_actor": args.envs_per_actor, "rollout_len": args.actor_rollout_len,
                "updates": args.actor_updates, "warmup": args.actor_warmup, "repeats": repeats,
                "sync_dispatch": args.sync_dispatch}  # fmt: skip
    rows = report.start("actors", settings, jax_info())
    for env_id in settings["host_envs"]:
        for actors in settings["actors"]:
            load_before = os.getloadavg()[0]
            try:
                reps = [
                    sebulba_tp.measure(env_id, actors, args.envs_per_actor,
                                       args.actor_rollout_len, args.actor_updates,
                                       args.actor_warmup)
                    for _ in range(repeats)
                ]  # fmt: skip
            except Exception as e:  # noqa: BLE001  (e.g. envpool not installed here)
                rows.append({"env": env_id, "actors": actors, "error": repr(e)[:300]})
                log(f"[actors] {env_id} x {actors}: {rows[-1]['error']}")
                continue
            row = {k: (median([r[k] for r in reps]) if isinstance(v, float) else v)
                   for k, v in reps[0].items()}  # fmt: skip
            row["steps_per_s_all"] = [r["steps_per_s"] for r in reps]
            row["load_avg_1min"] = [load_before, os.getloadavg()[0]]
            rows.append(row)
            report.save()
            log(f"[actors] {env_id} x {actors}: {rate(row['steps_per_s'])} steps/s")
    base = {}
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["env"], str(r["actors"]), r["error"][:80], "-", "-", "-", "-", "-"])
            continue
        base.setdefault(r["env"], r["steps_per_s"])
        out.append([
            r["env"], str(r["actors"]),
            f"{r['steps_per_s']:,.0f} [" + "; ".join(f"{x:,.0f}" for x in r["steps_per_s_all"])
            + "]",
            f"{r['steps_per_s'] / base[r['env']]:.2f}",
            f"{r['act_us_per_step']:.0f}", f"{r['env_us_per_step']:.0f}",
            f"{r['policy_lag_mean']:.2f}",
            " / ".join(f"{x:.1f}" for x in r["load_avg_1min"]),
        ])  # fmt: skip
    head = ["host env", "actor threads", "env steps/s median [runs]", "vs 1 actor",
            "policy call µs/step", "env step µs/step", "policy lag",
            "load 1-min before / after"]  # fmt: skip
    notes = [
        f"Sebulba PPO (CartPole net, 1 epoch x 1 minibatch so the actors set the pace), "
        f"{args.envs_per_actor} envs per actor thread, rollouts of {args.actor_rollout_len}, "
        f"{args.actor_updates} learner updates with the first {args.actor_warmup} excluded; "
        f"compilation excluded (`experiments/sebulba/throughput.py`'s `measure`). Dispatch: "
        f"{'synchronous' if args.sync_dispatch else 'asynchronous (default)'}."
    ]
    report.finish("actors", markdown(head, out), notes)


# ------------------------------------------------------------------ brax


def sweep_brax(args, report: Report) -> None:
    from jaxrl.algorithms import ppo
    from jaxrl.envs import make

    accel = accelerator()
    pick = lambda value, gpu, cpu: value if value is not None else (gpu if accel else cpu)
    shape = {
        "num_envs": pick(args.brax_envs, 4096, 8),
        "rollout_len": pick(args.brax_rollout_len, 80, 16),
        "num_minibatches": pick(args.brax_minibatches, 32, 2),
        "num_epochs": pick(args.brax_epochs, 4, 1),
        "hidden": tuple(ints(args.brax_hidden)),
    }
    updates = pick(args.brax_updates, 5, 2)
    repeats = args.repeats or (3 if accel else 1)
    settings = shape | {"updates": updates, "repeats": repeats,
                        "backends": args.brax_backends.split(","), "env": "ant"}  # fmt: skip
    rows = report.start("brax", settings, jax_info())
    hp = ppo.HParams.make(discount=0.97, learning_rate=3e-4, ent_coef=1e-2)
    for backend in settings["backends"]:
        env, _ = make("brax/ant", backend=backend)
        cfg = ppo.Config(normalize_obs=True, total_timesteps=updates * shape["num_envs"]
                         * shape["rollout_len"], **shape)  # fmt: skip
        load_before = os.getloadavg()[0]
        init_s, program = brax_program(cfg, env, hp, updates, args.base_seed)
        for _ in range(repeats):
            program.run()
        row = {"backend": backend, "init_s_incl_compile": init_s, **program.summary(),
               "env_steps": program.env_steps, "peak_memory_gib": peak_memory_gib(),
               "load_avg_1min": [load_before, os.getloadavg()[0]]}  # fmt: skip
        program.output = None
        rows.append(row)
        report.save()
        log(f"[brax] ant/{backend}: {rate(row['steps_per_s'])} steps/s, "
            f"compile {row['lower_s'] + row['compile_s']:.1f} s")  # fmt: skip
    out = [[
        f"ant ({r['backend']})", f"{shape['num_envs']:,}", f"{r['env_steps']:,}",
        f"{rate(r['steps_per_s'])} ({rate(r['best_steps_per_s'])})",
        f"{r['lower_s'] + r['compile_s']:.1f}", f"{r['init_s_incl_compile']:.1f}",
        " / ".join(f"{x:.1f}" for x in r["load_avg_1min"]),
    ] for r in rows]  # fmt: skip
    head = ["env (pipeline)", "envs", "env steps timed", "env steps/s median (best)",
            "train compile s", "init s (with compile)", "load 1-min before / after"]  # fmt: skip
    notes = [
        f"jaxrl PPO on brax ant, one agent: {shape['num_envs']} envs x {shape['rollout_len']} "
        f"steps per update, {shape['num_epochs']} epochs x {shape['num_minibatches']} "
        f"minibatches, MLP {shape['hidden']} (actor and critic), observation normalisation, "
        f"discount 0.97, lr 3e-4, entropy 0.01; {updates} updates per timed call, median of "
        f"{repeats}. Episode length 1000, action repeat 1."
    ]
    report.finish("brax", markdown(head, out), notes)


def brax_program(cfg, env, hp, updates: int, seed: int):
    """``(init seconds incl. its compile, compiled ppo.train program)`` for one brax env."""
    import jax

    from jaxrl.algorithms import ppo

    t0 = time.perf_counter()
    init = jax.jit(lambda k, h: ppo.init(cfg, env, k, h))
    state = jax.block_until_ready(init(jax.random.key(seed), hp))
    init_s = time.perf_counter() - t0
    train = lambda s, h: ppo.train(cfg, env, s, h, updates)
    return init_s, ppo_throughput().compile_program(
        train, (state, hp), updates * cfg.steps_per_update
    )


# ------------------------------------------------------------------ lpg


def sweep_lpg(args, report: Report) -> None:
    lpg_tp = load_module(HERE / "lpg_throughput.py", "jaxrl_bench_lpg_throughput")
    accel = accelerator()
    lifetimes = ints(args.lifetimes) if args.lifetimes else ([1, 32, 256] if accel else [1, 8])
    envs = args.lpg_envs.split(",")
    unknown = set(envs) - set(lpg_tp.ENVS)
    if unknown:
        raise SystemExit(f"unknown LPG env(s) {sorted(unknown)}; choose from {sorted(lpg_tp.ENVS)}")
    opts = argparse.Namespace(preset=args.lpg_preset, iters=args.lpg_iters, min_iters=2,
                              time_budget_s=args.lpg_time_budget_s, seed=args.base_seed,
                              compile_only=False)  # fmt: skip
    settings = {"lifetimes": lifetimes, "envs": envs, "preset": args.lpg_preset,
                "iters": args.lpg_iters, "time_budget_s": args.lpg_time_budget_s}  # fmt: skip
    rows = report.start("lpg", settings, jax_info())
    for env_key in envs:
        for n in lifetimes:
            row = lpg_tp.measure_one(env_key, n, opts)
            row["peak_memory_gib"] = peak_memory_gib()
            rows.append(row)
            report.save()
            log(f"[lpg] {env_key} x {n}: {row['meta_updates_per_s']:.3g} meta-updates/s, "
                f"{rate(row['env_steps_per_s'])} env steps/s")  # fmt: skip
    notes = [
        f"`lpg_throughput.py`'s `measure_one` (preset `{args.lpg_preset}`), run in this process:"
        " maxrss is the process's peak so far, not the configuration's.",
        "GROOVE-size extrapolation: " + "; ".join(lpg_tp.extrapolate(rows, 512, 5000)),
    ]
    report.finish("lpg", lpg_tp.table(rows), notes)


# ------------------------------------------------------------------ CLI


def add_devices_args(p) -> None:
    g = p.add_argument_group("devices")
    g.add_argument("--device-counts", default="1,2,4,8", help="device counts (one subprocess each)")
    g.add_argument("--runs", type=int, default=8, help="seeds on the sharded run axis")
    g.add_argument("--run-steps", type=int, default=32_768, help="env steps per seed (run axis)")
    g.add_argument("--dp-envs", type=int, default=64, help="envs of the data-parallel agent")
    g.add_argument("--dp-updates", type=int, default=8, help="updates (x dp-envs x 128 steps)")
    g.add_argument("--platform", choices=("auto", "cpu"), default="auto",
                   help="cpu: forced host devices even where a GPU is present")  # fmt: skip


def add_seeds_args(p) -> None:
    g = p.add_argument_group("seeds")
    g.add_argument("--max-seeds", type=int, help="largest seed count (2048 on GPU, 256 on CPU)")
    g.add_argument("--seed-counts", default="", help="explicit counts, e.g. 1,8,64 (else 2^k)")
    g.add_argument("--steps-per-seed", type=int, help="env steps per seed (500k GPU, 32,768 CPU)")
    g.add_argument("--max-total-steps", type=int,
                   help="cap on seeds x steps per seed (2^28 GPU, 2^21 CPU; 0: none)")  # fmt: skip
    g.add_argument("--seed-devices", default="1", help="devices to shard seeds over, or 'all'")
    g.add_argument("--warmup", type=int, default=0, help="untimed runs after compiling")


def add_actors_args(p) -> None:
    g = p.add_argument_group("actors")
    g.add_argument("--actors", default="1,2,4", help="actor thread counts")
    g.add_argument("--host-envs", default="gymnasium/CartPole-v1,envpool/CartPole-v1")
    g.add_argument("--envs-per-actor", type=int, default=8)
    g.add_argument("--actor-rollout-len", type=int, default=32)
    g.add_argument("--actor-updates", type=int, default=40)
    g.add_argument("--actor-warmup", type=int, default=5)
    g.add_argument("--sync-dispatch", action="store_true",
                   help="jax_cpu_enable_async_dispatch=False (CPU acting)")  # fmt: skip


def add_brax_args(p) -> None:
    g = p.add_argument_group("brax")
    g.add_argument("--brax-envs", type=int, help="num_envs (4096 GPU, 8 CPU)")
    g.add_argument("--brax-rollout-len", type=int, help="steps per update per env (80 / 16)")
    g.add_argument("--brax-minibatches", type=int, help="(32 / 2)")
    g.add_argument("--brax-epochs", type=int, help="(4 / 1)")
    g.add_argument("--brax-updates", type=int, help="updates per timed call (5 / 2)")
    g.add_argument("--brax-hidden", default="64,64", help="MLP widths")
    g.add_argument("--brax-backends", default="positional",
                   help="brax pipelines, e.g. positional,mjx,generalized")  # fmt: skip


def add_lpg_args(p) -> None:
    g = p.add_argument_group("lpg")
    g.add_argument("--lifetimes", default="", help="lifetime counts (1,32,256 GPU; 1,8 CPU)")
    g.add_argument("--lpg-envs", default="chain_short", help="chain_short,tabular_dense")
    g.add_argument("--lpg-preset", default="default", choices=("default", "groove"))
    g.add_argument("--lpg-iters", type=int, default=5, help="timed meta-updates (max)")
    g.add_argument("--lpg-time-budget-s", type=float, default=30.0)


ADDERS = {"devices": add_devices_args, "seeds": add_seeds_args, "actors": add_actors_args,
          "brax": add_brax_args, "lpg": add_lpg_args}  # fmt: skip
RUNNERS = {"devices": sweep_devices, "seeds": sweep_seeds, "actors": sweep_actors,
           "brax": sweep_brax, "lpg": sweep_lpg}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", default=None, help="write every measurement here")
    common.add_argument("--repeats", type=int, help="timed runs per point (sweep default)")
    common.add_argument("--base-seed", type=int, default=0)
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    sub = p.add_subparsers(dest="sweep", required=True)
    for name, add in ADDERS.items():
        add(sub.add_parser(name, parents=[common], help=f"the {name} sweep"))
    every = sub.add_parser("all", parents=[common], help="several sweeps, devices first")
    every.add_argument("--sweeps", default=",".join(SWEEPS))
    for add in ADDERS.values():
        add(every)
    return p


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == CHILD:
        print(json.dumps(devices_child(json.loads(argv[1])), default=str))
        return {}
    args = parser().parse_args(argv)
    sweeps = args.sweeps.split(",") if args.sweep == "all" else [args.sweep]
    unknown = set(sweeps) - set(SWEEPS)
    if unknown:
        raise SystemExit(f"unknown sweep(s) {sorted(unknown)}; choose from {SWEEPS}")
    sweeps = sorted(sweeps, key=SWEEPS.index)  # devices first (subprocesses)
    report = Report(args, argv)
    log("host: " + json.dumps(report.data["host"]))
    for name in sweeps:
        RUNNERS[name](args, report)
    return report.data


if __name__ == "__main__":
    main()
