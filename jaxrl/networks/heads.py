"""Policy heads returning distrax distributions, and value heads returning arrays.

Initial scales follow "Implementation Matters" / PPO2: policy outputs 0.01, values 1.0.
"""

from __future__ import annotations

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl.networks.torsos import kernel_init


class CategoricalHead(nn.Module):
    """Logits ``[..., num_actions]`` -> ``distrax.Categorical``."""

    num_actions: int
    ortho_init: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> distrax.Distribution:
        logits = nn.Dense(self.num_actions, kernel_init=kernel_init(self.ortho_init, 0.01))(x)
        return distrax.Categorical(logits=logits)


class GaussianHead(nn.Module):
    """Diagonal Gaussian with a state-independent, learned log-std (PPO's usual choice).

    Mean ``[..., action_dim]``; ``log_std`` is one parameter vector ``[action_dim]``.
    """

    action_dim: int
    ortho_init: bool = True
    log_std_init: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array) -> distrax.Distribution:
        mean = nn.Dense(self.action_dim, kernel_init=kernel_init(self.ortho_init, 0.01))(x)
        log_std = self.param(
            "log_std", nn.initializers.constant(self.log_std_init), (self.action_dim,)
        )
        return distrax.MultivariateNormalDiag(mean, jnp.broadcast_to(jnp.exp(log_std), mean.shape))


class TanhGaussianHead(nn.Module):
    """Tanh-squashed diagonal Gaussian with state-dependent log-std (SAC's actor).

    Samples lie in ``(-1, 1)^action_dim``; ``log_prob`` includes the tanh Jacobian
    correction ``-sum log(1 - tanh(u)^2)`` (distrax's ``Tanh`` bijector computes it
    stably). ``log_std`` is squashed into ``[log_std_min, log_std_max]``.
    """

    action_dim: int
    ortho_init: bool = True
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, x: jax.Array) -> distrax.Distribution:
        out = nn.Dense(2 * self.action_dim, kernel_init=kernel_init(self.ortho_init, 0.01))(x)
        mean, log_std = jnp.split(out, 2, axis=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (
            jnp.tanh(log_std) + 1.0
        )
        base = distrax.MultivariateNormalDiag(mean, jnp.exp(log_std))
        return distrax.Transformed(base, distrax.Block(distrax.Tanh(), ndims=1))


class ValueHead(nn.Module):
    """Scalar state value: ``[..., F] -> [...]``."""

    ortho_init: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(1, kernel_init=kernel_init(self.ortho_init, 1.0))(x)[..., 0]
