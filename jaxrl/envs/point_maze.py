"""A point mass in a walled maze with a distance reward: a small Ant Maze (HIRO's test bed).

Nachum, Gu, Lee & Levine (2018, "Data-Efficient Hierarchical Reinforcement Learning",
https://arxiv.org/abs/1805.08296) test HIRO on Ant Maze: a U-shaped corridor whose target
lies behind a wall, so the reward ``-||xy - target||_2`` is deceptive (walking straight at
the target ends against the wall). During training the target is drawn at random over the
maze; evaluation asks for the far end of the U. :class:`PointMaze` is that task with the
ant replaced by a point mass, so it runs on a CPU in minutes:

* the maze is ``layout``, rows of ``#`` (wall), ``S`` (start cell), ``G`` (the evaluation
  target's cell) and spaces, top row first; cell ``(row, col)`` covers
  ``x in [col, col + 1)``, ``y in [rows - 1 - row, rows - row)``. The default is a U of
  3 x 3 open cells: start at ``(1.5, 1.5)``, target at ``(1.5, 3.5)``, a wall between them
  and a shortest path of 6 units (:data:`MAZES` also has ``"s"``, an S of 5 x 5 cells with
  two walls in the way and a 12-unit path);
* the action ``[2]`` in ``[-1, 1]`` moves the point by ``max_step`` times it, one axis at a
  time (x, then y); a move whose end is in a wall is not made on that axis (the point
  slides along walls);
* the observation is ``[x, y, target_x, target_y]``;
* the reward is ``-||xy - target||_2`` after the move; there is no termination, and the
  episode is truncated after ``max_steps`` steps (Ant Maze's episodes are 500 steps
  long, with no early end either);
* ``params.random_target`` (the training setting) draws the target uniformly over the
  open cells at every reset; otherwise (evaluation) it is the centre of ``G``.
  :meth:`PointMaze.success` says whether an observation is within ``success_radius`` of
  its target (Ant Maze counts a final distance under 5 with cells of 8, i.e. 0.625 cells).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Step, check_int
from jaxrl.errors import ConfigError

U_MAZE = (
    "#####",
    "#G  #",
    "### #",
    "#S  #",
    "#####",
)

# A longer, doubly deceptive maze: two walls between start and target, a 12-unit path.
S_MAZE = (
    "#######",
    "#G    #",
    "##### #",
    "#     #",
    "# #####",
    "#S    #",
    "#######",
)
MAZES = {"u": U_MAZE, "s": S_MAZE}


class PointMazeParams(struct.PyTreeNode):
    """Traced task parameters.

    Attributes:
        max_steps: ``[]`` int32 time limit (truncation).
        random_target: ``[]`` bool: draw the target over the open cells at each reset
            (training) instead of using the centre of the ``G`` cell (evaluation).
    """

    max_steps: jax.Array = struct.field(default_factory=lambda: jnp.asarray(200, jnp.int32))
    random_target: jax.Array = struct.field(default_factory=lambda: jnp.asarray(True))


class PointMazeState(struct.PyTreeNode):
    """The point's position ``[2]``, the episode's target ``[2]`` and the step count."""

    pos: jax.Array  # [2]
    target: jax.Array  # [2]
    time: jax.Array  # [] int32


def _cells(layout: tuple[str, ...], char: str) -> np.ndarray:
    """``[K, 2]`` ``(row, col)`` of the cells of ``layout`` holding ``char``."""
    return np.argwhere(np.array([list(row) for row in layout]) == char)


@dataclasses.dataclass(frozen=True)
class PointMaze(Env):
    """A point mass in ``layout`` reaching for a target; see the module docstring.

    Attributes:
        layout: the maze, top row first (``#`` wall, ``S`` start, ``G`` target, `` `` open).
        max_step: how far one action of norm 1 per axis moves the point (< 1, one cell).
        success_radius: :meth:`success` holds within this distance of the target.
    """

    layout: tuple[str, ...] = U_MAZE
    max_step: float = 0.1
    success_radius: float = 0.5

    def __post_init__(self):
        rows = self.layout
        if not rows or len({len(r) for r in rows}) != 1:
            raise ConfigError(f"PointMaze.layout must be equal-length rows, got {rows!r}")
        if set("".join(rows)) - set("#SG "):
            raise ConfigError(f"PointMaze.layout may hold only '#', 'S', 'G' and ' ': {rows!r}")
        walls = np.array([list(r) for r in rows]) == "#"
        if not (walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()):
            raise ConfigError(f"PointMaze.layout must be closed by walls on every side: {rows!r}")
        for char in "SG":
            if len(_cells(rows, char)) != 1:
                raise ConfigError(f"PointMaze.layout needs exactly one {char!r}: {rows!r}")
        if not 0 < self.max_step < 1:
            raise ConfigError(f"PointMaze.max_step must be in (0, 1), got {self.max_step!r}")
        if not self.success_radius > 0:
            raise ConfigError(f"PointMaze.success_radius must be > 0, got {self.success_radius!r}")

    def default_params(self) -> PointMazeParams:
        return PointMazeParams()

    def evaluation_params(self, max_steps: int = 200) -> PointMazeParams:
        """Params with the fixed target, the centre of ``G``: the evaluation task."""
        check_int("PointMaze.evaluation_params max_steps", max_steps, 1)
        return PointMazeParams(jnp.asarray(max_steps, jnp.int32), jnp.asarray(False))

    def cell_centre(self, char: str) -> jax.Array:
        """``[2]`` the ``(x, y)`` centre of the cell holding ``char`` (``"S"`` or ``"G"``)."""
        ((row, col),) = _cells(self.layout, char)
        return jnp.asarray([col + 0.5, len(self.layout) - row - 0.5], jnp.float32)

    def is_wall(self, pos: jax.Array) -> jax.Array:
        """Whether the points ``pos [..., 2]`` lie in a wall cell (or outside the maze)."""
        walls = jnp.asarray(np.array([list(r) for r in self.layout]) == "#")
        rows, cols = walls.shape
        col = jnp.floor(pos[..., 0]).astype(jnp.int32)
        row = rows - 1 - jnp.floor(pos[..., 1]).astype(jnp.int32)
        inside = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
        return jnp.where(
            inside, walls[jnp.clip(row, 0, rows - 1), jnp.clip(col, 0, cols - 1)], True
        )

    def sample_target(self, key: jax.Array) -> jax.Array:
        """``[2]`` a point drawn uniformly over the open cells (``S`` and ``G`` included)."""
        open_cells = np.concatenate([_cells(self.layout, c) for c in " SG"])
        key_cell, key_offset = jax.random.split(key)
        row, col = jnp.asarray(open_cells.T)[
            :, jax.random.randint(key_cell, (), 0, len(open_cells))
        ]
        offset = jax.random.uniform(key_offset, (2,), jnp.float32)
        corner = jnp.stack([col, len(self.layout) - 1 - row]).astype(jnp.float32)
        return corner + offset

    def reset(self, key: jax.Array, params: PointMazeParams) -> tuple[jax.Array, PointMazeState]:
        target = jnp.where(params.random_target, self.sample_target(key), self.cell_centre("G"))
        state = PointMazeState(self.cell_centre("S"), target, jnp.zeros((), jnp.int32))
        return self._obs(state), state

    def step(
        self, key: jax.Array, state: PointMazeState, action: jax.Array, params: PointMazeParams
    ) -> tuple[jax.Array, PointMazeState, Step]:
        """One move by ``max_step * clip(action [2], -1, 1)``, x first, then y."""
        del key
        move = self.max_step * jnp.clip(jnp.asarray(action, jnp.float32), -1.0, 1.0)
        pos = state.pos
        for axis in range(2):
            moved = pos.at[axis].add(move[axis])
            pos = jnp.where(self.is_wall(moved), pos, moved)
        time = state.time + 1
        state = PointMazeState(pos, state.target, time)
        reward = -jnp.linalg.norm(pos - state.target)
        obs = self._obs(state)
        truncated = time >= params.max_steps
        return obs, state, Step(reward, jnp.asarray(False), truncated, obs)

    def success(self, obs: jax.Array) -> jax.Array:
        """Whether observations ``[..., 4]`` are within ``success_radius`` of their target."""
        return jnp.linalg.norm(obs[..., :2] - obs[..., 2:], axis=-1) < self.success_radius

    def _obs(self, state: PointMazeState) -> jax.Array:
        return jnp.concatenate([state.pos, state.target])

    def observation_space(self, params: PointMazeParams) -> spaces.Box:
        rows, cols = len(self.layout), len(self.layout[0])
        return spaces.Box((0.0,) * 4, (float(cols), float(rows)) * 2, (4,))

    def action_space(self, params: PointMazeParams) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (2,))
