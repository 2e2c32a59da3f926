"""SAC's temperature: fixed values of ``α`` against automatic tuning.

Two published findings, one sweep:

* Haarnoja et al. 2018a (SAC, arXiv:1801.01290, §5.2, Fig. 3c) report SAC as sensitive to
  the reward scale, which is ``1/α``. With a small reward scale (a large ``α``) "the policy
  becomes nearly uniform, and consequently fails to exploit the reward signal"; with a
  large one (a small ``α``) it "learns quickly at first, but the policy then becomes nearly
  deterministic, leading to poor local minima due to lack of adequate exploration".
* Haarnoja et al. 2018b (SAC Algorithms and Applications, arXiv:1812.05905, §5, Fig. 1)
  learn ``α`` towards a target entropy (``-dim A``) and find it as good as a tuned fixed
  ``α``, without the per-task tuning.

For each task, ``--alphas`` fixed temperatures (``autotune=False``, ``α = init_alpha``)
x ``--seeds`` seeds run as ONE compiled program (``init_alpha`` is a traced
hyperparameter), and automatic tuning (``autotune=True`` from ``init_alpha = 1``) as a
second; the seeds are the same keys in every cell. Everything else is the preset
``sac/pendulum`` (Adam 1e-3, batch 256, 1,000 uniform warm-up steps) with ``--hidden``
nets (default 64-64, as Rejax's Pendulum config; the preset's 256-256 would take about
16 times the arithmetic) and the replay holding the whole run. Tasks: gymnax Pendulum-v1
(20,000 env steps: 100 episodes) and MountainCarContinuous-v0 (``--mc-steps``; 999-step
episodes, reward ``-0.1 a²`` per step and +100 at the flag: exploration decides).

Score of a run: the mean undiscounted return of ``--episodes`` evaluation episodes of the
deterministic policy ``tanh(mean)`` at the end (the papers' evaluation); also recorded:
the stochastic policy's, the training curve, the policy's entropy and ``α``.

    python experiments/sac_temperature/temperature.py --seeds 8 \\
        --json experiments/sac_temperature/results.json \\
        --plot experiments/sac_temperature/temperature.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import sac  # noqa: E402
from jaxrl.distributed import run_mesh, shard_runs  # noqa: E402
from jaxrl.logger.stats import mean_difference  # noqa: E402
from jaxrl.runner import config, sweep  # noqa: E402
from jaxrl.runner.evaluate import eval_key, evaluate_runs  # noqa: E402

PRESET = "sac/pendulum"
EVAL_SEED = 7


def run_cell(
    env_id: str, steps: int, seeds: int, alphas, autotune: bool, chunks: int, episodes, hidden
):
    """One program: ``len(alphas) x seeds`` runs. Returns per-run curves and final scores."""
    env, _ = envs.make(env_id)
    cfg, hp = config.resolve(sac, config.load_preset(PRESET), {}, steps)
    cfg = dataclasses.replace(cfg, autotune=autotune, buffer_size=steps, hidden=hidden)
    if cfg.num_updates % chunks:
        raise SystemExit(f"--chunks must divide {cfg.num_updates} updates")
    runs = sweep.grid(hp, range(seeds), init_alpha=list(alphas))
    state = shard_runs(sweep.init_runs(sac, cfg, env, runs.keys, runs.hps), run_mesh())
    hps = shard_runs(runs.hps, run_mesh())
    per_chunk = cfg.num_updates // chunks
    train = jax.jit(jax.vmap(lambda s, h: sac.train(cfg, env, s, h, per_chunk)))
    curve = {"steps": [], "return": [], "alpha": [], "entropy": []}
    for c in range(chunks):
        state, metrics = train(state, hps)
        m = {k: np.asarray(v, np.float64) for k, v in metrics.items()}
        curve["steps"].append((c + 1) * per_chunk * cfg.steps_per_update)
        curve["return"].append(np.nanmean(m["episode/return"], axis=1))
        curve["alpha"].append(np.nanmean(m["train/alpha"], axis=1))
        curve["entropy"].append(np.nanmean(m["train/entropy"], axis=1))
    keys = jnp.stack([eval_key(EVAL_SEED, i) for i in range(len(runs.labels))])
    score = {
        mode: np.nanmean(
            np.asarray(evaluate_runs(sac, cfg, env, state, runs.hps, keys, episodes, det)), 1
        )
        for mode, det in (("deterministic", True), ("stochastic", False))
    }
    n = len(alphas)
    shape = lambda x: np.asarray(x).reshape(n, seeds, *np.shape(x)[1:])  # [alphas, seeds, ...]
    return {
        "steps": curve["steps"],
        **{k: shape(np.stack(v, 1)).tolist() for k, v in curve.items() if k != "steps"},
        **{f"final_{k}": shape(v).tolist() for k, v in score.items()},
    }


def summarise(task: str, res: dict, alphas) -> dict:
    """Per cell mean ± s.e. of the deterministic score, and the pre-registered contrasts."""
    fixed = np.asarray(res["fixed"]["final_deterministic"])  # [alphas, seeds]
    auto = np.asarray(res["auto"]["final_deterministic"])[0]
    means = fixed.mean(1)
    best = int(np.argmax(means))
    out = {"best_fixed_alpha": alphas[best], "contrasts": {}}
    rows = [(f"α={a:g}", fixed[i]) for i, a in enumerate(alphas)] + [("auto", auto)]
    for name, x in rows:
        print(f"{task} {name:>9}: {x.mean():8.1f} ± {x.std(ddof=1) / np.sqrt(x.size):6.1f} s.e.")
    for name, x in (
        (f"α={alphas[-1]:g} − best fixed", fixed[-1]),
        (f"α={alphas[0]:g} − best fixed", fixed[0]),
        ("auto − best fixed", auto),
    ):
        diff, se = mean_difference(x, fixed[best])
        out["contrasts"][name] = {"diff": diff, "se": se}
        print(f"{task} {name} (α={alphas[best]:g}): {diff:+.1f} ± {se:.1f} s.e.")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--alphas", default="0.001,0.01,0.1,1,10")
    parser.add_argument("--tasks", default="pendulum,mountaincar")
    parser.add_argument("--pendulum-steps", type=int, default=20_000)
    parser.add_argument("--mc-steps", type=int, default=50_000)
    parser.add_argument("--hidden", default="64,64", help="hidden layer widths")
    parser.add_argument("--chunks", type=int, default=20, help="curve points per run")
    parser.add_argument("--episodes", type=int, default=16, help="evaluation episodes per run")
    parser.add_argument("--json", help="write every run's curves and scores here")
    parser.add_argument("--plot", help="write the figure (PNG) here")
    args = parser.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    hidden = tuple(int(h) for h in args.hidden.split(","))
    tasks = {
        "pendulum": ("Pendulum-v1", args.pendulum_steps),
        "mountaincar": ("MountainCarContinuous-v0", args.mc_steps),
    }
    out = {"preset": PRESET, "hidden": hidden, "seeds": args.seeds, "alphas": alphas}
    for task in args.tasks.split(","):
        env_id, steps = tasks[task]
        res = {"env": env_id, "steps": steps}
        for cell, cell_alphas, autotune in (("fixed", alphas, False), ("auto", [1.0], True)):
            t0 = time.time()
            res[cell] = run_cell(
                env_id, steps, args.seeds, cell_alphas, autotune, args.chunks, args.episodes,
                hidden,
            )  # fmt: skip
            res[cell]["wall_s"] = time.time() - t0
            print(f"{task} {cell}: {res[cell]['wall_s']:.0f} s", flush=True)
        res["summary"] = summarise(task, res, alphas)
        out[task] = res
        if args.json:  # after every task, so a finished task is never lost
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
    if args.plot:
        plot(out, [t for t in args.tasks.split(",")], alphas, args.plot)


def plot(out: dict, tasks, alphas, path: str) -> None:
    """Per task: the final deterministic return against ``α`` (auto as a band), and the
    training curves."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 7), squeeze=False)
    for j, task in enumerate(tasks):
        res = out[task]
        fixed = np.asarray(res["fixed"]["final_deterministic"])
        auto = np.asarray(res["auto"]["final_deterministic"])[0]
        se = lambda x, ax=-1: x.std(ax, ddof=1) / np.sqrt(x.shape[ax])
        ax = axes[0, j]
        ax.errorbar(alphas, fixed.mean(1), se(fixed), marker="o", capsize=3, label="fixed α")
        ax.axhspan(auto.mean() - se(auto), auto.mean() + se(auto), color="C1", alpha=0.3)
        ax.axhline(auto.mean(), color="C1", label="auto-tuned α")
        ax.set(xscale="log", xlabel="α", ylabel="final return (deterministic)", title=res["env"])
        ax.legend()
        ax = axes[1, j]
        for i, a in enumerate(alphas):
            y = np.asarray(res["fixed"]["return"])[i]
            ax.plot(res["fixed"]["steps"], np.nanmean(y, 0), label=f"α={a:g}")
        y = np.asarray(res["auto"]["return"])[0]
        ax.plot(res["auto"]["steps"], np.nanmean(y, 0), "k--", label="auto")
        ax.set(xlabel="env steps", ylabel="training return (stochastic)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
