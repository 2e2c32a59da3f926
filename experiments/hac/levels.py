"""Hierarchical Actor-Critic with 1, 2 and 3 levels on mountain car and the inverted pendulum.

Levy et al. (2019, "Learning Multi-Level Hierarchies with Hindsight") show that agents with
2 and 3 levels learn sparse-reward, long-horizon control tasks (their inverted pendulum
among them) much faster than a flat agent (1 level: DDPG with hindsight experience
replay), and that on the pendulum 3 levels do at least as well as 2. This experiment runs
:mod:`jaxrl.algorithms.hac` with each number of levels at about the same longest episode
(``horizon ** levels`` env steps):

* ``MountainCarContinuous-v0`` (gymnax): 1 x 400, 2 x 20 (400), 3 x 7 (343) steps; the end
  goal is the env's success region (position >= 0.45, velocity >= 0);
* ``Pendulum-v1`` (gymnax): 1 x 225, 2 x 15 (225), 3 x 6 (216) steps; training end goals
  within 16° and 0.6 rad/s of upright and still, the test goal upright and still, reached
  within 9.5° and 0.6 rad/s (the authors' design file).

Every arm: ``hac.Config`` defaults otherwise (500 episodes, 40 updates per level per episode,
batch 256, three 64-unit layers) and ``HParams`` defaults; every 25 episodes the greedy
hierarchy plays 10 episodes towards the test goal. Seeds are vmapped in one program per
arm, sharded over the CPU's cores.

    python experiments/hac/levels.py --seeds 8 --json experiments/hac/results.json

RESULTS.md in this folder records the protocol, the predictions and a run.
"""

from __future__ import annotations

import argparse
import json
import time

from jaxrl.distributed.mesh import use_all_cpu_cores

use_all_cpu_cores()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxrl.algorithms import hac  # noqa: E402
from jaxrl.distributed.mesh import run_mesh  # noqa: E402
from jaxrl.distributed.sharding import shard_runs  # noqa: E402
from jaxrl.logger.writers import atomic_write_text  # noqa: E402

HORIZONS = {
    "MountainCarContinuous-v0": {1: 400, 2: 20, 3: 7},
    "Pendulum-v1": {1: 225, 2: 15, 3: 6},
}
SOLVED = 0.8  # an evaluation at this greedy success rate or above counts as solved


def run_arm(task_name: str, levels: int, keys: jax.Array, episodes: int) -> dict:
    """Trains ``len(keys)`` vmapped seeds; returns their metrics as lists."""
    task = hac.make_task(task_name)
    cfg = hac.Config(levels=levels, horizon=HORIZONS[task_name][levels], episodes=episodes)
    hp = hac.HParams.make()
    hac.check(cfg, task, hp)
    state = jax.vmap(lambda k: hac.init(cfg, task, k, hp))(keys)
    start = time.perf_counter()
    _, metrics = jax.block_until_ready(
        jax.jit(jax.vmap(lambda s: hac.train(cfg, task, s, hp)))(state)
    )
    seconds = time.perf_counter() - start
    evals = np.asarray(metrics["eval/success"])  # [seeds, evaluations]
    solved = evals >= SOLVED
    first = np.where(solved.any(1), (solved.argmax(1) + 1) * cfg.eval_every, -1)
    return {
        "horizon": cfg.horizon,
        "eval_success": evals.tolist(),
        "final_success": evals[:, -4:].mean(1).tolist(),  # the last 100 episodes' evaluations
        "episodes_to_solve": first.tolist(),  # -1: never solved
        "train_success": np.asarray(metrics["train/success"]).mean(1).tolist(),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--key", type=int, default=1712)
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--tasks", nargs="+", default=list(HORIZONS))
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    keys = shard_runs(jax.random.split(jax.random.key(args.key), args.seeds), run_mesh())
    results = {}
    for task_name in args.tasks:
        for levels in args.levels:
            arm = run_arm(task_name, levels, keys, args.episodes)
            results[f"{task_name}/levels_{levels}"] = arm
            final = np.asarray(arm["final_success"])
            solved = np.asarray(arm["episodes_to_solve"])
            print(
                f"{task_name} levels={levels} H={arm['horizon']}: final success "
                f"{final.mean():.3f} (min {final.min():.2f}, max {final.max():.2f}); solved "
                f"{(solved > 0).sum()}/{len(solved)} seeds, episodes {solved.tolist()}; "
                f"{arm['seconds']:.0f} s",
                flush=True,
            )
            if args.json:
                atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
