"""'Implementation Matters' (Engstrom et al. 2020): PPO and TRPO x 2^4 code-level switches.

The paper's first four code-level optimisations (value-function clipping, reward scaling,
orthogonal initialisation, Adam learning-rate annealing) are compiled into PPO and TRPO
(Config switches on) and gated by traced 0/1 ``HParams`` (``clip_value_on``,
``scale_reward_on``, ``ortho_init_on``, ``anneal_lr_on``), so every one of the 16
combinations x ``--seeds`` seeds runs in ONE compiled, vmapped program per algorithm.
Observation normalisation and gradient clipping stay as in each preset (on for PPO,
observation normalisation on and gradient clipping off for TRPO).

    python experiments/implementation_matters/implementation_matters.py \
        --out experiments/implementation_matters
    python experiments/implementation_matters/implementation_matters.py --smoke --out /tmp/im

Writes ``results.json`` (every run's final return and gates), ``RESULTS_table.md`` (per
combination: mean, IQM, 95% bootstrap CI of the mean; per switch: the marginal effect) and
``histograms.png`` (the paper's Figure style: for each optimisation, the final returns of
the 40 runs with it on against the 40 with it off, per algorithm).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import numpy as np  # noqa: E402

from jaxrl import algorithms, envs  # noqa: E402
from jaxrl.logger import stats  # noqa: E402
from jaxrl.runner import config, loop, sweep  # noqa: E402

GATES = {  # HParams gate -> Config switch (and the paper's name)
    "clip_value_on": ("clip_value", "value function clipping"),
    "scale_reward_on": ("scale_reward", "reward scaling"),
    "ortho_init_on": ("ortho_init", "orthogonal init"),
    "anneal_lr_on": ("anneal_lr", "learning-rate annealing"),
}
PRESETS = {"ppo": "ppo/pendulum", "trpo": "trpo/pendulum"}
SMOKE = dict(
    num_envs=4, rollout_len=100, num_epochs=1, num_minibatches=2, hidden=(16,),
    total_timesteps=400 * 6,  # the last update ends every env's third 200-step episode
)  # fmt: skip


def run_algo(name: str, seeds: int, total_timesteps: int | None, smoke: bool) -> dict:
    """One compiled program: 16 gate combinations x ``seeds`` seeds of ``name`` (preset)."""
    algo = algorithms.get(name)
    preset = config.load_preset(PRESETS[name])
    cfg, hp = config.resolve(algo, preset, {}, None if smoke else total_timesteps)
    cfg = dataclasses.replace(cfg, **{switch: True for switch, _ in GATES.values()})
    if smoke:
        cfg = dataclasses.replace(cfg, **SMOKE)
        if name == "trpo":
            cfg = dataclasses.replace(cfg, cg_iters=3, backtrack_iters=3)
    env, _ = envs.make(preset["env"])
    runs = sweep.grid(hp, seeds=range(seeds), **{g: [1.0, 0.0] for g in GATES})
    algo.check(cfg, runs.hps)
    t0 = time.perf_counter()
    result = loop.run(algo, env, cfg, runs, env_name=preset["env"], algo_name=name, quiet=True)
    wall = time.perf_counter() - t0
    final = np.asarray(result.summary["final_return"]["per_run"], dtype=float)
    return {
        "algo": name,
        "preset": PRESETS[name],
        "config": dataclasses.asdict(cfg),
        "env_steps_per_run": result.summary["env_steps_per_run"],
        "num_runs": len(runs),
        "compile_seconds": result.summary["compile_seconds"],
        "run_seconds": result.summary["run_seconds"],
        "wall_seconds": wall,
        "steps_per_second": result.summary["steps_per_second"],
        "runs": [
            lab | {"final_return": float(r)} for lab, r in zip(runs.labels, final, strict=True)
        ],
    }


def combos(record: dict) -> dict[tuple[float, ...], np.ndarray]:
    """Gate combination -> final returns of its seeds ``[S]``."""
    out: dict[tuple[float, ...], list[float]] = {}
    for r in record["runs"]:
        out.setdefault(tuple(r[g] for g in GATES), []).append(r["final_return"])
    return {k: np.asarray(v) for k, v in out.items()}


def marginal(record: dict, gate: str) -> tuple[np.ndarray, np.ndarray]:
    """Final returns of every run with ``gate`` on, and with it off."""
    on = [r["final_return"] for r in record["runs"] if r[gate] == 1.0]
    off = [r["final_return"] for r in record["runs"] if r[gate] == 0.0]
    return np.asarray(on), np.asarray(off)


def _label(combo: tuple[float, ...]) -> str:
    return " ".join("+" if v == 1.0 else "-" for v in combo)


def tables(records: list[dict]) -> str:
    lines = []
    for rec in records:
        lines += [
            f"### {rec['algo'].upper()} (`{rec['preset']}`, the four switches compiled in), "
            f"{rec['env_steps_per_run']:,} env steps per run, {rec['num_runs']} runs",
            "",
            "Gates in the order clip_value, scale_reward, ortho_init, anneal_lr (+ on, - off).",
            "",
            "| gates | mean | IQM | 95% CI of mean | per seed |",
            "| --- | --- | --- | --- | --- |",
        ]
        for combo, x in sorted(combos(rec).items(), key=lambda kv: -kv[1].mean()):
            x = x[np.isfinite(x)]  # runs that finished no episode have no return
            ci = stats.interval_estimate(x, stats.mean, reps=2000)
            per_seed = ", ".join(f"{v:.0f}" for v in x)
            lines.append(
                f"| `{_label(combo)}` | {x.mean():.0f} | {float(stats.iqm(x)):.0f} "
                f"| [{ci.low:.0f}, {ci.high:.0f}] | {per_seed} |"
            )
        lines += [
            "",
            "| switch | mean on | mean off | marginal effect (on − off) | 95% CI of effect |",
            "| --- | --- | --- | --- | --- |",
        ]
        for gate, (_, paper) in GATES.items():
            on, off = marginal(rec, gate)
            ci = _diff_ci(on, off)
            lines.append(
                f"| {paper} | {on.mean():.0f} | {off.mean():.0f} | {on.mean() - off.mean():+.0f} "
                f"| [{ci[0]:+.0f}, {ci[1]:+.0f}] |"
            )
        lines.append("")
    return "\n".join(lines)


def _diff_ci(on: np.ndarray, off: np.ndarray, reps: int = 2000, seed: int = 0):
    """Percentile bootstrap interval of ``mean(on) − mean(off)`` (independent resamples)."""
    rng = np.random.default_rng(seed)
    a = on[rng.integers(0, len(on), (reps, len(on)))].mean(1)
    b = off[rng.integers(0, len(off), (reps, len(off)))].mean(1)
    return np.percentile(a - b, [2.5, 97.5])


def histograms(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(records), len(GATES), figsize=(4 * len(GATES), 3 * len(records)), squeeze=False
    )
    everything = np.concatenate([[r["final_return"] for r in rec["runs"]] for rec in records])
    bins = np.linspace(everything.min(), everything.max(), 21)
    for row, rec in zip(axes, records, strict=True):
        for ax, (gate, (_, paper)) in zip(row, GATES.items(), strict=True):
            on, off = marginal(rec, gate)
            ax.hist(off, bins, alpha=0.6, label=f"off (mean {off.mean():.0f})", color="tab:red")
            ax.hist(on, bins, alpha=0.6, label=f"on (mean {on.mean():.0f})", color="tab:blue")
            ax.set_title(f"{rec['algo'].upper()}: {paper}", fontsize=10)
            ax.set_xlabel("final return")
            ax.legend(fontsize=8)
        row[0].set_ylabel("runs")
    fig.suptitle(
        "Implementation Matters on Pendulum-v1: final returns with each optimisation on / off "
        "(over the other 3 switches x seeds)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--algos", default="ppo,trpo")
    parser.add_argument("--ppo-timesteps", type=int, help="env steps per run (default: preset)")
    parser.add_argument("--trpo-timesteps", type=int, help="env steps per run (default: preset)")
    parser.add_argument("--smoke", action="store_true", help="tiny networks and budgets (< 60 s)")
    parser.add_argument("--out", default="/tmp/implementation_matters")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budgets = {"ppo": args.ppo_timesteps, "trpo": args.trpo_timesteps}
    if args.smoke:
        args.seeds = min(args.seeds, 2)
    records = []
    for name in args.algos.split(","):
        rec = run_algo(name, args.seeds, budgets[name], args.smoke)
        records.append(rec)
        print(
            f"{name}: {rec['num_runs']} runs x {rec['env_steps_per_run']:,} steps, "
            f"compile {rec['compile_seconds']:.0f} s, run {rec['run_seconds']:.0f} s, "
            f"{rec['steps_per_second'] / 1e3:.0f}k steps/s",
            file=sys.stderr,
            flush=True,
        )
    (out / "results.json").write_text(json.dumps(records, indent=1))
    table = tables(records)
    (out / "RESULTS_table.md").write_text(table)
    histograms(records, out / "histograms.png")
    print(table)


if __name__ == "__main__":
    main()
