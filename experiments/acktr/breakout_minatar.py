"""ACKTR against A2C on Breakout-MinAtar: the paper's sample-efficiency claim, small.

Wu et al. 2017 (arXiv:1708.05144) report ACKTR learning Atari games faster per env step
than A2C with the same network. This runs both on Breakout-MinAtar (10 x 10 x 4 frames)
with the same shared conv torso (one 3x3 conv of 16 channels, a 128-unit ReLU layer;
actor and critic heads on it, as the paper's Atari net), each with OpenAI Baselines' Atari
settings, which are the presets ``a2c/breakout_minatar`` and ``acktr/breakout_minatar``
(``jaxrl train acktr --preset acktr/breakout_minatar``): A2C 16 envs x 5 steps, RMSprop
7e-4 annealed linearly, entropy 0.01, gradient norm 0.5; ACKTR 16 envs x 20 steps, η_max
0.25 annealed, δ = 0.0005, damping 0.01, momentum 0.9, entropy 0.01, the factor inverses
refreshed every 10 updates (Baselines refreshes them asynchronously, so its inverses lag
the factors too; a refresh of the 1601 x 1601 factor costs more than the rest of an update
here). Seeds run vmapped, split over the CPU cores.

    python experiments/acktr/breakout_minatar.py --seeds 8 --steps 500000 \\
        --json experiments/acktr/results_breakout_minatar.json \\
        --plot experiments/acktr/breakout_minatar.png

Prints, per algorithm, each seed's mean episode return over all updates (the area under
the learning curve, per env step) and over the last 5 % of updates.
"""

from __future__ import annotations

import argparse
import json
import time

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import numpy as np  # noqa: E402

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import a2c, acktr  # noqa: E402
from jaxrl.logger.stats import mean_difference  # noqa: E402
from jaxrl.runner import config, loop, sweep  # noqa: E402

ENV = "Breakout-MinAtar"
ALGOS = {"a2c": a2c, "acktr": acktr}  # each with its preset <name>/breakout_minatar


def settings(steps: int):
    """``name -> (module, Config, HParams)`` from the presets, ``steps`` env steps per run."""
    out = {}
    for name, algo in ALGOS.items():
        cfg, hp = config.resolve(algo, config.load_preset(f"{name}/breakout_minatar"), {}, steps)
        out[name] = (algo, cfg, hp)
    return out


def episode_means(returns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[R, U]`` per-update mean episode returns (NaN: none ended) -> per run, the mean
    over all updates and over the last 5 % (NaN updates skipped)."""
    last = max(1, returns.shape[1] // 20)
    return np.nanmean(returns, axis=1), np.nanmean(returns[:, -last:], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--json", help="write per-seed results and binned curves here")
    parser.add_argument("--plot", help="write the learning curves (PNG) here")
    args = parser.parse_args()

    env, _ = envs.make(ENV)
    out = {"env": ENV, "steps": args.steps, "seeds": args.seeds}
    for name, (algo, cfg, hp) in settings(args.steps).items():
        t0 = time.time()
        result = loop.run(
            algo, env, cfg, sweep.grid(hp, seeds=range(args.seeds)), env_name=ENV,
            algo_name=name, quiet=True,
        )  # fmt: skip
        returns = np.asarray(result.metrics["episode/return"], np.float64)  # [R, U]
        area, final = episode_means(returns)
        bins = np.array_split(np.arange(returns.shape[1]), 20)
        curve = np.stack([np.nanmean(returns[:, b], axis=1) for b in bins], axis=1)
        out[name] = {
            "all_update_mean": area.tolist(),
            "final": final.tolist(),
            "curve_steps": [int((b[-1] + 1) * cfg.steps_per_update) for b in bins],
            "curve": curve.tolist(),
            "wall_s": time.time() - t0,
            "steps_per_update": cfg.steps_per_update,
        }
        print(
            f"{name}: all-update mean {area.mean():.2f} ± {area.std(ddof=1):.2f}, final "
            f"{final.mean():.2f} ± {final.std(ddof=1):.2f} ({time.time() - t0:.0f} s)\n"
            f"  per seed all-update {np.round(area, 2).tolist()}\n"
            f"  per seed final      {np.round(final, 2).tolist()}",
            flush=True,
        )
    diff, se = mean_difference(out["acktr"]["all_update_mean"], out["a2c"]["all_update_mean"])
    out["acktr_minus_a2c"] = {"all_update_mean": diff, "se": se, "z": diff / se}
    print(f"ACKTR - A2C, all-update mean: {diff:+.2f} ± {se:.2f} s.e. ({diff / se:+.2f} s.e.)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.plot:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name in ("a2c", "acktr"):
            curve = np.asarray(out[name]["curve"])
            mean, se_c = curve.mean(0), curve.std(0, ddof=1) / np.sqrt(args.seeds)
            ax.plot(out[name]["curve_steps"], mean, label=name.upper())
            ax.fill_between(out[name]["curve_steps"], mean - se_c, mean + se_c, alpha=0.3)
        ax.set(xlabel="env steps", ylabel="episode return", title=f"{ENV}, {args.seeds} seeds")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)


if __name__ == "__main__":
    main()
