"""envpool inside ``jit``: its C++ pools stepped from a compiled program through XLA FFI.

envpool (1.x) exposes ``pool.xla() -> (handle, recv, send, step)``: ``send``/``recv`` are
XLA custom calls, registered with ``jax.ffi.register_ffi_target`` and called with
``jax.ffi.ffi_call``, that step the whole C++ pool on the host. The pool's state never
enters JAX: an opaque ``handle`` (a ``uint8`` array holding a pointer) is threaded
through the program to order the calls. :class:`EnvpoolXlaEnv` wraps that as a jaxrl
:class:`~jaxrl.envs.base.Env`, so a whole PPO run (rollouts, GAE, SGD) is one ``jit`` of
the algorithm's own functions: ``ppo.init``, ``ppo.update`` and ``ppo.train`` take it as
they take any env (``wrappers.make_vec_env`` sees ``batched`` and adds no ``VecEnv``), with
``cfg.num_envs`` equal to the pool's size.

**Already vectorised.** One :class:`EnvpoolXlaEnv` *is* ``num_envs`` envs: ``reset`` and
``step`` take and return ``[N, ...]`` arrays with the meaning of jaxrl's
``make_vec_env`` stack (``AutoReset`` + ``EpisodeStats`` + ``VecEnv``): ``terminated``
apart from ``truncated``, same-step auto-reset (``obs`` is the next episode's first
observation where one ended, ``final_obs`` the one it ended on), the finished episode's
``episode_return``/``episode_length`` in ``Step.info``. Its spaces are one env's, as for
every jaxrl env. It is not wrapped in ``VecEnv`` (``vmap``) or ``AutoReset``.

**Auto-reset.** envpool resets one step late ("next-step" auto-reset: the step after a done
ignores that env's action and returns the reset observation with reward 0), and its XLA
interface has ``send`` and ``recv`` but no ``reset``. As the host adapter
(:mod:`jaxrl.envs.envpool`) does, every step that ends an episode is followed by
``pool.reset(done_ids)`` for those envs, here through one ``jax.experimental.io_callback``
run under ``lax.cond`` only on steps where some episode ended; the handle passes through
the callback so that it stays ordered between the custom calls. Steps without a finished
episode run no Python. For the same seed and actions the stream equals the host adapter's,
value for value (``tests/envs/test_envpool_xla.py``).

**Limits** (the price of state outside JAX):

* **No vmap.** One pool cannot be vmapped over seeds or hyperparameters (a run axis
  ``R > 1``, ``num_seeds > 1``, the runner's vmapped runs, ``data_shards > 1``):
  ``reset``/``step`` raise :class:`EnvpoolVmapError` under ``jax.vmap``. Run one pool
  (one process, or one ``jit`` per pool) per seed.
* **State is single-use.** The pool moves on whenever the compiled program runs; a
  ``State`` is only valid as the newest one (re-running from an older ``State`` or a restored
  checkpoint continues the pool's episodes, not the saved ones). Resetting (``reset``) is
  always fine.
* **Bound to one pool.** The custom-call targets (and the reset callback) name one pool,
  so an env hashes by identity: two ``make`` calls give two envs and two compilations.
* Sync pools only (``batch_size == num_envs``); no ``jax.grad`` through ``step``; the
  envpool seed is fixed at :func:`make` (``reset``'s key is ignored).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.custom_batching import custom_vmap
from jax.experimental import io_callback

from jaxrl.envs import envpool as host_envpool
from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Step

_VMAP_MESSAGE = (
    "an envpool XLA env cannot be vmapped: its state lives in one C++ pool outside JAX "
    "(a handle threaded through the program), so a run axis of several seeds or "
    "hyperparameter settings (num_seeds > 1, sweeps) has no batched env to step. Run one "
    "pool per seed (separate jit calls or processes), or use an in-JAX env (gymnax, brax)."
)


class EnvpoolVmapError(ValueError):
    """Raised when an :class:`EnvpoolXlaEnv` (or PPO on it) is asked to vmap over runs."""


def _no_vmap(fn):
    """``fn`` unchanged, except that calling it under ``jax.vmap`` raises EnvpoolVmapError."""
    wrapped = custom_vmap(fn)

    @wrapped.def_vmap
    def _rule(axis_size, in_batched, *args):
        del axis_size, in_batched, args
        raise EnvpoolVmapError(_VMAP_MESSAGE)

    return wrapped


@functools.cache
def unavailable_reason(task: str = "CartPole-v1") -> str | None:
    """``None`` where envpool's XLA interface steps ``task`` inside ``jit`` here, else why not.

    Builds a one-env pool, calls ``pool.xla()`` and runs one jitted step; the first error's
    type and message is the reason (e.g. envpool missing, or an XLA/FFI incompatibility).
    """
    try:
        import envpool
    except ImportError as err:
        return f"envpool is not importable: {err}"
    try:
        pool = envpool.make(task, env_type="gymnasium", num_envs=1, seed=0)
        handle, _, _, step = pool.xla()
        pool.reset()
        dtype = jax.dtypes.canonicalize_dtype(pool.action_space.dtype)
        action = jnp.zeros((1, *pool.action_space.shape), dtype)
        jax.block_until_ready(jax.jit(step)(handle, action))
        pool.close()
    except Exception as err:  # noqa: BLE001  (the reason is the report)
        return f"{type(err).__name__}: {err}"
    return None


class EnvpoolXlaState(struct.PyTreeNode):
    """What JAX holds of the pool: the handle and the running episodes' statistics.

    Attributes:
        handle: ``uint8 [H]`` envpool's opaque handle of the pool (a pointer's bytes).
        episode_return: ``[N]`` undiscounted return of each running episode so far.
        episode_length: ``[N]`` int32 steps of each running episode so far.
    """

    handle: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class EnvpoolXlaEnv(Env):
    """``num_envs`` envpool envs as one batched, jit-able jaxrl env (see module docstring).

    Build it with :func:`make`. Hashes and compares by identity: it is bound to one pool.

    Attributes:
        task: envpool task id, e.g. ``"CartPole-v1"``.
        num_envs: ``N``, the batch size of every array.
        host: the host adapter whose pool this env steps (also used for resets).
    """

    task: str
    num_envs: int
    host: host_envpool.EnvpoolEnv = dataclasses.field(repr=False)
    xla_step: Any = dataclasses.field(repr=False)
    handle: np.ndarray = dataclasses.field(repr=False)

    __eq__ = object.__eq__
    __hash__ = object.__hash__
    batched = True  # already N auto-resetting envs: wrappers.make_vec_env adds no VecEnv

    @property
    def name(self) -> str:
        return f"envpool_xla/{self.task}"

    def default_params(self) -> None:
        """envpool tasks have no traced parameters."""
        return None

    def observation_space(self, params: None = None) -> spaces.Space:
        """One env's observation space."""
        return self.host.observation_space(params)

    def action_space(self, params: None = None) -> spaces.Space:
        """One env's action space."""
        return self.host.action_space(params)

    def _obs_spec(self) -> jax.ShapeDtypeStruct:
        space = self.host.pool.observation_space
        dtype = jax.dtypes.canonicalize_dtype(space.dtype)  # e.g. float64 -> float32 (no x64)
        return jax.ShapeDtypeStruct((self.num_envs, *space.shape), dtype)

    def _handle_spec(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.handle.shape, self.handle.dtype)

    # Host halves, run by io_callback. Each returns the handle it got, unchanged, so that
    # the callback sits between the custom calls that consume the handle.
    def _host_reset_all(self, handle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(handle), self.host.reset().astype(self._obs_spec().dtype)

    def _host_reset_done(
        self, handle: np.ndarray, done: np.ndarray, obs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        obs = np.array(obs)  # a writable copy, in the callback's dtype
        obs_reset, info = self.host.pool.reset(np.flatnonzero(done).astype(np.int32))
        obs[info["env_id"]] = obs_reset
        return np.asarray(handle), obs

    def reset(self, key: jax.Array, params: None = None) -> tuple[jax.Array, EnvpoolXlaState]:
        """Resets every env of the pool (on the host, through a callback).

        Args:
            key: ignored: envpool's seed was fixed at :func:`make`.
            params: ``None``.

        Returns:
            ``obs [N, *obs_shape]`` and the :class:`EnvpoolXlaState`.
        """
        del key, params
        specs = (self._handle_spec(), self._obs_spec())
        reset = _no_vmap(lambda h: io_callback(self._host_reset_all, specs, h))
        handle, obs = reset(jnp.asarray(self.handle))
        zeros = jnp.zeros((self.num_envs,), jnp.float32)
        return obs, EnvpoolXlaState(handle, zeros, jnp.zeros((self.num_envs,), jnp.int32))

    def step(
        self, key: jax.Array, state: EnvpoolXlaState, action: jax.Array, params: None = None
    ) -> tuple[jax.Array, EnvpoolXlaState, Step]:
        """Steps all ``N`` envs with ``action [N, ...]`` and resets those that finished.

        Continuous actions are clipped to the action space's bounds first (``ClipAction``).

        Returns:
            ``(obs [N, ...], state, Step)``; ``Step`` fields are ``[N]`` (``final_obs``
            ``[N, ...]``) and ``Step.info`` holds ``episode_return``/``episode_length``,
            valid where ``done`` (0 elsewhere).
        """
        del key, params
        space = self.action_space()
        if isinstance(space, spaces.Box):
            low, high = space.bounds()
            action = jnp.clip(action, low, high)
        action = action.astype(jax.dtypes.canonicalize_dtype(self.host.pool.action_space.dtype))
        handle, obs, reward, terminated, truncated = _no_vmap(self._send_recv)(state.handle, action)
        done = terminated | truncated
        ret = state.episode_return + reward
        length = state.episode_length + 1
        info = {
            "episode_return": jnp.where(done, ret, 0.0),
            "episode_length": jnp.where(done, length, 0),
        }
        step = Step(reward, terminated, truncated, final_obs=obs, info=info)
        next_obs = obs
        handle, next_obs = jax.lax.cond(
            jnp.any(done),
            lambda h, d, o: io_callback(
                self._host_reset_done, (self._handle_spec(), self._obs_spec()), h, d, o
            ),
            lambda h, d, o: (h, o),
            handle,
            done,
            obs,
        )
        state = EnvpoolXlaState(
            handle, jnp.where(done, 0.0, ret), jnp.where(done, 0, length).astype(jnp.int32)
        )
        return next_obs, state, step

    def _send_recv(self, handle: jax.Array, action: jax.Array):
        """envpool's ``send`` + ``recv`` custom calls; rows put in env-id order."""
        handle, (obs, reward, terminated, truncated, info) = self.xla_step(handle, action)
        ids = info["env_id"]

        def by_id(x):
            return jnp.zeros_like(x).at[ids].set(x)

        terminated = by_id(terminated).astype(bool)
        # envpool may flag both at once; a real end wins, as in every jaxrl adapter.
        truncated = by_id(truncated).astype(bool) & ~terminated
        return handle, by_id(obs), by_id(reward).astype(jnp.float32), terminated, truncated


def make(task: str, num_envs: int = 1, seed: int = 0, **kwargs: Any) -> EnvpoolXlaEnv:
    """Builds an :class:`EnvpoolXlaEnv` of ``num_envs`` envs of envpool ``task``.

    Args:
        task: envpool task id (without an ``envpool/`` prefix), e.g. ``"CartPole-v1"``.
        num_envs: ``N``.
        seed: envpool seed (env ``i`` uses ``seed + i``, as in :mod:`jaxrl.envs.envpool`).
        **kwargs: other ``envpool.make`` options (``max_episode_steps``, ``num_threads``,
            ...); ``batch_size`` other than ``num_envs`` (async pools) is rejected.

    Raises:
        ValueError: unknown task (lists the valid ids) or an async ``batch_size``.
        RuntimeError: envpool's XLA interface is unavailable (the message says why).
    """
    if kwargs.get("batch_size", num_envs) not in (0, num_envs):
        raise ValueError(
            f"envpool_xla steps every env together: batch_size must equal num_envs "
            f"({num_envs}), got {kwargs['batch_size']}"
        )
    host = host_envpool.make(task, num_envs=num_envs, seed=seed, **kwargs)
    try:
        handle, _, _, xla_step = host.pool.xla()
    except Exception as err:
        raise RuntimeError(f"envpool's XLA interface is unavailable: {err}") from err
    return EnvpoolXlaEnv(task, int(num_envs), host, xla_step, np.asarray(handle))
