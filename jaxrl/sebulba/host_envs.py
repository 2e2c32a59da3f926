"""Host environments for the Sebulba actor-learner: one batched numpy interface, two backends.

Environments that are not written in JAX run on the host, ``N`` at a time, and are stepped by
the actor threads of :mod:`jaxrl.sebulba.actor`. Every backend gives the same arrays with the
meaning of a jaxrl ``AutoReset(VecEnv(...))`` step (:class:`jaxrl.envs.base.Step`), so the
learner cannot tell them from each other or from an in-JAX rollout:

* **same-step auto-reset**: where an episode ended, ``obs`` is already the first observation
  of the next episode and ``final_obs`` the observation the episode ended on (elsewhere
  ``final_obs == obs``);
* ``terminated`` (a real end: no bootstrap) and ``truncated`` (a time limit: bootstrap from
  ``final_obs``) are separate and never both set (a real end wins);
* ``episode_return`` / ``episode_length`` are the finished episode's where it ended, 0
  elsewhere (:class:`jaxrl.envs.wrappers` semantics).

Backends, chosen by the id's prefix (:func:`make`):

* ``envpool/<task>``: envpool's C++ pool through :class:`jaxrl.envs.envpool.EnvpoolEnv`,
  which already undoes envpool's next-step reset;
* ``gymnasium/<id>``: any registered Gymnasium id, as a ``gymnasium.vector`` env in
  ``AutoresetMode.SAME_STEP`` (``vectorization_mode="sync"`` by default, ``"async"`` for
  one subprocess per env).

:class:`EnvSpec` is the static, hashable view of a host env's spaces that the algorithms'
``network(cfg, env)`` functions read; it is what the jitted actor and learner close over.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from jaxrl.envs import spaces

PREFIXES = ("envpool/", "gymnasium/")


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """The spaces of one host env, shaped like a jaxrl ``Env`` for ``network(cfg, env)``.

    Attributes:
        name: the id it was made from, e.g. ``"gymnasium/CartPole-v1"``.
        obs_space: the space of one env's observation.
        act_space: the space of one env's action.
    """

    name: str
    obs_space: spaces.Space
    act_space: spaces.Space

    def default_params(self) -> None:
        """Host envs have no traced parameters."""
        return None

    def observation_space(self, params: None = None) -> spaces.Space:
        del params
        return self.obs_space

    def action_space(self, params: None = None) -> spaces.Space:
        del params
        return self.act_space


class HostStep(NamedTuple):
    """One batched host step; every field ``[N, ...]`` (see the module docstring)."""

    obs: np.ndarray  # to act on next; already reset where the episode ended
    reward: np.ndarray  # float32
    terminated: np.ndarray  # bool
    truncated: np.ndarray  # bool, never together with terminated
    final_obs: np.ndarray  # the observation this step reached, before any reset
    episode_return: np.ndarray  # float32, the finished episode's where done, else 0
    episode_length: np.ndarray  # int32, likewise


class HostEnv:
    """``num_envs`` host environments stepped in lock-step; subclasses give ``_reset``/``_step``.

    This base class keeps the running episode statistics and fixes dtypes.

    Attributes:
        name: the id it was made from.
        num_envs: ``N``.
        spec: the :class:`EnvSpec` of one env.
    """

    name: str
    num_envs: int
    spec: EnvSpec

    def __init__(self, name: str, num_envs: int, spec: EnvSpec):
        self.name, self.num_envs, self.spec = name, int(num_envs), spec
        self._return = np.zeros(self.num_envs, np.float64)
        self._length = np.zeros(self.num_envs, np.int32)
        box = isinstance(spec.act_space, spaces.Box)
        self._bounds = tuple(map(np.asarray, spec.act_space.bounds())) if box else None

    def reset(self) -> np.ndarray:
        """Resets every env; returns the first observations ``[N, *obs_shape]``."""
        self._return[:], self._length[:] = 0.0, 0
        return _obs(self._reset())

    def step(self, actions: np.ndarray) -> HostStep:
        """Steps every env once with ``actions [N, *action_shape]``, resetting finished ones."""
        obs, reward, terminated, truncated, final_obs = self._step(self._clip(actions))
        terminated = np.asarray(terminated, bool)
        truncated = np.asarray(truncated, bool) & ~terminated
        reward = np.asarray(reward, np.float32)
        done = terminated | truncated
        self._return += reward
        self._length += 1
        ep_return = np.where(done, self._return, 0.0).astype(np.float32)
        ep_length = np.where(done, self._length, 0).astype(np.int32)
        self._return[done], self._length[done] = 0.0, 0
        return HostStep(
            _obs(obs), reward, terminated, truncated, _obs(final_obs), ep_return, ep_length
        )

    def close(self) -> None:
        """Releases the backend (threads, subprocesses)."""

    def _clip(self, actions: np.ndarray) -> np.ndarray:
        """Continuous actions clipped to the action bounds, as in-JAX ``ClipAction`` does."""
        if self._bounds is None:
            return np.asarray(actions)
        return np.clip(actions, *self._bounds)

    def _reset(self) -> np.ndarray:
        raise NotImplementedError

    def _step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        """Returns ``(obs, reward, terminated, truncated, final_obs)`` with same-step reset."""
        raise NotImplementedError


def _obs(x: np.ndarray) -> np.ndarray:
    """Floating observations as float32 (JAX's default precision); others unchanged."""
    x = np.asarray(x)
    return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x


def space_from_gymnasium(space) -> spaces.Space:
    """A gymnasium ``Discrete`` (starting at 0) or ``Box`` as a :mod:`jaxrl.envs.spaces` one."""
    import gymnasium

    if isinstance(space, gymnasium.spaces.Discrete):
        if int(space.start) != 0:
            raise NotImplementedError(f"Discrete space starting at {space.start}")
        return spaces.Discrete(int(space.n))
    if isinstance(space, gymnasium.spaces.Box):
        dtype = "float32" if np.issubdtype(space.dtype, np.floating) else str(space.dtype)
        return spaces.from_bounds(space.low, space.high, space.shape, dtype)
    raise NotImplementedError(f"gymnasium space {type(space).__name__} is not supported")


class GymnasiumEnv(HostEnv):
    """A ``gymnasium.vector`` env of any registered id, auto-resetting in the same step.

    Env ``i`` is seeded ``seed + i`` at the first :meth:`reset` (gymnasium's vector seeding).
    ``vectorization_mode="async"`` runs one subprocess per env (started with ``spawn`` unless
    ``vector_kwargs`` names another ``context``); ``kwargs`` go to each env's ``make``.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int = 0,
        vectorization_mode: str = "sync",
        vector_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        import gymnasium
        from gymnasium.vector import AutoresetMode

        vector_kwargs = dict(vector_kwargs or {}, autoreset_mode=AutoresetMode.SAME_STEP)
        if vectorization_mode == "async":
            # JAX runs threads; forking a threaded process can deadlock the child.
            vector_kwargs.setdefault("context", "spawn")
        self.vec = gymnasium.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode=vectorization_mode,
            vector_kwargs=vector_kwargs,
            **kwargs,
        )
        self._seed = int(seed)
        self._action_dtype = self.vec.single_action_space.dtype
        spec = EnvSpec(
            f"gymnasium/{env_id}",
            space_from_gymnasium(self.vec.single_observation_space),
            space_from_gymnasium(self.vec.single_action_space),
        )
        super().__init__(spec.name, num_envs, spec)

    def _reset(self) -> np.ndarray:
        seed, self._seed = self._seed, None  # seed once; later resets continue the streams
        obs, _ = self.vec.reset(seed=seed)
        return obs

    def _step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        actions = np.asarray(actions, dtype=self._action_dtype)
        obs, reward, terminated, truncated, info = self.vec.step(actions)
        final_obs = np.array(obs, copy=True)
        if "_final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final_obs[i] = info["final_obs"][i]
        return obs, reward, terminated, truncated, final_obs

    def close(self) -> None:
        self.vec.close()


class EnvpoolHostEnv(HostEnv):
    """envpool via :class:`jaxrl.envs.envpool.EnvpoolEnv` (env ``i`` seeded ``seed + i``)."""

    def __init__(self, task: str, num_envs: int, seed: int = 0, **kwargs: Any):
        from jaxrl.envs import envpool as envpool_envs

        self.pool = envpool_envs.make(task, num_envs=num_envs, seed=seed, **kwargs)
        spec = EnvSpec(self.pool.name, self.pool.observation_space(), self.pool.action_space())
        super().__init__(spec.name, num_envs, spec)

    def _reset(self) -> np.ndarray:
        return self.pool.reset()

    def _step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.pool.step(actions))

    def close(self) -> None:
        self.pool.close()


def make(env_id: str, num_envs: int, seed: int = 0, **kwargs: Any) -> HostEnv:
    """Builds ``num_envs`` host envs from ``"envpool/<task>"`` or ``"gymnasium/<id>"``.

    Args:
        env_id: the backend prefix and the backend's own id, e.g. ``"envpool/CartPole-v1"``,
            ``"gymnasium/Acrobot-v1"``.
        num_envs: ``N``, stepped together.
        seed: env ``i`` is seeded ``seed + i``.
        **kwargs: passed to ``envpool.make`` or ``gymnasium.make_vec`` (e.g.
            ``vectorization_mode="async"`` for gymnasium).

    Raises:
        ValueError: for an id without a known prefix or unknown to its backend.
    """
    if env_id.startswith("envpool/"):
        return EnvpoolHostEnv(env_id.removeprefix("envpool/"), num_envs, seed, **kwargs)
    if env_id.startswith("gymnasium/"):
        import gymnasium

        name = env_id.removeprefix("gymnasium/")
        if name not in gymnasium.registry:
            raise ValueError(f"unknown gymnasium id {name!r} (from {env_id!r})")
        return GymnasiumEnv(name, num_envs, seed, **kwargs)
    raise ValueError(
        f"unknown host env {env_id!r}; use one of the prefixes {', '.join(PREFIXES)} "
        "followed by the backend's id, e.g. 'gymnasium/CartPole-v1'"
    )
