"""The learner: pops trajectories, trains on each exactly once, publishes new parameters.

One learner step takes one *round*: the next trajectory of every actor, from each actor's own
bounded queue in actor order, concatenated on the env axis (``[T, A N, ...]``), moved to the
learner's device, and given to the algorithm's jitted learning half
(:attr:`jaxrl.sebulba.agents.Agent.learn`). A trajectory leaves its queue once and enters one
learner batch; the learner records ``(TrajectoryInfo, version)`` for each in :attr:`ledger`, so
tests can check that nothing is trained on twice or skipped. (DQN's replay samples stored
transitions many times: that is intended replay, not a trajectory trained on twice.)

After each step the new actor parameters are published with version ``= updates done``; the
*policy lag* of a trajectory is the learner's version when it trains on it minus the version
that acted, recorded per step in ``sebulba/policy_lag_{mean,max}``. ``sebulba/time_s`` is the
host time at which each step was dispatched (seconds since the learner was made; dispatch is
asynchronous, and the actors' next policy call waits for the parameters it produces).

The learner runs in the caller's thread (the main thread, so that Ctrl-C reaches it) and never
blocks for longer than ``actor.POLL_S`` without looking at the stop event.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import jax
import numpy as np

from jaxrl.sebulba import actor as actor_lib
from jaxrl.sebulba.actor import ParamStore, TrajectoryInfo
from jaxrl.sebulba.agents import Agent, Trajectory, concat_envs

FETCH_EVERY = 256  # updates between copies of the metrics to the host (bounds device memory)


class Learner:
    """Consumes rounds of trajectories and trains the agent's ``State`` on them.

    Attributes:
        state: the algorithm's ``State`` after :attr:`version` updates.
        version: learner updates done (the version of the newest published parameters).
        ledger: ``(TrajectoryInfo, version it was trained at)`` of every trajectory consumed.
        metrics: per update, the algorithm's metrics (the newest ``< FETCH_EVERY`` still on
            the device; :meth:`history` fetches them).
        host_metrics: per update, ``sebulba/...`` metrics measured on the host.
    """

    def __init__(
        self,
        agent: Agent,
        state: Any,
        queues: list[queue.Queue],
        store: ParamStore,
        stop: threading.Event,
        version: int = 0,
        device: jax.Device | None = None,
    ):
        self.agent, self.state, self.queues, self.store, self.stop = (
            agent, state, queues, store, stop,
        )  # fmt: skip
        self.version, self.device = int(version), device
        self.learn = jax.jit(agent.learn)
        self.ledger: list[tuple[TrajectoryInfo, int]] = []
        self.metrics: list[dict] = []
        self.host_metrics: list[dict[str, float]] = []
        self.start_time = time.perf_counter()
        self._fetched = 0  # metrics[:_fetched] are on the host

    def next_round(self) -> tuple[list[TrajectoryInfo], Trajectory] | None:
        """One trajectory from each actor, in actor order; ``None`` if stopped first."""
        infos, trajs = [], []
        for q in self.queues:
            item = actor_lib.get(q, self.stop)
            if item is None:
                return None
            infos.append(item[0])
            trajs.append(item[1])
        return infos, concat_envs(trajs)

    def step(self) -> bool:
        """One learner update on the next round; ``False`` (nothing done) if stopped first."""
        t0 = time.perf_counter()
        got = self.next_round()
        if got is None:
            return False
        infos, traj = got
        t1 = time.perf_counter()
        traj = jax.device_put(traj, self.device)
        self.state, metrics = self.learn(self.state, traj)
        lags = [self.version - info.params_version for info in infos]
        self.ledger.extend((info, self.version) for info in infos)
        self.version += 1
        self.store.publish(self.agent.actor_params(self.state), self.version)
        self.metrics.append(metrics)
        if len(self.metrics) - self._fetched >= FETCH_EVERY:
            self.metrics[self._fetched :] = jax.device_get(self.metrics[self._fetched :])
            self._fetched = len(self.metrics)
        self.host_metrics.append(
            {
                "sebulba/policy_lag_mean": float(np.mean(lags)),
                "sebulba/policy_lag_max": float(np.max(lags)),
                "sebulba/learner_wait_s": t1 - t0,
                "sebulba/learner_step_s": time.perf_counter() - t1,
                "sebulba/time_s": time.perf_counter() - self.start_time,
            }
        )
        return True

    def history(self) -> dict[str, np.ndarray]:
        """Every metric stacked over the updates done: ``{name: [U]}`` (syncs with the device)."""
        if not self.metrics:
            return {}
        fetched = jax.device_get(self.metrics)
        rows = [dict(m, **h) for m, h in zip(fetched, self.host_metrics, strict=True)]
        return {k: np.asarray([row[k] for row in rows]) for k in rows[0]}
