"""The one environment protocol every backend is adapted to.

An ``Env`` is a static, hashable Python object (it may appear in ``jit`` closures
and as a static argument); everything that varies lives in two pytrees:
``EnvParams`` (traced task parameters, vmappable for meta-RL) and ``EnvState``.

``step`` returns a :class:`Step` that keeps *termination* (a real end: the value
of the next state is zero) apart from *truncation* (a time limit: the episode was
cut, and value targets bootstrap from ``final_obs``, the observation before any
auto-reset). Raw adapters do not reset; :class:`jaxrl.envs.wrappers.AutoReset`
does, and fills ``final_obs``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl.envs.spaces import Space
from jaxrl.errors import ConfigError

EnvParams = Any
EnvState = Any
Obs = Any


class Step(struct.PyTreeNode):
    """What one environment step reports besides the next observation and state.

    Attributes:
        reward: ``[]`` (``[N]`` when vectorised) float reward.
        terminated: bool, the episode ended for real: do not bootstrap.
        truncated: bool, a time limit cut the episode: bootstrap from ``final_obs``.
        final_obs: the observation reached by this step, before any auto-reset.
        info: extra per-step arrays added by wrappers (e.g. ``EpisodeStats`` adds
            ``"episode_return"`` and ``"episode_length"``, valid where ``done``).
    """

    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_obs: Obs
    info: dict = struct.field(default_factory=dict)

    @property
    def done(self) -> jax.Array:
        return jnp.logical_or(self.terminated, self.truncated)


@dataclasses.dataclass(frozen=True)
class Env:
    """Base class of environments and wrappers (frozen dataclasses, so hashable).

    Subclasses implement ``default_params``, ``reset``, ``step``,
    ``observation_space`` and ``action_space``.
    """

    @property
    def name(self) -> str:
        return type(self).__name__

    def default_params(self) -> EnvParams:
        raise NotImplementedError

    def reset(self, key: jax.Array, params: EnvParams) -> tuple[Obs, EnvState]:
        raise NotImplementedError

    def step(
        self, key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams
    ) -> tuple[Obs, EnvState, Step]:
        raise NotImplementedError

    def observation_space(self, params: EnvParams) -> Space:
        raise NotImplementedError

    def action_space(self, params: EnvParams) -> Space:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Wrapper(Env):
    """An env that delegates everything it does not override to ``env``."""

    env: Env

    @property
    def name(self) -> str:
        return self.env.name

    def default_params(self) -> EnvParams:
        return self.env.default_params()

    def reset(self, key, params):
        return self.env.reset(key, params)

    def step(self, key, state, action, params):
        return self.env.step(key, state, action, params)

    def observation_space(self, params):
        return self.env.observation_space(params)

    def action_space(self, params):
        return self.env.action_space(params)

    def unwrapped(self) -> Env:
        env = self.env
        while isinstance(env, Wrapper):
            env = env.env
        return env


def check_int(name: str, value: Any, minimum: int) -> None:
    """ConfigError unless ``value`` is an integer (not a bool) of at least ``minimum``: an
    env's size or step-count setting, checked before anything compiles."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
