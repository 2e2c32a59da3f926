"""Delayed chain MDPs: the credit-assignment tasks of LPG (Oh et al. 2020, arXiv:2007.08794).

Two actions. The first action of an episode picks a branch; every later action is ignored.
After exactly ``L`` steps the episode terminates with reward ``+1`` if the branch picked is
the lifetime's good one and ``-1`` otherwise; every other reward is 0 (or, in the noisy
variants, uniform on ``{-1, +1}`` [D: the spec says "uniform ±1"]). The chain length ``L``
and which first action is good are drawn once per *lifetime*, so they live in
:class:`ChainParams` and :meth:`DelayedChain.sample_params` draws them.

States. Before the first action the agent is at depth 0; after ``t >= 1`` steps it is at
depth ``t`` on branch ``b`` (the first action taken). The tabular state index is
``0`` at depth 0 and ``1 + 2 (t - 1) + b`` after, so there are ``1 + 2 (L_max - 1)`` states
and observations are one-hot vectors of that size. The State-Distraction variant observes
22 bits instead: two informative bits (one-hot of the branch, both 0 before the first
action) followed by 20 bits that are i.i.d. fair coins at every step.

Variants (spec section 1.8), built by :func:`make`:
``short`` L ~ U{5..30}; ``short_noisy``; ``long`` L ~ U{5..50}; ``long_noisy``;
``distraction`` L ~ U{5..30} with 22-bit observations.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Step
from jaxrl.errors import ConfigError


class ChainParams(struct.PyTreeNode):
    """Per-lifetime task parameters (traced, vmappable).

    Attributes:
        length: int32 ``[]``, chain length ``L`` (episode length in steps).
        good_action: int32 ``[]``, the first action (0 or 1) that leads to the ``+1`` branch.
    """

    length: jax.Array
    good_action: jax.Array


class ChainState(struct.PyTreeNode):
    """``time`` int32 ``[]``: steps taken; ``branch`` int32 ``[]``: first action (0 at t=0)."""

    time: jax.Array
    branch: jax.Array


@dataclasses.dataclass(frozen=True)
class DelayedChain(Env):
    """Delayed chain MDP (static description; lengths are drawn into ``ChainParams``).

    Attributes:
        min_length: smallest chain length ``L`` :meth:`sample_params` draws (>= 2).
        max_length: largest ``L``; fixes the observation size.
        noisy: intermediate rewards uniform on ``{-1, +1}`` instead of 0.
        distraction_bits: 0 for one-hot tabular observations; otherwise the number of random
            bits appended to the 2 informative branch bits (20 in the paper's variant).
    """

    min_length: int = 5
    max_length: int = 30
    noisy: bool = False
    distraction_bits: int = 0

    def __post_init__(self):
        if not 2 <= self.min_length <= self.max_length:
            raise ConfigError(
                f"need 2 <= min_length <= max_length, got {self.min_length}, {self.max_length}"
            )
        if self.distraction_bits < 0:
            raise ConfigError(f"distraction_bits must be >= 0, got {self.distraction_bits}")

    @property
    def num_states(self) -> int:
        """Number of tabular states ``1 + 2 (max_length - 1)``."""
        return 1 + 2 * (self.max_length - 1)

    def default_params(self) -> ChainParams:
        return ChainParams(jnp.asarray(self.min_length, jnp.int32), jnp.asarray(0, jnp.int32))

    def sample_params(self, key: jax.Array) -> ChainParams:
        """Draws a lifetime's task: ``L ~ U{min_length..max_length}``, good action ~ U{0, 1}."""
        key_len, key_good = jax.random.split(key)
        length = jax.random.randint(key_len, (), self.min_length, self.max_length + 1)
        good = jax.random.randint(key_good, (), 0, 2)
        return ChainParams(length.astype(jnp.int32), good.astype(jnp.int32))

    def state_index(self, state: ChainState) -> jax.Array:
        """Tabular index ``[]`` int32: 0 at depth 0, else ``1 + 2 (t - 1) + branch``."""
        return jnp.where(state.time == 0, 0, 1 + 2 * (state.time - 1) + state.branch)

    def _obs(self, key: jax.Array, state: ChainState) -> jax.Array:
        if self.distraction_bits == 0:
            return jax.nn.one_hot(self.state_index(state), self.num_states, dtype=jnp.float32)
        informative = jnp.where(
            state.time > 0, jax.nn.one_hot(state.branch, 2, dtype=jnp.float32), 0.0
        )
        noise = jax.random.bernoulli(key, 0.5, (self.distraction_bits,)).astype(jnp.float32)
        return jnp.concatenate([informative, noise])

    def reset(self, key: jax.Array, params: ChainParams) -> tuple[jax.Array, ChainState]:
        state = ChainState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
        return self._obs(key, state), state

    def step(self, key, state: ChainState, action, params: ChainParams):
        key_obs, key_noise = jax.random.split(key)
        action = jnp.asarray(action, jnp.int32)
        branch = jnp.where(state.time == 0, action, state.branch)
        time = state.time + 1
        terminated = time >= params.length
        final = jnp.where(branch == params.good_action, 1.0, -1.0)
        if self.noisy:
            noise = jnp.where(jax.random.bernoulli(key_noise), 1.0, -1.0)
        else:
            noise = jnp.zeros(())
        reward = jnp.where(terminated, final, noise).astype(jnp.float32)
        new_state = ChainState(time, branch)
        obs = self._obs(key_obs, new_state)
        return obs, new_state, Step(reward, terminated, jnp.zeros((), bool), obs)

    def observation_space(self, params) -> spaces.Box:
        size = self.num_states if self.distraction_bits == 0 else 2 + self.distraction_bits
        return spaces.Box(0.0, 1.0, (size,))

    def action_space(self, params) -> spaces.Discrete:
        return spaces.Discrete(2)


VARIANTS = {
    "short": dict(min_length=5, max_length=30),
    "short_noisy": dict(min_length=5, max_length=30, noisy=True),
    "long": dict(min_length=5, max_length=50),
    "long_noisy": dict(min_length=5, max_length=50, noisy=True),
    "distraction": dict(min_length=5, max_length=30, distraction_bits=20),
}


def make(variant: str = "short", **overrides) -> DelayedChain:
    """Builds one of the five chain variants of spec 1.8 (``overrides`` change its fields).

    Example: ``make("short", max_length=10)`` is the L ~ U{5..10} chain of acceptance check L2.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown delayed chain variant {variant!r}; known: {sorted(VARIANTS)}")
    return DelayedChain(**(VARIANTS[variant] | overrides))
