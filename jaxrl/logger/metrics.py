"""Reductions of per-update metric arrays into the numbers a results table reports."""

from __future__ import annotations

import numpy as np


def final_return(returns: np.ndarray, counts: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Mean return of the episodes finished in the last ``fraction`` of updates, per run.

    Args:
        returns: ``[R, U]`` mean return of the episodes finished in each update (NaN if none).
        counts: ``[R, U]`` number of episodes finished in each update.
        fraction: share of the last updates to average over (at least one update).

    Returns:
        ``[R]``, weighted by episode counts; NaN for a run with no finished episode there.
    """
    window = max(1, int(round(fraction * returns.shape[1])))
    r, c = returns[:, -window:], counts[:, -window:]
    total = c.sum(axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(total > 0, np.nansum(np.nan_to_num(r) * c, axis=1) / total, np.nan)


def forward_fill(x: np.ndarray) -> np.ndarray:
    """Fills NaNs along the last axis with the last finite value (NaN before the first)."""
    x = np.array(x, dtype=np.float64)
    idx = np.where(np.isfinite(x), np.arange(x.shape[-1]), 0)
    np.maximum.accumulate(idx, axis=-1, out=idx)
    filled = np.take_along_axis(x, idx, axis=-1)
    first = np.isfinite(x).argmax(axis=-1)[..., None]
    filled[np.arange(x.shape[-1]) < first] = np.nan
    return filled
