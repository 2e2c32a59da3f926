"""HIRO, HIRO without the off-policy correction, and flat TD3 on the point-mass U maze.

Nachum et al. (2018, "Data-Efficient Hierarchical Reinforcement Learning") report that on
Ant Maze (a U corridor whose target lies behind a wall, reward ``-distance``, targets drawn
over the maze during training and the far end of the U at evaluation) HIRO reaches the far
target while flat TD3 does not, and that HIRO without the off-policy correction of the
high level's goals learns less. This experiment runs the three arms on
``hrl/point_maze`` (:class:`jaxrl.envs.point_maze.PointMaze`: the same maze and reward with
a point mass in place of the ant, 200-step episodes):

* ``hiro``: :mod:`jaxrl.algorithms.hiro` with its defaults (c = 10, goals of +-1 per axis,
  64-64 TD3 nets at both levels, batch 100, 5,000 random warm-up steps);
* ``nocorr``: the same with ``correction=False`` (replayed goals kept as chosen);
* ``td3``: :mod:`jaxrl.algorithms.td3` on the same env with the same nets, batch, buffer
  and warm-up, one gradient step per env step.

Every ``--steps / --evals`` env steps the greedy agent plays 10 episodes towards the far
target (``env.evaluation_params()``); success is ending within 0.5 of it. Seeds are vmapped
in one program per arm, sharded over the CPU's cores.

    python experiments/hiro/point_maze.py --arms hiro nocorr td3 --seeds 0 1 2 3 \
        --json experiments/hiro/results.json

RESULTS.md in this folder records the protocol, the predictions and the runs.
"""

from __future__ import annotations

import argparse
import json
import time

from jaxrl.distributed.mesh import use_all_cpu_cores

use_all_cpu_cores()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxrl.algorithms import hiro, td3  # noqa: E402
from jaxrl.distributed.mesh import run_mesh  # noqa: E402
from jaxrl.distributed.sharding import shard_runs  # noqa: E402
from jaxrl.envs import registry  # noqa: E402
from jaxrl.envs.point_maze import MAZES  # noqa: E402
from jaxrl.logger.writers import atomic_write_text  # noqa: E402

EVAL_EPISODES = 10


def td3_evaluate(cfg, env, state, key, env_params, episode_steps):
    """Greedy TD3 episodes towards the evaluation target: final observations ``[E, D]``."""

    def episode(key):
        obs, env_state = env.reset(key, env_params)

        def step(carry, key):
            obs, env_state = carry
            obs, env_state, _ = env.step(
                key, env_state, td3.act(cfg, env, state.params, obs), env_params
            )
            return (obs, env_state), None

        (obs, _), _ = jax.lax.scan(step, (obs, env_state), jax.random.split(key, episode_steps))
        return obs

    return jax.vmap(episode)(jax.random.split(key, EVAL_EPISODES))


def run_arm(
    arm: str, keys: jax.Array, steps: int, evals: int, maze: str, episode_steps: int
) -> dict:
    """Trains ``len(keys)`` vmapped seeds, evaluating ``evals`` times; returns lists."""
    env, train_params = registry.make("hrl/point_maze", layout=MAZES[maze])
    train_params = train_params.replace(max_steps=jnp.asarray(episode_steps, jnp.int32))
    eval_params = env.evaluation_params(episode_steps)
    if arm == "td3":
        cfg = td3.Config(
            total_timesteps=steps, buffer_size=200_000, batch_size=100, learning_starts=5_000,
            hidden=(64, 64),
        )  # fmt: skip
        hp = td3.HParams.make()
        td3.check(cfg, hp)
        init = lambda k: td3.init(cfg, env, k, hp, train_params)
        train = lambda s, n: td3.train(cfg, env, s, hp, n)
        final_obs = lambda s, k: td3_evaluate(cfg, env, s, k, eval_params, episode_steps)
    else:
        cfg = hiro.Config(total_timesteps=steps, correction=arm == "hiro")
        hp = hiro.HParams.make()
        hiro.check(cfg, env, hp)
        init = lambda k: hiro.init(cfg, env, k, hp, train_params)
        train = lambda s, n: hiro.train(cfg, env, s, hp, n)
        final_obs = lambda s, k: hiro.evaluate(
            cfg, env, s, k, eval_params, EVAL_EPISODES, episode_steps
        )["final_obs"]
    per_eval = cfg.num_updates // evals

    def chunk(state, key):
        state, metrics = train(state, per_eval)
        obs = final_obs(state, key)
        distance = jnp.linalg.norm(obs[:, :2] - obs[:, 2:], axis=-1)
        summary = {
            "success": jnp.mean(env.success(obs).astype(jnp.float32)),
            "distance": jnp.mean(distance),
            "train_return": jnp.nanmean(metrics["episode/return"]),
        }
        return state, summary

    def run(key):
        key_init, key_eval = jax.random.split(key)
        return jax.lax.scan(chunk, init(key_init), jax.random.split(key_eval, evals))[1]

    start = time.perf_counter()
    out = jax.block_until_ready(jax.jit(jax.vmap(run))(keys))
    seconds = time.perf_counter() - start
    result = {name: np.asarray(v).tolist() for name, v in out.items()}  # [seeds, evals]
    result["env_steps"] = [per_eval * cfg.steps_per_update * (i + 1) for i in range(evals)]
    result["seconds"] = seconds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", default=["hiro", "nocorr", "td3"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--evals", type=int, default=10)
    parser.add_argument("--maze", choices=sorted(MAZES), default="u")
    parser.add_argument("--episode-steps", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    keys = jnp.stack([jax.random.key(s) for s in args.seeds])
    mesh = run_mesh()
    if len(args.seeds) % mesh.size == 0:
        keys = shard_runs(keys, mesh)
    results = {"seeds": args.seeds, "steps": args.steps, "maze": args.maze}
    results["episode_steps"] = args.episode_steps
    for arm in args.arms:
        results[arm] = run_arm(arm, keys, args.steps, args.evals, args.maze, args.episode_steps)
        success = np.asarray(results[arm]["success"])
        distance = np.asarray(results[arm]["distance"])
        print(
            f"{arm}: final success {success[:, -1].mean():.2f} (per seed "
            f"{success[:, -1].round(2).tolist()}), final distance {distance[:, -1].mean():.2f}; "
            f"success by evaluation {success.mean(0).round(2).tolist()}; "
            f"{results[arm]['seconds']:.0f} s",
            flush=True,
        )
        if args.json:
            atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
