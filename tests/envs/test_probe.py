"""Tests of the probe environments: each behaves as its docstring says."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.envs import make, spaces
from jaxrl.envs.wrappers import AutoReset

KEYS = jax.random.split(jax.random.key(0), 64)


def test_reward_from_obs():
    env, params = make("probe/reward_from_obs")
    assert env.action_space(params) == spaces.Discrete(2)
    assert env.observation_space(params).shape == (1,)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(KEYS, params)
    assert obs.shape == (64, 1)
    assert set(np.unique(np.asarray(obs))) == {-1.0, 1.0}  # both signs occur
    step = jax.vmap(env.step, in_axes=(0, 0, None, None))
    for action in (0, 1):
        next_obs, _, out = step(KEYS, state, jnp.int32(action), params)
        want = (np.asarray(obs[:, 0]) > 0) == (action == 1)
        np.testing.assert_array_equal(out.reward, want.astype(np.float32))
        assert out.terminated.all() and not out.truncated.any()
        np.testing.assert_array_equal(out.final_obs, obs)
    # The optimal policy earns 1 every episode.
    best = (obs[:, 0] > 0).astype(jnp.int32)
    _, _, out = jax.vmap(env.step, in_axes=(0, 0, 0, None))(KEYS, state, best, params)
    np.testing.assert_array_equal(out.reward, 1.0)


def test_continuous_target():
    env, params = make("probe/continuous_target")
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(KEYS, params)
    assert obs.shape == (64, 1)
    assert np.all((obs >= -1.0) & (obs <= 1.0)) and float(obs.std()) > 0.3
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    _, _, best = step(KEYS, state, obs, params)
    np.testing.assert_allclose(best.reward, 0.0, atol=1e-7)
    action = obs + 0.5
    _, _, out = step(KEYS, state, action, params)
    np.testing.assert_allclose(out.reward, -0.25, rtol=1e-5)
    assert out.terminated.all() and not out.truncated.any()
    space = env.action_space(params)
    assert isinstance(space, spaces.Box) and space.shape == (1,)


def test_time_limit_chain_truncates_after_max_steps():
    env, params = make("probe/time_limit_chain")
    max_steps = int(params.max_steps)
    obs, state = env.reset(jax.random.key(0), params)
    np.testing.assert_array_equal(obs, [0.0])

    def body(state, key):
        obs, state, step = env.step(key, state, jnp.int32(0), params)
        return state, (obs, step)

    _, (obs, step) = jax.lax.scan(body, state, KEYS[:max_steps])
    np.testing.assert_array_equal(step.reward, 1.0)
    assert not step.terminated.any()
    np.testing.assert_array_equal(step.truncated, np.arange(1, max_steps + 1) == max_steps)
    np.testing.assert_allclose(obs[:, 0], np.arange(1, max_steps + 1) / max_steps, rtol=1e-6)


def test_time_limit_chain_limit_is_a_traced_param():
    env, params = make("probe/time_limit_chain")
    env = AutoReset(env)

    def run(max_steps):
        p = params.replace(max_steps=max_steps)
        _, state = env.reset(jax.random.key(0), p)

        def body(state, key):
            _, state, step = env.step(key, state, jnp.int32(0), p)
            return state, step.truncated

        return jax.lax.scan(body, state, KEYS[:12])[1]

    truncated = jax.jit(jax.vmap(run))(jnp.array([3, 4]))
    t = np.arange(1, 13)
    np.testing.assert_array_equal(truncated[0], t % 3 == 0)
    np.testing.assert_array_equal(truncated[1], t % 4 == 0)
