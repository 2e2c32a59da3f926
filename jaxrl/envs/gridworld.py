"""The LPG grid worlds (Oh et al. 2020, https://arxiv.org/abs/2007.08794, appendix A).

Ten training environments of the Learned Policy Gradient paper: five *tabular* grid worlds
(object positions fixed for a whole lifetime, the agent sees a single integer state) and five
*random* grid worlds (objects placed at random every episode, the agent sees a binary image).
Sizes, objects and walls follow GROOVE (Jackson et al. 2023) appendix C and the public map
files (see the spec, ``meta_rl.md`` section 1.8).

Objects are written ``[reward, p_term, p_respawn]``: stepping onto a present object collects
it and pays ``reward``; the episode then terminates with probability ``p_term``; a collected
object reappears with probability ``p_respawn`` on each *later* step.

Dynamics (both kinds):

* The grid is ``height x width`` interior cells; cells are ``(row, col)``, row 0 at the top.
  Walls are static cells inside it; the border outside it is wall too.
* 9 actions: ``0 N, 1 NE, 2 E, 3 SE, 4 S, 5 SW, 6 W, 7 NW, 8 stay`` (see :data:`MOVES`).
  A move whose target cell is a wall or off the grid leaves the agent in place (diagonals
  are judged by the target cell only). Staying on a cell collects an object that respawned
  under the agent.
* One step: move; collect the present object on the new cell (objects never share a cell);
  draw termination with that object's ``p_term``; then every object that was already absent
  *before* this step reappears with its ``p_respawn`` (so an object collected at step ``t``
  is absent in the observation of step ``t`` and can reappear from step ``t + 1`` on).
* Start: all objects present; the agent on a uniformly random free cell without an object.
* ``terminated``: the collected object's ``p_term`` draw ended the episode. ``truncated``:
  ``params.max_steps`` steps passed without termination (the two are exclusive). Raw envs do
  not reset; wrap them in :class:`jaxrl.envs.wrappers.AutoReset` (``make_vec_env`` does).

Tabular grid worlds (:class:`TabularGridWorld`): object positions are part of the traced
:class:`TabularGridParams` (a *layout*); draw one per lifetime with
:meth:`TabularGridWorld.sample_params` (uniform distinct free cells, as the public
reimplementations do); ``default_params`` is one fixed layout (numpy seed 0).
Collected objects respawn in place. The observation is one ``int32`` state index

    ``s = free_index(agent cell) * 2**K + sum_k present_k * 2**k``,

a bijection between (free cell, presence bitmask) and ``0 .. num_states - 1``
(``num_states = num_free_cells * 2**K``), exposed as ``spaces.Discrete(num_states)`` so a
tabular agent indexes a table with it.

Random grid worlds (:class:`RandomGridWorld`): objects are placed at uniformly random distinct
free cells each episode and respawn at a uniformly random free cell holding neither the agent
nor a present object. The observation is a float32 binary image ``[H, W, C]``: channel ``c <
C - 1`` marks the present objects of type ``c`` (a type is a distinct ``[reward, p_term,
p_respawn]`` triple of the static ``objects``, in order of first appearance); the last channel
marks the agent. Walls are not drawn (they never move).

Object properties (``reward``, ``p_term``, ``p_respawn`` ``[K]``) and ``max_steps`` are traced
params (defaults from the static ``objects`` and ``max_steps`` fields), so one compiled
program serves variants of them; the grid size, walls and object count ``K`` are static (they
fix shapes), so a batch of tasks is a batch of params of one env and no padding is needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Step, check_int
from jaxrl.errors import ConfigError

# (d_row, d_col) of actions 0..8: the eight compass moves clockwise from north, then stay.
MOVES = np.array(
    [[-1, 0], [-1, 1], [0, 1], [1, 1], [1, 0], [1, -1], [0, -1], [-1, -1], [0, 0]], np.int32
)
NUM_ACTIONS = 9


class GridState(struct.PyTreeNode):
    """State of one grid-world episode.

    Attributes:
        pos: ``[2]`` int32 agent cell ``(row, col)``.
        obj_pos: ``[K, 2]`` int32 object cells (meaningful where ``present``).
        present: ``[K]`` bool, which objects are on the grid now.
        time: ``[]`` int32 steps taken in this episode.
    """

    pos: jax.Array
    obj_pos: jax.Array
    present: jax.Array
    time: jax.Array


class GridParams(struct.PyTreeNode):
    """Traced task parameters of a random grid world.

    Attributes:
        reward: ``[K]`` float32 reward of collecting each object.
        p_term: ``[K]`` float32 probability that collecting it ends the episode.
        p_respawn: ``[K]`` float32 per-step probability that a collected object reappears.
        max_steps: ``[]`` int32 episode length limit (truncation).
    """

    reward: jax.Array
    p_term: jax.Array
    p_respawn: jax.Array
    max_steps: jax.Array


class TabularGridParams(struct.PyTreeNode):
    """Traced task parameters of a tabular grid world: :class:`GridParams` plus the layout.

    Attributes:
        reward, p_term, p_respawn, max_steps: as in :class:`GridParams`.
        obj_pos: ``[K, 2]`` int32 fixed object cells (distinct free cells), one per lifetime.
    """

    reward: jax.Array
    p_term: jax.Array
    p_respawn: jax.Array
    max_steps: jax.Array
    obj_pos: jax.Array


class TabularModel(struct.PyTreeNode):
    """Exact one-step model of a tabular grid world (:meth:`TabularGridWorld.transition_model`).

    Attributes:
        next_state: ``[S, A, M]`` int32 next state index for each of the ``M = 2**K``
            next presence masks.
        prob: ``[S, A, M]`` float32 probability of each (sums to 1 over ``M``).
        reward: ``[S, A]`` float32 reward of the step.
        p_continue: ``[S, A]`` float32 probability that the episode does not terminate.
    """

    next_state: jax.Array
    prob: jax.Array
    reward: jax.Array
    p_continue: jax.Array


def policy_evaluation(model: TabularModel, pi: jax.Array, discount: float) -> jax.Array:
    """``v^π`` ``[S]`` solving ``v = r^π + γ P^π v`` exactly (a dense linear solve).

    Args:
        model: from :meth:`TabularGridWorld.transition_model`.
        pi: ``[S, A]`` action probabilities.
        discount: ``γ < 1``.
    """
    num_states = pi.shape[0]
    r_pi = jnp.sum(pi * model.reward, axis=-1)
    weight = (pi * model.p_continue)[..., None] * model.prob  # [S, A, M]
    rows = jnp.broadcast_to(jnp.arange(num_states)[:, None, None], weight.shape)
    p_pi = jnp.zeros((num_states, num_states)).at[rows, model.next_state].add(weight)
    return jnp.linalg.solve(jnp.eye(num_states) - discount * p_pi, r_pi)


@dataclasses.dataclass(frozen=True)
class _GridWorld(Env):
    """Shared grid geometry and dynamics; subclasses choose placement, respawn and obs.

    Attributes:
        height, width: interior grid size (rows, cols).
        objects: ``K`` triples ``(reward, p_term, p_respawn)``; the default traced params.
        walls: wall cells ``(row, col)`` inside the grid.
        max_steps: default episode limit (``params.max_steps``).
        label: short name used in ``name``.
    """

    height: int = 5
    width: int = 5
    objects: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.05),)
    walls: tuple[tuple[int, int], ...] = ()
    max_steps: int = 100
    label: str = "custom"

    def __post_init__(self):
        check_int("height", self.height, 1)
        check_int("width", self.width, 1)
        check_int("max_steps", self.max_steps, 1)
        if not isinstance(self.objects, tuple) or not self.objects:
            raise ConfigError(f"objects must be a non-empty tuple of triples, got {self.objects!r}")
        for obj in self.objects:
            if not isinstance(obj, tuple) or len(obj) != 3:
                raise ConfigError(f"each object is (reward, p_term, p_respawn), got {obj!r}")
            if not (0.0 <= obj[1] <= 1.0 and 0.0 <= obj[2] <= 1.0):
                raise ConfigError(f"p_term and p_respawn must lie in [0, 1], got {obj!r}")
        if not isinstance(self.walls, tuple):
            raise ConfigError(f"walls must be a tuple of (row, col) cells, got {self.walls!r}")
        for cell in self.walls:
            if (
                not isinstance(cell, tuple)
                or len(cell) != 2
                or not (0 <= cell[0] < self.height and 0 <= cell[1] < self.width)
            ):
                size = f"{self.height}x{self.width}"
                raise ConfigError(f"wall {cell!r} is not a cell of the {size} grid")
        if len(set(self.walls)) != len(self.walls):
            raise ConfigError(f"walls has duplicate cells: {self.walls!r}")
        if self.num_free_cells < self.num_objects + 1:
            raise ConfigError(
                f"{self.num_free_cells} free cells cannot hold {self.num_objects} objects "
                "and the agent"
            )

    # ----- static geometry (numpy, computed from hashable fields) -----

    @property
    def name(self) -> str:
        return f"{type(self).__name__}-{self.label}"

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def num_cells(self) -> int:
        return self.height * self.width

    def wall_mask(self) -> np.ndarray:
        """``[H, W]`` bool, True on wall cells."""
        mask = np.zeros((self.height, self.width), bool)
        for r, c in self.walls:
            mask[r, c] = True
        return mask

    @property
    def num_free_cells(self) -> int:
        return self.num_cells - len(self.walls)

    def free_index(self) -> np.ndarray:
        """``[H * W]`` int32: rank of each free cell in row-major order, ``-1`` on walls."""
        free = ~self.wall_mask().reshape(-1)
        index = np.full(self.num_cells, -1, np.int32)
        index[free] = np.arange(int(free.sum()), dtype=np.int32)
        return index

    def default_objects(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(reward, p_term, p_respawn)``, each ``[K]`` float32, from ``objects``."""
        arr = np.asarray(self.objects, np.float32)
        return jnp.asarray(arr[:, 0]), jnp.asarray(arr[:, 1]), jnp.asarray(arr[:, 2])

    # ----- shared dynamics -----

    def _cell(self, pos: jax.Array) -> jax.Array:
        """``[..., 2]`` (row, col) -> ``[...]`` row-major cell index."""
        return pos[..., 0] * self.width + pos[..., 1]

    def _pos(self, cell: jax.Array) -> jax.Array:
        """``[...]`` cell index -> ``[..., 2]`` int32 (row, col)."""
        return jnp.stack([cell // self.width, cell % self.width], axis=-1).astype(jnp.int32)

    def _free(self) -> jax.Array:
        """``[H * W]`` bool, True on free (non-wall) cells."""
        return jnp.asarray(~self.wall_mask().reshape(-1))

    def _random_start(self, key: jax.Array, obj_pos: jax.Array) -> jax.Array:
        """A uniformly random free cell holding no object: ``[2]`` int32."""
        on_obj = jnp.zeros((self.num_cells,), bool).at[self._cell(obj_pos)].set(True)
        logits = jnp.where(self._free() & ~on_obj, 0.0, -jnp.inf)
        return self._pos(jax.random.categorical(key, logits))

    def _move(self, pos: jax.Array, action: jax.Array) -> jax.Array:
        """Applies ``action`` to ``pos`` ``[2]``; blocked moves leave the agent in place."""
        target = pos + jnp.asarray(MOVES)[action]
        size = jnp.asarray([self.height, self.width], jnp.int32)
        inside = jnp.all((target >= 0) & (target < size))
        clipped = jnp.clip(target, 0, size - 1)
        blocked = ~inside | jnp.asarray(self.wall_mask())[clipped[0], clipped[1]]
        return jnp.where(blocked, pos, target)

    def _respawn(self, key, pos, obj_pos, present, eligible, p_respawn):
        """Returns ``(obj_pos [K, 2], present [K])`` after this step's respawns."""
        raise NotImplementedError

    def _obs(self, state: GridState) -> jax.Array:
        raise NotImplementedError

    def _initial_state(self, key: jax.Array, params) -> GridState:
        raise NotImplementedError

    def reset(self, key: jax.Array, params) -> tuple[jax.Array, GridState]:
        state = self._initial_state(key, params)
        return self._obs(state), state

    def step(
        self, key: jax.Array, state: GridState, action: jax.Array, params
    ) -> tuple[jax.Array, GridState, Step]:
        """Move, collect, draw termination, respawn (see the module docstring)."""
        key_term, key_respawn = jax.random.split(key)
        pos = self._move(state.pos, action)
        on_cell = jnp.all(state.obj_pos == pos[None, :], axis=-1)  # [K]
        collected = state.present & on_cell
        reward = jnp.sum(jnp.where(collected, params.reward, 0.0)).astype(jnp.float32)
        u_term = jax.random.uniform(key_term, (self.num_objects,))
        terminated = jnp.any(collected & (u_term < params.p_term))
        present = state.present & ~collected
        # Only objects absent before this step may come back ("on each later step").
        obj_pos, present = self._respawn(
            key_respawn, pos, state.obj_pos, present, ~state.present, params.p_respawn
        )
        time = state.time + 1
        truncated = (time >= params.max_steps) & ~terminated
        state = GridState(pos, obj_pos, present, time)
        obs = self._obs(state)
        return obs, state, Step(reward, terminated, truncated, obs)

    def action_space(self, params) -> spaces.Discrete:
        return spaces.Discrete(NUM_ACTIONS)


@dataclasses.dataclass(frozen=True)
class TabularGridWorld(_GridWorld):
    """LPG tabular grid world: fixed layout per lifetime, respawn in place, integer state.

    Observation: ``[]`` int32 state index in ``0 .. num_states - 1`` (module docstring).
    """

    @property
    def num_states(self) -> int:
        """Size of the tabular state space: ``num_free_cells * 2**K``."""
        return self.num_free_cells * 2**self.num_objects

    def state_index(self, pos: jax.Array, present: jax.Array) -> jax.Array:
        """``free_index(pos) * 2**K + sum_k present_k 2**k``.

        Args:
            pos: ``[..., 2]`` int32 free agent cell.
            present: ``[..., K]`` bool presence mask.

        Returns:
            ``[...]`` int32 state index.
        """
        lead = (1,) * (present.ndim - 1)  # explicit broadcast (rank promotion is an error)
        bits = jnp.asarray(2 ** np.arange(self.num_objects), jnp.int32).reshape(lead + (-1,))
        mask = jnp.sum(present.astype(jnp.int32) * bits, axis=-1)
        free = jnp.asarray(self.free_index())[self._cell(pos)]
        return (free * 2**self.num_objects + mask).astype(jnp.int32)

    def transition_model(self, params: TabularGridParams) -> TabularModel:
        """The exact one-step model of every (state, action) pair, for policy evaluation.

        Enumerates the ``2**K`` next presence masks: the move and collection are
        deterministic, termination happens with ``1 − Π(1 − p_term)`` over collected objects,
        and each object absent before the step respawns independently with its
        ``p_respawn``. The time limit is ignored (an infinite-horizon model).

        Returns:
            A :class:`TabularModel` with ``next_state``/``prob`` ``[S, A, 2**K]``, ``reward``
            and ``p_continue`` ``[S, A]`` (``S = num_states``, ``A = 9``).
        """
        k = self.num_objects
        cells = np.flatnonzero(self.free_index() >= 0)  # free rank -> cell
        s = np.arange(self.num_states)
        pos = self._pos(jnp.asarray(cells[s // 2**k]))  # [S, 2]
        bits = jnp.asarray(2 ** np.arange(k))[None, :]
        present = (jnp.asarray(s % 2**k)[:, None] & bits) > 0  # [S, K]
        masks = (jnp.arange(2**k)[:, None] & bits) > 0  # [M, K] candidate next presence

        def one(pos, present, action):
            new_pos = self._move(pos, action)
            collected = present & jnp.all(params.obj_pos == new_pos[None, :], axis=-1)
            reward = jnp.sum(jnp.where(collected, params.reward, 0.0))
            p_continue = jnp.prod(jnp.where(collected, 1.0 - params.p_term, 1.0))
            stays = present & ~collected  # [K] certainly present next
            # per object and candidate bit: P(next bit = mask bit)
            p_on = jnp.where(stays, 1.0, jnp.where(present, 0.0, params.p_respawn))
            prob = jnp.prod(jnp.where(masks, p_on[None, :], 1.0 - p_on[None, :]), axis=-1)  # [M]
            nxt = self.state_index(jnp.broadcast_to(new_pos, (2**k, 2)), masks)
            return nxt, prob, reward, p_continue

        per_action = jax.vmap(one, in_axes=(None, None, 0))
        nxt, prob, reward, p_continue = jax.vmap(per_action, in_axes=(0, 0, None))(
            pos, present, jnp.arange(NUM_ACTIONS)
        )
        return TabularModel(nxt, prob, reward, p_continue)

    def sample_params(self, key: jax.Array) -> TabularGridParams:
        """Draws one lifetime's layout: ``K`` uniformly random distinct free cells."""
        free = self._free()
        cells = jax.random.choice(
            key, self.num_cells, (self.num_objects,), replace=False, p=free / jnp.sum(free)
        )
        reward, p_term, p_respawn = self.default_objects()
        max_steps = jnp.asarray(self.max_steps, jnp.int32)
        return TabularGridParams(reward, p_term, p_respawn, max_steps, self._pos(cells))

    def default_params(self) -> TabularGridParams:
        """A fixed layout (numpy seed 0, distinct free cells); training samples one per lifetime."""
        free_cells = np.flatnonzero(self.free_index() >= 0)
        cells = np.random.default_rng(0).choice(free_cells, self.num_objects, replace=False)
        obj_pos = np.stack([cells // self.width, cells % self.width], axis=-1).astype(np.int32)
        reward, p_term, p_respawn = self.default_objects()
        max_steps = jnp.asarray(self.max_steps, jnp.int32)
        return TabularGridParams(reward, p_term, p_respawn, max_steps, jnp.asarray(obj_pos))

    def _initial_state(self, key, params: TabularGridParams) -> GridState:
        obj_pos = params.obj_pos.astype(jnp.int32)
        pos = self._random_start(key, obj_pos)
        present = jnp.ones((self.num_objects,), bool)
        return GridState(pos, obj_pos, present, jnp.zeros((), jnp.int32))

    def _respawn(self, key, pos, obj_pos, present, eligible, p_respawn):
        del pos
        u = jax.random.uniform(key, (self.num_objects,))
        return obj_pos, present | (eligible & (u < p_respawn))

    def _obs(self, state: GridState) -> jax.Array:
        return self.state_index(state.pos, state.present)

    def observation_space(self, params) -> spaces.Discrete:
        return spaces.Discrete(self.num_states)


@dataclasses.dataclass(frozen=True)
class RandomGridWorld(_GridWorld):
    """LPG random grid world: random objects each episode, random respawn, image obs.

    Observation: ``[H, W, num_types + 1]`` float32 binary image (module docstring).
    """

    @property
    def object_types(self) -> tuple[int, ...]:
        """Channel of each object: index of its triple among the distinct ones."""
        distinct = list(dict.fromkeys(self.objects))
        return tuple(distinct.index(obj) for obj in self.objects)

    @property
    def num_channels(self) -> int:
        return len(set(self.objects)) + 1

    def default_params(self) -> GridParams:
        reward, p_term, p_respawn = self.default_objects()
        return GridParams(reward, p_term, p_respawn, jnp.asarray(self.max_steps, jnp.int32))

    def _initial_state(self, key, params: GridParams) -> GridState:
        del params
        free = self._free()
        # K objects and the agent on distinct uniformly random free cells.
        cells = jax.random.choice(
            key, self.num_cells, (self.num_objects + 1,), replace=False, p=free / jnp.sum(free)
        )
        cells = self._pos(cells)
        present = jnp.ones((self.num_objects,), bool)
        return GridState(cells[-1], cells[:-1], present, jnp.zeros((), jnp.int32))

    def _respawn(self, key, pos, obj_pos, present, eligible, p_respawn):
        keys = jax.random.split(key, self.num_objects + 1)
        respawn = eligible & (jax.random.uniform(keys[-1], (self.num_objects,)) < p_respawn)
        free = self._free()
        count = jnp.zeros((self.num_cells,), jnp.int32)
        count = count.at[self._cell(obj_pos)].add(present.astype(jnp.int32))
        occupied = (count > 0).at[self._cell(pos)].set(True)
        # Objects respawn one after another so two never land on the same cell (K is static).
        for k in range(self.num_objects):
            logits = jnp.where(free & ~occupied, 0.0, -jnp.inf)
            cell = jax.random.categorical(keys[k], logits)
            obj_pos = obj_pos.at[k].set(jnp.where(respawn[k], self._pos(cell), obj_pos[k]))
            present = present.at[k].set(present[k] | respawn[k])
            occupied = occupied.at[cell].set(occupied[cell] | respawn[k])
        return obj_pos, present

    def _obs(self, state: GridState) -> jax.Array:
        types = jnp.asarray(self.object_types, jnp.int32)
        image = jnp.zeros((self.height, self.width, self.num_channels), jnp.float32)
        rows, cols = state.obj_pos[:, 0], state.obj_pos[:, 1]
        image = image.at[rows, cols, types].max(state.present.astype(jnp.float32))
        return image.at[state.pos[0], state.pos[1], -1].set(1.0)

    def observation_space(self, params) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (self.height, self.width, self.num_channels))


# ----- the ten LPG environments -----

_DENSE = 2 * ((1.0, 0.0, 0.05),) + ((-1.0, 0.5, 0.1), (-1.0, 0.0, 0.5))
_LONG_HORIZON = 2 * ((1.0, 0.0, 0.01),) + 2 * ((-1.0, 0.5, 1.0),)
# Longer Horizon, 7x9: a wall down col 4 open at rows 1 and 5, plus cols 3-5 of row 3.
LONGER_HORIZON_WALLS = tuple((r, 4) for r in (0, 2, 3, 4, 6)) + ((3, 3), (3, 5))
# Long Dense, 11x11 four rooms: col 5 with doors at rows 0 and 7; row 4 with doors at cols 2, 8.
LONG_DENSE_WALLS = tuple((r, 5) for r in range(11) if r not in (0, 7)) + tuple(
    (4, c) for c in range(11) if c not in (2, 5, 8)
)


def _spec(height, width, objects, max_steps, label, walls=()) -> dict:
    return dict(
        height=height,
        width=width,
        objects=objects,
        max_steps=max_steps,
        walls=walls,
        label=label,
    )


TABULAR_SPECS = {
    "dense": _spec(11, 11, _DENSE, 500, "dense"),
    "sparse": _spec(13, 13, ((1.0, 1.0, 0.0), (-1.0, 1.0, 0.0)), 50, "sparse"),
    "long_horizon": _spec(11, 11, _LONG_HORIZON, 1000, "long_horizon"),
    "longer_horizon": _spec(
        7,
        9,
        2 * ((1.0, 0.1, 0.01),) + 5 * ((-1.0, 0.8, 1.0),),
        2000,
        "longer_horizon",
        LONGER_HORIZON_WALLS,
    ),
    "long_dense": _spec(11, 11, 4 * ((1.0, 0.0, 0.005),), 2000, "long_dense", LONG_DENSE_WALLS),
}

RANDOM_SPECS = {
    "dense": _spec(11, 11, _DENSE, 500, "dense"),
    "long_horizon": _spec(11, 11, _LONG_HORIZON, 1000, "long_horizon"),
    "small": _spec(
        5,
        7,
        2 * ((1.0, 0.0, 0.05),) + 2 * ((-1.0, 0.5, 0.1),),
        500,
        "small",
        ((1, 2), (3, 4)),
    ),
    "small_sparse": _spec(5, 7, ((1.0, 1.0, 1.0),) + 2 * ((-1.0, 1.0, 1.0),), 50, "small_sparse"),
    "very_dense": _spec(11, 11, ((1.0, 0.0, 1.0),), 2000, "very_dense"),
}


def _tabular(which: str) -> Callable[..., TabularGridWorld]:
    def make(**overrides) -> TabularGridWorld:
        return TabularGridWorld(**(TABULAR_SPECS[which] | overrides))

    make.__name__ = f"tabular_{which}"
    make.__doc__ = f"The LPG tabular {which!r} grid world; keyword overrides replace fields."
    return make


def _random(which: str) -> Callable[..., RandomGridWorld]:
    def make(**overrides) -> RandomGridWorld:
        return RandomGridWorld(**(RANDOM_SPECS[which] | overrides))

    make.__name__ = f"random_{which}"
    make.__doc__ = f"The LPG random {which!r} grid world; keyword overrides replace fields."
    return make


tabular_dense = _tabular("dense")
tabular_sparse = _tabular("sparse")
tabular_long_horizon = _tabular("long_horizon")
tabular_longer_horizon = _tabular("longer_horizon")
tabular_long_dense = _tabular("long_dense")
random_dense = _random("dense")
random_long_horizon = _random("long_horizon")
random_small = _random("small")
random_small_sparse = _random("small_sparse")
random_very_dense = _random("very_dense")

# Registry names (for ``jaxrl.envs.registry``): ``lpg/<name>`` -> constructor.
NAMES: dict[str, Callable[..., _GridWorld]] = {
    "lpg/tabular_dense": tabular_dense,
    "lpg/tabular_sparse": tabular_sparse,
    "lpg/tabular_long_horizon": tabular_long_horizon,
    "lpg/tabular_longer_horizon": tabular_longer_horizon,
    "lpg/tabular_long_dense": tabular_long_dense,
    "lpg/random_dense": random_dense,
    "lpg/random_long_horizon": random_long_horizon,
    "lpg/random_small": random_small,
    "lpg/random_small_sparse": random_small_sparse,
    "lpg/random_very_dense": random_very_dense,
}
