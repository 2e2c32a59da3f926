"""Host envs and agents for the Sebulba plumbing tests (not a test module)."""

from __future__ import annotations

import functools
import threading
import time

import numpy as np

from jaxrl.algorithms import ppo
from jaxrl.envs import spaces
from jaxrl.sebulba import agents
from jaxrl.sebulba.host_envs import EnvSpec, HostEnv

SPEC = EnvSpec("counter", spaces.Box(-1e9, 1e9, (3,)), spaces.Discrete(2))


class CounterEnv(HostEnv):
    """``N`` envs whose observation is ``[actor_id, env index, t]``, ``t`` counting every
    step since the first reset (never reset), so every step of every actor is unique.

    Episodes terminate every 7 steps (reward 1 per step). With ``fail_at``, the step that
    would make ``t == fail_at`` raises ``RuntimeError("boom ...")`` and records the time.
    """

    def __init__(self, actor_id: int, num_envs: int, fail_at: int | None = None):
        super().__init__("counter", num_envs, SPEC)
        self.actor_id, self.fail_at, self.t = actor_id, fail_at, 0
        self.closed = threading.Event()
        self.failed_at: float | None = None

    def _obs(self) -> np.ndarray:
        n = self.num_envs
        cols = (np.full(n, self.actor_id), np.arange(n), np.full(n, self.t))
        return np.stack(cols, axis=1).astype(np.float32)

    def _reset(self) -> np.ndarray:
        return self._obs()

    def _step(self, actions: np.ndarray):
        assert actions.shape == (self.num_envs,)
        if self.fail_at is not None and self.t + 1 == self.fail_at:
            self.failed_at = time.monotonic()
            raise RuntimeError(f"boom in actor {self.actor_id}")
        self.t += 1
        obs = self._obs()
        terminated = np.full(self.num_envs, self.t % 7 == 0)
        zeros = np.zeros(self.num_envs, bool)
        return obs, np.ones(self.num_envs, np.float32), terminated, zeros, obs

    def close(self) -> None:
        self.closed.set()


@functools.cache
def ppo_agent(num_actors: int = 2, envs_per_actor: int = 2, rollout_len: int = 4):
    """A small PPO agent on :data:`SPEC` whose metrics also carry the batch's observations
    (``"ids"``, ``[T, A N, 3]``), so a test can see exactly what the learner trained on.
    Cached, so that tests share its compiled functions."""
    cfg = ppo.Config(
        num_envs=num_actors * envs_per_actor,
        rollout_len=rollout_len,
        num_epochs=1,
        num_minibatches=1,
        hidden=(8,),
        total_timesteps=10**6,
    )
    base = agents.make("ppo", cfg, ppo.HParams.make(), SPEC, num_actors)

    def learn(state, traj):
        state, metrics = base.learn(state, traj)
        return state, metrics | {"ids": traj.obs}

    return agents.Agent(**{**base.__dict__, "learn": learn})
