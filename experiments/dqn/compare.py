"""DQN against Double+Dueling DQN and Rainbow at one budget (issue 5 part 5).

For each environment, three arms with the same env steps and the same gradient steps per
seed (the script checks it):

* ``DQN``: the ``dqn/<env>`` preset;
* ``Double+Dueling``: the same preset with ``double=True`` and ``dueling=True``;
* ``Rainbow``: the ``rainbow/<env>`` preset (``jaxrl.algorithms.rainbow``: every option on).

Each arm is ``--seeds`` seeds in one compiled program: ``jit(vmap(init))``, then
``jit(vmap(train))``. Final performance is the mean undiscounted return of ``--episodes``
greedy episodes per seed of the final parameters (:func:`jaxrl.runner.evaluate.evaluate`).
Per arm the script reports mean, std, the interquartile mean (IQM) over seeds with a 95%
stratified-bootstrap interval (:mod:`jaxrl.logger.stats`), the per-seed scores, env steps
per second (all seeds together, compile excluded) and compile seconds. The verdict per env
says whether each arm's IQM is at least DQN's and whether their intervals overlap.

    python experiments/dqn/compare.py --json experiments/dqn/results.json \\
        --plot-dir experiments/dqn

runs both environments, arms one after another. ``--env`` picks one; results of earlier
invocations already in ``--json`` are kept, so the environments can run separately and
``--report`` prints the table of everything in the file. ``--timesteps N`` overrides the
budget (for a smoke test). ``--rainbow-set KEY=VALUE`` (repeatable) runs a variant of
the Rainbow arm, stored as ``Rainbow[KEY=VALUE]``, e.g. ``--arms Rainbow --rainbow-set
noisy=false``; ``--dqn-set`` does the same for the DQN arm (``DQN[KEY=VALUE]``; the
verdict lines compare against the unchanged ``DQN`` only). RESULTS.md in this folder
records the runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np

from jaxrl.algorithms import dqn, rainbow
from jaxrl.envs import registry
from jaxrl.logger import metrics as metric_utils
from jaxrl.logger import stats
from jaxrl.runner import config
from jaxrl.runner import evaluate as evaluation

# env -> (dqn preset, rainbow preset); the budget is the dqn preset's total_timesteps
PRESETS = {
    "CartPole-v1": ("dqn/cartpole", "rainbow/cartpole"),
    "Breakout-MinAtar": ("dqn/breakout_minatar", "rainbow/breakout_minatar"),
}
ARMS = ("DQN", "Double+Dueling", "Rainbow")
# Config fields that fix the budget in env steps and gradient steps: equal across arms.
BUDGET_FIELDS = ("total_timesteps", "num_envs", "train_freq", "gradient_steps", "batch_size")
CURVE_POINTS = 100


def ablation_name(sets: dict[str, str], arm: str = "Rainbow") -> str:
    """``arm``, or ``"<arm>[k=v,...]"`` for a variant of it with ``sets`` changed."""
    if not sets:
        return arm
    return f"{arm}[" + ",".join(f"{k}={v}" for k, v in sets.items()) + "]"


def arm_settings(
    env_name: str,
    timesteps: int | None,
    rainbow_sets: dict[str, str] | None = None,
    dqn_sets: dict[str, str] | None = None,
) -> dict[str, tuple]:
    """Arm name -> ``(algorithm module, Config, HParams)``, presets read now (not copied).

    ``rainbow_sets`` and ``dqn_sets`` (``--set``-style strings) change the Rainbow and the
    DQN arm, which are then named by :func:`ablation_name`. Raises SystemExit if the arms
    would differ in env steps or gradient steps.
    """
    dqn_preset, rainbow_preset = (config.load_preset(p) for p in PRESETS[env_name])
    for name, preset in zip(PRESETS[env_name], (dqn_preset, rainbow_preset), strict=True):
        if preset["env"] != env_name:
            raise SystemExit(f"preset {name} is for {preset['env']}, not {env_name}")
    timesteps = timesteps or dqn_preset["config"]["total_timesteps"]
    arms = {
        ablation_name(dqn_sets or {}, "DQN"): (
            dqn,
            *config.resolve(dqn, dqn_preset, dqn_sets or {}, timesteps),
        ),
        "Double+Dueling": (
            dqn,
            *config.resolve(dqn, dqn_preset, {"double": "true", "dueling": "true"}, timesteps),
        ),
        ablation_name(rainbow_sets or {}): (
            rainbow,
            *config.resolve(rainbow, rainbow_preset, rainbow_sets or {}, timesteps),
        ),
    }
    budgets = {a: tuple(getattr(cfg, f) for f in BUDGET_FIELDS) for a, (_, cfg, _) in arms.items()}
    if len(set(budgets.values())) != 1:
        raise SystemExit(f"arms differ in {BUDGET_FIELDS}: {budgets}")
    return arms


def run_arm(algo, cfg, hp, env, env_params, seeds: int, episodes: int, seed: int) -> dict:
    """Trains ``seeds`` runs in one program, then evaluates each greedily.

    Returns a JSON-ready dict: per-seed scores ``[seeds]``, timings, gradient steps and
    the binned training-return curve (mean episode return per bin ``[seeds, bins]``).
    """
    keys = jax.random.split(jax.random.key(seed), seeds)
    init = jax.jit(jax.vmap(lambda k: algo.init(cfg, env, k, hp, env_params)))
    state = jax.block_until_ready(init(keys))
    train = jax.jit(
        jax.vmap(lambda s: algo.train(cfg, env, s, hp, cfg.num_updates)), donate_argnums=0
    )
    t0 = time.perf_counter()
    compiled = train.lower(state).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, metrics = jax.block_until_ready(compiled(state))
    train_s = time.perf_counter() - t0

    eval_keys = jax.random.split(jax.random.key(seed + 1), seeds)
    t0 = time.perf_counter()
    returns = jax.jit(
        jax.vmap(lambda p, k: evaluation.evaluate(algo, cfg, env, p, k, episodes, True, env_params))
    )(state.params, eval_keys)
    returns = np.asarray(returns, dtype=np.float64)  # [seeds, episodes]
    eval_s = time.perf_counter() - t0
    if not np.all(np.isfinite(returns)):
        raise SystemExit("an evaluation episode did not finish within evaluate's step limit")

    env_steps = np.asarray(state.env_steps)
    curve = metric_utils.forward_fill(np.asarray(metrics["episode/return"]))  # [seeds, U]
    bins = np.array_split(np.arange(curve.shape[1]), min(CURVE_POINTS, curve.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bins before any episode ended
        binned = np.stack([np.nanmean(curve[:, b], axis=1) for b in bins], axis=1)
    return {
        "scores": returns.mean(axis=1).tolist(),
        "episode_returns": returns.tolist(),
        "env_steps_per_seed": int(env_steps[0]),
        "grad_steps_per_seed": np.asarray(state.grad_steps).tolist(),
        "compile_s": compile_s,
        "train_s": train_s,
        "eval_s": eval_s,
        "steps_per_s": float(env_steps.sum()) / train_s,
        "curve_steps": [int((b[-1] + 1) * cfg.steps_per_update) for b in bins],
        "curve": binned.tolist(),
        "config": config.config_dict(cfg),
        "hparams": {f.name: float(getattr(hp, f.name)) for f in dataclasses.fields(hp)},
    }


def ordered(results: dict) -> list[str]:
    """The arms in ``results``: DQN, Double+Dueling, Rainbow, then any ablations."""
    return [a for a in ARMS if a in results] + sorted(set(results) - set(ARMS))


def summarise(scores: list[float], reps: int = 5000) -> dict:
    """Mean, std and IQM with its 95% stratified-bootstrap interval of per-seed scores."""
    x = np.asarray(scores, dtype=np.float64)
    iqm = stats.interval_estimate(x, stats.iqm, reps=reps, ci=0.95, seed=0)
    return {"mean": x.mean(), "std": x.std(), "iqm": iqm.point, "low": iqm.low, "high": iqm.high}


def verdict(env_name: str, results: dict) -> str:
    """One line: each arm's IQM against DQN's, and whether their intervals overlap."""
    base = summarise(results["DQN"]["scores"])
    parts = []
    for arm in ordered(results)[1:]:
        s = summarise(results[arm]["scores"])
        overlap = s["low"] <= base["high"] and base["low"] <= s["high"]
        word = "IQM >= DQN's" if s["iqm"] >= base["iqm"] else "IQM below DQN's"
        ci = "CIs overlap" if overlap else "CIs disjoint"
        parts.append(f"{arm}: {word}, {ci} ({s['iqm']:.1f} vs {base['iqm']:.1f})")
    return f"{env_name}: " + "; ".join(parts)


def table(record: dict) -> str:
    """Markdown: one row per env and arm, then a verdict line per env."""
    lines = [
        "| env | arm | env steps / seed | grad steps / seed | mean | std | IQM [95% CI] "
        "| per-seed scores | env steps/s | compile s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for env_name, results in record["envs"].items():
        for arm in ordered(results):
            r, s = results[arm], summarise(results[arm]["scores"])
            per_seed = ", ".join(f"{v:.1f}" for v in r["scores"])
            lines.append(
                f"| {env_name} | {arm} | {r['env_steps_per_seed']:,} "
                f"| {int(np.mean(r['grad_steps_per_seed'])):,} | {s['mean']:.1f} | {s['std']:.1f} "
                f"| {s['iqm']:.1f} [{s['low']:.1f}, {s['high']:.1f}] | {per_seed} "
                f"| {r['steps_per_s']:,.0f} | {r['compile_s']:.1f} |"
            )
        if "DQN" in results:
            verdicts.append(verdict(env_name, results))
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n"


def plot(path: Path, env_name: str, results: dict) -> None:
    """Training-episode return per arm: mean over seeds with a 95% bootstrap band."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    for i, arm in enumerate(ordered(results)):
        r = results[arm]
        mean, low, high = stats.mean_interval(np.asarray(r["curve"]), reps=1000)
        ax.fill_between(r["curve_steps"], low, high, color=f"C{i}", alpha=0.2, lw=0)
        ax.plot(r["curve_steps"], mean, color=f"C{i}", label=f"{arm} ({len(r['scores'])} seeds)")
    ax.set_xlabel("environment steps per seed")
    ax.set_ylabel("training episode return (mean, 95% CI)")
    ax.set_title(f"{env_name}: DQN, Double+Dueling, Rainbow")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=sorted(PRESETS), action="append", help="repeatable")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=16, help="greedy episodes per seed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps", type=int, help="env steps per seed (default: preset)")
    parser.add_argument(
        "--rainbow-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="ablation: override a Rainbow Config/HParams field (arm Rainbow[KEY=VALUE])",
    )
    parser.add_argument(
        "--dqn-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a DQN Config/HParams field (arm DQN[KEY=VALUE])",
    )
    parser.add_argument("--json", type=Path, help="results file (read, updated, written)")
    parser.add_argument("--plot-dir", type=Path, help="write curves_<env>.png here")
    parser.add_argument("--report", action="store_true", help="only print --json's table")
    args = parser.parse_args()

    record = {"envs": {}}
    if args.json and args.json.exists():
        record = json.loads(args.json.read_text())
    if not args.report:
        arms = [a.strip() for a in args.arms.split(",")]
        if unknown := set(arms) - set(ARMS):
            raise SystemExit(f"unknown arm(s) {sorted(unknown)}; valid: {', '.join(ARMS)}")
        rainbow_sets = config.parse_sets(args.rainbow_set)
        dqn_sets = config.parse_sets(args.dqn_set)
        renamed = {"Rainbow": ablation_name(rainbow_sets), "DQN": ablation_name(dqn_sets, "DQN")}
        arms = [renamed.get(a, a) for a in arms]
        record["machine"] = f"{platform.processor() or platform.machine()}, jax {jax.__version__}"
        for env_name in args.env or list(PRESETS):
            settings = arm_settings(env_name, args.timesteps, rainbow_sets, dqn_sets)
            env, env_params = registry.make(env_name)
            results = record["envs"].setdefault(env_name, {})
            for arm in arms:
                algo, cfg, hp = settings[arm]
                print(f"{env_name} / {arm}: {cfg.num_updates:,} updates x {args.seeds} seeds",
                      file=sys.stderr, flush=True)  # fmt: skip
                r = run_arm(algo, cfg, hp, env, env_params, args.seeds, args.episodes, args.seed)
                r["load_average"] = Path("/proc/loadavg").read_text().split()[:3]
                results[arm] = r
                s = summarise(r["scores"])
                print(
                    f"  IQM {s['iqm']:.1f} [{s['low']:.1f}, {s['high']:.1f}], mean {s['mean']:.1f}"
                    f", {r['steps_per_s']:,.0f} steps/s, compile {r['compile_s']:.1f} s, "
                    f"train {r['train_s']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                if args.json:
                    args.json.write_text(json.dumps(record, indent=1))
            if args.plot_dir:
                plot(args.plot_dir / f"curves_{env_name}.png", env_name, results)
    print(table(record))


if __name__ == "__main__":
    main()
