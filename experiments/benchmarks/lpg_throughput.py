"""LPG meta-training throughput: meta-updates/s, agent env steps/s, compile time, memory.

For each (environment, number of vmapped lifetimes) it builds ``lpg.init`` and one
``lpg.update`` (the whole meta-update: ``K + 1`` rollouts, ``K`` agent and critic steps per
lifetime, the meta-gradient, the Adam step, lifetime resets), compiles the update apart with
``jit(...).lower(state).compile()``, then times ``--iters`` steady-state calls, each ended
by ``block_until_ready``. Reported per configuration:

* ``lower_s``, ``compile_s``: tracing + lowering, and XLA compilation, of the update;
* ``meta_updates_per_s``: ``1 / median`` seconds per call (``best`` = ``1 / min``);
* ``env_steps_per_s``: agent env steps across all lifetimes per second, with
  ``env steps per meta-update = num_lifetimes * num_envs * rollout_len * (num_inner + 1)``
  (the ``K`` inner rollouts plus the fresh rollout the meta-objective scores);
* ``maxrss_mib``: peak resident memory of the process (``resource.getrusage``), and
  ``rss_before_compile_mib`` for the baseline after imports and ``lpg.init``;
* ``memory_analysis``: the compiled update's argument / output / temp / code bytes as XLA
  reports them (``Compiled.memory_analysis()``; absent where the backend has none).

Each configuration runs in its own subprocess (unless ``--in-process``), so ``maxrss`` is
that configuration's peak, not the largest so far.

    python experiments/benchmarks/lpg_throughput.py --lifetimes 1,32,256 \
        --envs chain_short,tabular_dense --out /tmp/lpg_throughput.json
    python experiments/benchmarks/lpg_throughput.py --preset groove --lifetimes 1,32 --iters 3

Presets: ``default`` is ``lpg.Config()`` (B = 16 envs, T = 20, K = 5, LSTM 32, tabular
agent), what ``experiments/meta/lpg_chain.py`` trains with; ``groove`` is GROOVE's
configuration (B = 64, T = 20, K = 5, a 256-unit core, lifetimes of 2,500 updates; spec
``meta_rl.md`` 1.3-1.6), whose target run is 512 lifetimes x 5,000 meta-updates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ENVS = {
    "chain_short": ("lpg/chain_short", {"max_length": 10}),
    "tabular_dense": ("lpg/tabular_dense", {}),
}
PRESETS = {
    "default": {},
    "groove": {"num_envs": 64, "rollout_len": 20, "num_inner": 5, "lstm_size": 256,
               "lifetime_len": 2500},
}  # fmt: skip


def maxrss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    """Current resident set size in MiB (from /proc; NaN where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def memory_stats(compiled) -> dict | None:
    """``Compiled.memory_analysis()`` as a dict of byte counts, or None if unsupported."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (backends without it raise various errors)
        return None
    if stats is None:
        return None
    names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
             "temp_size_in_bytes", "generated_code_size_in_bytes")  # fmt: skip
    return {n: int(getattr(stats, n)) for n in names if hasattr(stats, n)}


def make_config(preset: str, num_lifetimes: int):
    from jaxrl.meta import lpg

    return lpg.Config(num_lifetimes=num_lifetimes, **PRESETS[preset])


def measure_one(env_key: str, num_lifetimes: int, args) -> dict:
    """Compiles and times one configuration in this process; returns its measurements."""
    import jax

    from jaxrl import envs
    from jaxrl.meta import lpg

    name, kw = ENVS[env_key]
    env, _ = envs.make(name, **kw)
    cfg = make_config(args.preset, num_lifetimes)
    hp = lpg.HParams.make()
    steps_per_update = cfg.num_lifetimes * cfg.num_envs * cfg.rollout_len * (cfg.num_inner + 1)

    t0 = time.perf_counter()
    state = jax.jit(lambda k: lpg.init(cfg, env, k, hp))(jax.random.key(args.seed))
    state = jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    rss_before = current_rss_mib()

    update = jax.jit(lambda s: lpg.update(cfg, env, s, hp)[0], donate_argnums=0)
    t0 = time.perf_counter()
    lowered = update.lower(state)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    mem = memory_stats(compiled)

    base = {
        "env": name,
        "env_kwargs": kw,
        "preset": args.preset,
        "num_lifetimes": num_lifetimes,
        "config": dataclasses.asdict(cfg),
        "env_steps_per_meta_update": steps_per_update,
        "init_s": init_s,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "rss_before_compile_mib": rss_before,
        "memory_analysis": mem,
    }
    if args.compile_only:
        return base | {"maxrss_mib": maxrss_mib(), "compile_only": True}
    t0 = time.perf_counter()
    state = jax.block_until_ready(compiled(state))  # first call: warm-up, not in the rate
    first_s = time.perf_counter() - t0
    times = []
    start = time.perf_counter()
    for _ in range(args.iters):
        t0 = time.perf_counter()
        state = jax.block_until_ready(compiled(state))
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > args.time_budget_s and len(times) >= args.min_iters:
            break
    med = statistics.median(times)
    return base | {
        "first_call_s": first_s,
        "iters": len(times),
        "times_s": times,
        "median_s": med,
        "meta_updates_per_s": 1.0 / med,
        "best_meta_updates_per_s": 1.0 / min(times),
        "env_steps_per_s": steps_per_update / med,
        "maxrss_mib": maxrss_mib(),
        "final_step": int(state.step),
        "load_avg_1min_after": os.getloadavg()[0],
    }


def run_isolated(env_key: str, num_lifetimes: int, args) -> dict:
    """``measure_one`` in a fresh interpreter (clean maxrss); JSON comes back on stdout."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", f"{env_key}:{num_lifetimes}",
           "--preset", args.preset, "--iters", str(args.iters), "--min-iters",
           str(args.min_iters), "--time-budget-s", str(args.time_budget_s),
           "--seed", str(args.seed)]  # fmt: skip
    if args.compile_only:
        cmd.append("--compile-only")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"{env_key} x {num_lifetimes} failed with code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    """What the figures were measured on: CPU model, cores, load, versions."""
    import jax

    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), model
        )
    except OSError:
        pass
    return {
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "load_avg_1min_before": os.getloadavg()[0],
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def fmt_rate(x: float) -> str:
    if x != x:  # NaN: compile-only row
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    return f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.1f}"


def table(results: list[dict]) -> str:
    """A markdown table of the measurements (one row per configuration)."""
    head = ("| env | lifetimes | env steps / meta-update | compile s (lower + XLA) "
            "| meta-updates/s (best) | env steps/s | maxrss MiB | XLA temp MiB |")  # fmt: skip
    lines = [head, "|" + " --- |" * 8]
    for r in results:
        if r.get("compile_only"):
            r = r | {"env_steps_per_s": float("nan")}
        mem = r["memory_analysis"] or {}
        temp = mem.get("temp_size_in_bytes")
        cells = [
            r["env"],
            str(r["num_lifetimes"]),
            f"{r['env_steps_per_meta_update']:,}",
            f"{r['lower_s'] + r['compile_s']:.1f} ({r['lower_s']:.1f} + {r['compile_s']:.1f})",
            "-"
            if r.get("compile_only")
            else f"{r['meta_updates_per_s']:.3g} ({r['best_meta_updates_per_s']:.3g})",
            fmt_rate(r["env_steps_per_s"]),
            f"{r['maxrss_mib']:.0f}",
            f"{temp / 2**20:.0f}" if temp is not None else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def extrapolate(results: list[dict], lifetimes: int, meta_updates: int) -> list[str]:
    """Hours for ``meta_updates`` at ``lifetimes``, scaling the largest measured count linearly
    in lifetimes (compute-bound on a CPU; a lower bound where memory traffic grows faster)."""
    out = []
    for env in dict.fromkeys(r["env"] for r in results):
        rows = [r for r in results if r["env"] == env and not r.get("compile_only")]
        if not rows:
            continue
        r = max(rows, key=lambda x: x["num_lifetimes"])
        per_update = r["median_s"] * lifetimes / r["num_lifetimes"]
        hours = per_update * meta_updates / 3600
        out.append(
            f"{env}: {meta_updates} meta-updates x {lifetimes} lifetimes ~ {hours:.1f} h "
            f"({per_update:.2f} s per meta-update, scaled from {r['num_lifetimes']} lifetimes)"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--lifetimes", default="1,32,256", help="comma-separated lifetime counts")
    p.add_argument("--envs", default="chain_short,tabular_dense", help=",".join(ENVS))
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--iters", type=int, default=20, help="timed meta-updates (max)")
    p.add_argument("--min-iters", type=int, default=3, help="timed meta-updates (min)")
    p.add_argument("--time-budget-s", type=float, default=60.0, help="per config, timed part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in-process", action="store_true", help="no subprocess per config")
    p.add_argument(
        "--compile-only", action="store_true", help="compile and report memory; time nothing"
    )
    p.add_argument("--out", default=None, help="write every measurement as JSON here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # ENV:LIFETIMES, internal
    args = p.parse_args()

    if args.one:
        env_key, n = args.one.split(":")
        print(json.dumps(measure_one(env_key, int(n), args)))
        return
    env_keys = args.envs.split(",")
    unknown = set(env_keys) - set(ENVS)
    if unknown:
        p.error(f"unknown env(s) {sorted(unknown)}; choose from {sorted(ENVS)}")
    info = machine()
    print("machine: " + json.dumps(info), file=sys.stderr, flush=True)
    results = []
    for env_key in env_keys:
        for n in (int(x) for x in args.lifetimes.split(",")):
            run = measure_one if args.in_process else run_isolated
            r = run(env_key, n, args)
            rate = ""
            if not args.compile_only:
                rate = (
                    f"{r['meta_updates_per_s']:.3g} meta-updates/s, "
                    f"{fmt_rate(r['env_steps_per_s'])} env steps/s, "
                )
            print(f"{env_key} x {n}: compile {r['lower_s'] + r['compile_s']:.1f} s, {rate}"
                  f"maxrss {r['maxrss_mib']:.0f} MiB", file=sys.stderr, flush=True)  # fmt: skip
            results.append(r)
    info["load_avg_1min_after"] = os.getloadavg()[0]
    command = "python " + " ".join([os.path.relpath(__file__), *sys.argv[1:]])
    extra = extrapolate(results, 512, 5000)
    print(f"\n{command}\nmachine: {json.dumps(info)}\npreset: {args.preset} "
          f"{json.dumps(dataclasses.asdict(make_config(args.preset, 1)))}\n")  # fmt: skip
    print(table(results))
    print("\nextrapolation (GROOVE run size):\n" + "\n".join(extra))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": command, "machine": info, "results": results,
                       "extrapolation_512x5000": extra}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
