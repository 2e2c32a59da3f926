"""Recurrent cores (GRU, LSTM) with scan-friendly carries and a reset mask.

A core maps ``(carry, x_t, reset_t) -> (carry, y_t)``. Where ``reset_t`` is set, the
incoming carry is zeroed *before* the step, so ``x_t`` is the first input of a new
sequence (an episode or an RL^2 trial). Carries are pytrees of ``[B, H]`` arrays
(GRU: ``h``; LSTM: ``(c, h)``), made by :func:`initial_carry`.

:class:`RecurrentScan` unrolls a core over a time-major sequence ``[T, B, ...]`` with
``flax.linen.scan`` (parameters shared over time), so one call of the module over ``T``
steps equals ``T`` single-step calls with the same parameters (tested).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl.errors import ConfigError
from jaxrl.networks.init import orthogonal

CELLS = ("gru", "lstm")


def initial_carry(cell: str, batch_shape: tuple[int, ...], features: int):
    """Zero carry of ``cell`` for ``batch_shape``: ``h [*B, H]`` or ``(c, h)`` for LSTM."""
    if cell not in CELLS:
        raise ConfigError(f"cell must be one of {CELLS}, got {cell!r}")
    zeros = jnp.zeros((*batch_shape, features), jnp.float32)
    return (zeros, zeros) if cell == "lstm" else zeros


def reset_carry(carry, reset: jax.Array):
    """Zeroes the carry where ``reset [*B]`` (bool) is set; leaves ``[*B, H]`` elsewhere."""
    return jax.tree.map(lambda c: jnp.where(reset[..., None], jnp.zeros_like(c), c), carry)


class RecurrentCore(nn.Module):
    """One step of a GRU or LSTM with a reset mask.

    ``__call__(carry, x [*B, D], reset [*B]) -> (carry, y [*B, H])``.
    """

    features: int
    cell: str = "gru"

    @nn.compact
    def __call__(self, carry, x: jax.Array, reset: jax.Array):
        carry = reset_carry(carry, reset)
        if self.cell == "gru":
            return nn.GRUCell(self.features, recurrent_kernel_init=orthogonal(), name="gru")(
                carry, x
            )
        if self.cell == "lstm":
            return nn.OptimizedLSTMCell(
                self.features, recurrent_kernel_init=orthogonal(), name="lstm"
            )(carry, x)
        raise ConfigError(f"cell must be one of {CELLS}, got {self.cell!r}")


class RecurrentScan(nn.Module):
    """A :class:`RecurrentCore` unrolled over time.

    ``__call__(carry, x [T, *B, D], reset [T, *B]) -> (carry, y [T, *B, H])``.
    """

    features: int
    cell: str = "gru"

    @nn.compact
    def __call__(self, carry, x: jax.Array, reset: jax.Array):
        scan = nn.scan(
            RecurrentCore,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=0,
            out_axes=0,
        )
        return scan(self.features, self.cell, name="core")(carry, x, reset)
