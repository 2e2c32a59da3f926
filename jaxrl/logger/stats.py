"""Aggregate statistics over runs and tasks, with stratified bootstrap confidence intervals.

The estimators and the interval method follow Agarwal et al., "Deep Reinforcement Learning
at the Edge of the Statistical Precipice" (NeurIPS 2021, https://arxiv.org/abs/2108.13264),
the paper behind rliable. They are written here in numpy (no rliable dependency: rliable
1.2.0 pulls in ``arch``, whose newest allowed release fails to import with pandas 3).

Conventions:

- ``scores`` is ``[N, M]``: ``N`` runs (seeds) of one method on each of ``M`` tasks
  (environments), usually normalised so that 0 is bad and 1 is good. Every aggregate also
  accepts leading batch axes ``[..., N, M]`` and reduces only the last two, which is how
  the bootstrap evaluates all its resamples in one call.
- A *stratified* bootstrap resamples the ``N`` runs with replacement independently within
  each task (the tasks are fixed strata), as rliable does by default.
- Intervals use the percentile method: the ``(1 - ci) / 2`` and ``(1 + ci) / 2`` quantiles
  of the bootstrap distribution. A fixed ``seed`` makes every interval reproducible.

Everything here is host-side numpy; nothing touches JAX.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

Aggregate = Callable[[np.ndarray], np.ndarray]


def mean_difference(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``mean(x) − mean(y)`` and its (Welch) standard error ``sqrt(s²_x / n_x + s²_y / n_y)``
    for independent per-seed scores ``x [n_x]``, ``y [n_y]`` (sample variances, ddof 1)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    diff = x.mean() - y.mean()
    se = np.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
    return float(diff), float(se)


class Interval(NamedTuple):
    """A point estimate and its confidence interval (floats, or arrays of one shape)."""

    point: float | np.ndarray
    low: float | np.ndarray
    high: float | np.ndarray


def _as_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]  # one task
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"scores must be [runs, tasks] with both > 0, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite (drop runs that finished no episode first)")
    return scores


def trimmed_mean(x: np.ndarray, proportion: float) -> np.ndarray:
    """Mean of the values left after cutting ``proportion`` of them from each end.

    Args:
        x: ``[..., K]``; reduced over the last axis.
        proportion: in ``[0, 0.5)``; ``int(proportion * K)`` values are cut from each end
            (the convention of ``scipy.stats.trim_mean``).

    Returns:
        ``[...]``.
    """
    x = np.sort(np.asarray(x, dtype=np.float64), axis=-1)
    k = x.shape[-1]
    cut = int(proportion * k)
    return x[..., cut : k - cut].mean(axis=-1)


def iqm(scores: np.ndarray) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% of all ``N * M`` scores.

    Args:
        scores: ``[..., N, M]`` (or ``[N]`` for one task).

    Returns:
        ``[...]``: ``trimmed_mean(scores.flatten(), 0.25)`` per leading index.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    flat = scores.reshape(*scores.shape[:-2], -1)
    return trimmed_mean(flat, 0.25)


def mean(scores: np.ndarray) -> np.ndarray:
    """Mean over runs of each task, then over tasks. ``[..., N, M]`` -> ``[...]``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    return scores.mean(axis=-2).mean(axis=-1)


def median(scores: np.ndarray) -> np.ndarray:
    """Median over tasks of the per-task mean score. ``[..., N, M]`` -> ``[...]``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    return np.median(scores.mean(axis=-2), axis=-1)


def optimality_gap(scores: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """How far scores fall short of ``gamma``: ``gamma - mean(min(scores, gamma))``.

    Lower is better; scores above ``gamma`` earn nothing extra. ``[..., N, M]`` -> ``[...]``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    return gamma - mean(np.minimum(scores, gamma))


AGGREGATES: dict[str, Aggregate] = {
    "iqm": iqm,
    "mean": mean,
    "median": median,
    "optimality_gap": optimality_gap,
}


def stratified_bootstrap(
    scores: np.ndarray, reps: int = 2000, seed: int = 0, max_elements: int = 2**24
):
    """Yields resamples of ``scores`` in batches: each ``[B, N, M]``, ``B`` summing to ``reps``.

    Within each task (column) the ``N`` runs are drawn with replacement, independently of
    the other tasks. Batches hold at most about ``max_elements`` numbers, so memory stays
    bounded for large ``reps``. The same ``seed`` gives the same resamples.

    Args:
        scores: ``[N, M]`` (``[N]`` is one task).
        reps: number of resamples.
        seed: seed of the numpy generator.
        max_elements: memory bound per batch.
    """
    scores = _as_scores(scores)
    n, m = scores.shape
    rng = np.random.default_rng(seed)
    batch = max(1, min(reps, max_elements // (n * m)))
    done = 0
    while done < reps:
        b = min(batch, reps - done)
        idx = rng.integers(0, n, size=(b, n, m))
        yield np.take_along_axis(scores[None], idx, axis=1)
        done += b


def interval_estimate(
    scores: np.ndarray,
    fn: Aggregate,
    reps: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Point estimate ``fn(scores)`` and its stratified-bootstrap percentile interval.

    Args:
        scores: ``[N, M]`` runs x tasks (``[N]`` is one task); must be finite.
        fn: an aggregate ``[..., N, M] -> [...]`` (e.g. :func:`iqm`) or one returning
            ``[..., K]`` (e.g. a performance profile at ``K`` thresholds).
        reps: bootstrap resamples.
        ci: coverage of the interval, e.g. 0.95.
        seed: makes the interval reproducible.

    Returns:
        :class:`Interval` of floats (or ``[K]`` arrays).
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    scores = _as_scores(scores)
    point = fn(scores)
    boot = np.concatenate(
        [np.asarray(fn(s)).reshape(len(s), -1) for s in stratified_bootstrap(scores, reps, seed)]
    )
    low, high = np.percentile(boot, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2], axis=0)
    if np.ndim(point) == 0:
        return Interval(float(point), float(low[0]), float(high[0]))
    return Interval(np.asarray(point), low.reshape(np.shape(point)), high.reshape(np.shape(point)))


def aggregate_intervals(
    scores: np.ndarray,
    names: tuple[str, ...] = ("iqm", "mean", "median", "optimality_gap"),
    reps: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """:func:`interval_estimate` for each named aggregate in :data:`AGGREGATES`.

    ``scores`` is ``[N, M]``; every aggregate sees the same resamples (same ``seed``).
    """
    return {name: interval_estimate(scores, AGGREGATES[name], reps, ci, seed) for name in names}


def performance_profile(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Score distribution: the fraction of runs scoring above each threshold ``tau``.

    The fraction is taken within each task, then averaged over tasks, so every task weighs
    the same whatever its number of runs.

    Args:
        scores: ``[..., N, M]`` (``[N]`` is one task).
        taus: ``[K]`` thresholds.

    Returns:
        ``[..., K]``, non-increasing in ``tau``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    taus = np.asarray(taus, dtype=np.float64)
    above = scores[..., None] > taus  # [..., N, M, K]
    return above.mean(axis=-3).mean(axis=-2)


def performance_profile_interval(
    scores: np.ndarray, taus: np.ndarray, reps: int = 2000, ci: float = 0.95, seed: int = 0
) -> Interval:
    """:func:`performance_profile` at ``taus`` ``[K]`` with stratified-bootstrap bands ``[K]``."""
    taus = np.asarray(taus, dtype=np.float64)
    return interval_estimate(scores, lambda s: performance_profile(s, taus), reps, ci, seed)


def mean_interval(
    x: np.ndarray, reps: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs of ``x`` at each step, with a bootstrap interval (for learning curves).

    Runs are resampled with replacement (the same resample at every step, so the band is
    that of the mean curve); NaN entries (no episode finished yet) are ignored.

    Args:
        x: ``[R, U]`` a value per run and step.

    Returns:
        ``(mean, low, high)``, each ``[U]``; NaN where no run has a value.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must be [runs, steps] with runs > 0, got shape {x.shape}")
    r, u = x.shape
    rng = np.random.default_rng(seed)
    batch = max(1, min(reps, 2**24 // max(1, r * u)))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps before any episode
        point = np.nanmean(x, axis=0)
        parts, done = [], 0
        while done < reps:
            b = min(batch, reps - done)
            idx = rng.integers(0, r, size=(b, r))
            parts.append(np.nanmean(x[idx], axis=1))  # [b, U]
            done += b
        boot = np.concatenate(parts)
        low, high = np.nanpercentile(boot, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2], axis=0)
    return point, low, high
