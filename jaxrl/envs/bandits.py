"""Bernoulli bandit tasks for RL^2 (Duan et al. 2016) and Wang et al. (2016).

Following Duan et al., every pull is a one-step *episode*: the observation is trivial (a
constant ``[1.0]``), the reward of arm ``a`` is ``Bernoulli(params.probs[a])`` and every
step terminates. A task (the arms' success probabilities, ``BanditParams``) is a traced
``EnvParams`` drawn by :meth:`BernoulliBandit.sample_params`; an RL^2 *trial* of ``n``
pulls is ``jaxrl.meta.rl2.TrialWrapper(BernoulliBandit(...), episodes_per_trial=n)``,
which adds the previous action, reward and done flag to the observation.

Task distributions (static ``task`` field):

* ``"independent"``: Duan et al.'s ``k`` arms, ``p_i ~ U[0, 1]`` independently.
* ``"dependent_easy" | "dependent_medium" | "dependent_hard"``: Wang et al.'s two arms
  with ``p_2 = 1 - p_1`` and ``p_1`` uniform on ``{0.1, 0.9}`` / ``{0.25, 0.75}`` /
  ``{0.4, 0.6}``.
* ``"dependent_uniform"``: two arms, ``p_1 ~ U[0, 1]``, ``p_2 = 1 - p_1``.

``Step.info`` holds ``"expected_reward"`` (``p_a``) and ``"regret"`` (``max_i p_i - p_a``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Step
from jaxrl.errors import ConfigError

TASKS = ("independent", "dependent_easy", "dependent_medium", "dependent_hard", "dependent_uniform")
_DEPENDENT_P1 = {"dependent_easy": 0.1, "dependent_medium": 0.25, "dependent_hard": 0.4}


class BanditParams(struct.PyTreeNode):
    """One task: success probability of each arm, ``probs [k]`` (``[B, k]`` for a batch)."""

    probs: jax.Array


@dataclasses.dataclass(frozen=True)
class BernoulliBandit(Env):
    """A ``num_arms``-armed Bernoulli bandit; one pull is one (terminating) episode."""

    num_arms: int = 5
    task: str = "independent"

    def __post_init__(self):
        if not isinstance(self.num_arms, int) or isinstance(self.num_arms, bool):
            raise ConfigError(f"num_arms must be a positive integer, got {self.num_arms!r}")
        if self.num_arms < 1:
            raise ConfigError(f"num_arms must be a positive integer, got {self.num_arms!r}")
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task != "independent" and self.num_arms != 2:
            raise ConfigError(f"task {self.task!r} has 2 arms, got num_arms={self.num_arms}")

    @property
    def name(self) -> str:
        return f"BernoulliBandit-{self.task}-k{self.num_arms}"

    def default_params(self) -> BanditParams:
        """A fixed task (evenly spaced probabilities); meta-training samples tasks instead."""
        if self.task == "independent":
            probs = jnp.linspace(0.1, 0.9, self.num_arms) if self.num_arms > 1 else [0.5]
        else:
            p1 = _DEPENDENT_P1.get(self.task, 0.3)
            probs = [p1, 1.0 - p1]
        return BanditParams(jnp.asarray(probs, jnp.float32))

    def sample_params(self, key: jax.Array) -> BanditParams:
        """Draws one task from the ``task`` distribution: ``probs [k]``."""
        if self.task == "independent":
            return BanditParams(jax.random.uniform(key, (self.num_arms,)))
        if self.task == "dependent_uniform":
            p1 = jax.random.uniform(key)
        else:
            low = _DEPENDENT_P1[self.task]
            p1 = jnp.where(jax.random.bernoulli(key), 1.0 - low, low)
        return BanditParams(jnp.stack([p1, 1.0 - p1]).astype(jnp.float32))

    def reset(self, key: jax.Array, params: BanditParams) -> tuple[jax.Array, jax.Array]:
        del key, params
        return jnp.ones((1,), jnp.float32), jnp.zeros((), jnp.int32)

    def step(self, key, state, action: jax.Array, params: BanditParams):
        """Pulls ``action``: reward ``Bernoulli(probs[action])``; the episode ends."""
        del state
        p = params.probs[action]
        reward = jax.random.bernoulli(key, p).astype(jnp.float32)
        obs = jnp.ones((1,), jnp.float32)
        info = {"expected_reward": p, "regret": jnp.max(params.probs) - p}
        step = Step(reward, jnp.ones((), bool), jnp.zeros((), bool), obs, info)
        return obs, jnp.zeros((), jnp.int32), step

    def observation_space(self, params) -> spaces.Box:
        return spaces.Box(1.0, 1.0, (1,))

    def action_space(self, params) -> spaces.Discrete:
        return spaces.Discrete(self.num_arms)
