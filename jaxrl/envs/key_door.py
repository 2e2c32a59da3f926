"""A hard-exploration, partially observed key-and-door room with random initial conditions.

R2D3 (Paine et al. 2019, arXiv:1909.01387) was built for tasks with three properties at once:
sparse rewards that random exploration essentially never finds, partial observability, and
initial conditions that vary so much between episodes that replaying one demonstration's
actions does not work. This is the smallest task with all three.

An open ``size x size`` room. Each episode places the agent and a key on two distinct
random non-corner cells and picks one of the four corners as the door. Actions 0-3 move up,
right, down, left (a move into the wall leaves the agent in place); action 4 uses what is on
the agent's cell: on the key's cell it picks the key up, on a corner while holding the key it
tries that corner as the door. The right door pays 1 and ends the episode; a wrong corner
ends it with 0. Nothing else pays; episodes are truncated after ``max_steps`` steps.

The observation is ``[9]`` float32: the agent's (row, column) and the key's (a held key is
where the agent is), each divided by ``size - 1``, 1 while the key is held, then the door
cue, a one-hot over the four corners (top-left, top-right, bottom-left, bottom-right) shown
only in the first ``cue_steps`` observations of an episode (zeros after): with
``cue_steps = 1`` a policy must remember from the first observation which corner is the
door.

In 7 x 7 with 40 steps, a uniformly random policy succeeds in about 0.45 % of episodes
(20,000 episodes); :class:`Expert` (walk to the key, pick it up, walk to the remembered
door) always does.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Step, check_int

MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], np.int32)  # up, right, down, left
USE = 4
DISPLACEMENT = np.concatenate([MOVES, np.zeros((1, 2), np.int32)])  # [5, 2]: "use" stays put


def corners(size: int) -> np.ndarray:
    """``[4, 2]`` the corners' (row, column): top-left, top-right, bottom-left, bottom-right."""
    last = size - 1
    return np.array([[0, 0], [0, last], [last, 0], [last, last]], np.int32)


class KeyDoorState(struct.PyTreeNode):
    """Where the agent and the key are, which corner is the door, whether the key is held,
    and the steps taken."""

    position: jax.Array  # [2] int32 row, column
    key_position: jax.Array  # [2] int32
    door: jax.Array  # [] int32 index into corners()
    holding: jax.Array  # [] bool
    time: jax.Array  # [] int32 steps taken


@dataclasses.dataclass(frozen=True)
class KeyDoor(Env):
    """The room; see the module docstring.

    Attributes:
        size: the room's side, in cells (at least 3).
        max_steps: steps before truncation.
        cue_steps: the first observations that show the door (at least 1).
    """

    size: int = 7
    max_steps: int = 40
    cue_steps: int = 1

    def __post_init__(self):
        for name, minimum in (("size", 3), ("max_steps", 1), ("cue_steps", 1)):
            check_int(f"KeyDoor.{name}", getattr(self, name), minimum)

    def default_params(self) -> None:
        return None

    def observe(self, state: KeyDoorState) -> jax.Array:
        """``[9]``: the agent's and the key's (row, column) divided by ``size - 1`` (a held
        key is where the agent is), 1 while the key is held, the door cue."""
        key_position = jnp.where(state.holding, state.position, state.key_position)
        where = jnp.concatenate([state.position, key_position]).astype(jnp.float32)
        cue = jax.nn.one_hot(state.door, 4) * (state.time < self.cue_steps).astype(jnp.float32)
        holding = state.holding.astype(jnp.float32)[None]
        return jnp.concatenate([where / (self.size - 1), holding, cue])

    def reset(self, key: jax.Array, params: None) -> tuple[jax.Array, KeyDoorState]:
        key_cells, key_door = jax.random.split(key)
        cells = np.arange(self.size * self.size)
        corner_cells = corners(self.size) @ np.array([self.size, 1])
        inner = jnp.asarray(np.setdiff1d(cells, corner_cells))  # the non-corner cells
        agent_cell, key_cell = jax.random.choice(key_cells, inner, (2,), replace=False)
        as_position = lambda c: jnp.stack([c // self.size, c % self.size]).astype(jnp.int32)
        state = KeyDoorState(
            position=as_position(agent_cell),
            key_position=as_position(key_cell),
            door=jax.random.randint(key_door, (), 0, 4, jnp.int32),
            holding=jnp.zeros((), bool),
            time=jnp.zeros((), jnp.int32),
        )
        return self.observe(state), state

    def step(
        self, key: jax.Array, state: KeyDoorState, action: jax.Array, params: None
    ) -> tuple[jax.Array, KeyDoorState, Step]:
        del key
        position = jnp.clip(state.position + jnp.asarray(DISPLACEMENT)[action], 0, self.size - 1)
        use = action == USE
        on_key = jnp.all(state.position == state.key_position)
        at_corner = jnp.all(state.position[None, :] == jnp.asarray(corners(self.size)), axis=1)
        tried = use & state.holding & jnp.any(at_corner)
        opened = tried & at_corner[state.door]
        holding = state.holding | (use & on_key)
        time = state.time + 1
        state = state.replace(position=position, holding=holding, time=time)
        truncated = (time >= self.max_steps) & ~tried
        obs = self.observe(state)
        return obs, state, Step(opened.astype(jnp.float32), tried, truncated, obs)

    def observation_space(self, params: None) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (9,))

    def action_space(self, params: None) -> spaces.Discrete:
        return spaces.Discrete(5)


def expert_action(env: KeyDoor, door: jax.Array, obs: jax.Array) -> jax.Array:
    """The scripted expert's action ``[]`` for one observation ``[9]`` and the
    remembered ``door`` index: walk (rows first) to the key and pick it up, then walk to
    the door and use it."""
    coordinates = jnp.round(obs[:4] * (env.size - 1)).astype(jnp.int32)
    position, key_position = coordinates[:2], coordinates[2:]
    holding = obs[4] > 0.5
    target = jnp.where(holding, jnp.asarray(corners(env.size))[door], key_position)
    delta = target - position
    move = jnp.where(
        delta[0] != 0,
        jnp.where(delta[0] < 0, 0, 2),  # up, down
        jnp.where(delta[1] > 0, 1, 3),  # right, left
    )
    return jnp.where(jnp.all(delta == 0), USE, move).astype(jnp.int32)


class Expert:
    """:func:`expert_action` as a recurrent policy that :func:`jaxrl.algorithms.demos.record`
    and :mod:`jaxrl.runner.evaluate` can run: its carry ``[E]`` int32 is the door read from
    the cue (the cue is in the first observation; -1 before it)."""

    __name__ = "key_door.Expert"

    def __init__(self, env: KeyDoor):
        self.env = env

    def policy_carry(self, cfg, num_episodes: int) -> jax.Array:
        del cfg
        return jnp.full((num_episodes,), -1, jnp.int32)

    def recurrent_policy(self, cfg, env, params, carry, obs, key, deterministic, hp=None):
        del cfg, env, params, key, deterministic, hp
        cue = obs[:, -4:]
        door = jnp.where(jnp.any(cue > 0.5, axis=1), jnp.argmax(cue, axis=1), carry)
        action = jax.vmap(expert_action, in_axes=(None, 0, 0))(self.env, door, obs)
        return door.astype(jnp.int32), action
