"""Classical baselines against deep RL: CMA-ES policy search and CEM-MPC with the true model,
against PPO, on CartPole-v1, Pendulum-v1 and Acrobot-v1.

Arms, per env:

* ``ppo``: PPO from the env's preset (``ppo/cartpole``, ``ppo/pendulum``; Acrobot:
  ``ppo/cartpole``'s settings), ``--seeds`` seeds.
* ``cma_es``: :mod:`jaxrl.algorithms.cma_es` with its defaults (population 32, one
  16-unit tanh layer, sigma 0.5) for ``GENERATIONS[env]`` generations of
  ``EPISODES[env]`` episodes per member, ``--seeds`` seeds; the policy is the search
  distribution's mean.
* ``mpc``: :mod:`jaxrl.algorithms.mpc` with its defaults (horizon 40, 512 sequences, 64
  elites, 8 CEM rounds per step: 163,840 model steps per real step), one episode per seed.
  It plans with the env itself and learns nothing.

Per arm: the final policy's greedy return over ``EVAL_EPISODES`` episodes per seed (MPC: its
one episode per seed), the real env steps it took to get there (CMA-ES: the members'
episodes; MPC: 0 before acting), and the wall-clock seconds of one compiled program for all
seeds (compile included). PPO's seeds split over the CPU cores (``use_all_cpu_cores``);
CMA-ES's and MPC's run on one device, one core: sharded over CPU devices with more than
one run per device, ``cma_es.train`` hangs on jax 0.10.2 (not 0.11.2; RESULTS.md).

    python experiments/classical/baselines.py --seeds 8 --json experiments/classical/results.json

RESULTS.md in this folder records the protocol, the predictions and a run.
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
from jaxrl.algorithms import cma_es, mpc, ppo  # noqa: E402
from jaxrl.distributed import run_mesh, shard_runs  # noqa: E402
from jaxrl.logger.writers import atomic_write_text  # noqa: E402
from jaxrl.runner import config, evaluate  # noqa: E402

PRESETS = {
    "CartPole-v1": "ppo/cartpole",
    "Pendulum-v1": "ppo/pendulum",
    "Acrobot-v1": "ppo/cartpole",
}
GENERATIONS = {"CartPole-v1": 50, "Pendulum-v1": 300, "Acrobot-v1": 50}
EPISODES = {"CartPole-v1": 1, "Pendulum-v1": 4, "Acrobot-v1": 1}
EVAL_EPISODES = 100


def timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return jax.tree.map(np.asarray, out), time.perf_counter() - t0


def ppo_arm(env_name, env, keys):
    preset = config.load_preset(PRESETS[env_name])
    cfg, hp = config.resolve(ppo, preset, {}, None)

    def one(key):
        state = ppo.init(cfg, env, key, hp)
        state, _ = ppo.train(cfg, env, state, hp, cfg.num_updates)
        return evaluate.evaluate(
            ppo, cfg, env, state.params, jax.random.fold_in(key, 1), EVAL_EPISODES, True,
            obs_stats=evaluate.obs_stats(state.env_state),
        )  # fmt: skip

    greedy, seconds = timed(jax.jit(jax.vmap(one)), keys)
    steps = np.full(keys.shape[0], cfg.num_updates * cfg.steps_per_update)
    return greedy.mean(axis=1), steps, seconds


def cma_es_arm(env_name, env, keys):
    cfg = cma_es.Config(episodes=EPISODES[env_name])

    def one(key):
        state = cma_es.init(cfg, env, key)
        state, metrics = cma_es.train(cfg, env, state, GENERATIONS[env_name])
        greedy = evaluate.evaluate(
            cma_es, cfg, env, cma_es.params(cfg, env, state), jax.random.fold_in(key, 1),
            EVAL_EPISODES, True,
        )  # fmt: skip
        return greedy, metrics["es/env_steps"].sum()

    (greedy, steps), seconds = timed(jax.jit(jax.vmap(one)), keys)
    return greedy.mean(axis=1), steps, seconds


def mpc_arm(env_name, env, keys):
    cfg = mpc.Config()
    (returns, _), seconds = timed(jax.jit(jax.vmap(lambda k: mpc.episode(cfg, env, k))), keys)
    return returns, np.zeros(keys.shape[0], int), seconds


ARMS = {"ppo": ppo_arm, "cma_es": cma_es_arm, "mpc": mpc_arm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--envs", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()
    keys = jax.random.split(jax.random.key(2002), args.seeds)
    # PPO's seeds split over the cores. CMA-ES's and MPC's run on one device: sharded with
    # more than one run per CPU device, cma_es.train hangs (RESULTS.md).
    sharded = shard_runs(keys, run_mesh())
    record = {"seeds": args.seeds, "eval_episodes": EVAL_EPISODES, "envs": {}}
    print("| env | arm | greedy return (mean ± sd over seeds) | per seed | real env steps "
          "(mean) | seconds (all seeds, compile included) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for env_name in args.envs:
        env, _ = envs.make(env_name)
        out = record["envs"].setdefault(env_name, {})
        for arm in args.arms:
            per_seed, steps, seconds = ARMS[arm](env_name, env, sharded if arm == "ppo" else keys)
            out[arm] = {
                "greedy_per_seed": per_seed.tolist(),
                "env_steps_per_seed": [int(x) for x in steps],
                "seconds": seconds,
            }
            print(
                f"| {env_name} | {arm} | {per_seed.mean():.1f} ± {per_seed.std():.1f} | "
                f"{' '.join(f'{x:.0f}' for x in per_seed)} | {steps.mean():,.0f} | "
                f"{seconds:.0f} |",
                flush=True,
            )
            if args.json:
                atomic_write_text(args.json, json.dumps(record))


if __name__ == "__main__":
    main()
