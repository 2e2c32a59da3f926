"""Adapter from gymnax 1.x environments to the jaxrl :class:`~jaxrl.envs.base.Env` protocol.

gymnax 1.0 reports termination and truncation separately, and its own ``step``
auto-resets. We call its ``step_env``/``reset_env`` instead, so that the raw
adapter never resets (``AutoReset`` does, once, for every backend) and the time
limit comes from gymnax's ``is_truncated``.

One gymnax port reports as a time limit what the original task ends by termination:
bsuite's DiscountingChain ends every episode after 100 steps with discount 0, and a
learner that bootstraps there adds a value that the task does not have. For the ids in
:data:`ENDS_BY_TERMINATION` the adapter reports that end as ``terminated``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
from typing import Any

import gymnax
import jax
import jax.numpy as jnp
from gymnax.environments import spaces as gymnax_spaces

from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Step

_GYMNAX_VERSION = importlib.metadata.version("gymnax")
if not _GYMNAX_VERSION.startswith("1."):  # the step API we adapt changed in 1.0
    raise ImportError(f"jaxrl needs gymnax 1.x, found {_GYMNAX_VERSION}")

ENV_IDS: tuple[str, ...] = tuple(gymnax.registered_envs)
# gymnax ids whose episode limit is the task's own end (bsuite: ``dm_env.termination``)
ENDS_BY_TERMINATION: frozenset[str] = frozenset({"DiscountingChain-bsuite"})


@functools.cache
def _gymnax_env(env_id: str, env_kwargs: tuple[tuple[str, Any], ...] = ()):
    # Some gymnax envs build arrays in __init__; under a jit trace those would be cached
    # tracers, so construct eagerly even when first used inside jit.
    with jax.ensure_compile_time_eval():
        try:
            env, _ = gymnax.make(env_id, **dict(env_kwargs))
        except TypeError as err:
            raise ValueError(
                f"gymnax env {env_id!r} does not take {dict(env_kwargs)}: {err}"
            ) from None
    return env


@functools.cache
def _spaces(
    env_id: str, env_kwargs: tuple[tuple[str, Any], ...] = ()
) -> tuple[spaces.Space, spaces.Space]:
    """(observation, action) spaces at the default params, evaluated eagerly even under jit."""
    env = _gymnax_env(env_id, env_kwargs)
    with jax.ensure_compile_time_eval():
        params = env.default_params
        return (
            _convert_space(env.observation_space(params)),
            _convert_space(env.action_space(params)),
        )


def _convert_space(space) -> spaces.Space:
    if isinstance(space, gymnax_spaces.Discrete):
        return spaces.Discrete(int(space.n))
    if isinstance(space, gymnax_spaces.Box):
        return spaces.from_bounds(space.low, space.high, space.shape, space.dtype)
    raise NotImplementedError(f"gymnax space {type(space).__name__} is not supported")


@dataclasses.dataclass(frozen=True)
class GymnaxEnv(Env):
    """A gymnax environment by id and constructor arguments (``env_kwargs``, sorted
    ``(name, value)`` pairs, e.g. ``(("size", 12),)`` for ``DeepSea-bsuite``); hashable, so
    equal envs share compiled code. ``jaxrl.envs.make("DeepSea-bsuite", size=12)`` builds
    one."""

    env_id: str
    env_kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def gymnax_env(self):
        return _gymnax_env(self.env_id, self.env_kwargs)

    @property
    def name(self) -> str:
        return self.env_id

    def default_params(self):
        return self.gymnax_env.default_params

    def reset(self, key, params):
        return self.gymnax_env.reset_env(key, params)

    def step(self, key, state, action, params):
        env = self.gymnax_env
        obs, state, reward, terminated, _ = env.step_env(key, state, action, params)
        at_limit = env.is_truncated(state, params)
        if self.env_id in ENDS_BY_TERMINATION:
            terminated = jnp.logical_or(terminated, at_limit)
        truncated = jnp.logical_and(at_limit, jnp.logical_not(terminated))
        step = Step(
            reward=jnp.asarray(reward, jnp.float32),
            terminated=jnp.asarray(terminated, bool),
            truncated=jnp.asarray(truncated, bool),
            final_obs=obs,
        )
        return obs, state, step

    def observation_space(self, params):
        """Static space at the default params (spaces never depend on traced params)."""
        del params
        return _spaces(self.env_id, self.env_kwargs)[0]

    def action_space(self, params):
        del params
        return _spaces(self.env_id, self.env_kwargs)[1]
