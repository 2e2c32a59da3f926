"""Delayed chain MDPs: hand-traced episodes, parameter sampling, variants, jit/vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs import delayed_chain
from jaxrl.envs.delayed_chain import ChainParams
from jaxrl.errors import ConfigError


def _play(env, params, actions, key=0):
    """Runs the env for len(actions) steps; returns obs indices/obs, rewards, terminations."""
    key = jax.random.key(key)
    obs, state = env.reset(key, params)
    all_obs, rewards, terms = [obs], [], []
    for a in actions:
        key, sub = jax.random.split(key)
        obs, state, step = env.step(sub, state, jnp.int32(a), params)
        all_obs.append(obs)
        rewards.append(float(step.reward))
        terms.append(bool(step.terminated))
    return np.stack(all_obs), np.array(rewards), np.array(terms)


@pytest.mark.parametrize("good, first, expected", [(1, 1, 1.0), (1, 0, -1.0), (0, 0, 1.0)])
def test_terminal_reward_at_step_L_only_first_action_matters(good, first, expected):
    env = delayed_chain.make("short")
    params = ChainParams(jnp.int32(5), jnp.int32(good))
    # later actions alternate: they must not matter
    obs, rewards, terms = _play(env, params, [first, 1 - first, first, 1 - first, 1])
    np.testing.assert_array_equal(rewards, [0, 0, 0, 0, expected])
    np.testing.assert_array_equal(terms, [False, False, False, False, True])
    # tabular index: 0 at depth 0, then 1 + 2 (t - 1) + branch
    idx = obs.argmax(-1)
    np.testing.assert_array_equal(idx, [0] + [1 + 2 * (t - 1) + first for t in range(1, 6)])
    assert obs.shape == (6, env.num_states) and env.num_states == 59
    np.testing.assert_array_equal(obs.sum(-1), np.ones(6))


def test_sample_params_ranges():
    env = delayed_chain.make("long")
    p = jax.vmap(env.sample_params)(jax.random.split(jax.random.key(0), 2000))
    assert int(p.length.min()) == 5 and int(p.length.max()) == 50
    assert set(np.unique(p.good_action).tolist()) == {0, 1}
    short = jax.vmap(delayed_chain.make("short", max_length=10).sample_params)(
        jax.random.split(jax.random.key(1), 500)
    )
    assert set(np.unique(short.length).tolist()) == set(range(5, 11))


def test_noisy_intermediate_rewards_are_pm1():
    env = delayed_chain.make("short_noisy")
    params = ChainParams(jnp.int32(30), jnp.int32(0))
    _, rewards, terms = _play(env, params, [0] * 30)
    assert set(np.unique(rewards[:-1]).tolist()) == {-1.0, 1.0}
    assert rewards[-1] == 1.0 and terms[-1] and not terms[:-1].any()


def test_distraction_observation():
    env = delayed_chain.make("distraction")
    params = ChainParams(jnp.int32(6), jnp.int32(1))
    obs, rewards, _ = _play(env, params, [1, 0, 0, 0, 0, 0])
    assert obs.shape == (7, 22) and env.observation_space(params).shape == (22,)
    np.testing.assert_array_equal(obs[0, :2], [0, 0])
    np.testing.assert_array_equal(obs[1:, :2], np.tile([0, 1], (6, 1)))
    assert 0.2 < obs[:, 2:].mean() < 0.8  # fair coins
    assert rewards[-1] == 1.0


def test_jit_and_vmap_match_loop():
    env = delayed_chain.make("short", max_length=10)
    keys = jax.random.split(jax.random.key(3), 4)
    params = jax.vmap(env.sample_params)(keys)
    obs, state = jax.vmap(env.reset)(keys, params)
    action = jnp.array([0, 1, 1, 0], jnp.int32)
    step = jax.jit(jax.vmap(env.step))
    o_v, s_v, st_v = step(keys, state, action, params)
    for i in range(4):
        p_i = jax.tree.map(lambda x, i=i: x[i], params)
        s_i = jax.tree.map(lambda x, i=i: x[i], state)
        o, s, st = env.step(keys[i], s_i, action[i], p_i)
        np.testing.assert_array_equal(o, o_v[i])
        assert int(s.branch) == int(s_v.branch[i]) == int(action[i])


def test_bad_input_raises():
    with pytest.raises(ConfigError):
        delayed_chain.make("medium")
    with pytest.raises(ConfigError):
        delayed_chain.DelayedChain(min_length=10, max_length=5)
