"""Adapter from brax environments to the jaxrl :class:`~jaxrl.envs.base.Env` protocol.

A :class:`BraxEnv` is a brax env from ``brax.envs`` wrapped only in brax's
``EpisodeWrapper`` (the time limit), never in its ``AutoResetWrapper``: the raw
adapter does not reset (``jaxrl.envs.wrappers.AutoReset`` does, for every backend).

Conventions:
  * ``EpisodeWrapper`` sets ``done`` at the time limit and puts the cut in
    ``info["truncation"]`` (1 only when the env did not also end for real), so
    ``truncated = info["truncation"]`` and ``terminated = done and not truncated``.
  * The env state is brax's own ``brax.envs.State`` pytree. Brax's ``step`` is
    deterministic (only ``reset`` draws randomness), so the ``step`` key is unused and
    no key is carried in the state.
  * Brax envs have no traced task parameters: :class:`BraxParams` is an empty pytree.
  * Actions live in ``Box(-1, 1, (action_size,))``; observations in an unbounded Box.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from brax import envs as brax_envs
from brax.envs.wrappers import training as brax_training
from flax import struct

from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Step


class BraxParams(struct.PyTreeNode):
    """Brax envs take no traced parameters; an empty pytree keeps the protocol uniform."""


def env_names() -> tuple[str, ...]:
    """The names of every environment registered with brax (e.g. ``"ant"``)."""
    # brax has no public listing; ``_envs`` is the registry that ``get_environment`` reads.
    return tuple(sorted(brax_envs._envs))


def _brax_numpy_semantics():
    """Brax's physics relies on implicit rank promotion, which jaxrl's tests forbid.

    The option is read while tracing, so this scopes the exemption to brax's own code.
    """
    return jax.numpy_rank_promotion("allow")


@functools.cache
def _brax_env(
    env_name: str,
    backend: str,
    episode_length: int,
    action_repeat: int,
    env_kwargs: tuple[tuple[str, Any], ...],
):
    """Builds (once per static configuration) the brax env with only the time limit.

    The first call may happen while tracing ``reset``/``step``; brax builds its ``System``
    with jnp ops, which would then be cached as leaked tracers, so evaluate them eagerly.
    """
    with jax.ensure_compile_time_eval():
        env = brax_envs.get_environment(env_name, backend=backend, **dict(env_kwargs))
        return brax_training.EpisodeWrapper(env, episode_length, action_repeat)


@dataclasses.dataclass(frozen=True)
class BraxEnv(Env):
    """A brax environment; hashable by its static options, so equal envs share compiled code.

    Attributes:
        env_name: a brax registry name, e.g. ``"ant"`` or ``"inverted_pendulum"``.
        backend: brax physics pipeline: ``"generalized"``, ``"positional"``, ``"spring"``
            or ``"mjx"``.
        episode_length: time limit in env steps (counting action repeats); reaching it
            reports ``truncated``.
        action_repeat: physics steps per ``step`` call (rewards are summed).
        env_kwargs: extra constructor options of the brax env as sorted ``(key, value)``
            pairs (tuples keep the env hashable).
    """

    env_name: str
    backend: str = "generalized"
    episode_length: int = 1000
    action_repeat: int = 1
    env_kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def brax_env(self):
        """The underlying brax env (``EpisodeWrapper`` around the registry env)."""
        return _brax_env(
            self.env_name, self.backend, self.episode_length, self.action_repeat, self.env_kwargs
        )

    @property
    def name(self) -> str:
        return f"brax/{self.env_name}"

    def default_params(self) -> BraxParams:
        return BraxParams()

    def reset(self, key: jax.Array, params: BraxParams) -> tuple[jax.Array, Any]:
        """Starts an episode.

        Args:
            key: a PRNG key (typed ``jax.random.key`` or raw ``uint32[2]``).
            params: unused (brax envs have none).

        Returns:
            ``(obs [obs_size], state)`` with ``state`` a ``brax.envs.State``.
        """
        del params
        with _brax_numpy_semantics():
            state = self.brax_env.reset(key)
        return state.obs, state

    def step(
        self, key: jax.Array, state: Any, action: jax.Array, params: BraxParams
    ) -> tuple[jax.Array, Any, Step]:
        """Advances one (repeated) action; never resets.

        Args:
            key: unused: brax steps are deterministic.
            state: the ``brax.envs.State`` from ``reset`` or a previous ``step``.
            action: ``[action_size]`` float action in ``[-1, 1]``.
            params: unused.

        Returns:
            ``(obs [obs_size], state, Step)``; ``Step.final_obs`` is ``obs``.
        """
        del key, params
        with _brax_numpy_semantics():
            state = self.brax_env.step(state, action)
        truncated = state.info["truncation"].astype(bool)
        terminated = jnp.logical_and(state.done.astype(bool), jnp.logical_not(truncated))
        step = Step(
            reward=jnp.asarray(state.reward, jnp.float32),
            terminated=terminated,
            truncated=truncated,
            final_obs=state.obs,
        )
        return state.obs, state, step

    def observation_space(self, params: BraxParams) -> spaces.Box:
        return spaces.Box(-float("inf"), float("inf"), _obs_shape(self))

    def action_space(self, params: BraxParams) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (self.brax_env.action_size,))


@functools.cache
def _obs_shape(env: BraxEnv) -> tuple[int, ...]:
    """The obs shape, from an abstract ``reset`` (brax's ``observation_size`` runs it eagerly)."""
    obs, _ = jax.eval_shape(env.reset, jax.random.key(0), env.default_params())
    if not isinstance(obs, jax.ShapeDtypeStruct):
        raise NotImplementedError("brax dict observations are not supported")
    return tuple(obs.shape)


def make(
    name: str,
    *,
    backend: str = "generalized",
    episode_length: int = 1000,
    action_repeat: int = 1,
    **env_kwargs: Any,
) -> BraxEnv:
    """Returns the :class:`BraxEnv` for a brax registry name (without the ``brax/`` prefix).

    Args:
        name: brax env name, e.g. ``"ant"``.
        backend: brax physics pipeline (see :class:`BraxEnv`).
        episode_length: time limit in env steps.
        action_repeat: physics steps per ``step`` call.
        **env_kwargs: passed to the brax env constructor; values must be hashable.

    Raises:
        ValueError: for an unknown name; the message lists the valid brax names.
    """
    valid = env_names()
    if name not in valid:
        raise ValueError(
            f"unknown brax environment {name!r}; valid names: "
            + ", ".join(f"brax/{n}" for n in valid)
        )
    return BraxEnv(
        name, backend, int(episode_length), int(action_repeat), tuple(sorted(env_kwargs.items()))
    )
