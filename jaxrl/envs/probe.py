"""Probe environments: tiny tasks whose optimal behaviour and values are known.

Used by learning tests (as in rejax ``tests/environments.py`` and Andy Jones's
"debugging RL" probes). Each episode is one step unless stated. Observations are ``[1]``
float32, discrete actions are int32 scalars.

Andy Jones's five probes ("Debugging RL, Without the Agonizing Pain",
https://andyljones.com/posts/rl-debugging.html), registered as ``probe/<name>``:

1. ``constant_reward``: obs 0, one action, reward +1, one step. ``V = 1``.
2. ``obs_reward``: obs ±1 at random, one action, reward = obs, one step. ``V(o) = o``.
3. ``two_step_reward``: one action, obs 0 then 1, reward +1 only at the end.
   ``V(0) = γ``, ``V(1) = 1``.
4. ``action_reward``: obs 0, two actions, reward +1 for action 1 and -1 for action 0, one
   step. ``Q(0, ·) = (-1, +1)``.
5. ``obs_action_reward``: obs ±1 at random, two actions, reward +1 iff
   ``action == (obs > 0)`` else -1, one step. ``Q(o, a) = ±1``.

Probe 5 is :class:`RewardFromObs` (same observations and best action) with a miss reward of
-1 instead of 0. In probes 4 and 5 the rewarded action is 1, not 0, so an agent whose
argmax is stuck on the first action (e.g. ties of an untrained or dead network) fails them.
:data:`JONES_PROBES` lists the five names in order.
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


def _one_step(obs: jax.Array, reward: jax.Array):
    """The ``Step`` of a one-step episode that ends (terminated) with ``reward``."""
    one = jnp.ones((), bool)
    return Step(jnp.asarray(reward, jnp.float32), one, ~one, obs)


def _random_sign_obs(key: jax.Array) -> jax.Array:
    """``[1]`` float32: +1 or -1 with probability 1/2 each."""
    return jnp.where(jax.random.bernoulli(key), 1.0, -1.0)[None]


@dataclasses.dataclass(frozen=True)
class RewardFromObs(Env):
    """One-step episodes; obs is ±1 at random; the right discrete action is ``obs > 0``.

    Reward 1 for the right action, ``miss_reward`` (default 0) otherwise. Optimal return 1
    per episode; a random policy gets ``(1 + miss_reward) / 2`` on average.
    """

    miss_reward: float = 0.0

    def default_params(self):
        return ProbeParams()

    def reset(self, key, params):
        obs = _random_sign_obs(key)
        return obs, ProbeState(obs, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        reward = jnp.where((action == 1) == (state.obs[0] > 0), 1.0, self.miss_reward)
        return state.obs, state, _one_step(state.obs, reward)

    def observation_space(self, params):
        return spaces.Box(-1.0, 1.0, (1,))

    def action_space(self, params):
        return spaces.Discrete(2)


@dataclasses.dataclass(frozen=True)
class ConstantReward(Env):
    """Andy Jones's probe 1: obs ``[0]``, one action, reward +1, one step. ``V = 1``.

    Fails if the value loss or the value network cannot fit a constant.
    """

    def default_params(self):
        return ProbeParams()

    def reset(self, key, params):
        obs = jnp.zeros((1,))
        return obs, ProbeState(obs, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        return state.obs, state, _one_step(state.obs, 1.0)

    def observation_space(self, params):
        return spaces.Box(0.0, 0.0, (1,))

    def action_space(self, params):
        return spaces.Discrete(1)


@dataclasses.dataclass(frozen=True)
class ObsReward(Env):
    """Andy Jones's probe 2: obs ±1 at random, one action, reward = obs, one step.

    ``V(o) = o``. Fails if the network cannot use its input (backprop is broken).
    """

    def default_params(self):
        return ProbeParams()

    def reset(self, key, params):
        obs = _random_sign_obs(key)
        return obs, ProbeState(obs, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        return state.obs, state, _one_step(state.obs, state.obs[0])

    def observation_space(self, params):
        return spaces.Box(-1.0, 1.0, (1,))

    def action_space(self, params):
        return spaces.Discrete(1)


@dataclasses.dataclass(frozen=True)
class TwoStepReward(Env):
    """Andy Jones's probe 3: one action, obs ``[0]`` then ``[1]``, reward +1 only at the end.

    Step 1: obs 0 -> 1, reward 0, not terminated. Step 2: reward 1, terminated (the final
    obs stays ``[1]``). ``V(0) = γ``, ``V(1) = 1``: fails if discounting or bootstrapping is.
    """

    def default_params(self):
        return ProbeParams(jnp.asarray(2, jnp.int32))

    def reset(self, key, params):
        obs = jnp.zeros((1,))
        return obs, ProbeState(obs, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        time = state.time + 1
        done = time >= 2
        obs = jnp.ones((1,))
        step = Step(done.astype(jnp.float32), done, jnp.zeros((), bool), obs)
        return obs, ProbeState(obs, time), step

    def observation_space(self, params):
        return spaces.Box(0.0, 1.0, (1,))

    def action_space(self, params):
        return spaces.Discrete(1)


@dataclasses.dataclass(frozen=True)
class ActionReward(Env):
    """Andy Jones's probe 4: obs ``[0]``, two actions, reward +1 for action 1, -1 for action 0.

    One step; ``Q(0, ·) = (-1, +1)``. The first probe that exercises the policy.
    """

    def default_params(self):
        return ProbeParams()

    def reset(self, key, params):
        obs = jnp.zeros((1,))
        return obs, ProbeState(obs, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        return state.obs, state, _one_step(state.obs, jnp.where(action == 1, 1.0, -1.0))

    def observation_space(self, params):
        return spaces.Box(0.0, 0.0, (1,))

    def action_space(self, params):
        return spaces.Discrete(2)


@dataclasses.dataclass(frozen=True)
class ObsActionReward(RewardFromObs):
    """Andy Jones's probe 5: obs ±1, two actions, reward +1 iff ``action == (obs > 0)``, else -1.

    :class:`RewardFromObs` with ``miss_reward=-1``. ``Q(o, a) = +1`` if ``a == (o > 0)``
    else -1: fails if the policy or Q cannot condition on both observation and action.
    """

    miss_reward: float = -1.0


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
    "constant_reward": ConstantReward,
    "obs_reward": ObsReward,
    "two_step_reward": TwoStepReward,
    "action_reward": ActionReward,
    "obs_action_reward": ObsActionReward,
}

# Andy Jones's probes 1-5, in his order (registry names ``probe/<name>``).
JONES_PROBES = (
    "constant_reward",
    "obs_reward",
    "two_step_reward",
    "action_reward",
    "obs_action_reward",
)
