"""Functional wrappers: auto-reset, vectorisation, episode statistics, normalisation.

Every wrapper is a frozen dataclass (hashable, static) whose extra state is a pytree
nested around the inner env's state, so the whole stack stays pure and vmappable.

The usual stack, built by :func:`make_vec_env`::

    raw env -> ClipAction -> AutoReset -> EpisodeStats -> VecEnv -> NormalizeObs -> ScaleReward

``EpisodeStats`` sits outside ``AutoReset`` so a reset does not wipe the statistics of
the episode that just ended, and inside the reward scaling so it reports true returns.
``NormalizeObs`` and ``ScaleReward`` take batched ``[N, ...]`` data and keep running
statistics (parallel Welford, Chan et al. 1979) over every env in the batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Wrapper
from jaxrl.errors import ConfigError
from jaxrl.utils import tree


def clip_to_space(space, action: jax.Array) -> jax.Array:
    """Box actions ``[..., A]`` clipped to the space's bounds ``[A]``; other actions as they
    are."""
    if not isinstance(space, spaces.Box):
        return action
    low, high = space.bounds()
    low, high = jnp.broadcast_to(low, action.shape), jnp.broadcast_to(high, action.shape)
    return jnp.clip(action, low, high)


@dataclasses.dataclass(frozen=True)
class ClipAction(Wrapper):
    """Clips continuous actions to the action space bounds before the env sees them."""

    def step(self, key, state, action, params):
        action = clip_to_space(self.env.action_space(params), action)
        return self.env.step(key, state, action, params)


@dataclasses.dataclass(frozen=True)
class AutoReset(Wrapper):
    """Resets the inner env when an episode ends; ``Step.final_obs`` keeps the last obs."""

    def step(self, key, state, action, params):
        key_step, key_reset = jax.random.split(key)
        obs, state, step = self.env.step(key_step, state, action, params)
        obs_reset, state_reset = self.env.reset(key_reset, params)
        done = step.done
        obs_out, state_out = tree.select(done, (obs_reset, state_reset), (obs, state))
        return obs_out, state_out, step.replace(final_obs=obs)


class EpisodeStatsState(struct.PyTreeNode):
    env_state: object
    episode_return: jax.Array  # return of the running episode so far
    episode_length: jax.Array


@dataclasses.dataclass(frozen=True)
class EpisodeStats(Wrapper):
    """Accumulates undiscounted return and length; reports them in ``Step.info`` at episode end.

    ``info["episode_return"]`` and ``info["episode_length"]`` are the finished episode's
    totals where ``step.done`` is true, and 0 elsewhere.
    """

    def reset(self, key, params):
        obs, env_state = self.env.reset(key, params)
        zero = jnp.zeros((), jnp.float32)
        return obs, EpisodeStatsState(env_state, zero, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        obs, env_state, step = self.env.step(key, state.env_state, action, params)
        ret = state.episode_return + step.reward
        length = state.episode_length + 1
        done = step.done
        info = dict(step.info)
        info["episode_return"] = jnp.where(done, ret, 0.0)
        info["episode_length"] = jnp.where(done, length, 0)
        state = EpisodeStatsState(env_state, jnp.where(done, 0.0, ret), jnp.where(done, 0, length))
        return obs, state, step.replace(info=info)


@dataclasses.dataclass(frozen=True)
class VecEnv(Wrapper):
    """``num_envs`` copies stepped in lock-step by ``vmap``; params are shared.

    ``reset(key, params)`` takes one key and returns ``[num_envs, ...]`` obs;
    ``step`` takes one key and ``[num_envs, ...]`` actions.
    """

    num_envs: int = 1

    def reset(self, key, params):
        keys = jax.random.split(key, self.num_envs)
        return jax.vmap(self.env.reset, in_axes=(0, None))(keys, params)

    def step(self, key, state, action, params):
        keys = jax.random.split(key, self.num_envs)
        return jax.vmap(self.env.step, in_axes=(0, 0, 0, None))(keys, state, action, params)


class RunningStats(struct.PyTreeNode):
    """Running mean and (population) variance of a stream of batches."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def zeros(cls, shape) -> RunningStats:
        return cls(jnp.zeros(shape), jnp.ones(shape), jnp.zeros(()))

    def update(self, batch: jax.Array) -> RunningStats:
        """Merges a batch ``[B, *shape]`` (Chan et al. parallel algorithm)."""
        batch_mean = jnp.mean(batch, axis=0)
        batch_var = jnp.var(batch, axis=0)
        batch_count = batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count
        m2 = m2 + jnp.square(delta) * self.count * batch_count / total
        return RunningStats(mean, m2 / total, total)


class NormalizeObsState(struct.PyTreeNode):
    env_state: object
    stats: RunningStats


@dataclasses.dataclass(frozen=True)
class NormalizeObs(Wrapper):
    """Normalises batched observations by running mean and std, then clips to ``±clip``.

    Statistics are updated with every observation the agent receives (after reset or
    step); ``final_obs`` is normalised with the same statistics.
    """

    clip: float = 10.0
    epsilon: float = 1e-8

    def _normalize(self, obs, stats):
        mean, var = jnp.expand_dims(stats.mean, 0), jnp.expand_dims(stats.var, 0)  # [1, *shape]
        z = (obs - mean) / jnp.sqrt(var + self.epsilon)
        return jnp.clip(z, -self.clip, self.clip)

    def reset(self, key, params):
        obs, env_state = self.env.reset(key, params)
        stats = RunningStats.zeros(obs.shape[1:]).update(obs)
        return self._normalize(obs, stats), NormalizeObsState(env_state, stats)

    def step(self, key, state, action, params):
        obs, env_state, step = self.env.step(key, state.env_state, action, params)
        stats = state.stats.update(obs)
        step = step.replace(final_obs=self._normalize(step.final_obs, stats))
        return self._normalize(obs, stats), NormalizeObsState(env_state, stats), step


class ScaleRewardState(struct.PyTreeNode):
    env_state: object
    discounted_return: jax.Array  # [N]
    stats: RunningStats


@dataclasses.dataclass(frozen=True)
class ScaleReward(Wrapper):
    """Divides rewards by the running std of the discounted return (Engstrom et al. 2020).

    Keeps ``G_t = discount * G_{t-1} + r_t`` per env (reset at episode end) and
    scales ``r_t / sqrt(Var[G] + eps)``; rewards are not centred. The unscaled reward
    stays in ``Step.info["raw_reward"]`` (``[N]``), for agents that blend the two.
    """

    discount: float = 0.99
    epsilon: float = 1e-8

    def reset(self, key, params):
        obs, env_state = self.env.reset(key, params)
        num_envs = jax.tree.leaves(obs)[0].shape[0]
        state = ScaleRewardState(env_state, jnp.zeros(num_envs), RunningStats.zeros(()))
        return obs, state

    def step(self, key, state, action, params):
        obs, env_state, step = self.env.step(key, state.env_state, action, params)
        ret = state.discounted_return * self.discount + step.reward
        stats = state.stats.update(ret)
        reward = step.reward / jnp.sqrt(stats.var + self.epsilon)
        ret = jnp.where(step.done, 0.0, ret)
        info = dict(step.info) | {"raw_reward": step.reward}
        step = step.replace(reward=reward, info=info)
        return obs, ScaleRewardState(env_state, ret, stats), step


@dataclasses.dataclass(frozen=True)
class SelectObs(Wrapper):
    """Keeps the entries ``indices`` of a flat observation: a partially observed version of
    the env, e.g. CartPole's positions ``(0, 2)`` without the velocities.

    Observation ``[len(indices)]`` (``Step.final_obs`` too); the bounds are the inner
    space's at those entries.
    """

    indices: tuple[int, ...]

    def __post_init__(self):
        if not self.indices or len(set(self.indices)) != len(self.indices):
            raise ConfigError(f"indices must be distinct and non-empty, got {self.indices!r}")

    def _select(self, obs):
        return jnp.reshape(obs, (-1,))[jnp.asarray(self.indices)]

    def reset(self, key, params):
        obs, state = self.env.reset(key, params)
        return self._select(obs), state

    def step(self, key, state, action, params):
        obs, state, step = self.env.step(key, state, action, params)
        return self._select(obs), state, step.replace(final_obs=self._select(step.final_obs))

    def observation_space(self, params):
        space = self.env.observation_space(params)
        size = int(np.prod(space.shape))
        if max(self.indices) >= size or min(self.indices) < -size:
            raise ConfigError(f"indices {self.indices} out of range for {size} observation entries")
        low, high = (
            np.broadcast_to(np.asarray(b, np.float64), (size,))[list(self.indices)]
            for b in (space.low, space.high)
        )  # numpy, not space.bounds(): this runs inside jit
        return spaces.Box(tuple(low.tolist()), tuple(high.tolist()), (len(self.indices),))


class HistoryState(struct.PyTreeNode):
    env_state: object
    obs: jax.Array  # [D] the current observation
    history: jax.Array  # [H, D + A + 1] the last H transitions, oldest first


@dataclasses.dataclass(frozen=True)
class History(Wrapper):
    """Appends the last ``length`` transitions ``(o, a, r)`` of the episode to the observation.

    Observation ``[D + length * (D + A + 1)]``: the current ``o_t`` then rows
    ``(o_{t-k}, a_{t-k}, r_{t-k})`` for ``k = length .. 1`` (zeros before the episode
    start); discrete actions are one-hot. Put it inside :class:`AutoReset` so a new
    episode starts with an empty history (``make_vec_env(History(env, H), ...)``). Used
    by context-conditioned agents (Meta-Q-Learning); see
    :func:`jaxrl.networks.continuous.split_context`.
    """

    length: int = 10

    def _action_row(self, action, params):
        space = self.env.action_space(params)
        if isinstance(space, spaces.Discrete):
            return jax.nn.one_hot(action, space.n)
        return jnp.reshape(action, (-1,)).astype(jnp.float32)

    def _action_dim(self, params) -> int:
        space = self.env.action_space(params)
        return space.n if isinstance(space, spaces.Discrete) else int(np.prod(space.shape))

    def _observe(self, obs, history):
        return jnp.concatenate([obs, history.reshape(-1)])

    def reset(self, key, params):
        obs, env_state = self.env.reset(key, params)
        obs = jnp.reshape(obs, (-1,)).astype(jnp.float32)
        width = obs.shape[0] + self._action_dim(params) + 1
        history = jnp.zeros((self.length, width), jnp.float32)
        return self._observe(obs, history), HistoryState(env_state, obs, history)

    def step(self, key, state, action, params):
        next_obs, env_state, step = self.env.step(key, state.env_state, action, params)
        next_obs = jnp.reshape(next_obs, (-1,)).astype(jnp.float32)
        row = jnp.concatenate(
            [state.obs, self._action_row(action, params), jnp.reshape(step.reward, (1,))]
        )
        history = jnp.concatenate([state.history[1:], row[None]], axis=0)
        final_obs = self._observe(jnp.reshape(step.final_obs, (-1,)), history)
        out = HistoryState(env_state, next_obs, history)
        return self._observe(next_obs, history), out, step.replace(final_obs=final_obs)

    def observation_space(self, params):
        obs_dim = int(np.prod(self.env.observation_space(params).shape))
        width = obs_dim + self.length * (obs_dim + self._action_dim(params) + 1)
        return spaces.Box(-np.inf, np.inf, (width,))


class ConditionedParams(struct.PyTreeNode):
    """The inner env's params and the condition vector ``[C]`` appended to observations."""

    env_params: object
    condition: jax.Array  # [C] float32


@dataclasses.dataclass(frozen=True)
class Conditioned(Wrapper):
    """Appends a condition vector ``c`` ``[size]`` to every (flat) observation: ``[D + size]``.

    ``c`` lives in the env *params* (:class:`ConditionedParams`), not in the env or its
    state, so it is a traced value that an algorithm carries in ``State.env_params`` and a
    meta-learner may change between updates without recompiling. Conditioning an agent on
    its own hyperparameters this way (e.g. ``c = (γ, λ)``) is how Xu et al. 2018 make the
    value function and policy follow a meta-learned ``γ`` (see
    :func:`jaxrl.meta.metagrad.online_step`'s ``condition_on``). Put it innermost
    (``make_vec_env(Conditioned(env, C), N)``); ``final_obs`` carries the same ``c``.
    """

    size: int = 1

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"Conditioned size must be an int >= 1, got {self.size!r}")

    def default_params(self) -> ConditionedParams:
        return self.with_params(self.env.default_params(), jnp.zeros(self.size))

    def with_params(self, env_params, condition) -> ConditionedParams:
        """``ConditionedParams`` of the inner ``env_params`` and ``condition`` ``[size]``."""
        condition = jnp.asarray(condition, jnp.float32)
        if condition.shape != (self.size,):
            raise ConfigError(
                f"condition has shape {condition.shape}; this Conditioned env takes ({self.size},)"
            )
        return ConditionedParams(env_params, condition)

    def attach(self, obs: jax.Array, condition: jax.Array) -> jax.Array:
        """``[..., D]`` observations and ``[size]`` -> ``[..., D + size]``."""
        c = jnp.broadcast_to(condition.astype(jnp.float32), (*obs.shape[:-1], self.size))
        return jnp.concatenate([obs.astype(jnp.float32), c], axis=-1)

    def replace_condition(self, obs: jax.Array, condition: jax.Array) -> jax.Array:
        """Conditioned observations ``[..., D + size]`` with their last ``size`` entries set to
        ``condition`` ``[size]`` (e.g. a rollout re-read under reference hyperparameters)."""
        return self.attach(obs[..., : obs.shape[-1] - self.size], condition)

    def reset(self, key, params):
        obs, env_state = self.env.reset(key, params.env_params)
        return self.attach(jnp.reshape(obs, (-1,)), params.condition), env_state

    def step(self, key, state, action, params):
        obs, env_state, step = self.env.step(key, state, action, params.env_params)
        final_obs = self.attach(jnp.reshape(step.final_obs, (-1,)), params.condition)
        obs = self.attach(jnp.reshape(obs, (-1,)), params.condition)
        return obs, env_state, step.replace(final_obs=final_obs)

    def observation_space(self, params):
        inner = self.env.observation_space(params.env_params)
        obs_dim = int(np.prod(inner.shape))
        return spaces.Box(-np.inf, np.inf, (obs_dim + self.size,))

    def action_space(self, params):
        return self.env.action_space(params.env_params)


def make_vec_env(
    env: Env,
    num_envs: int,
    *,
    normalize_obs: bool = False,
    scale_reward: bool = False,
    reward_discount: float = 0.99,
) -> Env:
    """Builds the standard training stack around a raw env (see the module docstring).

    An env that is already ``num_envs`` auto-resetting envs with episode statistics (its
    class sets ``batched = True``, e.g. :class:`jaxrl.envs.envpool_xla.EnvpoolXlaEnv`) is
    used as it is, inside the optional normalisers; its size must equal ``num_envs``.
    """
    if getattr(env, "batched", False):
        if env.num_envs != num_envs:
            raise ConfigError(
                f"num_envs = {num_envs} but {env.name} is a batch of {env.num_envs} envs"
            )
    else:
        env = AutoReset(ClipAction(env))
        env = VecEnv(EpisodeStats(env), num_envs=num_envs)
    if normalize_obs:
        env = NormalizeObs(env)
    if scale_reward:
        env = ScaleReward(env, discount=reward_discount)
    return env


def is_discrete(env: Env, params) -> bool:
    """Whether ``env`` has a Discrete action space."""
    return isinstance(env.action_space(params), spaces.Discrete)
