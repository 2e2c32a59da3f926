"""An orthogonal initialiser that stays safe to ``vmap`` on XLA:CPU.

flax's ``orthogonal`` draws a Gaussian matrix and takes its QR factorisation. Under ``vmap``
(one network per seed) that becomes a batched QR, which jaxlib's CPU backend splits into
pieces on its intra-op thread pool. Two such QRs running at once (two layers, or two devices
of ``jax_num_cpu_devices``) can each wait for pieces queued behind the other, and the
program hangs for ever on a 2-core machine (jax 0.10; docs/design.md, decision 9).
:func:`orthogonal` gives the same matrices, but under ``vmap`` it factorises them one after
another (``lax.map``), so ``jax.jit(jax.vmap(init))`` is safe anywhere. Initialisation runs
once; the sequential QRs cost nothing that matters.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def orthogonal(scale: float = 1.0, column_axis: int = -1) -> Callable:
    """flax's ``nn.initializers.orthogonal(scale, column_axis)`` with a ``vmap`` rule that maps
    over the batched keys instead of batching the QR. ``init(key, shape, dtype) -> [*shape]``,
    equal to flax's for every key (unbatched and batched)."""
    flax_init = nn.initializers.orthogonal(scale, column_axis)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        @jax.custom_batching.custom_vmap
        def one(k):
            return flax_init(k, shape, dtype)

        @one.def_vmap
        def _one_by_one(axis_size, in_batched, k):
            del axis_size, in_batched  # the key is the only input, so it is the batched one
            return jax.lax.map(one, k), True

        return one(key)

    return init
