"""Placing a batch of runs on the ``"run"`` mesh axis (see :mod:`jaxrl.distributed.mesh`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrl.distributed.mesh import RUN_AXIS


def pad_runs(tree: Any, multiple: int) -> Any:
    """Pads the leading run axis of every leaf to a multiple of ``multiple``.

    Padding repeats run 0, so padded runs are valid (and wasted) work; callers drop
    them with ``x[:num_runs]``. ``[R, ...] -> [ceil(R / multiple) * multiple, ...]``.
    """
    num = jax.tree.leaves(tree)[0].shape[0]
    pad = -num % multiple
    if pad == 0:
        return tree
    return jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]), tree)


def shard_runs(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Places every leaf's leading (run) axis across ``mesh``; the run count must divide."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(RUN_AXIS))
    return jax.device_put(tree, sharding)
