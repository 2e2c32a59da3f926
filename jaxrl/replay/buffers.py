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
"""

from __future__ import annotations

import dataclasses
import functools

import flashbax as fbx
import jax

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


def _allow_rank_promotion(fn):
    """flashbax's sampling broadcasts ``[B, 1] + [L]``; allow it under a strict config."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.numpy_rank_promotion("allow"):
            return fn(*args, **kwargs)

    return wrapped
