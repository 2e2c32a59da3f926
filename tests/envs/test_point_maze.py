"""PointMaze: walls stop moves axis by axis, targets fall in open cells, the evaluation
target is G's centre, the reward is minus the distance, episodes are cut at max_steps, bad
layouts raise, and the registry makes it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs import registry
from jaxrl.envs.point_maze import MAZES, S_MAZE, PointMaze
from jaxrl.errors import ConfigError


def _walk(env, state, params, actions):
    obs = None
    for action in actions:
        obs, state, step = env.step(None, state, jnp.asarray(action, jnp.float32), params)
    return obs, state, step


def test_reset_puts_the_point_at_start_and_the_evaluation_target_at_g():
    env = PointMaze()
    obs, state = env.reset(jax.random.key(0), env.evaluation_params())
    np.testing.assert_allclose(obs, [1.5, 1.5, 1.5, 3.5])
    assert int(state.time) == 0


def test_walls_stop_the_blocked_axis_and_the_point_slides_along_them():
    env = PointMaze(max_step=0.25)
    params = env.evaluation_params()
    _, state = env.reset(jax.random.key(0), params)
    # Up into the middle wall (y in [2, 3) for x < 3): two moves reach y = 2 - eps at most.
    obs, state, _ = _walk(env, state, params, [(0.0, 1.0)] * 4)
    assert 1.75 <= float(obs[1]) < 2.0
    # Diagonal: x moves, y stays blocked by the wall (sliding).
    obs, state, _ = _walk(env, state, params, [(1.0, 1.0)])
    np.testing.assert_allclose(obs[:2], [1.75, float(state.pos[1])])
    assert float(obs[1]) < 2.0
    # Along the corridor and around: 7 right (to x < 4), 8 up, 9 left reach G's cell.
    obs, state, step = _walk(
        env, state, params, [(1.0, 0.0)] * 7 + [(0.0, 1.0)] * 8 + [(-1.0, 0.0)] * 9
    )
    assert 1.0 <= float(obs[0]) < 2.0 and 3.0 <= float(obs[1]) < 4.0
    assert not bool(env.is_wall(state.pos))
    np.testing.assert_allclose(
        float(step.reward), -np.linalg.norm(np.asarray(obs[:2]) - [1.5, 3.5]), rtol=1e-6
    )
    assert bool(env.success(obs)) == (float(-step.reward) < 0.5)


def test_is_wall_matches_the_layout():
    env = PointMaze()
    points = jnp.asarray(
        [[0.5, 0.5], [1.5, 1.5], [1.5, 2.5], [3.5, 2.5], [1.5, 3.5], [-0.1, 1.5], [9.0, 9.0]]
    )
    np.testing.assert_array_equal(
        np.asarray(env.is_wall(points)), [True, False, True, False, False, True, True]
    )


def test_random_targets_fall_in_open_cells_and_cover_them():
    env = PointMaze()
    targets = jax.vmap(env.sample_target)(jax.random.split(jax.random.key(1), 2000))
    assert not bool(jnp.any(env.is_wall(targets)))
    cells = {(int(x), int(y)) for x, y in np.floor(np.asarray(targets))}
    assert cells == {(1, 1), (2, 1), (3, 1), (3, 2), (1, 3), (2, 3), (3, 3)}
    obs, _ = env.reset(jax.random.key(2), env.default_params())
    assert not bool(env.is_wall(obs[2:]))


def test_episodes_are_truncated_at_max_steps_and_never_terminate():
    env = PointMaze()
    params = env.evaluation_params(max_steps=5)
    _, state = env.reset(jax.random.key(0), params)
    for t in range(5):
        _, state, step = env.step(None, state, jnp.asarray([0.3, -0.2]), params)
        assert not bool(step.terminated)
        assert bool(step.truncated) == (t == 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(layout=("###", "#S#", "###")),  # no G
        dict(layout=("####", "#SG#", "# G#", "####")),  # two G
        dict(layout=("####", "#SG ", "####")),  # open on the right
        dict(layout=("####", "#SGx", "####")),  # unknown character
        dict(layout=("####", "#SG#", "###")),  # ragged
        dict(max_step=1.0),
        dict(max_step=0.0),
        dict(success_radius=0.0),
    ],
)
def test_bad_settings_raise(kwargs):
    with pytest.raises(ConfigError):
        PointMaze(**kwargs)


def test_registry_makes_it_with_keywords():
    env, params = registry.make("hrl/point_maze", max_step=0.2)
    assert isinstance(env, PointMaze) and env.max_step == 0.2
    assert bool(params.random_target)
    assert "hrl/point_maze" in registry.list_envs()


def test_the_s_maze_needs_the_long_way_round():
    env = PointMaze(layout=S_MAZE)
    params = env.evaluation_params(max_steps=300)
    obs, state = env.reset(jax.random.key(0), params)
    np.testing.assert_allclose(obs, [1.5, 1.5, 1.5, 5.5])
    straight, _, _ = _walk(env, state, params, [(0.0, 1.0)] * 40)  # up: the second wall stops it
    assert 2.0 < float(straight[1]) < 4.0 and not bool(env.success(straight))
    path = [(0.0, 1.0)] * 20 + [(1.0, 0.0)] * 40 + [(0.0, 1.0)] * 20 + [(-1.0, 0.0)] * 40
    obs, _, _ = _walk(env, state, params, path)
    assert bool(env.success(obs))
    assert MAZES["s"] is S_MAZE
