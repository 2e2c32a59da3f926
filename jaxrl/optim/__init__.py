"""Optimisers that optax lacks: K-FAC natural gradients (:mod:`jaxrl.optim.kfac`), and
Adam and RMSProp whose reverse-mode derivatives stay finite where the second moment is 0.

**Why.** Adam's and RMSProp's step ``m / (√ν + ε)`` has ``∂/∂ν = ∞`` at ``ν = 0``, which
holds wherever a gradient entry has been exactly 0 at every step so far (a dead ReLU
unit, a parameter the loss does not reach yet). Its cotangent there is ``0`` (``m = 0``),
and ``0 · ∞`` is NaN, so a meta-gradient through such an update (:mod:`jaxrl.meta.metagrad`)
is NaN although its true value is 0. optax's remedy is ``eps_root`` inside the square
root, ``m / (√(ν + eps_root) + ε)``: here :data:`EPS_ROOT`, so small that it changes the
step only where ``ν < 2e-23`` (``√ν < 5e-12``, far below every ``ε`` used), and even
there by less than ``1e-16`` in the denominator, while ``∂/∂ν`` at ``ν = 0`` is finite
and the cotangent ``0 · 5e15 = 0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Inside Adam's and RMSProp's square root: see the module docstring. A float32 normal number
# (the smallest is 1.2e-38), so CPU/GPU flush-to-zero of subnormals leaves it alone.
EPS_ROOT = 1e-32


def adam(
    learning_rate: jax.Array | float, eps: jax.Array | float = 1e-8
) -> optax.GradientTransformation:
    """``optax.adam(learning_rate, eps=eps, eps_root=EPS_ROOT)``: Adam's numbers, with a
    finite reverse-mode derivative at ``ν = 0`` (module docstring). Same state as
    ``optax.adam``."""
    return optax.adam(learning_rate, eps=eps, eps_root=EPS_ROOT)


def scale_by_rms(decay: jax.Array | float, eps: jax.Array | float) -> optax.GradientTransformation:
    """``optax.scale_by_rms(decay, eps, eps_in_sqrt=False)`` (``g / (√ν + ε)``, PyTorch's
    and SB3's RMSProp) with ``√(ν + EPS_ROOT)`` in place of ``√ν``, which optax's lacks
    an option for. Same state (``optax.ScaleByRmsState``); the same numbers wherever
    ``ν >= 2e-23`` (tested against optax)."""

    def init_fn(params):
        return optax.ScaleByRmsState(nu=optax.tree.full_like(params, 0.0))

    def update_fn(updates, state, params=None):
        del params
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, decay, 2)
        updates = jax.tree.map(lambda g, n: (1 / (jnp.sqrt(n + EPS_ROOT) + eps)) * g, updates, nu)
        return updates, optax.ScaleByRmsState(nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def rmsprop(
    learning_rate: jax.Array | float, decay: jax.Array | float, eps: jax.Array | float
) -> optax.GradientTransformation:
    """``optax.rmsprop(learning_rate, decay, eps, eps_in_sqrt=False)`` with
    :func:`scale_by_rms`: the same state and numbers, a finite derivative at ``ν = 0``."""
    # optax's chain, identity (its momentum=None) included, so the states are alike
    return optax.chain(
        scale_by_rms(decay, eps), optax.scale_by_learning_rate(learning_rate), optax.identity()
    )
