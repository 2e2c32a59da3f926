"""Recurrent against feed-forward PPO on CartPole with its velocities hidden.

``pomdp/CartPole-v1`` observes only the cart position and the pole angle; the velocities
must be inferred from past observations. A feed-forward policy sees one observation; the
recurrent PPO of :mod:`jaxrl.algorithms.recurrent_ppo` (the learner behind RL^2, a GRU
actor-critic whose state is zeroed at episode starts) sees the episode so far. Both run
on ``CartPole-v1`` too, as the control: there memory is not needed.

* ``ppo``: the ``ppo/cartpole`` preset (MLP actor-critic, 4 envs × 128 steps, Adam 2.5e-4
  annealed); ``ppo_scaled``: the same with ``scale_reward=True``, as the recurrent agent;
* ``recurrent_ppo``: the ``recurrent_ppo/pomdp_cartpole`` preset on both envs: GRU(128)
  with linear policy and value heads, 16 envs × 128 steps,
  4 epochs × 4 minibatches of env columns (truncated BPTT over each 128-step rollout),
  Adam 1e-3 annealed to 0, rewards divided by a running std of the discounted return
  (``scale_reward``; without it the value loss on CartPole's targets of up to 100 takes
  over the updates of the core that policy and value share: ``value_scale.py``,
  RESULTS.md).

Each (agent, env) is one compiled program vmapped over ``--seeds`` seeds with the same env-step
budget. Scores per seed: the mean return of the training episodes (the stochastic policy)
that ended in the last tenth of the updates, and the final policy's greedy return over 256
episodes (``jaxrl.runner.evaluate``; the recurrent policy starts each from a zero state).

    python experiments/recurrent_ppo/pomdp_cartpole.py --seeds 8 \
        --json experiments/recurrent_ppo/results.json

RESULTS.md in this folder records the protocol and a run.
"""

from __future__ import annotations

import argparse
import json
import time

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import ppo, recurrent_ppo  # noqa: E402
from jaxrl.distributed import run_mesh, shard_runs  # noqa: E402
from jaxrl.logger.writers import atomic_write_text  # noqa: E402
from jaxrl.runner import config, evaluate  # noqa: E402

ENVS = ("CartPole-v1", "pomdp/CartPole-v1")
AGENTS = ("ppo", "ppo_scaled", "recurrent_ppo")
EVAL_EPISODES = 256


def setup(agent: str, total_timesteps: int):
    """``(module, cfg, hp, num_updates)`` for an agent at this env-step budget."""
    if agent in ("ppo", "ppo_scaled"):
        sets = {"scale_reward": "true"} if agent == "ppo_scaled" else {}
        cfg, hp = config.resolve(ppo, config.load_preset("ppo/cartpole"), sets, total_timesteps)
        return ppo, cfg, hp, cfg.num_updates
    preset = config.load_preset("recurrent_ppo/pomdp_cartpole")
    cfg, hp = config.resolve(recurrent_ppo, preset, {}, total_timesteps)
    return recurrent_ppo, cfg, hp, cfg.num_updates


def train_and_score(algo, cfg, hp, env, env_params, keys: jax.Array, num_updates: int) -> dict:
    """One compiled program: trains ``algo`` from each of ``keys`` for ``num_updates``, then
    plays the final policy greedily (on observations normalised by the run's final
    statistics if it trained on normalised ones). Returns the final training return per
    seed (the episodes that ended in the last tenth of the updates), the greedy return,
    every per-update training return and value loss, and the compile and run times."""

    def one(key):
        state = algo.init(cfg, env, key, hp, env_params)
        state, metrics = algo.train(cfg, env, state, hp, num_updates)
        greedy = evaluate.evaluate(
            algo, cfg, env, state.params, jax.random.fold_in(key, 1), EVAL_EPISODES, True,
            env_params, 500, obs_stats=evaluate.obs_stats(state.env_state),
        )  # fmt: skip
        return (
            metrics["episode/return"],
            metrics["episode/count"],
            greedy.mean(),
            metrics["train/value_loss"],
        )

    program = jax.jit(jax.vmap(one))
    t0 = time.perf_counter()
    compiled = program.lower(keys).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    returns, counts, greedy, value_loss = jax.block_until_ready(compiled(keys))
    run_s = time.perf_counter() - t0
    returns, counts = np.asarray(returns), np.asarray(counts)
    tail = slice(num_updates - num_updates // 10, num_updates)
    weights = np.where(np.isnan(returns[:, tail]), 0.0, counts[:, tail])
    final = np.sum(np.nan_to_num(returns[:, tail]) * weights, 1) / np.sum(weights, 1)
    return {
        "final_return": final.tolist(),
        "greedy_return": np.asarray(greedy).tolist(),
        "returns": np.where(np.isnan(returns), None, returns).tolist(),
        "value_loss": np.asarray(value_loss).tolist(),
        "env_steps_per_update": cfg.steps_per_update,
        "compile_s": compile_s,
        "run_s": run_s,
    }


def main(env_names=ENVS, agent_names=AGENTS, setup_fn=setup, doc: str = __doc__) -> None:
    """The command line: every (env, agent) trained and scored, a table row each.

    ``setup_fn(agent, total_timesteps) -> (module, cfg, hp, num_updates)``; other scripts
    (``pomdp_pendulum.py``) pass their own envs, agents and setup."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--envs", nargs="+", default=list(env_names), choices=env_names)
    parser.add_argument("--agents", nargs="+", default=list(agent_names), choices=agent_names)
    parser.add_argument("--json", help="write every curve here")
    args = parser.parse_args()

    keys = shard_runs(jax.random.split(jax.random.key(args.seed), args.seeds), run_mesh())
    record = {"seeds": args.seeds, "seed": args.seed, "total_timesteps": args.total_timesteps,
              "runs": {}}  # fmt: skip
    print("| env | agent | final training return (mean ± sd) | per seed | "
          "greedy return (mean ± sd) | per seed | compile + run |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for env_name in args.envs:
        for agent in args.agents:
            algo, cfg, hp, num_updates = setup_fn(agent, args.total_timesteps)
            env, env_params = envs.make(env_name)
            out = train_and_score(algo, cfg, hp, env, env_params, keys, num_updates)
            record["runs"][f"{agent}/{env_name}"] = out
            final, greedy = np.asarray(out["final_return"]), np.asarray(out["greedy_return"])
            print(
                f"| {env_name} | {agent} | {final.mean():.0f} ± {final.std():.0f} | "
                f"{' '.join(f'{x:.0f}' for x in final)} | "
                f"{greedy.mean():.0f} ± {greedy.std():.0f} | "
                f"{' '.join(f'{x:.0f}' for x in greedy)} | "
                f"{out['compile_s']:.0f} s + {out['run_s']:.0f} s |",
                flush=True,
            )
            if args.json:
                atomic_write_text(args.json, json.dumps(record))


if __name__ == "__main__":
    main()
