"""Layers as pure functions of plain-dict parameters, for meta-networks (LPG, MetaGenRL).

A meta-network's parameters are meta-learned, saved and loaded as a plain pytree, so its
layers are functions ``f(params, x)`` rather than flax modules. Shapes: ``x [..., I]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dense_init(key: jax.Array, fan_in: int, fan_out: int) -> dict[str, jax.Array]:
    """LeCun-normal weights ``w [I, O]`` and zero bias ``b [O]``."""
    w = jax.random.normal(key, (fan_in, fan_out)) / jnp.sqrt(float(fan_in))
    return {"w": w, "b": jnp.zeros((fan_out,))}


def dense(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """``x @ w + b``: ``[..., I] -> [..., O]``."""
    y = jnp.einsum("...i,io->...o", x, p["w"])
    return y + p["b"].reshape((1,) * (y.ndim - 1) + p["b"].shape)


def lstm_step(p: dict[str, jax.Array], carry, x: jax.Array):
    """One LSTM step: one linear on ``[x, h]`` giving gates input, cell, forget, output
    (Haiku's order, +1 on the forget gate). ``carry = (c, h)``, each ``[..., H]``."""
    c, h = carry
    z = dense(p, jnp.concatenate([x, h], axis=-1))
    i, g, f, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h
