"""Skipped work as a real branch, also under ``vmap``.

Under ``vmap`` a ``lax.cond`` on a batched predicate becomes a select that computes both
branches, so a gate such as "learn only after the warm-up" or "step the actor every
second update" saves nothing once seeds are vmapped. :func:`run_if` switches on
:func:`batch_mode`, a predicate reduced over every ``vmap`` axis, which is never batched:
the work runs when some member of the batch needs it and is skipped when none does.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import custom_batching

from jaxrl.types import Metrics
from jaxrl.utils import tree


@custom_batching.custom_vmap
def _mode(every: jax.Array, some: jax.Array) -> jax.Array:
    return jnp.where(every, 1, jnp.where(some, 2, 0)).astype(jnp.int32)


@_mode.def_vmap
def _mode_vmap(axis_size: int, in_batched: list[bool], every: jax.Array, some: jax.Array):
    del axis_size
    every = jnp.all(every, axis=0) if in_batched[0] else every
    some = jnp.any(some, axis=0) if in_batched[1] else some
    return _mode(every, some), False  # _mode again: an enclosing vmap reduces its axis too


def batch_mode(flag: jax.Array) -> jax.Array:
    """Where a bool scalar ``flag`` holds, as an unbatched int32: 0 nowhere, 1 everywhere,
    2 for some members of the batch only (never without ``vmap``). Under (nested) ``vmap``
    the batch is every run of the seed or sweep axes and every data shard."""
    return _mode(flag, flag)


def run_if(
    pred: jax.Array | bool,
    fn: Callable[[object], tuple[object, Metrics]],
    state,
    fields: tuple[str, ...],
) -> tuple[object, Metrics]:
    """``fn(state)`` where ``pred`` holds, else ``state`` and NaN metrics, as a branch.

    ``fn(state) -> (state, metrics)`` may change only ``state``'s ``fields``, and only those
    pass through the branch. Under ``vmap`` a ``lax.cond`` on a batched predicate becomes a
    select that computes both branches; this one switches on :func:`batch_mode`, which is
    never batched: ``fn`` runs when some member of the batch needs it, and only where
    members disagree does each keep its own branch's result by a select. A Python bool
    ``pred`` decides while tracing.
    """
    sub = {name: getattr(state, name) for name in fields}

    def run(sub: dict) -> tuple[dict, Metrics]:
        new, metrics = fn(state.replace(**sub))
        return {name: getattr(new, name) for name in fields}, metrics

    if isinstance(pred, bool) and pred:
        return fn(state)
    _, shapes = jax.eval_shape(run, sub)
    nan = jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)
    skip = lambda sub: (sub, nan)
    if isinstance(pred, bool):
        return state, nan
    mixed = lambda sub: tree.select(pred, run(sub), skip(sub))
    sub, metrics = jax.lax.switch(batch_mode(pred), (skip, run, mixed), sub)
    return state.replace(**sub), metrics
