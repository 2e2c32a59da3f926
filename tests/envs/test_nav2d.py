"""2D navigation: dynamics, reward, termination and truncation checked by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs.nav2d import CuedNav2D, Nav2D, Nav2DParams, sample_tasks
from jaxrl.errors import ConfigError

KEY = jax.random.key(0)


def params(goal, max_steps=100):
    return Nav2DParams(jnp.asarray(goal, jnp.float32), jnp.asarray(max_steps, jnp.int32))


def test_reset_starts_at_origin():
    obs, state = Nav2D().reset(KEY, params([0.3, -0.2]))
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    np.testing.assert_array_equal(state.pos, [0.0, 0.0])
    assert int(state.time) == 0


def test_step_clips_action_and_rewards_minus_distance():
    env, p = Nav2D(), params([0.3, -0.2])
    _, state = env.reset(KEY, p)
    obs, state, step = env.step(KEY, state, jnp.asarray([0.5, -0.04]), p)
    np.testing.assert_allclose(obs, [0.1, -0.04], rtol=1e-6)  # x clipped to 0.1
    # distance from (0.1, -0.04) to (0.3, -0.2): sqrt(0.2^2 + 0.16^2)
    np.testing.assert_allclose(step.reward, -np.sqrt(0.04 + 0.0256), rtol=1e-6)
    obs, state, step = env.step(KEY, state, jnp.asarray([-3.0, -3.0]), p)
    np.testing.assert_allclose(obs, [0.0, -0.14], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(step.reward, -np.sqrt(0.09 + 0.0036), rtol=1e-6)
    assert not bool(step.terminated) and not bool(step.truncated)
    np.testing.assert_allclose(step.final_obs, obs)


def test_terminates_only_within_tolerance_on_both_axes():
    env, p = Nav2D(), params([0.1, 0.05])
    _, state = env.reset(KEY, p)
    # x lands exactly within 0.005, y misses by 0.02: not done.
    _, s1, step = env.step(KEY, state, jnp.asarray([0.095, 0.03]), p)
    assert not bool(step.terminated)
    # both axes within 0.01 (0.005 and 0.008): done; the reward is the last distance.
    _, _, step = env.step(KEY, state, jnp.asarray([0.095, 0.042]), p)
    assert bool(step.terminated) and not bool(step.truncated) and bool(step.done)
    np.testing.assert_allclose(step.reward, -np.hypot(0.005, 0.008), rtol=1e-4)
    # 0.011 away on one axis is outside the tolerance.
    _, _, step = env.step(KEY, state, jnp.asarray([0.089, 0.05]), p)
    assert not bool(step.terminated)


def test_truncates_after_max_steps():
    env, p = Nav2D(), params([0.4, 0.4], max_steps=100)
    _, state = env.reset(KEY, p)
    step_fn = jax.jit(lambda s: env.step(KEY, s, jnp.zeros(2), p))
    dones = []
    for _ in range(100):
        _, state, step = step_fn(state)
        dones.append(bool(step.done))
        np.testing.assert_allclose(step.reward, -np.hypot(0.4, 0.4), rtol=1e-6)
    assert not any(dones[:99]) and dones[99]
    assert bool(step.truncated) and not bool(step.terminated)


def test_sample_params_goals_uniform_in_box():
    env = Nav2D()
    tasks = sample_tasks(env, KEY, 2000)
    goals = np.asarray(tasks.goal)
    assert goals.shape == (2000, 2)
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    np.testing.assert_allclose(goals.mean(0), 0.0, atol=0.03)
    np.testing.assert_allclose(goals.var(0), 1.0 / 12.0, rtol=0.1)  # var of U[-.5, .5]
    assert np.all(np.asarray(tasks.max_steps) == 100)


def test_vmaps_over_tasks():
    env = Nav2D()
    tasks = sample_tasks(env, KEY, 3)
    obs, state = jax.vmap(env.reset, in_axes=(None, 0))(KEY, tasks)
    action = jnp.asarray([0.05, -0.05])
    obs, _, step = jax.vmap(env.step, in_axes=(None, 0, None, 0))(KEY, state, action, tasks)
    want = -np.linalg.norm(np.asarray(action)[None] - np.asarray(tasks.goal), axis=-1)
    np.testing.assert_allclose(step.reward, want, rtol=1e-6)


@pytest.mark.parametrize("field", ["max_speed", "goal_range", "goal_tol"])
def test_bad_settings_raise(field):
    with pytest.raises(ConfigError):
        Nav2D(**{field: 0.0})


# ----------------------------------------------------------------------------- CuedNav2D


def test_cued_tasks_are_k_fixed_goals_each_with_its_own_cue():
    env = CuedNav2D(cue_dim=3, num_tasks=4, task_seed=1)
    tasks = jax.vmap(env.sample_params)(jax.random.split(KEY, 200))
    goals, cues = np.asarray(tasks.goal), np.asarray(tasks.cue)
    table_goals, table_cues = (np.asarray(x) for x in env.tasks())
    which = [int(np.flatnonzero((table_goals == g).all(axis=1))[0]) for g in goals]
    assert sorted(set(which)) == [0, 1, 2, 3]  # every task drawn, no other goal
    np.testing.assert_array_equal(cues, table_cues[which])  # the cue names the task
    assert np.all(np.abs(table_goals) <= env.goal_range)
    # Another seed, other tasks; novel() a fresh goal and cue every draw.
    assert not np.allclose(np.asarray(CuedNav2D(num_tasks=4, task_seed=2).tasks()[0]), table_goals)
    fresh = jax.vmap(env.novel().sample_params)(jax.random.split(KEY, 200))
    assert len(np.unique(np.asarray(fresh.goal)[:, 0])) == 200
    assert np.asarray(fresh.cue).shape == (200, 3)


def test_cued_observation_is_position_and_cue_with_nav2d_dynamics():
    env, plain = CuedNav2D(cue_dim=2, num_tasks=3), Nav2D()
    p = env.sample_params(KEY)
    obs, state = env.reset(KEY, p)
    _, plain_state = plain.reset(KEY, params(p.goal))
    np.testing.assert_array_equal(obs, np.concatenate([[0.0, 0.0], p.cue]))
    assert env.observation_space(p).shape == (4,)
    for action in ([0.05, -0.2], [0.1, 0.1]):
        obs, state, step = env.step(KEY, state, jnp.asarray(action), p)
        plain_obs, plain_state, plain_step = plain.step(
            KEY, plain_state, jnp.asarray(action), params(p.goal)
        )
        np.testing.assert_array_equal(obs, np.concatenate([plain_obs, p.cue]))
        np.testing.assert_array_equal(step.final_obs, obs)
        np.testing.assert_array_equal(step.reward, plain_step.reward)


@pytest.mark.parametrize("kw", [dict(cue_dim=0), dict(num_tasks=-1), dict(task_seed=1.5)])
def test_cued_bad_settings_raise(kw):
    with pytest.raises(ConfigError):
        CuedNav2D(**kw)


def test_cued_nav2d_is_made_by_name():
    from jaxrl.envs import make

    env, p = make("meta/cued_nav2d", num_tasks=5, cue_dim=3)
    assert isinstance(env, CuedNav2D) and (env.num_tasks, env.cue_dim) == (5, 3)
    assert env.reset(KEY, p)[0].shape == (5,)
