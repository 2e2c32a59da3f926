"""2D point navigation, the MAML-RL task family (Finn et al. 2017, https://arxiv.org/abs/1703.03400).

Exact dynamics of ``PointEnvRandGoal`` in cbfinn/maml_rl: the agent starts at ``(0, 0)``;
the action is a velocity clipped to ``[-0.1, 0.1]`` per axis; the observation is the
position ``[2]``; the reward is ``-||pos - goal||_2`` (plain, not squared, distance) every
step; the episode terminates once ``|dx| < 0.01`` and ``|dy| < 0.01`` and is truncated after
``max_steps = 100`` steps.

The task (the goal) lives in :class:`Nav2DParams`, so a batch of tasks is a batch of
params and everything vmaps over tasks. :meth:`Nav2D.sample_params` draws a goal from
``U[-0.5, 0.5]^2``: the task-sampler protocol of jaxrl's task distributions (as the LPG
and bandit envs), which :mod:`jaxrl.meta.maml` uses.

Note: rllab's ``normalize`` wrapper let the original policy act in ``[-1, 1]`` and scaled
actions by ``0.1``; here the env takes raw velocities, and the scaling is the policy's
business (``maml.Config.action_scale``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Step, check_int
from jaxrl.errors import ConfigError


class Nav2DParams(struct.PyTreeNode):
    """Task parameters.

    Attributes:
        goal: ``[2]`` float32 goal position.
        max_steps: ``[]`` int32 time limit (truncation).
    """

    goal: jax.Array = struct.field(default_factory=lambda: jnp.asarray([0.25, 0.25], jnp.float32))
    max_steps: jax.Array = struct.field(default_factory=lambda: jnp.asarray(100, jnp.int32))


class Nav2DState(struct.PyTreeNode):
    pos: jax.Array  # [2]
    time: jax.Array  # [] int32


@dataclasses.dataclass(frozen=True)
class Nav2D(Env):
    """Point robot moving towards a goal; see the module docstring for the exact dynamics.

    Attributes:
        max_speed: per-axis action clip (0.1 in the paper).
        goal_range: goals are drawn from ``U[-goal_range, goal_range]^2`` (0.5 in the paper).
        goal_tol: per-axis termination threshold (0.01 in the paper).
    """

    max_speed: float = 0.1
    goal_range: float = 0.5
    goal_tol: float = 0.01

    def __post_init__(self):
        for name in ("max_speed", "goal_range", "goal_tol"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"Nav2D.{name} must be > 0, got {getattr(self, name)!r}")

    def default_params(self) -> Nav2DParams:
        return Nav2DParams()

    def sample_params(self, key: jax.Array) -> Nav2DParams:
        """One task: the default params with a goal drawn from ``U[-goal_range, goal_range]^2``."""
        goal = jax.random.uniform(key, (2,), jnp.float32, -self.goal_range, self.goal_range)
        return self.default_params().replace(goal=goal)

    def reset(self, key: jax.Array, params: Nav2DParams) -> tuple[jax.Array, Nav2DState]:
        del key
        pos = jnp.zeros((2,), jnp.float32)
        return pos, Nav2DState(pos, jnp.zeros((), jnp.int32))

    def step(
        self, key: jax.Array, state: Nav2DState, action: jax.Array, params: Nav2DParams
    ) -> tuple[jax.Array, Nav2DState, Step]:
        """One step; ``action`` is a ``[2]`` velocity (clipped to ``±max_speed``)."""
        del key
        velocity = jnp.clip(jnp.asarray(action, jnp.float32), -self.max_speed, self.max_speed)
        pos = state.pos + velocity
        delta = pos - params.goal
        reward = -jnp.sqrt(jnp.sum(jnp.square(delta)))
        terminated = jnp.all(jnp.abs(delta) < self.goal_tol)
        time = state.time + 1
        truncated = jnp.logical_and(time >= params.max_steps, jnp.logical_not(terminated))
        return pos, Nav2DState(pos, time), Step(reward, terminated, truncated, pos)

    def observation_space(self, params: Nav2DParams) -> spaces.Box:
        return spaces.Box(-float("inf"), float("inf"), (2,))

    def action_space(self, params: Nav2DParams) -> spaces.Box:
        return spaces.Box(-self.max_speed, self.max_speed, (2,))


class CuedNav2DParams(Nav2DParams):
    """Task parameters of :class:`CuedNav2D`: the goal, the time limit and ``cue [C]``."""

    cue: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class CuedNav2D(Nav2D):
    """2D navigation whose observation also shows a task cue: non-mutually-exclusive tasks.

    The observation is ``[x, y, cue]`` (``[2 + cue_dim]``), the cue constant over an
    episode. With ``num_tasks = K > 0``, :meth:`sample_params` draws one of K fixed tasks
    (goals and cues made from ``task_seed``): the cue then names the task, so one policy can
    solve every meta-training task zero-shot by mapping cue to goal and ignore its adaptation
    data (the "memorization" of Yin et al. 2020, https://arxiv.org/abs/1912.03820).
    ``num_tasks = 0`` draws a fresh goal and a fresh cue ``N(0, I)`` every time: novel tasks,
    whose cue says nothing a memorising policy has seen (:meth:`novel`). Dynamics and reward
    are :class:`Nav2D`'s.

    Attributes:
        cue_dim: ``C``, the cue's size.
        num_tasks: ``K`` fixed meta-training tasks, or 0 for a new task every draw.
        task_seed: the seed of the K tasks' goals and cues.
    """

    cue_dim: int = 8
    num_tasks: int = 20
    task_seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_int("CuedNav2D.cue_dim", self.cue_dim, 1)
        check_int("CuedNav2D.num_tasks", self.num_tasks, 0)
        check_int("CuedNav2D.task_seed", self.task_seed, 0)

    def novel(self) -> CuedNav2D:
        """The same env drawing a new goal and cue for every task (``num_tasks = 0``)."""
        return dataclasses.replace(self, num_tasks=0)

    def default_params(self) -> CuedNav2DParams:
        base = super().default_params()
        return CuedNav2DParams(base.goal, base.max_steps, jnp.zeros((self.cue_dim,), jnp.float32))

    def _fresh_task(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``goal [2] ~ U[-goal_range, goal_range]^2`` and ``cue [C] ~ N(0, I)``."""
        key_goal, key_cue = jax.random.split(key)
        goal = jax.random.uniform(key_goal, (2,), jnp.float32, -self.goal_range, self.goal_range)
        return goal, jax.random.normal(key_cue, (self.cue_dim,), jnp.float32)

    def tasks(self) -> tuple[jax.Array, jax.Array]:
        """The K fixed tasks: goals ``[K, 2]`` and cues ``[K, C]`` (needs ``num_tasks > 0``)."""
        keys = jax.random.split(jax.random.key(self.task_seed), self.num_tasks)
        return jax.vmap(self._fresh_task)(keys)

    def sample_params(self, key: jax.Array) -> CuedNav2DParams:
        """One of the K fixed tasks uniformly, or a fresh one when ``num_tasks = 0``."""
        if self.num_tasks:
            goals, cues = self.tasks()
            k = jax.random.randint(key, (), 0, self.num_tasks)
            goal, cue = goals[k], cues[k]
        else:
            goal, cue = self._fresh_task(key)
        return self.default_params().replace(goal=goal, cue=cue)

    def reset(self, key: jax.Array, params: CuedNav2DParams):
        pos, state = super().reset(key, params)
        return jnp.concatenate([pos, params.cue]), state

    def step(self, key: jax.Array, state: Nav2DState, action: jax.Array, params: CuedNav2DParams):
        pos, state, step = super().step(key, state, action, params)
        obs = jnp.concatenate([pos, params.cue])
        return obs, state, step.replace(final_obs=obs)

    def observation_space(self, params: CuedNav2DParams) -> spaces.Box:
        return spaces.Box(-float("inf"), float("inf"), (2 + self.cue_dim,))


def sample_tasks(env: Env, key: jax.Array, num_tasks: int):
    """``num_tasks`` task params stacked on a leading axis (``env`` has ``sample_params``)."""
    return jax.vmap(env.sample_params)(jax.random.split(key, num_tasks))
