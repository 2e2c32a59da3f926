"""Q-networks for the value-based family: DQN, Double/Dueling DQN, C51, QR-DQN, Noisy Nets,
Rainbow and R2D2.

Conventions:
  * ``QNetwork``: ``obs [..., D]`` (or ``[..., H, W, C]`` for the MinAtar torso) ->
    ``q [..., A]`` when ``num_atoms == 1``, else ``[..., A, num_atoms]``. What the atoms mean
    (C51 logits over a fixed support, QR-DQN quantiles) is the loss's business.
  * Noisy layers draw their noise from the flax RNG stream ``"noise"``: pass
    ``rngs={"noise": key}`` to ``apply`` for a noisy forward pass; without it they use the
    mean weights (greedy evaluation). One noise sample per call is shared by the whole batch.
  * ``RecurrentQNetwork`` (R2D2) is time-major: ``obs [T, B, ...]``, ``reset [T, B]``,
    ``q [T, B, A]``; ``reset[t]`` zeroes the LSTM carry before step ``t``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl.errors import ConfigError
from jaxrl.networks import recurrent
from jaxrl.networks.torsos import ACTIVATIONS, CNN, MLP, activation_fn, kernel_init

TORSOS = ("mlp", "minatar")


def _signed_sqrt(x: jax.Array) -> jax.Array:
    """``f(x) = sign(x) sqrt(|x|)``, Fortunato et al.'s noise transform."""
    return jnp.sign(x) * jnp.sqrt(jnp.abs(x))


def factorised_noise(
    key: jax.Array, in_features: int, out_features: int
) -> tuple[jax.Array, jax.Array]:
    """Factorised Gaussian noise of a noisy linear layer (Fortunato et al. 2018, eq. 10-11).

    ``eps_in ~ N(0, I_p)``, ``eps_out ~ N(0, I_q)``; the kernel noise is the outer product
    ``f(eps_in) f(eps_out)^T`` and the bias noise is ``f(eps_out)``, with
    ``f(x) = sign(x) sqrt(|x|)``. https://arxiv.org/abs/1706.10295

    Args:
        key: PRNG key.
        in_features: ``p``.
        out_features: ``q``.

    Returns:
        ``(eps_kernel [p, q], eps_bias [q])``.
    """
    key_in, key_out = jax.random.split(key)
    f_in = _signed_sqrt(jax.random.normal(key_in, (in_features,), jnp.float32))
    f_out = _signed_sqrt(jax.random.normal(key_out, (out_features,), jnp.float32))
    return f_in[:, None] * f_out[None, :], f_out


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class NoisyDense(nn.Module):
    """Factorised Gaussian noisy linear layer (Fortunato et al. 2018, "Noisy Networks").

    ``y = x (mu_W + sigma_W * eps_W) + mu_b + sigma_b * eps_b`` with ``eps`` from
    :func:`factorised_noise`. Init: ``mu ~ U[-1/sqrt(p), 1/sqrt(p)]``,
    ``sigma = sigma0 / sqrt(p)``, ``p`` the input width. The noise key comes from the
    ``"noise"`` RNG stream; without one the layer uses the mean weights ``mu``.

    Input ``[..., p]``, output ``[..., features]``. Parameters: ``kernel_mu``,
    ``kernel_sigma`` ``[p, features]``; ``bias_mu``, ``bias_sigma`` ``[features]``.
    """

    features: int
    sigma0: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p, q = x.shape[-1], self.features
        bound = 1.0 / math.sqrt(p)
        sigma = nn.initializers.constant(self.sigma0 / math.sqrt(p))
        kernel = self.param("kernel_mu", _uniform(bound), (p, q))
        kernel_sigma = self.param("kernel_sigma", sigma, (p, q))
        bias = self.param("bias_mu", _uniform(bound), (q,))
        bias_sigma = self.param("bias_sigma", sigma, (q,))
        if self.has_rng("noise"):
            eps_kernel, eps_bias = factorised_noise(self.make_rng("noise"), p, q)
            kernel = kernel + kernel_sigma * eps_kernel
            bias = bias + bias_sigma * eps_bias
        y = jnp.matmul(x, kernel)
        return y + bias.reshape((1,) * (y.ndim - 1) + (q,))


def _check(
    num_actions: int,
    hidden: tuple[int, ...],
    torso: str,
    dueling: bool,
    num_atoms: int,
    activation: str,
) -> None:
    """Raises ConfigError for an impossible Q-network setting."""
    if torso not in TORSOS:
        raise ConfigError(f"unknown torso {torso!r}; valid: {', '.join(TORSOS)}")
    if num_atoms < 1:
        raise ConfigError(f"num_atoms must be >= 1, got {num_atoms}")
    if num_actions < 1:
        raise ConfigError(f"num_actions must be >= 1, got {num_actions}")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    if dueling and not hidden:
        raise ConfigError("dueling needs a non-empty hidden (its streams are hidden[-1] wide)")


def _make_torso(torso: str, hidden: tuple[int, ...], activation: str) -> nn.Module:
    """``"mlp"``: ``MLP(hidden)``; ``"minatar"``: the default :class:`CNN` (conv 16x3x3, 128)."""
    if torso == "mlp":
        return MLP(hidden, activation, name="torso")
    return CNN(activation=activation, name="torso")


class QHead(nn.Module):
    """Q-values from features: ``[..., F] -> [..., A]`` or ``[..., A, num_atoms]``.

    Plain: one output layer. Dueling (Wang et al. 2016, https://arxiv.org/abs/1511.06581):
    value and advantage streams, each one hidden layer of ``stream_width`` units, combined as
    ``Q = V + (Adv - mean_a Adv)`` (per atom when ``num_atoms > 1``). With ``noisy`` every
    layer here is a :class:`NoisyDense` of initial scale ``noisy_sigma0``. Output layers are
    named ``"q"`` (plain) or ``"value"`` ``[..., num_atoms]`` and ``"advantage"``
    ``[..., A * num_atoms]`` (dueling).
    """

    num_actions: int
    stream_width: int = 64
    dueling: bool = False
    noisy: bool = False
    num_atoms: int = 1
    activation: str = "relu"
    noisy_sigma0: float = 0.5

    def _dense(self, features: int, name: str, scale: float) -> nn.Module:
        if self.noisy:
            return NoisyDense(features, self.noisy_sigma0, name=name)
        return nn.Dense(features, kernel_init=kernel_init(True, scale), name=name)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = activation_fn(self.activation)
        batch_shape = x.shape[:-1]
        num_outputs = self.num_actions * self.num_atoms
        atoms = (self.num_atoms,) if self.num_atoms > 1 else ()
        out_shape = (self.num_actions, *atoms)
        if not self.dueling:
            return self._dense(num_outputs, "q", 1.0)(x).reshape(*batch_shape, *out_shape)
        root2 = math.sqrt(2.0)
        v = act(self._dense(self.stream_width, "value_hidden", root2)(x))
        v = self._dense(self.num_atoms, "value", 1.0)(v)
        adv = act(self._dense(self.stream_width, "advantage_hidden", root2)(x))
        adv = self._dense(num_outputs, "advantage", 1.0)(adv).reshape(*batch_shape, *out_shape)
        action_axis = adv.ndim - len(out_shape)
        v = jnp.expand_dims(v if self.num_atoms > 1 else v[..., 0], action_axis)
        return v + (adv - adv.mean(axis=action_axis, keepdims=True))


class QNetwork(nn.Module):
    """Torso then a :class:`QHead`: the Q-network of DQN and its extensions.

    DQN: defaults. Double DQN: the same network (the loss differs). Dueling: ``dueling``.
    Noisy Nets: ``noisy`` with initial noise scale ``noisy_sigma0`` (head layers only; the
    torso stays deterministic). C51 / QR-DQN: ``num_atoms``. Rainbow: ``dueling=True,
    noisy=True, num_atoms=51``.

    Torsos: ``"mlp"`` = ``MLP(hidden)`` on ``obs [..., D]``; ``"minatar"`` = the default
    :class:`CNN` (MinAtar's conv 16x3x3 then 128 units) on ``obs [..., H, W, C]``, where
    ``hidden`` only sets the dueling streams' width ``hidden[-1]``.

    ``__call__(obs) -> q [..., A]`` (``num_atoms == 1``) or ``[..., A, num_atoms]``.
    """

    num_actions: int
    hidden: tuple[int, ...] = (64, 64)
    torso: str = "mlp"
    dueling: bool = False
    noisy: bool = False
    num_atoms: int = 1
    activation: str = "relu"
    noisy_sigma0: float = 0.5

    def __post_init__(self):
        _check(
            self.num_actions,
            self.hidden,
            self.torso,
            self.dueling,
            self.num_atoms,
            self.activation,
        )
        super().__post_init__()

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = _make_torso(self.torso, self.hidden, self.activation)(obs.astype(jnp.float32))
        head = QHead(
            self.num_actions,
            self.hidden[-1] if self.hidden else 0,
            self.dueling,
            self.noisy,
            self.num_atoms,
            self.activation,
            self.noisy_sigma0,
            name="head",
        )
        return head(x)


class RecurrentQNetwork(nn.Module):
    """R2D2's network (Kapturowski et al. 2019): torso -> LSTM -> dueling head.

    ``__call__(carry, obs [T, B, ...], reset [T, B]) -> (carry, q [T, B, A])``; ``reset[t]``
    zeroes the carry before step ``t`` (see :mod:`jaxrl.networks.recurrent`). The carry is
    ``(c, h)``, each ``[B, lstm_features]``, from :meth:`initial_carry`. R2D2's extra LSTM
    inputs (previous action and reward) are the caller's to concatenate onto ``obs``.
    https://openreview.net/forum?id=r1lyTjAqYX
    """

    num_actions: int
    hidden: tuple[int, ...] = (64,)
    lstm_features: int = 64
    torso: str = "mlp"
    dueling: bool = True
    activation: str = "relu"

    def __post_init__(self):
        _check(self.num_actions, self.hidden, self.torso, self.dueling, 1, self.activation)
        super().__post_init__()

    def initial_carry(self, batch_size: int | tuple[int, ...]):
        """Zero LSTM carry ``(c, h)``, each ``[batch_size, lstm_features]``."""
        batch_shape = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
        return recurrent.initial_carry("lstm", batch_shape, self.lstm_features)

    @nn.compact
    def __call__(self, carry, obs: jax.Array, reset: jax.Array):
        x = _make_torso(self.torso, self.hidden, self.activation)(obs.astype(jnp.float32))
        carry, y = recurrent.RecurrentScan(self.lstm_features, "lstm", name="lstm")(carry, x, reset)
        head = QHead(
            self.num_actions,
            self.hidden[-1] if self.hidden else 0,
            self.dueling,
            activation=self.activation,
            name="head",
        )
        return carry, head(y)
