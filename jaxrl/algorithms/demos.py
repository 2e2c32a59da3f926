"""Recorded episodes: expert demonstrations for imitation learning (GAIL, behavioural
cloning) and datasets of transitions for offline RL (CQL).

A :class:`Demos` holds state-action pairs ``obs [M, *obs_shape]``, ``action [M, ...]`` of
complete episodes, in the raw observation space of the env (no normalisation), and, when
recorded (:func:`record` always does), each pair's ``reward``, ``next_obs``,
``terminated`` and ``last``: the transitions offline RL learns from
(:meth:`Demos.transitions`), and the episodes' ends that return-conditioned sequence models
need (:meth:`Demos.episodes`).

* :func:`record` plays any policy that :mod:`jaxrl.runner.evaluate` can run (a trained
  algorithm's parameters, or a scripted ``policy``) for ``E`` whole episodes and keeps
  every step up to each episode's end; it also returns the episodes' returns.
* :func:`save` writes an ``.npz`` atomically; :func:`load` reads one back and raises
  ``ConfigError`` for a missing, corrupt or malformed file; :func:`check_fits` raises it
  for pairs that do not match an env's spaces; :func:`load_for` does both for a Config's
  ``demos`` path (and :func:`required` says who needs one when it is empty).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.envs.wrappers import clip_to_space
from jaxrl.errors import ConfigError
from jaxrl.logger.writers import atomic_write_bytes
from jaxrl.runner import evaluate

DEFAULT_MAX_STEPS = 1000  # steps recorded per episode at most (the rollout's static length)


TRANSITION_FIELDS = ("reward", "next_obs", "terminated")
EPISODE_FIELDS = ("reward", "last")
OPTIONAL_FIELDS = ("reward", "next_obs", "terminated", "last")


class Demos(struct.PyTreeNode):
    """State-action pairs: ``obs [M, *obs_shape]`` float32, ``action [M]`` int32 (Discrete)
    or ``[M, A]`` float32 (Box, in the env's own bounds); optionally the rest of each
    transition: ``reward [M]`` float32, ``next_obs [M, *obs_shape]`` float32 (the
    observation the step reached, also at an episode's end), ``terminated [M]`` bool and
    ``last [M]`` bool (the step ends its episode: terminated or truncated)."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array | None = None
    next_obs: jax.Array | None = None
    terminated: jax.Array | None = None
    last: jax.Array | None = None

    @property
    def size(self) -> int:
        return int(self.obs.shape[0])

    def pairs(self) -> Demos:
        """Only the state-action pairs (what imitation learns from)."""
        return Demos(self.obs, self.action)

    def transitions(self, who: str) -> Demos:
        """``self``, or a ConfigError saying that ``who`` needs the rewards, next
        observations and terminations that this file lacks."""
        if any(getattr(self, name) is None for name in TRANSITION_FIELDS):
            raise ConfigError(
                f"{who} needs transitions (reward, next_obs, terminated): record the "
                "dataset with jaxrl.algorithms.demos.record, which stores them"
            )
        return self

    def episodes(self, who: str) -> Demos:
        """``self``, or a ConfigError saying that ``who`` needs the rewards and episode ends
        (``last``) that this file lacks."""
        if any(getattr(self, name) is None for name in EPISODE_FIELDS):
            raise ConfigError(
                f"{who} needs whole episodes (reward, last): record the dataset with "
                "jaxrl.algorithms.demos.record, which stores them"
            )
        return self


def record(
    algo: ModuleType | Any,
    cfg: Any,
    env: Env,
    params: Any,
    key: jax.Array,
    num_episodes: int,
    *,
    deterministic: bool = True,
    env_params: Any = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    obs_stats: Any = None,
    hp: Any = None,
) -> tuple[Demos, np.ndarray]:
    """``(demos, returns [num_episodes])``: every step of ``num_episodes`` episodes.

    ``algo`` is anything :func:`jaxrl.runner.evaluate.policy_fn` can act with (an algorithm
    module, or an object with a ``policy(cfg, env, params, obs, key, deterministic, hp)``).
    Episode ``i`` resets with ``split(key_reset, num_episodes)[i]``. An episode still
    running after ``max_steps`` steps is a ``ConfigError`` (raise ``max_steps``).
    ``obs_stats`` normalises what the policy sees (an expert trained on normalised
    observations); the stored observations are the env's own, and Box actions are stored
    clipped to the bounds, as the env ran them. ``hp``: the run's HParams, for policies
    that need them (a deterministic actor's stochastic policy).
    """
    env_params = env.default_params() if env_params is None else env_params
    act = evaluate.policy_fn(algo, cfg, env, deterministic, hp)
    observe = evaluate.observer(env, obs_stats)
    key_reset, key = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(key_reset, num_episodes), env_params
    )
    carry0 = evaluate.policy_carry(algo, cfg, num_episodes)
    alive = jnp.ones((num_episodes,), bool)

    def step(carry, key):
        state, obs, policy_carry, alive, ret = carry
        key_act, key_env = jax.random.split(key)
        policy_carry, action = act(params, policy_carry, observe(obs), key_act)
        action = executed_action(env, action, env_params)
        next_obs, state, out = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(key_env, num_episodes), state, action, env_params
        )
        reward = out.reward.astype(jnp.float32)
        ret = ret + jnp.where(alive, reward, 0.0)
        new_alive = jnp.logical_and(alive, jnp.logical_not(out.done))
        kept = (obs, action, reward, next_obs, out.terminated, out.done, alive)
        return (state, next_obs, policy_carry, new_alive, ret), kept

    @jax.jit
    def rollout(key, state, obs, carry0, alive):
        init = (state, obs, carry0, alive, jnp.zeros((num_episodes,), jnp.float32))
        (_, _, _, alive, ret), xs = jax.lax.scan(step, init, jax.random.split(key, max_steps))
        return alive, ret, xs

    still_running, returns, steps = rollout(key, state, obs, carry0, alive)
    if bool(jnp.any(still_running)):
        raise ConfigError(f"an episode ran past max_steps={max_steps}; raise max_steps")
    obs_t, action_t, reward_t, next_obs_t, terminated_t, last_t, alive_t = steps
    # [T, E, ...] -> episode-major [E, T, ...], then the steps each episode lived
    keep = np.asarray(alive_t).T.reshape(-1)

    def flat(x):
        return jnp.asarray(np.asarray(jnp.swapaxes(x, 0, 1)).reshape(-1, *x.shape[2:])[keep])

    demos = Demos(
        flat(obs_t).astype(jnp.float32),
        flat(action_t),
        flat(reward_t),
        flat(next_obs_t).astype(jnp.float32),
        flat(terminated_t).astype(bool),
        flat(last_t).astype(bool),
    )
    return demos, np.asarray(returns)


def episode_bounds(last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lengths)`` of the episodes in a flat dataset from its ``last [M]`` flags;
    ConfigError if the final step does not end an episode."""
    last = np.asarray(last, bool)
    if not last[-1]:
        raise ConfigError("the dataset's final step does not end an episode (last is False)")
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return starts, ends - starts + 1


def best_episodes(demos: Demos, fraction: float) -> Demos:
    """The ``ceil(fraction * E)`` episodes of ``demos`` with the highest returns, in their
    recorded order (the "%BC" baseline's data). Needs whole episodes (``reward``, ``last``);
    ConfigError for a ``fraction`` outside ``(0, 1]``."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    demos.episodes("best_episodes")
    starts, lengths = episode_bounds(np.asarray(demos.last))
    returns = np.add.reduceat(np.asarray(demos.reward, np.float64), starts)
    kept = np.sort(np.argsort(-returns, kind="stable")[: int(np.ceil(fraction * starts.size))])
    rows = np.concatenate([np.arange(starts[i], starts[i] + lengths[i]) for i in kept])
    return jax.tree.map(lambda x: x[rows], demos)


def executed_action(env: Env, action: jax.Array, env_params: Any = None) -> jax.Array:
    """Box actions ``[..., A]`` clipped to the env's bounds (what ``ClipAction`` runs);
    other actions unchanged."""
    space = env.action_space(env.default_params() if env_params is None else env_params)
    return clip_to_space(space, action)


def save(path: str | Path, demos: Demos) -> None:
    """Writes ``demos`` to ``path`` (``.npz`` with ``obs``, ``action`` and whichever
    optional fields it has), atomically."""
    fields = ("obs", "action", *OPTIONAL_FIELDS)
    arrays = {f: np.asarray(getattr(demos, f)) for f in fields if getattr(demos, f) is not None}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def required(path: str, who: str) -> str:
    """``path`` (a Config's ``demos``), or a ConfigError saying that ``who`` needs it."""
    if not path:
        raise ConfigError(
            f"{who} needs demonstrations: demos=<path of an .npz from jaxrl.algorithms.demos.save>"
        )
    return path


def load(path: str | Path) -> Demos:
    """Reads :func:`save`'s file; ``ConfigError`` if it is missing, corrupt or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"demonstrations file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ConfigError(
            f"demonstrations file {str(path)!r} is not a readable .npz: {err}"
        ) from None
    missing = {"obs", "action"} - set(arrays)
    if missing:
        raise ConfigError(f"demonstrations file {str(path)!r} lacks {sorted(missing)}")
    obs, action = arrays["obs"], arrays["action"]
    if obs.ndim < 1 or action.ndim < 1 or obs.shape[0] != action.shape[0] or obs.shape[0] == 0:
        raise ConfigError(
            f"demonstrations file {str(path)!r}: obs {obs.shape} and action {action.shape} "
            "must hold the same number (>= 1) of pairs"
        )
    extra = {f: arrays[f] for f in OPTIONAL_FIELDS if f in arrays}
    for name, x in extra.items():
        if x.ndim < 1 or x.shape[0] != obs.shape[0]:
            raise ConfigError(
                f"demonstrations file {str(path)!r}: {name} {x.shape} must hold one entry "
                f"per pair ({obs.shape[0]})"
            )
    if "next_obs" in extra and extra["next_obs"].shape != obs.shape:
        raise ConfigError(
            f"demonstrations file {str(path)!r}: next_obs {extra['next_obs'].shape} must "
            f"have obs's shape {obs.shape}"
        )
    dtypes = {"reward": jnp.float32, "next_obs": jnp.float32, "terminated": bool, "last": bool}
    extra = {f: jnp.asarray(x, dtypes[f]) for f, x in extra.items()}
    return Demos(jnp.asarray(obs, jnp.float32), jnp.asarray(action), **extra)


def load_for(path: str, who: str, env: Env, env_params: Any = None) -> Demos:
    """:func:`load` the file of a Config's ``demos`` (required by ``who``), then
    :func:`check_fits` it to ``env``."""
    return check_fits(load(required(path, who)), env, env_params)


def check_fits(demos: Demos, env: Env, env_params: Any = None) -> Demos:
    """``demos`` with actions cast for ``env`` (int32 or float32); ``ConfigError`` if the
    observation or action shapes do not match ``env``'s spaces."""
    env_params = env.default_params() if env_params is None else env_params
    obs_shape = tuple(env.observation_space(env_params).shape)
    space = env.action_space(env_params)
    if tuple(demos.obs.shape[1:]) != obs_shape:
        raise ConfigError(
            f"demonstration observations have shape {tuple(demos.obs.shape[1:])}; "
            f"{env.name}'s have {obs_shape}"
        )
    if isinstance(space, spaces.Discrete):
        want, dtype = (), jnp.int32
    else:
        want, dtype = tuple(space.shape), jnp.float32
    if tuple(demos.action.shape[1:]) != want:
        raise ConfigError(
            f"demonstration actions have shape {tuple(demos.action.shape[1:])}; "
            f"{env.name}'s have {want}"
        )
    return demos.replace(action=demos.action.astype(dtype))
