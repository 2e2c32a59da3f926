"""Host-side adapter for envpool: batched C++ environments stepped with numpy arrays.

envpool runs outside JAX, so :class:`EnvpoolEnv` does not implement the jitted
:class:`~jaxrl.envs.base.Env` protocol; ``runner/actor.py`` drives it from the host
(act on device, step here). It returns arrays with the same meaning as a jaxrl
``AutoReset(VecEnv(...))`` step, so the learner cannot tell the two apart:

  * ``terminated`` and ``truncated`` are separate (envpool's gymnasium API);
  * where an episode ended, ``obs`` is already the first obs of the next episode and
    ``final_obs`` is the obs the episode ended on (elsewhere ``final_obs == obs``).

envpool itself resets lazily ("next-step" auto-reset, gymnasium's
``AutoresetMode.NEXT_STEP``): the ``step`` after a done ignores that env's action and
returns the reset obs with reward 0 and both flags false. That dummy transition would
corrupt returns, so after every step we reset the envs that just finished, by id
(``reset(env_ids)``), and splice their fresh obs in; envpool then sees no pending
done and the next step is a real one. The reset draws from the same per-env RNG as
envpool's own auto-reset would, so for the same seed and actions the stream equals a
bare envpool's with its dummy transitions removed (``tests/envs/test_envpool.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import envpool
import gymnasium
import numpy as np

from jaxrl.envs import spaces


class EnvpoolStep(NamedTuple):
    """One batched host step; unpacks as ``obs, reward, terminated, truncated, final_obs``.

    Attributes:
        obs: ``[N, *obs_shape]`` obs to act on next (already reset where ``done``).
        reward: ``[N]`` float32 reward of this transition.
        terminated: ``[N]`` bool, the episode ended for real: do not bootstrap.
        truncated: ``[N]`` bool, a time limit cut the episode: bootstrap from ``final_obs``.
        final_obs: ``[N, *obs_shape]`` obs reached by this step, before any reset.
    """

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    final_obs: np.ndarray


def _bound(x: np.ndarray) -> float | tuple[float, ...]:
    """A hashable Box bound: a scalar when every element agrees (e.g. image obs)."""
    flat = np.asarray(x, np.float64).reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return float(flat[0])
    return tuple(float(v) for v in flat)


def convert_space(space: gymnasium.Space) -> spaces.Space:
    """Converts a gymnasium ``Discrete`` or ``Box`` space to :mod:`jaxrl.envs.spaces`."""
    if isinstance(space, gymnasium.spaces.Discrete):
        if int(space.start) != 0:
            raise NotImplementedError(f"Discrete space starting at {space.start}")
        return spaces.Discrete(int(space.n))
    if isinstance(space, gymnasium.spaces.Box):
        shape = tuple(int(s) for s in space.shape)
        return spaces.Box(_bound(space.low), _bound(space.high), shape, str(space.dtype))
    raise NotImplementedError(f"gymnasium space {type(space).__name__} is not supported")


class EnvpoolEnv:
    """``num_envs`` envpool environments stepped in lock-step on the host.

    Attributes:
        name: ``"envpool/<task>"``.
        num_envs: batch size ``N`` of every array.
        pool: the underlying envpool gymnasium env (synchronous: batch of all ``N``).
    """

    def __init__(self, task: str, num_envs: int, seed: int, **kwargs: Any):
        self.task = task
        self.num_envs = int(num_envs)
        self.pool = envpool.make(
            task, env_type="gymnasium", num_envs=self.num_envs, seed=seed, **kwargs
        )
        self._action_dtype = self.pool.action_space.dtype

    @property
    def name(self) -> str:
        return f"envpool/{self.task}"

    def default_params(self) -> None:
        """envpool tasks have no traced parameters (lets ``registry.make`` stay uniform)."""
        return None

    def observation_space(self, params: None = None) -> spaces.Space:
        """The space of one env's obs (``params`` is accepted for protocol symmetry)."""
        del params
        return convert_space(self.pool.observation_space)

    def action_space(self, params: None = None) -> spaces.Space:
        """The space of one env's action."""
        del params
        return convert_space(self.pool.action_space)

    def reset(self) -> np.ndarray:
        """Resets every env.

        Returns:
            ``[N, *obs_shape]`` first observations.
        """
        obs, info = self.pool.reset()
        return _by_env_id(obs, info["env_id"])

    def step(self, actions: np.ndarray) -> EnvpoolStep:
        """Steps every env once and resets, in place, those whose episode ended.

        Args:
            actions: ``[N, *action_shape]`` actions (cast to the action space dtype).

        Returns:
            An :class:`EnvpoolStep` with jaxrl ``Step`` semantics (see module docstring).
        """
        actions = np.asarray(actions, dtype=self._action_dtype)
        obs, reward, terminated, truncated, info = self.pool.step(actions)
        ids = info["env_id"]
        final_obs = _by_env_id(obs, ids)
        terminated = _by_env_id(terminated, ids).astype(bool)
        truncated = _by_env_id(truncated, ids).astype(bool)
        # envpool may flag both at once; a real end wins, as in jaxrl adapters.
        truncated = truncated & ~terminated
        obs = final_obs.copy()
        done_ids = np.flatnonzero(terminated | truncated).astype(np.int32)
        if done_ids.size:
            obs_reset, info_reset = self.pool.reset(done_ids)
            obs[info_reset["env_id"]] = obs_reset
        reward = _by_env_id(reward, ids).astype(np.float32)
        return EnvpoolStep(obs, reward, terminated, truncated, final_obs)

    def close(self) -> None:
        self.pool.close()


def _by_env_id(x: np.ndarray, env_ids: np.ndarray) -> np.ndarray:
    """Reorders a batch ``[N, ...]`` so that row ``i`` belongs to env ``i``."""
    out = np.empty_like(x)
    out[env_ids] = x
    return out


def make(task: str, num_envs: int = 1, seed: int = 0, **kwargs: Any) -> EnvpoolEnv:
    """Builds an :class:`EnvpoolEnv` for an envpool task id (without the ``envpool/`` prefix).

    Args:
        task: envpool task id, e.g. ``"CartPole-v1"`` or ``"Pong-v5"``.
        num_envs: number of envs ``N`` stepped together.
        seed: envpool seed (fixed for the pool's lifetime; env ``i`` uses ``seed + i``).
        **kwargs: other ``envpool.make`` options (e.g. ``max_episode_steps``,
            ``num_threads``, ``episodic_life``).

    Raises:
        ValueError: for an unknown task; the message lists the valid envpool ids.
    """
    valid = envpool.list_all_envs()
    if task not in valid:
        raise ValueError(
            f"unknown envpool task {task!r}; valid names: "
            + ", ".join(f"envpool/{t}" for t in valid)
        )
    return EnvpoolEnv(task, num_envs, seed, **kwargs)
