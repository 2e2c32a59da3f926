"""Tests of the probe environments: each behaves as its docstring says."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import rlax

from jaxrl.envs import list_envs, make, probe, spaces
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


# ----------------------------------------------------------------------------- Andy Jones's probes


def _reset_and_step(name: str, action):
    """Resets 64 copies of ``probe/<name>`` and steps each once with ``action`` (scalar or [64])."""
    env, params = make(f"probe/{name}")
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(KEYS, params)
    action = jnp.broadcast_to(jnp.asarray(action, jnp.int32), (64,))
    next_obs, _, out = jax.vmap(env.step, in_axes=(0, 0, 0, None))(KEYS, state, action, params)
    return obs, next_obs, out


def _assert_one_step_episode(obs, next_obs, out):
    assert out.terminated.all() and not out.truncated.any()
    assert out.reward.dtype == jnp.float32
    np.testing.assert_array_equal(out.final_obs, obs)
    np.testing.assert_array_equal(next_obs, obs)


def test_jones_probes_are_registered_in_order():
    assert probe.JONES_PROBES == (
        "constant_reward",
        "obs_reward",
        "two_step_reward",
        "action_reward",
        "obs_action_reward",
    )
    names = set(list_envs())
    for name in probe.JONES_PROBES:
        assert f"probe/{name}" in names
        env, params = make(f"probe/{name}")
        assert isinstance(env, probe.PROBES[name])
        assert env.observation_space(params).shape == (1,)
    # The existing probes keep their names and classes.
    assert probe.PROBES["reward_from_obs"] is probe.RewardFromObs
    assert probe.PROBES["continuous_target"] is probe.ContinuousTarget
    assert probe.PROBES["time_limit_chain"] is probe.TimeLimitChain


def test_probe1_constant_reward():
    env, params = make("probe/constant_reward")
    assert env.action_space(params) == spaces.Discrete(1)
    obs, next_obs, out = _reset_and_step("constant_reward", 0)
    np.testing.assert_array_equal(obs, np.zeros((64, 1)))
    np.testing.assert_array_equal(out.reward, 1.0)
    _assert_one_step_episode(obs, next_obs, out)


def test_probe2_obs_reward():
    env, params = make("probe/obs_reward")
    assert env.action_space(params) == spaces.Discrete(1)
    obs, next_obs, out = _reset_and_step("obs_reward", 0)
    assert set(np.unique(np.asarray(obs))) == {-1.0, 1.0}
    np.testing.assert_array_equal(out.reward, obs[:, 0])
    _assert_one_step_episode(obs, next_obs, out)


def test_probe3_two_step_reward():
    env, params = make("probe/two_step_reward")
    assert env.action_space(params) == spaces.Discrete(1)
    obs, state = env.reset(jax.random.key(0), params)
    np.testing.assert_array_equal(obs, [0.0])
    obs, state, out = env.step(KEYS[0], state, jnp.int32(0), params)
    np.testing.assert_array_equal(obs, [1.0])
    assert float(out.reward) == 0.0 and not out.terminated and not out.truncated
    np.testing.assert_array_equal(out.final_obs, [1.0])
    reward_1, discount_1 = out.reward, 1.0 - out.terminated
    obs, state, out = env.step(KEYS[1], state, jnp.int32(0), params)
    assert float(out.reward) == 1.0 and out.terminated and not out.truncated
    # The values follow from the rewards and terminations: V(0) = γ, V(1) = 1.
    gamma = 0.9
    r_t = jnp.stack([reward_1, out.reward])
    discount_t = gamma * jnp.stack([discount_1, 1.0 - out.terminated])
    values = rlax.discounted_returns(r_t, discount_t, jnp.zeros(2))
    np.testing.assert_allclose(values, [gamma, 1.0], rtol=1e-6)


def test_probe3_under_auto_reset_repeats_obs_0_then_1():
    env, params = make("probe/two_step_reward")
    env = AutoReset(env)
    obs0, state = env.reset(jax.random.key(0), params)

    def body(state, key):
        obs, state, out = env.step(key, state, jnp.int32(0), params)
        return state, (obs, out)

    _, (obs, out) = jax.jit(lambda s: jax.lax.scan(body, s, KEYS[:6]))(state)
    np.testing.assert_array_equal(obs0, [0.0])
    np.testing.assert_array_equal(obs[:, 0], [1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(out.reward, [0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(out.terminated, [False, True] * 3)
    np.testing.assert_array_equal(out.final_obs[:, 0], 1.0)


def test_probe4_action_reward():
    env, params = make("probe/action_reward")
    assert env.action_space(params) == spaces.Discrete(2)
    for action, reward in ((0, -1.0), (1, 1.0)):
        obs, next_obs, out = _reset_and_step("action_reward", action)
        np.testing.assert_array_equal(obs, np.zeros((64, 1)))
        np.testing.assert_array_equal(out.reward, reward)
        _assert_one_step_episode(obs, next_obs, out)


def test_probe5_obs_action_reward():
    env, params = make("probe/obs_action_reward")
    assert env.action_space(params) == spaces.Discrete(2)
    assert isinstance(env, probe.RewardFromObs)  # probe 5 is RewardFromObs with misses at -1
    assert env.miss_reward == -1.0
    for action in (0, 1):
        obs, next_obs, out = _reset_and_step("obs_action_reward", action)
        assert set(np.unique(np.asarray(obs))) == {-1.0, 1.0}
        match = (np.asarray(obs[:, 0]) > 0) == (action == 1)
        np.testing.assert_array_equal(out.reward, np.where(match, 1.0, -1.0))
        _assert_one_step_episode(obs, next_obs, out)
    best = (obs[:, 0] > 0).astype(jnp.int32)
    _, _, out = _reset_and_step("obs_action_reward", best)
    np.testing.assert_array_equal(out.reward, 1.0)
    # RewardFromObs itself still pays 0 for a miss.
    _, _, out = _reset_and_step("reward_from_obs", 1 - best)
    np.testing.assert_array_equal(out.reward, 0.0)
