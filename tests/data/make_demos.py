"""Writes ``cartpole_demos.npz``: 2 whole episodes (1,000 pairs) of a scripted CartPole-v1
expert, ``a = [theta + 0.5 theta_dot > 0]``, which balances for all 500 steps. The GAIL
tests and the algorithm-wide tests read it; ``tests/algorithms/test_gail.py`` checks that
it equals a fresh recording.

    python tests/data/make_demos.py
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from jaxrl.algorithms import demos
from jaxrl.envs import registry

PATH = Path(__file__).with_name("cartpole_demos.npz")
WEIGHTS = (0.0, 0.0, 1.0, 0.5)  # a = [w . obs > 0]
NUM_EPISODES = 2


class ScriptedExpert:
    """A linear threshold policy in ``jaxrl.runner.evaluate``'s ``policy`` protocol."""

    __name__ = "scripted_cartpole_expert"

    @staticmethod
    def policy(cfg, env, params, obs, key, deterministic, hp=None):
        return (obs @ jnp.asarray(WEIGHTS) > 0).astype(jnp.int32)


def record() -> tuple[demos.Demos, object]:
    env, _ = registry.make("CartPole-v1")
    return demos.record(ScriptedExpert, None, env, None, jax.random.key(0), NUM_EPISODES)


if __name__ == "__main__":
    data, returns = record()
    demos.save(PATH, data)
    print(f"wrote {PATH}: {data.size} pairs, returns {returns.tolist()}")
