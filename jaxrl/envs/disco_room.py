"""A sparse-reward room whose observation can carry per-step noise (a "noisy TV").

NGU's "random disco maze" (Badia et al. 2020, arXiv:2002.06038) changes the maze's wall
colours at random every step, so that every observation is new although the agent is not
anywhere new; a novelty bonus computed on raw observations pays for the noise, one computed
on features learned from the agent's actions does not. This is the smallest such task.

The agent walks in an open ``size x size`` room from the top-left corner ``(0, 0)``. The
first entry into the bottom-right corner in an episode pays 1 (the episode goes on);
entering the decoy exit ``(0, 2)``, two steps from the start, pays ``decoy_reward`` and
ends the episode (with ``decoy_reward = 0`` the decoy is an ordinary cell). Every other
step pays 0, and episodes are truncated after ``max_steps`` steps. The far corner is
``2 (size - 1)`` steps away; an agent that does not explore settles for the decoy (in
15 x 15 with 60 steps, 20,000 uniformly random walks never reached the far corner).

Actions 0-3 move up, right, down, left; a move into the outer wall leaves the agent in
place. The observation is ``[size * size + 1 + noise_dims]`` float32: the cell one-hot
(no coordinates, so a learner cannot generalise its way to the corner), 1 once the far
corner has paid, then ``noise_dims`` values drawn uniformly from ``[-1, 1]`` afresh at
every reset and step (the disco lights: they carry nothing about the state).
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

MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], np.int32)  # up, right, down, left
DECOY = (0, 2)


class DiscoRoomState(struct.PyTreeNode):
    position: jax.Array  # [2] int32 row, column
    collected: jax.Array  # [] bool: the far corner's reward was paid this episode
    time: jax.Array  # [] int32 steps taken


@dataclasses.dataclass(frozen=True)
class DiscoRoom(Env):
    """The room; see the module docstring.

    Attributes:
        size: the room's side, in cells (at least 4).
        max_steps: steps before truncation.
        noise_dims: uniform noise values appended to each observation.
        decoy_reward: the decoy exit's reward (0: no decoy).
    """

    size: int = 15
    max_steps: int = 60
    noise_dims: int = 0
    decoy_reward: float = 0.1

    def __post_init__(self):
        for name, minimum in (("size", 4), ("max_steps", 1), ("noise_dims", 0)):
            check_int(f"DiscoRoom.{name}", getattr(self, name), minimum)
        if not 0.0 <= self.decoy_reward < 1.0:
            raise ConfigError(
                f"DiscoRoom.decoy_reward must lie in [0, 1), got {self.decoy_reward!r}"
            )

    def default_params(self) -> None:
        return None

    def observe(self, key: jax.Array, state: DiscoRoomState) -> jax.Array:
        """``[size * size + 1 + noise_dims]``: the cell one-hot, the collected flag, then
        fresh noise."""
        cell = state.position[0] * self.size + state.position[1]
        one_hot = jax.nn.one_hot(cell, self.size * self.size)
        flag = state.collected.astype(jnp.float32)[None]
        noise = jax.random.uniform(key, (self.noise_dims,), jnp.float32, -1.0, 1.0)
        return jnp.concatenate([one_hot, flag, noise])

    def reset(self, key: jax.Array, params: None) -> tuple[jax.Array, DiscoRoomState]:
        zero = jnp.zeros((), jnp.int32)
        state = DiscoRoomState(jnp.zeros(2, jnp.int32), jnp.zeros((), bool), zero)
        return self.observe(key, state), state

    def step(
        self, key: jax.Array, state: DiscoRoomState, action: jax.Array, params: None
    ) -> tuple[jax.Array, DiscoRoomState, Step]:
        position = jnp.clip(state.position + jnp.asarray(MOVES)[action], 0, self.size - 1)
        goal = jnp.all(position == self.size - 1) & ~state.collected
        decoy = jnp.all(position == jnp.asarray(DECOY)) & (self.decoy_reward > 0)
        time = state.time + 1
        truncated = (time >= self.max_steps) & ~decoy
        state = DiscoRoomState(position, state.collected | goal, time)
        reward = jnp.where(goal, 1.0, jnp.where(decoy, self.decoy_reward, 0.0))
        obs = self.observe(key, state)
        return obs, state, Step(reward, decoy, truncated, obs)

    def observation_space(self, params: None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (self.size * self.size + 1 + self.noise_dims,))

    def action_space(self, params: None) -> spaces.Discrete:
        return spaces.Discrete(4)
