"""Pytree helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def select(pred: jax.Array, on_true, on_false):
    """Leafwise ``where(pred, on_true, on_false)`` for two pytrees of the same structure.

    A select rather than ``lax.cond``: under ``vmap`` a cond becomes a select anyway, and a
    select keeps one program for every run of a batch.
    """
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), on_true, on_false)
