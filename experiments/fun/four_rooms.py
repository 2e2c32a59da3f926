"""FeUdal Networks, its ablations and an LSTM actor-critic on a corner-to-corner four rooms.

Vezhnevets et al. (2017, "FeUdal Networks for Hierarchical Reinforcement Learning") report
that FuN beats an LSTM actor-critic baseline most clearly where rewards are sparse and far
away (Montezuma's Revenge, the memory and navigation tasks of DeepMind Lab), that the
Manager's dilated LSTM beats a plain LSTM Manager, and that the Worker's intrinsic reward
for following the Manager's directions matters. This experiment runs those arms on a
small task with the same shape: the four-rooms world seen as coordinates
(``hrl/four_rooms``), every episode starting in the top-left corner (1, 1), the only
reward 1 for entering the bottom-right corner (11, 11), moves slipping with probability
1/3 and episodes cut at 200 steps.

* ``fun``: :mod:`jaxrl.algorithms.fun` with its defaults (c = r = 10, d = 64, k = 16,
  alpha = 0.5, goal exploration 0.05, discounts 0.99 / 0.95, GAE 0.95, Adam 1e-3, 16 envs
  x 40-step rollouts);
* ``fun_lstm``: the same with ``dilation=1`` (a plain LSTM Manager);
* ``fun_no_intrinsic``: the same with ``intrinsic_weight=0`` (the Worker sees goals but is
  paid the env reward only);
* ``lstm``: :mod:`jaxrl.algorithms.recurrent_ppo` with ``algo="a2c"``: one 64-unit ReLU
  layer, a 64-unit LSTM, the same envs, rollouts, optimiser, discount 0.99, GAE 0.95 and
  entropy bonus.

Each arm trains the seeds vmapped in one program (sharded over the CPU's cores) and
records, per window of ``steps / windows`` env steps, the success rate (episodes that
reach the goal), the mean length of the training episodes that ended in it, and whether
every parameter is still finite at the window's end. A
uniformly random policy's success rate and mean length are measured on 20,000 episodes.

    python experiments/fun/four_rooms.py --seeds 0 1 2 3 4 5 6 7 --steps 500000 \
        --json experiments/fun/results.json

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

from jaxrl.algorithms import fun  # noqa: E402
from jaxrl.algorithms import recurrent_ppo as rp  # noqa: E402
from jaxrl.distributed.mesh import run_mesh  # noqa: E402
from jaxrl.distributed.sharding import shard_runs  # noqa: E402
from jaxrl.envs import four_rooms as fr  # noqa: E402
from jaxrl.envs import registry  # noqa: E402
from jaxrl.logger.writers import atomic_write_text  # noqa: E402

ARMS = ("fun", "fun_lstm", "fun_no_intrinsic", "lstm")
START, GOAL, EPISODE_STEPS = fr.cell_index(1, 1), fr.cell_index(11, 11), 200


def task():
    """The env and its params: corner to corner, slips 1/3, 200-step episodes."""
    env, params = registry.make("hrl/four_rooms", max_steps=EPISODE_STEPS, start=START)
    return env, params.replace(goal=jnp.asarray(GOAL, jnp.int32))


def random_policy(key: jax.Array, episodes: int = 20_000) -> dict:
    """Success rate and mean length of a uniformly random policy's episodes."""
    env, params = task()

    def episode(key):
        key_reset, key_steps = jax.random.split(key)
        _, state = env.reset(key_reset, params)

        def step(carry, key):
            state, done, length, success = carry
            key_action, key_env = jax.random.split(key)
            action = jax.random.randint(key_action, (), 0, 4)
            _, state, out = env.step(key_env, state, action, params)
            length = length + (~done).astype(jnp.int32)
            success = success | (~done & out.terminated)
            return (state, done | out.done, length, success), None

        init = (state, jnp.zeros((), bool), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
        (_, _, length, success), _ = jax.lax.scan(
            step, init, jax.random.split(key_steps, EPISODE_STEPS)
        )
        return success, length

    success, length = jax.jit(jax.vmap(episode))(jax.random.split(key, episodes))
    return {"success": float(np.mean(success)), "length": float(np.mean(length))}


def learner(arm: str, steps: int):
    """``(cfg, hp, module)`` of an arm."""
    if arm == "lstm":
        cfg = rp.Config(total_timesteps=steps, num_envs=16, rollout_len=40, algo="a2c",
                        hidden=64, cell="lstm", torso="mlp", torso_hidden=(64,))  # fmt: skip
        return cfg, rp.HParams.make(learning_rate=1e-3, ent_coef=0.01), rp
    cfg = fun.Config(total_timesteps=steps, dilation=1 if arm == "fun_lstm" else 10)
    hp = fun.HParams.make(intrinsic_weight=0.0 if arm == "fun_no_intrinsic" else 0.5)
    return cfg, hp, fun


def run_arm(arm: str, keys: jax.Array, steps: int, windows: int) -> dict:
    """Trains ``len(keys)`` vmapped seeds; per-window success rates and lengths."""
    env, params = task()
    cfg, hp, module = learner(arm, steps)
    module.check(cfg, hp)
    per_window = cfg.num_updates // windows

    def chunk(state, _):
        state, metrics = module.train(cfg, env, state, hp, per_window)
        count = metrics["episode/count"]
        episodes = jnp.sum(count)
        # the training return of an episode is 1 if it reached the goal, else 0
        returns = jnp.nan_to_num(metrics["episode/return"]) * count
        lengths = jnp.nan_to_num(metrics["episode/length"]) * count
        summary = {
            "success": jnp.sum(returns) / jnp.maximum(episodes, 1.0),
            "length": jnp.sum(lengths) / jnp.maximum(episodes, 1.0),
            "episodes": episodes,
            "finite": jnp.all(
                jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(state.params)])
            ),
        }
        return state, summary

    def run(key):
        state = module.init(cfg, env, key, hp, params)
        return jax.lax.scan(chunk, state, None, windows)[1]

    start = time.perf_counter()
    out = jax.block_until_ready(jax.jit(jax.vmap(run))(keys))
    seconds = time.perf_counter() - start
    result = {name: np.asarray(v).tolist() for name, v in out.items()}  # [seeds, windows]
    result["env_steps"] = [per_window * cfg.steps_per_update * (i + 1) for i in range(windows)]
    result["seconds"] = seconds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    keys = jnp.stack([jax.random.key(s) for s in args.seeds])
    mesh = run_mesh()
    if len(args.seeds) % mesh.size == 0:
        keys = shard_runs(keys, mesh)
    results = {"seeds": args.seeds, "steps": args.steps}
    results["random"] = random_policy(jax.random.key(12345))
    print(f"random policy: {results['random']}", flush=True)
    for arm in args.arms:
        results[arm] = run_arm(arm, keys, args.steps, args.windows)
        success = np.asarray(results[arm]["success"])
        length = np.asarray(results[arm]["length"])
        print(
            f"{arm}: last-window success {success[:, -1].mean():.2f} (per seed "
            f"{success[:, -1].round(2).tolist()}), length {length[:, -1].mean():.1f}; "
            f"success by window {success.mean(0).round(2).tolist()}; "
            f"{results[arm]['seconds']:.0f} s",
            flush=True,
        )
        if args.json:
            atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
