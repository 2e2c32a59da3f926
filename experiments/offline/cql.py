"""Offline RL on CartPole-v1: conservative Q-learning against offline DQN and behavioural
cloning, from fixed datasets (Kumar et al. 2020, arXiv:2006.04779).

Datasets (:func:`jaxrl.algorithms.demos.record`, key 0), each a fixed set of whole episodes:

* ``noisy_expert``: 20 episodes of the scripted expert ``a = [theta + 0.5 theta_dot > 0]``
  with its action replaced by a uniform random one with probability 0.5;
* ``random``: 200 episodes of uniform random actions.

Arms, ``--seeds`` seeds each, 10,000 Adam steps on minibatches of 256:

* ``bc``: :mod:`jaxrl.algorithms.bc` (maximum likelihood of the data's actions);
* ``dqn``: :mod:`jaxrl.algorithms.cql` with ``cql_alpha = 0`` (offline DQN);
* ``cql``: ``cql_alpha = 1``.

Per seed: the greedy return over ``EVAL_EPISODES`` episodes; for the Q-learners, the value
estimate ``max_a Q(s, a)`` averaged over ``NUM_STATES`` fixed reset states, and the true
value there: the discounted return (gamma 0.99) of the greedy policy from each state
(:func:`jaxrl.runner.evaluate.discounted_return`, 1,000 steps, through the time limit, as
the learners bootstrap through it). No policy can be worth more than ``1 / (1 - 0.99) =
100`` on CartPole.

    python experiments/offline/cql.py --seeds 8 --json experiments/offline/results.json

RESULTS.md in this folder records the protocol, the predictions and a run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import bc, cql, demos  # noqa: E402
from jaxrl.distributed import run_mesh, shard_runs  # noqa: E402
from jaxrl.logger.writers import atomic_write_text  # noqa: E402
from jaxrl.runner import evaluate  # noqa: E402

STEPS = 10_000
EVAL_EPISODES = 100
NUM_STATES = 100
HORIZON = 1_000
DATASETS = {"noisy_expert": (0.5, 20), "random": (1.0, 200)}  # (epsilon, episodes)


class NoisyExpert:
    """The scripted expert, its action replaced by a uniform one with probability
    ``epsilon`` (set per dataset)."""

    __name__ = "noisy_expert"
    epsilon = 0.5

    @classmethod
    def policy(cls, cfg, env, params, obs, key, deterministic, hp=None):
        expert = (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(jnp.int32)
        key_action, key_coin = jax.random.split(key)
        uniform = jax.random.randint(key_action, expert.shape, 0, 2)
        return jnp.where(jax.random.uniform(key_coin, expert.shape) < cls.epsilon, uniform, expert)


def start_states(env):
    keys = jax.random.split(jax.random.key(12345), NUM_STATES)
    obs, states = jax.vmap(env.reset, in_axes=(0, None))(keys, env.default_params())
    return states, obs


def q_arm(env, path, alpha, keys):
    cfg, hp = cql.Config(demos=str(path), num_steps=STEPS), cql.HParams.make(cql_alpha=alpha)
    cql.check(cfg, hp)
    states, obs = start_states(env)
    env_params = env.default_params()

    def one(key):
        state = cql.init(cfg, env, key, hp)
        state, _ = cql.train(cfg, env, state, hp, cfg.num_steps)
        params = state.params
        greedy = evaluate.evaluate(
            cql, cfg, env, params, jax.random.fold_in(key, 1), EVAL_EPISODES, True
        )
        estimate = jnp.mean(jnp.max(cql.q_values(cfg, env, params, obs), axis=-1))
        act = lambda o: cql.policy(cfg, env, params, o[None], None, True)[0]  # noqa: E731
        true = jax.vmap(
            lambda s, o: evaluate.discounted_return(
                act, env, env_params, s, o, hp.discount, HORIZON
            )
        )(states, obs)
        return greedy.mean(), estimate, jnp.mean(true)

    t0 = time.perf_counter()
    out = jax.block_until_ready(jax.jit(jax.vmap(one))(keys))
    return (*map(np.asarray, out), time.perf_counter() - t0)


def bc_arm(env, path, keys):
    cfg, hp = bc.Config(demos=str(path), num_steps=STEPS), bc.HParams.make()
    bc.check(cfg, hp)

    def one(key):
        state = bc.init(cfg, env, key, hp)
        state, _ = bc.train(cfg, env, state, hp, cfg.num_steps)
        greedy = evaluate.evaluate(
            bc, cfg, env, state.params, jax.random.fold_in(key, 1), EVAL_EPISODES, True
        )
        return greedy.mean()

    t0 = time.perf_counter()
    greedy = np.asarray(jax.block_until_ready(jax.jit(jax.vmap(one))(keys)))
    nan = np.full_like(greedy, np.nan)
    return greedy, nan, nan, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/jaxrl_offline"))
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    env, _ = envs.make("CartPole-v1")
    keys = shard_runs(jax.random.split(jax.random.key(2020), args.seeds), run_mesh())
    record = {"seeds": args.seeds, "steps": STEPS, "datasets": {}}
    print("| dataset (transitions, mean return) | arm | greedy return (mean ± sd) | per seed | "
          "estimated value | true value | seconds |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (epsilon, episodes) in DATASETS.items():
        NoisyExpert.epsilon = epsilon
        data, returns = demos.record(
            NoisyExpert, None, env, None, jax.random.key(0), episodes, deterministic=False
        )
        path = args.workdir / f"{name}.npz"
        demos.save(path, data)
        out = record["datasets"].setdefault(
            name, {"transitions": data.size, "data_return": float(returns.mean()), "arms": {}}
        )
        for arm in ("bc", "dqn", "cql"):
            if arm == "bc":
                greedy, estimate, true, seconds = bc_arm(env, path, keys)
            else:
                alpha = 0.0 if arm == "dqn" else 1.0
                greedy, estimate, true, seconds = q_arm(env, path, alpha, keys)
            out["arms"][arm] = {
                "greedy_per_seed": greedy.tolist(),
                "estimate_per_seed": [None if np.isnan(x) else float(x) for x in estimate],
                "true_per_seed": [None if np.isnan(x) else float(x) for x in true],
                "seconds": seconds,
            }
            values = "- | -" if arm == "bc" else f"{estimate.mean():.1f} | {true.mean():.1f}"
            print(
                f"| {name} ({data.size}, {returns.mean():.1f}) | {arm} | {greedy.mean():.1f} ± "
                f"{greedy.std():.1f} | {' '.join(f'{x:.0f}' for x in greedy)} | {values} | "
                f"{seconds:.0f} |",
                flush=True,
            )
            if args.json:
                atomic_write_text(args.json, json.dumps(record))


if __name__ == "__main__":
    main()
