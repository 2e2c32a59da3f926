"""Value-function regression terms."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def value_loss(
    value: jax.Array,
    old_value: jax.Array,
    target: jax.Array,
    clip_eps: jax.Array,
    clip: bool,
) -> jax.Array:
    """``0.5 · mean((v − target)^2)``, or PPO2's clipped form when ``clip`` is set.

    Clipped (Implementation Matters, §3): ``v_c = v_old + clip(v − v_old, −ε, ε)``,
    ``0.5 · mean(max((v − G)^2, (v_c − G)^2))``.

    Args:
        value, old_value, target: ``[B]``.
        clip_eps: scalar ``ε``; clip: static switch.

    No stop-gradient on ``target``: the learner differentiates with respect to the
    parameters only, and a meta-gradient must see how the target depends on ``γ``/``λ``.
    """
    chex.assert_rank([value, old_value, target], 1)
    loss = jnp.square(value - target)
    if clip:
        clipped = old_value + jnp.clip(value - old_value, -clip_eps, clip_eps)
        loss = jnp.maximum(loss, jnp.square(clipped - target))
    return 0.5 * jnp.mean(loss)
