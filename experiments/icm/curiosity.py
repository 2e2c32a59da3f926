"""Curiosity on MountainCar-v0: PPO with and without an Intrinsic Curiosity Module
(Pathak et al. 2017, arXiv:1705.05363), and a purely curious agent that never sees the
env's reward.

MountainCar pays -1 per step until the car reaches the flag (at most 200 steps); an agent
that has never reached it sees a constant reward, so it has nothing to learn from until
exploration gets it there once. Arms, each ``--seeds`` seeds of ``--steps`` env steps
from the ``icm/mountaincar`` preset (8 envs x 128 steps per update, Adam 1e-3,
normalised observations, eta = 0.1), which differ in one setting each:

* ``ppo``: eta = 0 and no observation normalisation (PureJaxRL's plain PPO; eta = 0 is
  PPO bit for bit, tests/algorithms/test_icm.py);
* ``ppo_norm``: eta = 0 (PPO with the preset's normalised observations);
* ``icm``: the preset;
* ``icm_random_features``: beta = 1, so the inverse loss has weight 0 and the encoder
  keeps its random initial weights (curiosity in random features, Burda et al. 2018);
* ``curiosity_only``: the env's reward weighted 0 and eta = 1 (the paper's "no reward"
  setting).

Per seed: the final training return (the sampling policy's episodes in the last 5 % of
updates, :func:`jaxrl.logger.metrics.final_return`, as ``jaxrl train`` reports it); the
final policy's greedy return over ``EVAL_EPISODES`` episodes and the share of them that
reach the flag (return above -200); the env steps until the first update in which a
training episode reached the flag (ended before 200 steps; ``inf`` if none did); and the
share of updates in which one did. The greedy policy is a weak test on MountainCar: a
policy that pushes the way the car moves reaches the flag, and so can an untrained net's
argmax, by chance.

All seeds of an arm run as one program (``use_all_cpu_cores``: seeds split over the cores).

    python experiments/icm/curiosity.py --seeds 8 --json experiments/icm/results.json

RESULTS.md in this folder records the protocol, the predictions and a run.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import icm  # noqa: E402
from jaxrl.distributed import run_mesh, shard_runs  # noqa: E402
from jaxrl.logger.metrics import final_return  # noqa: E402
from jaxrl.logger.writers import atomic_write_text  # noqa: E402
from jaxrl.runner import config, evaluate  # noqa: E402

EVAL_EPISODES = 100
MAX_STEPS = 200  # MountainCar-v0's time limit: an episode this long never reached the flag
ARMS = {
    "ppo": ({"normalize_obs": "false"}, {"intrinsic_coef": 0.0}),
    "ppo_norm": ({}, {"intrinsic_coef": 0.0}),
    "icm": ({}, {}),
    "icm_random_features": ({}, {"icm_forward_weight": 1.0}),
    "curiosity_only": ({}, {"extrinsic_coef": 0.0, "intrinsic_coef": 1.0}),
}


def run_arm(env, sets: dict, hparams: dict, steps: int, keys):
    """Greedy returns ``[S, EVAL_EPISODES]`` and training metrics ``[S, U]`` of one arm."""
    preset = config.load_preset("icm/mountaincar")
    preset["hparams"] |= hparams
    cfg, hp = config.resolve(icm, preset, sets, steps)

    def one(key):
        state = icm.init(cfg, env, key, hp)
        state, metrics = icm.train(cfg, env, state, hp, cfg.num_updates)
        greedy = evaluate.evaluate(
            icm, cfg, env, state.params, jax.random.fold_in(key, 1), EVAL_EPISODES, True,
            obs_stats=evaluate.obs_stats(state.env_state),
        )  # fmt: skip
        keep = ("episode/length", "episode/return", "episode/count", "train/intrinsic_reward")
        return greedy, {k: metrics[k] for k in keep}

    t0 = time.perf_counter()
    greedy, metrics = jax.block_until_ready(jax.jit(jax.vmap(one))(keys))
    return cfg, np.asarray(greedy), jax.tree.map(np.asarray, metrics), time.perf_counter() - t0


def _finite(x: np.ndarray) -> list:
    """``x`` as a JSON list, ``None`` for NaN."""
    return [None if np.isnan(v) else float(v) for v in x]


def first_goal_steps(lengths: np.ndarray, steps_per_update: int) -> np.ndarray:
    """``[S]``: env steps until the end of the first update whose finished episodes include
    one shorter than ``MAX_STEPS`` (mean length below it), ``inf`` where none is."""
    reached = np.nan_to_num(lengths, nan=MAX_STEPS) < MAX_STEPS
    first = np.where(reached.any(1), reached.argmax(1) + 1, np.inf)
    return first * steps_per_update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()
    env, _ = envs.make("MountainCar-v0")
    keys = shard_runs(jax.random.split(jax.random.key(2017), args.seeds), run_mesh())
    record = {"seeds": args.seeds, "steps": args.steps, "eval_episodes": EVAL_EPISODES, "arms": {}}
    print(
        "| arm | final training return (mean ± sd) | per seed | greedy return (mean ± sd) | "
        "per seed | greedy episodes at the flag | env steps to the first flag (median) | "
        "updates with a flag | seconds |"
    )
    print("| --- " * 9 + "|")
    for arm in args.arms:
        sets, hparams = ARMS[arm]
        cfg, greedy, metrics, seconds = run_arm(env, sets, hparams, args.steps, keys)
        train = final_return(metrics["episode/return"], metrics["episode/count"])
        per_seed, at_flag = greedy.mean(axis=1), (greedy > -MAX_STEPS).mean(axis=1)
        lengths = metrics["episode/length"]
        first = first_goal_steps(lengths, cfg.steps_per_update)
        with warnings.catch_warnings():  # updates in which no seed finished an episode
            warnings.simplefilter("ignore", RuntimeWarning)
            curve = np.nanmean(metrics["episode/return"], axis=0)
        share = (np.nan_to_num(lengths, nan=MAX_STEPS) < MAX_STEPS).mean(axis=1)
        record["arms"][arm] = {
            "final_train_return_per_seed": _finite(train),
            "greedy_per_seed": per_seed.tolist(),
            "greedy_share_at_flag_per_seed": at_flag.tolist(),
            "first_goal_steps": [None if np.isinf(x) else int(x) for x in first],
            "share_of_updates_with_goal": share.tolist(),
            "intrinsic_reward_first_last": [
                metrics["train/intrinsic_reward"][:, 0].tolist(),
                metrics["train/intrinsic_reward"][:, -1].tolist(),
            ],
            "return_curve_mean": _finite(curve),
            "seconds": seconds,
        }
        median_first = np.median(first)
        print(
            f"| {arm} | {train.mean():.1f} ± {train.std():.1f} | "
            f"{' '.join(f'{x:.0f}' for x in train)} | "
            f"{per_seed.mean():.1f} ± {per_seed.std():.1f} | "
            f"{' '.join(f'{x:.0f}' for x in per_seed)} | "
            f"{at_flag.mean():.2f} | "
            f"{'never' if np.isinf(median_first) else f'{median_first:,.0f}'} | "
            f"{share.mean():.2f} | {seconds:.0f} |",
            flush=True,
        )
        if args.json:
            atomic_write_text(args.json, json.dumps(record))


if __name__ == "__main__":
    main()
