"""Tests of the gymnax adapter: step-for-step parity with gymnax, time limits, spaces, hashing."""

from __future__ import annotations

import chex
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments import spaces as gymnax_spaces

from jaxrl.envs import make, spaces
from jaxrl.envs.gymnax import GymnaxEnv
from jaxrl.envs.wrappers import AutoReset

NUM_STEPS = 64


def _random_actions(env_id, key, num_steps):
    if env_id == "CartPole-v1":
        return jax.random.randint(key, (num_steps,), 0, 2)
    return jax.random.uniform(key, (num_steps, 1), minval=-2.5, maxval=2.5)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_step_parity_with_gymnax_step_env(env_id):
    """The raw adapter is gymnax's own ``reset_env``/``step_env`` on the same keys and actions."""
    env, params = make(env_id)
    ref, ref_params = gymnax.make(env_id)
    key_reset, key_steps, key_act = jax.random.split(jax.random.key(0), 3)
    keys = jax.random.split(key_steps, NUM_STEPS)
    actions = _random_actions(env_id, key_act, NUM_STEPS)

    def rollout(reset, step):
        obs, state = reset(key_reset)

        def body(state, inputs):
            key, action = inputs
            return step(key, state, action)

        return obs, jax.lax.scan(body, state, (keys, actions))[1]

    def ours_step(key, state, action):
        obs, state, step = env.step(key, state, action, params)
        return state, (obs, step.reward, step.terminated, step.truncated, step.final_obs)

    def ref_step(key, state, action):
        obs, state, reward, terminated, _ = ref.step_env(key, state, action, ref_params)
        return state, (obs, reward, terminated)

    obs0, (obs, reward, terminated, truncated, final_obs) = jax.jit(
        lambda: rollout(lambda k: env.reset(k, params), ours_step)
    )()
    ref_obs0, (ref_obs, ref_reward, ref_terminated) = jax.jit(
        lambda: rollout(lambda k: ref.reset_env(k, ref_params), ref_step)
    )()
    np.testing.assert_array_equal(obs0, ref_obs0)
    np.testing.assert_allclose(obs, ref_obs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(reward, ref_reward, rtol=1e-6)
    np.testing.assert_array_equal(terminated, ref_terminated)
    np.testing.assert_array_equal(final_obs, obs)  # the raw adapter never resets
    assert reward.dtype == jnp.float32 and terminated.dtype == truncated.dtype == jnp.bool_
    if env_id == "CartPole-v1":
        assert terminated.any()  # random actions drop the pole within 64 steps
    assert not truncated.any()  # far from either time limit


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_auto_reset_parity_with_gymnax_step(env_id):
    """``AutoReset(GymnaxEnv)`` equals gymnax's own auto-resetting ``step``, resets included."""
    env, params = make(env_id)
    ref, ref_params = gymnax.make(env_id)
    if env_id == "Pendulum-v1":  # never terminates: a short time limit forces resets
        params = params.replace(max_steps_in_episode=10)
        ref_params = ref_params.replace(max_steps_in_episode=10)
    env = AutoReset(env)
    key_reset, key_steps, key_act = jax.random.split(jax.random.key(1), 3)
    keys = jax.random.split(key_steps, NUM_STEPS)
    actions = _random_actions(env_id, key_act, NUM_STEPS)

    @jax.jit
    def ours():
        def body(state, inputs):
            obs, state, step = env.step(*inputs[:1], state, inputs[1], params)
            return state, (obs, step.reward, step.terminated, step.truncated, step.final_obs)

        return jax.lax.scan(body, env.reset(key_reset, params)[1], (keys, actions))[1]

    @jax.jit
    def reference():
        def body(state, inputs):
            obs, state, reward, term, trunc, info = ref.step(
                *inputs[:1], state, inputs[1], ref_params
            )
            return state, (obs, reward, term, trunc, info["final_observation"])

        return jax.lax.scan(body, ref.reset(key_reset, ref_params)[1], (keys, actions))[1]

    obs, reward, terminated, truncated, final_obs = ours()
    ref_obs, ref_reward, ref_terminated, ref_truncated, ref_final_obs = reference()
    np.testing.assert_allclose(obs, ref_obs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(final_obs, ref_final_obs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(reward, ref_reward, rtol=1e-6)
    np.testing.assert_array_equal(terminated, ref_terminated)
    # gymnax flags the time limit even on a terminal step; jaxrl reports termination only.
    np.testing.assert_array_equal(truncated, ref_truncated & ~ref_terminated)
    assert (terminated | truncated).sum() >= 2  # several resets happened


def _cartpole_state_at(time, theta=0.0):
    env, params = make("CartPole-v1")
    _, state = env.reset(jax.random.key(0), params)
    zero = jnp.zeros_like(state.theta)
    state = state.replace(x=zero, x_dot=zero, theta=zero + theta, theta_dot=zero, time=time)
    return env, params, state


def test_cartpole_truncates_at_500_steps():
    env, params, state = _cartpole_state_at(498)
    assert params.max_steps_in_episode == 500
    step_fn = jax.jit(env.step)
    _, state, step = step_fn(jax.random.key(1), state, jnp.int32(1), params)
    assert int(state.time) == 499
    assert not bool(step.truncated) and not bool(step.terminated)
    _, state, step = step_fn(jax.random.key(2), state, jnp.int32(0), params)
    assert int(state.time) == 500
    assert bool(step.truncated) and not bool(step.terminated)
    assert bool(step.done)


def test_cartpole_termination_at_the_limit_is_not_truncation():
    """A real end on the last step is reported as terminated only (no bootstrap)."""
    env, params, state = _cartpole_state_at(499, theta=0.3)  # falls past 12 degrees
    _, _, step = env.step(jax.random.key(1), state, jnp.int32(1), params)
    assert bool(step.terminated) and not bool(step.truncated)


def test_discounting_chain_ends_by_termination_as_in_bsuite():
    """bsuite ends DiscountingChain after 100 steps with discount 0; gymnax calls it a time
    limit. The adapter reports termination there, and nothing before it."""
    env, params = make("DiscountingChain-bsuite")
    assert params.max_steps_in_episode == 100
    _, state = env.reset(jax.random.key(0), params)

    def body(state, key):
        _, state, step = env.step(key, state, jnp.int32(4), params)
        return state, (step.reward, step.terminated, step.truncated)

    _, (reward, terminated, truncated) = jax.jit(
        lambda s: jax.lax.scan(body, s, jax.random.split(jax.random.key(1), 100))
    )(state)
    assert not truncated.any()
    np.testing.assert_array_equal(np.flatnonzero(terminated), [99])
    # chain 4 pays its 1 at step 100, the terminal step
    np.testing.assert_array_equal(np.flatnonzero(reward), [99])


def test_balanced_cartpole_truncates_under_small_time_limit():
    """A scripted controller keeps the pole up; a traced limit of 30 steps cuts the episode."""
    env, params = make("CartPole-v1")
    params = params.replace(max_steps_in_episode=30)
    obs, state = env.reset(jax.random.key(3), params)

    def body(carry, key):
        obs, state = carry
        action = (obs[2] + 0.5 * obs[3] > 0).astype(jnp.int32)  # push towards the lean
        obs, state, step = env.step(key, state, action, params)
        return (obs, state), (step.terminated, step.truncated)

    _, (terminated, truncated) = jax.jit(
        lambda: jax.lax.scan(body, (obs, state), jax.random.split(jax.random.key(4), 30))
    )()
    assert not terminated.any()
    np.testing.assert_array_equal(truncated, np.arange(1, 31) == 30)


def test_env_params_are_traced():
    """One compiled step serves two time limits, vmapped over the params."""
    env, params = make("CartPole-v1")
    _, state = env.reset(jax.random.key(0), params)
    state = state.replace(time=jnp.asarray(9))
    limits = jnp.array([10, 20])
    batched_params = jax.vmap(lambda m: params.replace(max_steps_in_episode=m))(limits)
    _, _, step = jax.jit(jax.vmap(env.step, in_axes=(None, None, None, 0)))(
        jax.random.key(1), state, jnp.int32(0), batched_params
    )
    np.testing.assert_array_equal(step.truncated, [True, False])


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "Breakout-MinAtar"])
def test_spaces_are_converted(env_id):
    env, params = make(env_id)
    ref, ref_params = gymnax.make(env_id)
    for ours, theirs in (
        (env.observation_space(params), ref.observation_space(ref_params)),
        (env.action_space(params), ref.action_space(ref_params)),
    ):
        hash(ours)
        if isinstance(theirs, gymnax_spaces.Discrete):
            assert ours == spaces.Discrete(int(theirs.n))
            assert ours.n == theirs.n
        else:
            assert isinstance(ours, spaces.Box)
            assert ours.shape == tuple(theirs.shape)
            low, high = ours.bounds()
            chex.assert_shape([low, high], theirs.shape)
            np.testing.assert_allclose(low, np.broadcast_to(theirs.low, theirs.shape), rtol=1e-6)
            np.testing.assert_allclose(high, np.broadcast_to(theirs.high, theirs.shape), rtol=1e-6)


def test_cartpole_and_pendulum_spaces():
    cartpole, params = make("CartPole-v1")
    assert cartpole.action_space(params) == spaces.Discrete(2)
    obs_space = cartpole.observation_space(params)
    assert obs_space.shape == (4,)
    # Twice the termination thresholds: |x| 2.4 and |theta| 12 degrees.
    np.testing.assert_allclose(
        np.asarray(obs_space.bounds()[1])[[0, 2]], [4.8, np.deg2rad(24)], rtol=1e-6
    )
    pendulum, params = make("Pendulum-v1")
    action_space = pendulum.action_space(params)
    assert action_space.shape == (1,)
    np.testing.assert_allclose(action_space.bounds()[0], [-params.max_torque])
    np.testing.assert_allclose(action_space.bounds()[1], [params.max_torque])
    np.testing.assert_allclose(
        pendulum.observation_space(params).bounds()[1], [1.0, 1.0, params.max_speed]
    )


def test_spaces_are_hashable_static_args():
    env, params = make("Pendulum-v1")
    space = env.action_space(params)
    assert hash(space) == hash(make("Pendulum-v1")[0].action_space(params))
    sample = jax.jit(lambda s, k: s.sample(k), static_argnums=0)
    x = sample(space, jax.random.key(0))
    assert x.shape == (1,) and -2.0 <= float(x[0]) <= 2.0


def test_spaces_under_jit():
    """Spaces stay static Python objects when asked for inside a trace."""
    env, params = make("CartPole-v1")

    @jax.jit
    def f(params):
        space = env.observation_space(params)
        assert isinstance(space.shape, tuple)
        return jnp.zeros(space.shape)

    assert f(params).shape == (4,)


def test_two_makes_give_equal_envs_and_one_compile():
    env_a, params_a = make("CartPole-v1")
    env_b, params_b = make("CartPole-v1")
    assert env_a == env_b and hash(env_a) == hash(env_b)
    assert env_a != GymnaxEnv("Acrobot-v1")
    chex.assert_trees_all_equal(params_a, params_b)

    chex.clear_trace_counter()

    @chex.assert_max_traces(n=1)
    def reset(env, key, params):
        return env.reset(key, params)

    reset_jit = jax.jit(reset, static_argnums=0)
    reset_jit(env_a, jax.random.key(0), params_a)
    reset_jit(env_b, jax.random.key(1), params_b)  # would retrace if env_b hashed differently


def test_constructor_kwargs_reach_the_gymnax_env_and_set_its_identity():
    small, params = make("DeepSea-bsuite", size=5)
    assert small.observation_space(params).shape == (5, 5)
    assert make("DeepSea-bsuite")[0].observation_space(params).shape == (8, 8)
    assert small == make("DeepSea-bsuite", size=5)[0]
    assert small != make("DeepSea-bsuite", size=6)[0]
    obs, state = small.reset(jax.random.key(0), params)
    assert obs.shape == (5, 5) and float(obs.sum()) == 1.0
    with pytest.raises(ValueError, match="'CartPole-v1' does not take {'size': 3}"):
        make("CartPole-v1", size=3)
