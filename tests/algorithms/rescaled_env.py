"""A check for tests that show an algorithm never learns from the env's reward."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxrl.envs.wrappers import Wrapper


@dataclasses.dataclass(frozen=True)
class Rescaled(Wrapper):
    """The env's reward times 1000, plus 5."""

    def step(self, key, state, action, params):
        obs, state, out = self.env.step(key, state, action, params)
        return obs, state, out.replace(reward=1000.0 * out.reward + 5.0)


def assert_learning_ignores_the_env_reward(algo, cfg, env, hp, fields):
    """Trains ``algo`` 3 updates on ``env`` and on :class:`Rescaled` ``env`` from the same
    key. The state's ``fields`` (parameter trees) must end bitwise equal, while the episode
    metrics report the rescaled reward. Returns the plain run's metrics."""
    step = jax.jit(lambda s, e: algo.train(cfg, e, s, hp, 3), static_argnums=1)
    plain, m_plain = step(algo.init(cfg, env, jax.random.key(0), hp), env)
    scaled, m_scaled = step(algo.init(cfg, Rescaled(env), jax.random.key(0), hp), Rescaled(env))
    for field in fields:
        a_leaves, b_leaves = (
            jax.tree.leaves(getattr(plain, field)),
            jax.tree.leaves(getattr(scaled, field)),
        )
        for a, b in zip(a_leaves, b_leaves, strict=True):
            np.testing.assert_array_equal(a, b)
    ret_plain = np.asarray(m_plain["episode/return"])
    finished = np.isfinite(ret_plain)
    assert finished.any()
    assert np.all(np.asarray(m_scaled["episode/return"])[finished] > 1000 * ret_plain[finished])
    return m_plain
