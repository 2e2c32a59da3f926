"""The four-rooms grid world of Sutton, Precup & Singh (1999), tabular, with a traced goal.

The option-critic paper (Bacon, Harb & Precup 2017) learns options here and moves the goal
halfway through training. The goal is an :class:`FourRoomsParams` leaf, so one compiled
program serves every goal, and seeds with different goals vmap.

Layout (13 x 13, ``#`` walls; the 104 open cells are numbered row by row from the top
left, and the observation is that number)::

    #############
    #     #     #
    #     #     #
    #           #
    #     #     #
    #     #     #
    ## ####     #
    #     ### ###
    #     #     #
    #     #     #
    #           #
    #     #     #
    #############

Actions 0-3 move up, right, down, left. With probability ``1 - slip`` the agent moves as
chosen, otherwise in one of the other three directions, uniformly (Sutton et al.: 2/3 and
1/3); a move into a wall leaves it in place. Entering the goal gives reward 1 and ends
the episode; every other step gives 0. Episodes start in a uniformly drawn open cell other
than the goal (or all in the cell ``start``), and are truncated after ``max_steps`` steps.

:class:`Coordinates` shows the agent's (row, column) instead of the cell number, for
agents with vector inputs (FuN's Manager learns directions in a space built from it);
the registry's ``hrl/four_rooms`` is that view.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Step, Wrapper
from jaxrl.errors import ConfigError

LAYOUT = (
    "#############",
    "#     #     #",
    "#     #     #",
    "#           #",
    "#     #     #",
    "#     #     #",
    "## ####     #",
    "#     ### ###",
    "#     #     #",
    "#     #     #",
    "#           #",
    "#     #     #",
    "#############",
)
MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])  # up, right, down, left


def _cells() -> np.ndarray:
    """``[104, 2]`` (row, column) of the open cells, row by row."""
    return np.array(
        [(r, c) for r, row in enumerate(LAYOUT) for c, ch in enumerate(row) if ch == " "]
    )


CELLS = _cells()
NUM_STATES = len(CELLS)  # 104


def cell_index(row: int, col: int) -> int:
    """The state number of the open cell at ``(row, col)``."""
    matches = np.flatnonzero((CELLS[:, 0] == row) & (CELLS[:, 1] == col))
    if len(matches) != 1:
        raise ConfigError(f"({row}, {col}) is not an open cell of the four-rooms layout")
    return int(matches[0])


def _transition_table() -> np.ndarray:
    """``[104, 4]`` int32: the state reached by moving in each direction (walls: stay)."""
    index = {tuple(cell): i for i, cell in enumerate(CELLS)}
    table = np.zeros((NUM_STATES, 4), np.int32)
    for i, cell in enumerate(CELLS):
        for a, move in enumerate(MOVES):
            table[i, a] = index.get(tuple(cell + move), i)
    return table


NEXT_STATE = _transition_table()
EAST_DOORWAY = cell_index(7, 9)  # the paper's first goal (state 62)
# The lower-right room's interior, where the paper moves the goal (rows 8-11, columns 7-11).
LOWER_RIGHT_ROOM = tuple(cell_index(r, c) for r in range(8, 12) for c in range(7, 12))


class FourRoomsParams(struct.PyTreeNode):
    """``goal``: int32 ``[]`` state number of the goal."""

    goal: jax.Array = struct.field(default_factory=lambda: jnp.asarray(EAST_DOORWAY, jnp.int32))


class FourRoomsState(struct.PyTreeNode):
    cell: jax.Array  # [] int32 state number
    time: jax.Array  # [] int32 steps taken


@dataclasses.dataclass(frozen=True)
class FourRooms(Env):
    """The tabular four-rooms world; see the module docstring.

    Attributes:
        slip: probability that the move goes in one of the three other directions.
        max_steps: steps before truncation.
        start: the state every episode starts in, or -1 for a uniformly drawn open cell
            other than the goal.
    """

    slip: float = 1.0 / 3.0
    max_steps: int = 1000
    start: int = -1

    def __post_init__(self):
        if not 0.0 <= self.slip <= 1.0:
            raise ConfigError(f"FourRooms.slip must lie in [0, 1], got {self.slip!r}")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ConfigError(
                f"FourRooms.max_steps must be an integer >= 1, got {self.max_steps!r}"
            )
        if not (isinstance(self.start, int) and -1 <= self.start < NUM_STATES):
            raise ConfigError(
                f"FourRooms.start must be -1 or a state number below {NUM_STATES}, "
                f"got {self.start!r}"
            )

    def default_params(self) -> FourRoomsParams:
        return FourRoomsParams()

    def reset(self, key: jax.Array, params: FourRoomsParams) -> tuple[jax.Array, FourRoomsState]:
        """``self.start``, or (-1) a uniformly drawn open cell other than the goal."""
        if self.start >= 0:
            cell = jnp.asarray(self.start, jnp.int32)
            return cell, FourRoomsState(cell, jnp.zeros((), jnp.int32))
        draw = jax.random.randint(key, (), 0, NUM_STATES - 1)
        cell = jnp.where(draw >= params.goal, draw + 1, draw).astype(jnp.int32)
        return cell, FourRoomsState(cell, jnp.zeros((), jnp.int32))

    def step(
        self, key: jax.Array, state: FourRoomsState, action: jax.Array, params: FourRoomsParams
    ) -> tuple[jax.Array, FourRoomsState, Step]:
        k_slip, k_other = jax.random.split(key)
        other = (action + jax.random.randint(k_other, (), 1, 4)) % 4  # one of the other three
        direction = jnp.where(jax.random.uniform(k_slip) < self.slip, other, action)
        cell = jnp.asarray(NEXT_STATE)[state.cell, direction]
        terminated = cell == params.goal
        time = state.time + 1
        truncated = (time >= self.max_steps) & ~terminated
        reward = terminated.astype(jnp.float32)
        return cell, FourRoomsState(cell, time), Step(reward, terminated, truncated, cell)

    def observation_space(self, params: FourRoomsParams) -> spaces.Discrete:
        return spaces.Discrete(NUM_STATES)

    def action_space(self, params: FourRoomsParams) -> spaces.Discrete:
        return spaces.Discrete(4)


@dataclasses.dataclass(frozen=True)
class Coordinates(Wrapper):
    """The four-rooms world observed as the agent's ``[row, column] / 12`` (float32
    ``[2]``, in [0, 1]; ``Step.final_obs`` too) instead of its state number."""

    def _coordinates(self, cell: jax.Array) -> jax.Array:
        return jnp.asarray(CELLS, jnp.float32)[cell] / (len(LAYOUT) - 1)

    def reset(self, key, params):
        cell, state = self.env.reset(key, params)
        return self._coordinates(cell), state

    def step(self, key, state, action, params):
        cell, state, step = self.env.step(key, state, action, params)
        final = self._coordinates(step.final_obs)
        return self._coordinates(cell), state, step.replace(final_obs=final)

    def observation_space(self, params):
        return spaces.Box(0.0, 1.0, (2,))


def coordinate_four_rooms(**kwargs) -> Coordinates:
    """``Coordinates(FourRooms(**kwargs))``: the registry's ``hrl/four_rooms``."""
    return Coordinates(FourRooms(**kwargs))
