"""Tests of the brax adapter: parity with raw brax, termination vs truncation, auto-reset.

Compilation dominates on CPU, so every rollout goes through one jitted scan per env
stack, on the cheap ``inverted_pendulum`` with the ``generalized`` backend.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

brax_envs = pytest.importorskip("brax.envs")

from jaxrl.envs import brax as jaxrl_brax  # noqa: E402
from jaxrl.envs import make, spaces  # noqa: E402
from jaxrl.envs.wrappers import make_vec_env  # noqa: E402

NAME, BACKEND, EPISODE_LENGTH = "inverted_pendulum", "generalized", 20


@pytest.fixture(autouse=True)
def _strict_rank_promotion():
    # jaxrl's conftest forbids implicit rank promotion; the adapter must cope with it.
    with jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture(scope="module")
def env():
    env, params = make(f"brax/{NAME}", backend=BACKEND, episode_length=EPISODE_LENGTH)
    assert params == jaxrl_brax.BraxParams()
    return env


@functools.partial(jax.jit, static_argnums=0)
def _rollout(env, key, actions):
    """Steps the raw adapter through ``actions [T, 1]``; returns per-step arrays."""
    params = env.default_params()
    obs, state = env.reset(key, params)

    def body(state, action):
        obs, state, step = env.step(jax.random.key(0), state, action, params)
        return state, (obs, step)

    _, (obs_t, step_t) = jax.lax.scan(body, state, actions)
    return obs, obs_t, step_t


@jax.jit
def _raw_rollout(key, actions):
    """The same rollout on brax's own env (time limit, no auto-reset)."""
    env = brax_envs.create(NAME, episode_length=EPISODE_LENGTH, auto_reset=False, backend=BACKEND)
    state = env.reset(key)

    def body(state, action):
        state = env.step(state, action)
        return state, (state.obs, state.reward, state.done, state.info["truncation"])

    _, out = jax.lax.scan(body, state, actions)
    return state.obs, out


def _actions(kind: str) -> jax.Array:
    if kind == "zeros":  # the pole stays up: only the time limit ends the episode
        return jnp.zeros((EPISODE_LENGTH, 1))
    if kind == "ones":  # pushing one way makes the pole fall within a few steps
        return jnp.ones((EPISODE_LENGTH, 1))
    return jax.random.uniform(jax.random.key(7), (EPISODE_LENGTH, 1), minval=-1, maxval=1)


@pytest.mark.parametrize("kind", ["random", "ones"])
def test_step_for_step_parity_with_raw_brax(env, kind):
    key, actions = jax.random.key(3), _actions(kind)
    obs0, obs_t, step_t = _rollout(env, key, actions)
    with jax.numpy_rank_promotion("allow"):
        raw_obs0, (raw_obs, raw_reward, raw_done, raw_trunc) = _raw_rollout(key, actions)
    np.testing.assert_array_equal(obs0, raw_obs0)
    np.testing.assert_array_equal(obs_t, raw_obs)
    np.testing.assert_array_equal(step_t.final_obs, raw_obs)
    np.testing.assert_array_equal(step_t.reward, raw_reward)
    np.testing.assert_array_equal(step_t.done, raw_done.astype(bool))
    np.testing.assert_array_equal(step_t.truncated, raw_trunc.astype(bool))


def test_time_limit_is_truncation_not_termination(env):
    _, _, step_t = _rollout(env, jax.random.key(0), _actions("zeros"))
    expected = np.zeros(EPISODE_LENGTH, bool)
    expected[-1] = True
    np.testing.assert_array_equal(step_t.truncated, expected)
    assert not step_t.terminated.any()


def test_falling_pole_is_termination_not_truncation(env):
    _, _, step_t = _rollout(env, jax.random.key(0), _actions("ones"))
    first = int(np.argmax(step_t.terminated))
    assert step_t.terminated[first] and 0 < first < EPISODE_LENGTH - 1
    assert not step_t.truncated[: first + 1].any()
    assert step_t.reward.dtype == jnp.float32 and step_t.terminated.dtype == jnp.bool_


def test_auto_reset_vec_env_under_jit(env):
    num_envs, num_steps = 3, 2 * EPISODE_LENGTH
    params = env.default_params()
    venv = make_vec_env(env, num_envs)

    @jax.jit
    def run(key):
        obs, state = venv.reset(key, params)

        def body(state, key):
            action = jnp.ones((num_envs, 1))
            obs, state, step = venv.step(key, state, action, params)
            return state, (obs, step)

        return obs, jax.lax.scan(body, state, jax.random.split(key, num_steps))[1]

    obs0, (obs_t, step_t) = run(jax.random.key(1))
    assert obs0.shape == (num_envs, 4) and obs_t.shape == (num_steps, num_envs, 4)
    done = np.asarray(step_t.done)
    assert done.sum(0).min() >= 2  # every env fell and was reset at least twice
    assert not step_t.truncated.any()
    # Where done, the agent sees a fresh start (|q|, |qd| <= 0.01) and final_obs the fall.
    assert np.abs(obs_t[done]).max() <= 0.01
    assert np.abs(step_t.final_obs[done][:, 1]).max() > 0.2
    np.testing.assert_array_equal(step_t.final_obs[~done], obs_t[~done])
    lengths = step_t.info["episode_length"][done]
    assert lengths.min() > 1 and lengths.max() < EPISODE_LENGTH


def test_spaces_and_hashing(env):
    params = env.default_params()
    assert env.action_space(params) == spaces.Box(-1.0, 1.0, (1,))
    assert env.observation_space(params) == spaces.Box(-float("inf"), float("inf"), (4,))
    same = jaxrl_brax.make(NAME, backend=BACKEND, episode_length=EPISODE_LENGTH)
    assert same == env and hash(same) == hash(env) and same.name == f"brax/{NAME}"
    assert jaxrl_brax.make(NAME, backend=BACKEND) != env


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="brax/inverted_pendulum") as err:
        make("brax/not_an_env")
    assert "brax/ant" in str(err.value)
