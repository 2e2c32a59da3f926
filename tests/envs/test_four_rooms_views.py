"""The four-rooms world's fixed start and its coordinate view (``hrl/four_rooms``): the
layout, moves and ends themselves are tested in tests/algorithms/test_option_critic.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs import four_rooms as fr
from jaxrl.envs import registry
from jaxrl.errors import ConfigError


def test_a_fixed_start_starts_every_episode_there():
    env = fr.FourRooms(start=fr.cell_index(1, 1))
    starts, _ = jax.vmap(lambda k: env.reset(k, fr.FourRoomsParams()))(
        jax.random.split(jax.random.key(0), 64)
    )
    np.testing.assert_array_equal(np.asarray(starts), fr.cell_index(1, 1))


@pytest.mark.parametrize("start", [-2, fr.NUM_STATES, 1.5])
def test_a_start_that_is_no_state_is_a_config_error(start):
    with pytest.raises(ConfigError, match="start must be -1 or a state number below 104"):
        fr.FourRooms(start=start)


def test_coordinates_are_the_cell_row_and_column_over_twelve_final_obs_included():
    env, params = registry.make("hrl/four_rooms", slip=0.0, max_steps=2, start=fr.cell_index(1, 1))
    assert isinstance(env, fr.Coordinates) and env.observation_space(params).shape == (2,)
    obs, state = env.reset(jax.random.key(0), params)
    np.testing.assert_allclose(np.asarray(obs), [1 / 12, 1 / 12])
    obs, state, step = env.step(jax.random.key(1), state, jnp.int32(2), params)  # down
    np.testing.assert_allclose(np.asarray(obs), [2 / 12, 1 / 12])
    obs, state, step = env.step(jax.random.key(2), state, jnp.int32(1), params)  # right: cut
    assert bool(step.truncated)
    np.testing.assert_allclose(np.asarray(step.final_obs), [2 / 12, 2 / 12])
    # every open cell maps to a distinct point of the unit square
    points = np.asarray(jax.vmap(env._coordinates)(jnp.arange(fr.NUM_STATES)))
    assert points.min() > 0 and points.max() < 1 and len(np.unique(points, axis=0)) == 104
