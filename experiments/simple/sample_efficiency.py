"""SimPLe against model-free PPO at the same real-env budget: is the world model worth it?

Kaiser et al. (2020) train PPO inside a learned world model and report that, with 100k
real interactions, it beats model-free agents given the same budget on most Atari games,
and that model-free PPO needs several times more interactions to catch up. Here the same
loop runs on gymnax classic control with an MLP world model on state vectors
(:mod:`jaxrl.algorithms.simple`).

Arms, per env of ``ENVS``, ``--seeds`` seeds each (keys ``split(key(2019), seeds)``), one
compiled program per (env, arm) with the seeds vmapped over the run mesh:

* ``simple``: :mod:`jaxrl.algorithms.simple` with the env's config below; its real budget
  is ``iterations * real_envs * real_steps``;
* ``ppo_<steps>``: model-free PPO (:mod:`jaxrl.algorithms.ppo`, the env's preset
  settings) trained on ``steps`` real steps, for ``steps`` in the env's ``PPO_BUDGETS``
  (the first equals SimPLe's budget).

Every arm's final policy plays ``EVAL_EPISODES`` real episodes (stochastic policy, keys
``split(key(8), seeds)``); a run's score is their mean return. Reported per arm: every
seed's score, mean, standard deviation and the seconds of the compiled program (compile
included); for ``simple`` also its score after every iteration (mean over seeds).

    python experiments/simple/sample_efficiency.py --seeds 16 --json experiments/simple/results.json

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

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import ppo, simple  # noqa: E402
from jaxrl.distributed.mesh import run_mesh  # noqa: E402
from jaxrl.distributed.sharding import shard_runs  # noqa: E402
from jaxrl.logger.writers import atomic_write_text  # noqa: E402
from jaxrl.runner import evaluate as evaluate_lib  # noqa: E402

EVAL_EPISODES = 32

# SimPLe's settings per env (budget = iterations * real_envs * real_steps).
SIMPLE = {
    "CartPole-v1": simple.Config(iterations=10, real_envs=4, real_steps=128),
    "Acrobot-v1": simple.Config(iterations=10, real_envs=4, real_steps=256),
}
# Model-free PPO per env: (config without the budget, budgets in real steps: SimPLe's
# budget times 1, 4, 16 and 64; each a whole number of PPO's 512-step updates).
PPO = {
    "CartPole-v1": (ppo.Config(), (5_120, 20_480, 81_920, 327_680)),
    "Acrobot-v1": (ppo.Config(), (10_240, 40_960, 163_840, 655_360)),
}


def scores(cfg_ppo: ppo.Config, env, params, seeds: int) -> np.ndarray:
    """``[seeds]`` mean real return of each run's policy over ``EVAL_EPISODES`` episodes."""
    keys = jax.random.split(jax.random.key(8), seeds)
    evaluate = jax.vmap(
        lambda p, k: evaluate_lib.evaluate(ppo, cfg_ppo, env, p, k, EVAL_EPISODES, False)
    )
    return np.asarray(jax.jit(evaluate)(params, keys)).mean(axis=1)


def run_seeds(one, seeds: int):
    """``one(key)`` for every seed's key, vmapped in one program: ``(outputs, seconds)``
    (compile included)."""
    keys = shard_runs(jax.random.split(jax.random.key(2019), seeds), run_mesh())
    start = time.perf_counter()
    out = jax.block_until_ready(jax.jit(jax.vmap(one))(keys))
    return out, time.perf_counter() - start


def summary(real_steps: int, final: np.ndarray, seconds: float) -> dict:
    """An arm's record: its real steps, every seed's score, their mean and spread, time."""
    return {
        "real_steps": real_steps,
        "scores": final.tolist(),
        "mean": float(final.mean()),
        "std": float(final.std()),
        "seconds": seconds,
    }


def run_simple(env_name: str, seeds: int) -> dict:
    env, _ = envs.make(env_name)
    cfg = SIMPLE[env_name]
    hp = simple.HParams.make()
    simple.check(cfg, hp)

    def one(key):
        state = simple.init(cfg, env, key, hp)
        return simple.train(cfg, env, state, hp)

    (state, metrics), seconds = run_seeds(one, seeds)
    final = scores(cfg.ppo, env, state.agent.params, seeds)
    return summary(cfg.capacity, final, seconds) | {
        "per_iteration": np.asarray(metrics["eval/return"]).mean(axis=0).tolist(),
        "heldout_obs_rmse": np.asarray(metrics["model/heldout_obs_rmse"]).mean(axis=0).tolist(),
    }


def run_ppo(env_name: str, budget: int, seeds: int) -> dict:
    env, _ = envs.make(env_name)
    base_cfg, _ = PPO[env_name]
    cfg = ppo.Config(**{**base_cfg.__dict__, "total_timesteps": budget})
    hp = ppo.HParams.make()
    ppo.check(cfg, hp)

    def one(key):
        state = ppo.init(cfg, env, key, hp)
        return ppo.train(cfg, env, state, hp, cfg.num_updates)[0].params

    params, seconds = run_seeds(one, seeds)
    final = scores(cfg, env, params, seeds)
    return summary(cfg.num_updates * cfg.steps_per_update, final, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--envs", nargs="*", default=list(SIMPLE))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    for env_name in args.envs:
        arms = {"simple": run_simple(env_name, args.seeds)}
        print(
            env_name,
            "simple",
            {k: arms["simple"][k] for k in ("real_steps", "mean", "std", "seconds")},
            flush=True,
        )
        print("  per iteration", np.round(arms["simple"]["per_iteration"], 1).tolist(), flush=True)
        for budget in PPO[env_name][1]:
            arm = run_ppo(env_name, budget, args.seeds)
            arms[f"ppo_{budget}"] = arm
            print(
                env_name,
                f"ppo_{budget}",
                {k: arm[k] for k in ("real_steps", "mean", "std", "seconds")},
                flush=True,
            )
        results[env_name] = arms
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
