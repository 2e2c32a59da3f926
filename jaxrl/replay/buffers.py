"""Replay buffers whose state is a pytree inside the jitted loop, built on flashbax.

Two shapes of replay, both vmappable over runs (seeds x hyperparameters):

* :func:`flat_buffer`: independent transitions; ``add`` takes a batch ``[N, ...]`` (one
  step of ``N`` parallel envs), ``sample`` returns ``[batch_size, ...]`` drawn uniformly
  from everything stored (oldest overwritten first once full).
* :func:`sequence_buffer`: time-ordered per-env streams; ``add`` takes ``[N, 1, ...]``
  (one step) or ``[N, T, ...]``, ``sample`` returns ``[batch_size, sequence_length, ...]``
  windows of consecutive steps of one env (they may cross episode ends: keep ``done`` in
  the items so a learner can cut there).

The returned objects are flashbax buffers: static, hashable containers of the pure
functions ``init(example_item)``, ``add(state, items)``, ``sample(state, key)`` and
``can_sample(state)``. Capacity and batch sizes are static (they set shapes).

Prioritised replay (Schaul et al. 2016, https://arxiv.org/abs/1511.05952) for the value-based
family, with the same ``add`` shapes plus ``set_priorities(state, indices, priorities)``:

* :func:`prioritised_flat_buffer`: items (transitions, or whole ``[L, ...]`` sequences for
  R2D2) drawn with probability ``P(i) = p_i^α / Σ_k p_k^α``.
* :func:`prioritised_sequence_buffer`: windows of consecutive steps of one env, one priority
  per window start (n-step DQN with PER).
* :func:`importance_weights` and :func:`num_items` for the bias correction;
  :func:`set_priorities_where` updates only some draws of a batch.

Their ``sample`` returns ``.experience`` (``[B, ...]``, resp. ``[B, L, ...]``), ``.indices``
(``[B]`` int32, what ``set_priorities`` takes) and ``.probabilities`` (``[B]``, ``P(i)``).
Sampling is stratified (one draw from each of ``B`` equal slices of the total priority), so
draws within one batch are not independent; each draw's marginal is ``P(i)``.

Priority rules. An item added gets the largest ``p^α`` ever recorded (at least 1), as in the
paper and Dopamine: the largest ever, even if that item's priority was lowered since. A
priority of 0 removes an item until its slot is written again; ``set_priorities`` ignores
slots whose priority is 0 (empty, overwritten, broken windows) so it cannot revive them.
Priorities must be finite and non-negative (a NaN makes every later sample meaningless).
``α`` is static (baked into ``set_priorities``).

Where flashbax 0.1.3 is patched here (PR #58 upstream fixes the first and makes the tree's
dtype configurable; unreleased): its ``add`` gives new items ``floor`` of the max priority
(an integer ``full_like``); its float32 sum tree drifts (issue #52): every change is added to
the ancestors as a delta, and the rounding accumulates (a total near 8,192 brought down to
about 33 by shrinking priorities ended 0.42 below the sum of its leaves, so the last slots
could not be drawn). Here every ``add`` and ``set_priorities`` then sets each ancestor of
the slots they touched to the sum of its two children (:func:`_resum_ancestors`), so the
tree is always an exact float32 sum of its leaves and nothing accumulates. Its descent could
also land on zero-priority slots (padding past the capacity, empty slots, broken windows)
and return garbage with probability 0; sampling here never enters a zero-sum child, and
replaces a draw that still hits a zero leaf by the batch's first good one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import chex
import flashbax as fbx
import jax
import jax.numpy as jnp
from flashbax.buffers import prioritised_trajectory_buffer as fbx_ptb

from jaxrl.errors import ConfigError


def _check(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def flat_buffer(capacity: int, batch_size: int, min_size: int | None = None):
    """Uniform replay of transitions.

    Args:
        capacity: the most transitions kept (``[capacity, ...]`` per leaf).
        batch_size: transitions per ``sample``.
        min_size: ``can_sample`` is false below this many transitions (default ``batch_size``).
    """
    min_size = batch_size if min_size is None else min_size
    _check(capacity=capacity, batch_size=batch_size, min_size=min_size)
    if max(min_size, batch_size) > capacity:
        raise ConfigError(
            f"min_size = {min_size} and batch_size = {batch_size} must not exceed the "
            f"capacity {capacity}"
        )
    buf = fbx.make_item_buffer(
        max_length=capacity, min_length=min_size, sample_batch_size=batch_size, add_batches=True
    )
    return dataclasses.replace(buf, sample=_allow_rank_promotion(buf.sample))


def sequence_buffer(
    num_envs: int, capacity: int, batch_size: int, sequence_length: int, period: int = 1
):
    """Replay of windows of ``sequence_length`` consecutive steps per env.

    Args:
        num_envs: parallel streams added per call (``add`` takes ``[num_envs, T, ...]``).
        capacity: the most steps kept over all envs (``capacity // num_envs`` per env).
        batch_size: windows per ``sample``.
        sequence_length: steps per window.
        period: start positions of sampled windows are multiples of ``period``.
    """
    _check(
        num_envs=num_envs,
        capacity=capacity,
        batch_size=batch_size,
        sequence_length=sequence_length,
        period=period,
    )
    if capacity // num_envs < sequence_length:
        raise ConfigError(
            f"capacity // num_envs = {capacity // num_envs} steps per env is shorter than "
            f"sequence_length = {sequence_length}"
        )
    buf = fbx.make_trajectory_buffer(
        add_batch_size=num_envs,
        sample_batch_size=batch_size,
        sample_sequence_length=sequence_length,
        period=period,
        min_length_time_axis=sequence_length,
        max_length_time_axis=capacity // num_envs,
    )
    return dataclasses.replace(buf, sample=_allow_rank_promotion(buf.sample))


def prioritised_flat_buffer(
    capacity: int,
    batch_size: int,
    min_size: int | None = None,
    priority_exponent: float = 0.6,
):
    """Prioritised replay of items: transitions, or whole ``[L, ...]`` sequences (R2D2).

    ``init(item)`` takes one item (any pytree, e.g. ``[L, ...]`` leaves and an LSTM
    ``(c, h)``), ``add(state, items)`` takes ``[N, ...]`` (``N <= capacity``; the oldest
    items are overwritten first once full), ``sample(state, key)`` returns ``.experience``
    ``[batch_size, ...]``, ``.indices`` ``[batch_size]`` (the slot, ``0 <= i < capacity``)
    and ``.probabilities`` ``[batch_size]``; ``set_priorities(state, indices, priorities)``
    sets ``p_i`` (``[K]`` each, e.g. ``|δ| + ε``; a repeated index keeps its last value).

    Args:
        capacity: the most items kept (``[capacity, ...]`` per leaf).
        batch_size: items per ``sample`` (drawn with replacement).
        min_size: ``can_sample`` is false below this many items (default ``batch_size``).
        priority_exponent: ``α`` in ``[0, 1]``; 0 samples uniformly.
    """
    min_size = batch_size if min_size is None else min_size
    _check(capacity=capacity, batch_size=batch_size, min_size=min_size)
    alpha = _check_exponent(priority_exponent)
    if max(min_size, batch_size) > capacity:
        raise ConfigError(
            f"min_size = {min_size} and batch_size = {batch_size} must not exceed the "
            f"capacity {capacity}"
        )
    buf = fbx.make_prioritised_item_buffer(
        max_length=capacity,
        min_length=min_size,
        sample_batch_size=batch_size,
        add_batches=True,
        priority_exponent=alpha,
        device=_device(),
    )
    return _patch(buf, batch_size=batch_size, sequence_length=1, period=1, items=True)


def prioritised_sequence_buffer(
    num_envs: int,
    capacity: int,
    batch_size: int,
    sequence_length: int,
    period: int = 1,
    priority_exponent: float = 0.6,
):
    """Prioritised replay of windows of ``sequence_length`` consecutive steps of one env.

    As :func:`sequence_buffer` (``add`` takes ``[num_envs, T, ...]``), but each window start
    has a priority: ``sample`` returns ``.experience`` ``[batch_size, sequence_length, ...]``,
    ``.indices`` and ``.probabilities`` ``[batch_size]``; ``set_priorities(state, indices,
    priorities)`` sets the priority of the windows starting there. Index ``i`` is env
    ``i // (S / period)``, start slot ``(i % (S / period)) * period`` of that env's ``S``
    steps. A window can be sampled once all its steps are written, until one is overwritten.

    Args:
        num_envs: parallel streams added per call.
        capacity: the most steps kept over all envs; each env keeps ``S = capacity //
            num_envs`` rounded down to a multiple of ``period``.
        batch_size: windows per ``sample`` (drawn with replacement).
        sequence_length: steps per window.
        period: windows start at multiples of ``period`` (one priority per ``period`` steps).
        priority_exponent: ``α`` in ``[0, 1]``; 0 samples uniformly.
    """
    _check(
        num_envs=num_envs,
        capacity=capacity,
        batch_size=batch_size,
        sequence_length=sequence_length,
        period=period,
    )
    alpha = _check_exponent(priority_exponent)
    steps_per_env = capacity // num_envs // period * period
    if steps_per_env < sequence_length:
        raise ConfigError(
            f"capacity // num_envs = {capacity // num_envs} steps per env (rounded down to a "
            f"multiple of period = {period}) is shorter than sequence_length = {sequence_length}"
        )
    buf = fbx.make_prioritised_trajectory_buffer(
        add_batch_size=num_envs,
        sample_batch_size=batch_size,
        sample_sequence_length=sequence_length,
        period=period,
        min_length_time_axis=sequence_length,
        max_length_time_axis=steps_per_env,
        priority_exponent=alpha,
        device=_device(),
    )
    return _patch(
        buf, batch_size=batch_size, sequence_length=sequence_length, period=period, items=False
    )


def set_priorities_where(
    state, indices: jax.Array, priorities: jax.Array, where: jax.Array, priority_exponent: float
):
    """``set_priorities`` for only the draws where ``where`` is true (R2D3's batches mix two
    buffers; each takes the new priorities of its own draws).

    The slot of a draw with ``where`` false keeps its priority, unless a draw with ``where``
    true sampled the same slot (then it takes that draw's: a batch's duplicate draws carry
    equal priorities). As ``set_priorities``, zero-priority slots stay at 0, the max
    recorded priority rises with the new ones and the sums stay exact.

    Args:
        state: a :func:`prioritised_flat_buffer` or :func:`prioritised_sequence_buffer` state.
        indices: ``[B]`` sampled slots (``sample(...).indices``).
        priorities: ``[B]`` new priorities, finite and non-negative.
        where: ``[B]`` bool, which draws to apply.
        priority_exponent: the buffer's ``α``.

    Returns:
        The updated state.
    """
    chex.assert_rank([indices, priorities, where], 1)
    chex.assert_equal_shape([indices, priorities, where])
    tree = state.sum_tree_state
    slots = 2**tree.tree_depth - 1 + indices
    current = tree.nodes[slots]
    applied = (indices[:, None] == indices[None, :]) & where[None, :]  # [draw, applied draw]
    source = jnp.argmax(applied, axis=1)
    raised = jnp.where(priorities == 0, 0.0, priorities**priority_exponent)[source]
    values = jnp.where(jnp.any(applied, axis=1) & (current > 0), raised, current)
    nodes = _resum_ancestors(tree.nodes.at[slots].set(values), tree.tree_depth, indices)
    top = jnp.maximum(tree.max_recorded_priority, jnp.max(values))
    return state.replace(sum_tree_state=tree.replace(nodes=nodes, max_recorded_priority=top))


def importance_weights(
    probabilities: jax.Array, num_items: chex.Numeric, beta: chex.Numeric
) -> jax.Array:
    """Importance-sampling weights ``w_i = (N P(i))^-β / max_j w_j`` (Schaul et al. 2016).

    The max is over the batch (as Dopamine and Acme do), so ``N`` cancels in exact
    arithmetic: ``w_i = (min_j P(j) / P(i))^β``; it is kept so the terms read as in the paper.
    ``β = 0`` gives all ones, ``β = 1`` fully corrects the sampling bias.

    Args:
        probabilities: ``[B]`` ``P(i)`` of the sampled items (``sample(...).probabilities``),
            all positive.
        num_items: ``N``, e.g. :func:`num_items` of the state sampled from.
        beta: ``β >= 0``, a traced scalar (usually annealed to 1).

    Returns:
        ``[B]`` weights in ``(0, 1]``.
    """
    chex.assert_rank(probabilities, 1)
    w = jnp.power(num_items * probabilities, -beta)
    return w / jnp.max(w)


def num_items(state) -> jax.Array:
    """``N``: how many items (flat) or windows (sequence) ``sample`` can return now.

    It counts the sum-tree leaves with a positive priority: items stored, or windows whose
    steps are all written and none overwritten, less any whose priority was set to 0. A
    sequence buffer that has been given ``t <= S`` steps per env has ``num_envs * ((t -
    sequence_length) // period + 1)`` windows (``t >= sequence_length``). One pass over the
    leaves (``capacity``, resp. ``capacity / period``).

    Args:
        state: the state of a :func:`prioritised_flat_buffer` or
            :func:`prioritised_sequence_buffer` (or ``[R]`` of them, stacked over runs).

    Returns:
        ``[]`` (resp. ``[R]``) int32.
    """
    tree = state.sum_tree_state
    first = 2**tree.tree_depth - 1  # the leaves follow the internal nodes
    leaves = tree.nodes[..., first : first + tree.capacity]
    return jnp.sum(leaves > 0, axis=-1, dtype=jnp.int32)


def _patch(buf, *, batch_size: int, sequence_length: int, period: int, items: bool):
    """Our ``add`` / ``sample`` / ``set_priorities`` around flashbax's (see module doc)."""
    static = dict(sequence_length=sequence_length, period=period, items=items)
    set_batch = fbx_ptb.SET_BATCH_FN[_device()]
    return dataclasses.replace(
        buf,
        init=functools.partial(_init, buf.init),
        add=functools.partial(_add, _allow_rank_promotion(buf.add), set_batch, **static),
        sample=functools.partial(_sample, batch_size=batch_size, **static),
        set_priorities=functools.partial(_set_priorities, buf.set_priorities),
    )


def _init(fbx_init, item):
    """flashbax's ``init`` with the max priority a float32 array, as ``set_priorities`` leaves
    it: flashbax starts it weakly typed, so a fresh state and an updated one would be two
    input types and every jitted function taking both would compile twice."""
    state = fbx_init(item)
    tree = state.sum_tree_state
    top = jnp.asarray(tree.max_recorded_priority, jnp.float32)
    return state.replace(sum_tree_state=tree.replace(max_recorded_priority=top))


def _add(fbx_add, set_batch, state, batch, *, sequence_length: int, period: int, items: bool):
    """flashbax's ``add``, then the new windows' priorities set to the unrounded max."""
    num_rows, max_len = jax.tree.leaves(state.experience)[0].shape[:2]
    add_len = jax.tree.leaves(batch)[0].shape[0 if items else 1]
    before = state.running_index
    state = fbx_add(state, batch)
    # Window starts s (a multiple of period, in steps since init) that became valid: all
    # of s .. s + L - 1 written (s + L <= after), some just now (s + L > before), none yet
    # overwritten (s >= after - max_len). As flashbax's _calculate_new_item_indices.
    after = before + add_len
    lowest = jnp.maximum(before - sequence_length + 1, after - max_len)
    first = (jnp.maximum(lowest, 0) + period - 1) // period * period
    starts = first + period * jnp.arange(add_len // period + 1)
    valid = starts + sequence_length <= after
    per_row = max_len // period
    slots = (starts % max_len) // period
    indices = jnp.arange(num_rows)[:, None] * per_row + slots[None, :]
    tree = state.sum_tree_state
    # Masked entries point past the node array and carry 0, as flashbax pads (a no-op).
    pad = tree.nodes.shape[0] + 1
    indices = jnp.where(valid[None, :], indices, pad).reshape(-1)
    values = jnp.where(valid, tree.max_recorded_priority, 0.0)
    values = jnp.broadcast_to(values[None, :], (num_rows, values.shape[0])).reshape(-1)
    tree = set_batch(tree, indices, values)
    # flashbax zeroed the windows the write broke, which start in before - L + 1 .. after - 1
    # (as ours do): re-sum the ancestors of every window start in a range covering both.
    first_touched = (before - sequence_length + 1) // period * period
    touched = first_touched + period * jnp.arange((add_len + sequence_length) // period + 3)
    touched = jnp.arange(num_rows)[:, None] * per_row + ((touched % max_len) // period)[None, :]
    nodes = _resum_ancestors(tree.nodes, tree.tree_depth, touched.reshape(-1))
    return state.replace(sum_tree_state=tree.replace(nodes=nodes))


def _sample(state, key, *, batch_size: int, sequence_length: int, period: int, items: bool):
    """Stratified draws from the sum tree that never land on a zero-priority slot."""
    tree = state.sum_tree_state
    nodes = tree.nodes
    total = nodes[0]
    query = (jnp.arange(batch_size) + jax.random.uniform(key, (batch_size,))) / batch_size
    query = query * total
    index = jnp.zeros((batch_size,), jnp.int32)
    for level in range(1, tree.tree_depth + 1):
        left = 2 * index
        left_sum = nodes[2**level - 1 + left]
        right_sum = nodes[2**level + left]
        # Rounding can leave the query above a child's sum: then stay out of empty children.
        go_right = (left_sum <= 0) | ((query >= left_sum) & (right_sum > 0))
        query = jnp.where(go_right, query - left_sum, query)
        index = jnp.where(go_right, left + 1, left)
    leaf = nodes[2**tree.tree_depth - 1 + index]
    good = leaf > 0
    fallback = jnp.argmax(good)  # a draw whose subtree sum was only rounding error
    index = jnp.where(good, index, index[fallback])
    leaf = jnp.where(good, leaf, leaf[fallback])

    max_len = jax.tree.leaves(state.experience)[0].shape[1]
    row = index * period // max_len
    time = (index * period % max_len)[:, None] + jnp.arange(sequence_length)[None, :]
    time = time % max_len

    def take(x):
        window = x[row[:, None], time]  # [B, L, ...]
        return window[:, 0] if items else window

    experience = jax.tree.map(take, state.experience)
    return fbx_ptb.PrioritisedTrajectoryBufferSample(
        experience=experience, indices=index, probabilities=leaf / total
    )


def _set_priorities(fbx_set, state, indices, priorities):
    """flashbax's ``set_priorities``, leaving zero-priority slots at 0, with exact sums."""
    tree = state.sum_tree_state
    current = tree.nodes.at[2**tree.tree_depth - 1 + indices].get(mode="fill", fill_value=0.0)
    state = fbx_set(state, indices, jnp.where(current > 0, priorities, 0.0))
    tree = state.sum_tree_state
    nodes = _resum_ancestors(tree.nodes, tree.tree_depth, indices)
    return state.replace(sum_tree_state=tree.replace(nodes=nodes))


def _resum_ancestors(nodes: jax.Array, depth: int, slots: jax.Array) -> jax.Array:
    """Sets every ancestor of the leaf ``slots`` ``[K]`` to the sum of its two children,
    bottom up, so each internal node is the float32 sum of its subtree's leaves whatever
    deltas flashbax added before. Slots outside ``[0, 2^depth)`` (padding) are ignored.

    ``nodes`` is flashbax's flat tree ``[2^(depth+1) - 1]``: level ``l`` (root 0, leaves
    ``depth``) holds nodes ``2^l - 1 .. 2^(l+1) - 2``. Siblings written in one call compute
    the same parent value, so duplicates are harmless. ``O(K depth)``.
    """
    valid = (slots >= 0) & (slots < 2**depth)
    index = jnp.where(valid, slots, 0)
    for level in range(depth - 1, -1, -1):
        index = index // 2
        children = 2 ** (level + 1) - 1 + 2 * index
        total = nodes[children] + nodes[children + 1]
        nodes = nodes.at[jnp.where(valid, 2**level - 1 + index, nodes.shape[0])].set(
            total, mode="drop"
        )
    return nodes


def _check_exponent(priority_exponent: float) -> float:
    if (
        not isinstance(priority_exponent, numbers.Real)
        or isinstance(priority_exponent, bool)
        or not math.isfinite(priority_exponent)
        or not 0 <= priority_exponent <= 1
    ):
        raise ConfigError(f"priority_exponent must be in [0, 1], got {priority_exponent!r}")
    return float(priority_exponent)


def _device() -> str:
    """flashbax updates the sum tree with a scan on cpu and with bincount on gpu / tpu."""
    backend = jax.default_backend()
    return backend if backend in ("cpu", "gpu", "tpu") else "cpu"


def _allow_rank_promotion(fn):
    """flashbax's sampling broadcasts ``[B, 1] + [L]``; allow it under a strict config."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.numpy_rank_promotion("allow"):
            return fn(*args, **kwargs)

    return wrapped
