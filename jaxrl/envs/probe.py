"""Probe environments: tiny tasks whose optimal behaviour and values are known.

Used by learning tests (as in rejax ``tests/environments.py`` and Andy Jones's
"debugging RL" probes). Each episode is one step unless stated.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Step


class ProbeParams(struct.PyTreeNode):
    max_steps: jax.Array = struct.field(default_factory=lambda: jnp.asarray(1, jnp.int32))


class ProbeState(struct.PyTreeNode):
    obs: jax.Array
    time: jax.Array


@dataclasses.dataclass(frozen=True)
class RewardFromObs(Env):
    """One-step episodes; obs is ±1 at random; the right discrete action is ``obs > 0``.

    Optimal return 1 per episode; a random policy gets 0.5 on average.
    """

    def default_params(self):
        return ProbeParams()

    def reset(self, key, params):
        obs = jnp.where(jax.random.bernoulli(key), 1.0, -1.0)[None]
        return obs, ProbeState(obs, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        reward = jnp.where((action == 1) == (state.obs[0] > 0), 1.0, 0.0)
        one = jnp.ones((), bool)
        return state.obs, state, Step(reward, one, ~one, state.obs)

    def observation_space(self, params):
        return spaces.Box(-1.0, 1.0, (1,))

    def action_space(self, params):
        return spaces.Discrete(2)


@dataclasses.dataclass(frozen=True)
class ContinuousTarget(Env):
    """One-step episodes; obs ``o ~ U(-1, 1)``; reward ``-(a - o)^2``: the best action is ``o``."""

    def default_params(self):
        return ProbeParams()

    def reset(self, key, params):
        obs = jax.random.uniform(key, (1,), minval=-1.0, maxval=1.0)
        return obs, ProbeState(obs, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        reward = -jnp.sum(jnp.square(action - state.obs))
        one = jnp.ones((), bool)
        return state.obs, state, Step(reward, one, ~one, state.obs)

    def observation_space(self, params):
        return spaces.Box(-1.0, 1.0, (1,))

    def action_space(self, params):
        return spaces.Box(-2.0, 2.0, (1,))


@dataclasses.dataclass(frozen=True)
class TimeLimitChain(Env):
    """Reward 1 every step, never terminates, truncated after ``params.max_steps`` steps.

    With discount ``γ`` the true value is ``1 / (1 - γ)`` at every state, because a
    time limit is not part of the task: a learner that treats truncation as termination
    under-estimates it near the limit. Obs is ``[t / max_steps]``.
    """

    def default_params(self):
        return ProbeParams(jnp.asarray(10, jnp.int32))

    def reset(self, key, params):
        obs = jnp.zeros((1,))
        return obs, ProbeState(obs, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        time = state.time + 1
        obs = (time / params.max_steps).astype(jnp.float32)[None]
        truncated = time >= params.max_steps
        step = Step(jnp.ones(()), jnp.zeros((), bool), truncated, obs)
        return obs, ProbeState(obs, time), step

    def observation_space(self, params):
        return spaces.Box(0.0, 1.0, (1,))

    def action_space(self, params):
        return spaces.Discrete(2)


PROBES = {
    "reward_from_obs": RewardFromObs,
    "continuous_target": ContinuousTarget,
    "time_limit_chain": TimeLimitChain,
}
