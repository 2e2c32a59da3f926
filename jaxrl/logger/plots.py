"""Learning-curve plots (matplotlib, Agg backend; host only)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def learning_curve(
    path: str | Path, env_steps: np.ndarray, returns: np.ndarray, title: str
) -> None:
    """Saves mean return across runs with a min-max band and a ±std band.

    Args:
        path: output PNG.
        env_steps: ``[U]`` env steps per run after each update.
        returns: ``[R, U]`` episode return per run (forward-filled, NaN before any episode).
        title: figure title.
    """
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before any episode
        mean = np.nanmean(returns, axis=0)
        std = np.nanstd(returns, axis=0)
        low, high = np.nanmin(returns, axis=0), np.nanmax(returns, axis=0)
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    ax.fill_between(env_steps, low, high, alpha=0.15, color="C0", lw=0, label="min-max")
    lo, hi = np.maximum(mean - std, low), np.minimum(mean + std, high)  # inside the range
    ax.fill_between(env_steps, lo, hi, alpha=0.3, color="C0", lw=0, label="±std")
    ax.plot(env_steps, mean, color="C0", label=f"mean of {returns.shape[0]} runs")
    ax.set_xlabel("environment steps per run")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
