"""Networks for deterministic-policy off-policy control (DDPG/TD3 family).

* :class:`DeterministicActor`: ``obs [..., D] -> action [..., A]`` in ``(-1, 1)`` (tanh).
* :class:`TwinQ`: ``(obs [..., D], action [..., A]) -> q [2, ...]``, two independent critics
  (one ``nn.vmap``'d module, so both run as one batched matrix product).

Actions are normalised to ``[-1, 1]``; :func:`scale_action` maps them to an env's bounds.

Both networks take an optional *context*: with ``context_len = H > 0`` the observation is
``[o (D), history (H * (D + A + 1))]`` flattened, the history being the last ``H``
transitions ``(o, a, r)`` oldest first (see :class:`jaxrl.envs.wrappers.History`); a GRU
reads the ``H`` rows and its final state is concatenated to ``o`` (Meta-Q-Learning's
context, Fakoor et al. 2020, arXiv:1910.00125).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl.errors import ConfigError
from jaxrl.networks.init import orthogonal
from jaxrl.networks.torsos import MLP


def scale_action(action: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
    """Maps ``[-1, 1]`` to ``[low, high]`` elementwise: ``action [..., A]``, bounds ``[A]``."""
    low, high = jnp.broadcast_to(low, action.shape), jnp.broadcast_to(high, action.shape)
    return low + 0.5 * (action + 1.0) * (high - low)


def split_context(obs: jax.Array, action_dim: int, context_len: int) -> tuple[jax.Array, jax.Array]:
    """Splits obs ``[..., D + H (D + A + 1)]`` into ``o [..., D]`` and ``[..., H, D + A + 1]``.

    ``H`` is ``context_len`` and ``A`` is ``action_dim``.
    """
    total = obs.shape[-1]
    obs_dim = (total - context_len * (action_dim + 1)) // (context_len + 1)
    if obs_dim < 1 or obs_dim + context_len * (obs_dim + action_dim + 1) != total:
        raise ConfigError(
            f"observation width {total} does not fit context_len={context_len} with "
            f"action_dim={action_dim}: context_len > 0 reads the last transitions appended "
            f"to the observation, so wrap the env: jaxrl.envs.wrappers.History(env, {context_len})"
        )
    history = obs[..., obs_dim:].reshape((*obs.shape[:-1], context_len, -1))
    return obs[..., :obs_dim], history


class ContextEncoder(nn.Module):
    """GRU over history rows ``[..., H, F]`` (oldest first) -> final state ``[..., features]``."""

    features: int

    @nn.compact
    def __call__(self, history: jax.Array) -> jax.Array:
        cell = nn.GRUCell(self.features, recurrent_kernel_init=orthogonal())
        carry = jnp.zeros((*history.shape[:-2], self.features), history.dtype)
        scan = nn.scan(
            lambda c, h, x: c(h, x),
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=-2,
            out_axes=-2,
        )
        carry, _ = scan(cell, carry, history)
        return carry


class _Features(nn.Module):
    """``o`` (and the GRU context if ``context_len > 0``) through an MLP."""

    hidden: tuple[int, ...]
    action_dim: int
    context_len: int = 0
    context_features: int = 32

    @nn.compact
    def __call__(self, obs: jax.Array, extra: jax.Array | None = None) -> jax.Array:
        if self.context_len:
            obs, history = split_context(obs, self.action_dim, self.context_len)
            obs = jnp.concatenate([obs, ContextEncoder(self.context_features)(history)], -1)
        x = obs if extra is None else jnp.concatenate([obs, extra], -1)
        return MLP(self.hidden, "relu", ortho_init=False)(x)


class DeterministicActor(nn.Module):
    """``obs [..., D] -> tanh(mean) [..., A]``."""

    action_dim: int
    hidden: tuple[int, ...] = (256, 256)
    context_len: int = 0
    context_features: int = 32

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = _Features(self.hidden, self.action_dim, self.context_len, self.context_features)(obs)
        return jnp.tanh(nn.Dense(self.action_dim)(x))


class QNetwork(nn.Module):
    """``(obs [..., D], action [..., A]) -> q [...]``."""

    action_dim: int
    hidden: tuple[int, ...] = (256, 256)
    context_len: int = 0
    context_features: int = 32

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        features = _Features(self.hidden, self.action_dim, self.context_len, self.context_features)
        return nn.Dense(1)(features(obs, action))[..., 0]


class TwinQ(nn.Module):
    """Two independent :class:`QNetwork` s: ``(obs, action) -> q [2, ...]``."""

    action_dim: int
    hidden: tuple[int, ...] = (256, 256)
    context_len: int = 0
    context_features: int = 32

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        twin = nn.vmap(
            QNetwork,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=2,
        )
        return twin(self.action_dim, self.hidden, self.context_len, self.context_features)(
            obs, action
        )
