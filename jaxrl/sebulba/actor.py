"""Actor threads: step host envs with one batched, jitted policy call per step.

Each :class:`Actor` owns ``N`` host envs (:mod:`jaxrl.sebulba.host_envs`) and loops:

1. take the newest parameters and their version from the :class:`ParamStore` (with
   ``max_policy_lag = k``, first wait until the learner has published version
   ``seq - k``: ``k = 0`` makes every trajectory on-policy, as in-JAX);
2. roll out ``T`` steps: per step one call of the jitted ``act(params, obs [N, ...], key,
   env_steps, actor_id)`` on the device, one host ``env.step``; record the behaviour
   log-probabilities next to the actions;
3. put ``(TrajectoryInfo, Trajectory [T, N, ...])`` into its own bounded ``queue.Queue``.

Every blocking call (waiting for parameters, a full queue) polls the shared stop
``threading.Event``, so setting it ends every actor within one env step plus ``POLL_S``. An
exception in an actor is recorded in :class:`Failures` (the first one wins) and sets the stop
event; the orchestrator (:mod:`jaxrl.sebulba.orchestrator`) re-raises it in the main thread.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxrl.envs import spaces
from jaxrl.sebulba.agents import Trajectory
from jaxrl.sebulba.host_envs import HostEnv

POLL_S = 0.05  # how often a blocked thread looks at the stop event


class ParamStore:
    """The learner's newest actor parameters and their version (number of updates done).

    Arrays are immutable, so actors may keep a snapshot while the learner publishes newer
    ones; the lock only makes ``(params, version)`` a consistent pair.
    """

    def __init__(self, params: Any, version: int = 0):
        self._cond = threading.Condition()
        self._params, self._version = params, int(version)

    def publish(self, params: Any, version: int) -> None:
        """Makes ``params`` (after ``version`` updates) the newest and wakes waiting actors."""
        with self._cond:
            self._params, self._version = params, int(version)
            self._cond.notify_all()

    def latest(self) -> tuple[Any, int]:
        """``(params, version)`` of the newest publication."""
        with self._cond:
            return self._params, self._version

    def wait_for(self, version: int, stop: threading.Event) -> tuple[Any, int] | None:
        """The newest ``(params, version)`` once ``version`` is reached; ``None`` if stopped."""
        with self._cond:
            while self._version < version:
                if stop.is_set():
                    return None
                self._cond.wait(POLL_S)
            return self._params, self._version


class Failures:
    """The first exception raised in any thread, with the thread's name (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self.where: str | None = None

    def record(self, where: str, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error, self.where = error, where


@dataclasses.dataclass(frozen=True)
class TrajectoryInfo:
    """Where a trajectory comes from.

    Attributes:
        actor_id: the actor that collected it.
        seq: its index among that actor's trajectories (0, 1, ...).
        params_version: the version of the parameters that acted (learner updates done).
        env_steps: that actor's env steps after it (``N`` per step).
    """

    actor_id: int
    seq: int
    params_version: int
    env_steps: int


def put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Puts ``item`` into bounded ``q``, waiting while it is full; ``False`` if stopped first."""
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def get(q: queue.Queue, stop: threading.Event) -> Any:
    """The next item of ``q``, waiting while it is empty; ``None`` if stopped first."""
    while not stop.is_set():
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            continue
    return None


class Actor(threading.Thread):
    """One actor thread (a daemon, so a wedged env cannot keep the process alive).

    Args:
        actor_id: ``i`` in ``0 .. A - 1``; its envs are columns ``i N .. (i + 1) N - 1`` of a
            learner batch.
        env: its ``N`` host envs (closed when the thread ends).
        act: the jitted ``act(params, obs, key, env_steps, actor_id) -> (key, action,
            log_prob)`` (:attr:`jaxrl.sebulba.agents.Agent.act`).
        store: where the learner publishes parameters.
        out: this actor's bounded queue to the learner.
        stop: set by anyone to end every thread.
        failures: where an exception is recorded.
        rollout_len: ``T``.
        key: this actor's PRNG key.
        num_actors: ``A``; the env-step estimate passed to ``act`` is ``A`` x its own.
        max_policy_lag: ``None``: act with the newest parameters; ``k``: trajectory ``s`` waits
            for version ``s - k``.
        device: where to put parameters before acting (default: where they are).
    """

    def __init__(
        self,
        actor_id: int,
        env: HostEnv,
        act: Callable,
        store: ParamStore,
        out: queue.Queue,
        stop: threading.Event,
        failures: Failures,
        rollout_len: int,
        key: jax.Array,
        num_actors: int = 1,
        max_policy_lag: int | None = None,
        device: jax.Device | None = None,
    ):
        super().__init__(name=f"sebulba-actor-{actor_id}", daemon=True)
        self.actor_id, self.env, self.act = actor_id, env, act
        self.store, self.out, self.stop, self.failures = store, out, stop, failures
        self.rollout_len, self.key, self.num_actors = rollout_len, key, num_actors
        self.max_policy_lag, self.device = max_policy_lag, device
        self.env_steps = 0
        self.timings = {"act_s": 0.0, "env_s": 0.0, "put_s": 0.0, "params_s": 0.0}

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as err:  # noqa: BLE001  (handed to the main thread)
            self.failures.record(self.name, err)
            self.stop.set()
        finally:
            try:
                self.env.close()
            except Exception as err:  # noqa: BLE001
                self.failures.record(f"{self.name} (closing its env)", err)

    def _params(self, seq: int) -> tuple[Any, int] | None:
        t0 = time.perf_counter()
        if self.max_policy_lag is None:
            got = self.store.latest()
        else:
            got = self.store.wait_for(seq - self.max_policy_lag, self.stop)
        if got is not None and self.device is not None:
            got = (jax.device_put(got[0], self.device), got[1])
        self.timings["params_s"] += time.perf_counter() - t0
        return got

    def _loop(self) -> None:
        obs = self.env.reset()
        key = self.key if self.device is None else jax.device_put(self.key, self.device)
        seq = 0
        while not self.stop.is_set():
            got = self._params(seq)
            if got is None:
                return
            params, version = got
            rolled = self._rollout(params, obs, key)
            if rolled is None:
                return
            traj, obs, key = rolled
            info = TrajectoryInfo(self.actor_id, seq, version, self.env_steps)
            t0 = time.perf_counter()
            if not put(self.out, (info, traj), self.stop):
                return
            self.timings["put_s"] += time.perf_counter() - t0
            seq += 1

    def _rollout(self, params: Any, obs: np.ndarray, key: jax.Array):
        """``T`` steps with ``params``; ``None`` if stopped midway, else ``(Trajectory [T, N],
        next obs, next key)``."""
        buf = buffers(self.rollout_len, obs, self.env.spec.act_space)
        for t in range(self.rollout_len):
            if self.stop.is_set():
                return None
            t0 = time.perf_counter()
            key, action, log_prob = self.act(
                params, obs, key, self.env_steps * self.num_actors, self.actor_id
            )
            action, log_prob = jax.device_get((action, log_prob))
            t1 = time.perf_counter()
            step = self.env.step(action)
            self.timings["act_s"] += t1 - t0
            self.timings["env_s"] += time.perf_counter() - t1
            for name, value in (
                ("obs", obs), ("action", action), ("log_prob", log_prob),
                ("reward", step.reward), ("terminated", step.terminated),
                ("truncated", step.truncated), ("final_obs", step.final_obs),
                ("episode_return", step.episode_return), ("episode_length", step.episode_length),
            ):  # fmt: skip
                buf[name][t] = value
            obs = step.obs
            self.env_steps += self.env.num_envs
        return Trajectory(**buf), obs, key


def buffers(num_steps: int, obs: np.ndarray, act_space: spaces.Space) -> dict[str, np.ndarray]:
    """Uninitialised ``[T, N, ...]`` host arrays for one trajectory of ``N = len(obs)`` envs."""
    n = obs.shape[0]
    action_dtype = np.int32 if isinstance(act_space, spaces.Discrete) else np.float32

    def empty(shape, dtype):
        return np.empty((num_steps, n, *shape), dtype)

    return {
        "obs": empty(obs.shape[1:], obs.dtype),
        "action": empty(act_space.shape, action_dtype),
        "log_prob": empty((), np.float32),
        "reward": empty((), np.float32),
        "terminated": empty((), bool),
        "truncated": empty((), bool),
        "final_obs": empty(obs.shape[1:], obs.dtype),
        "episode_return": empty((), np.float32),
        "episode_length": empty((), np.int32),
    }
