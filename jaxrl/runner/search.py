"""Random search: hyperparameter settings drawn from ranges, every setting for every seed.

Like :func:`jaxrl.runner.sweep.grid`, the result is one :class:`~jaxrl.runner.sweep.Runs`
batch (run axis ``R = num_samples * len(seeds)``), so the whole search is one vmapped
program with traced hyperparameters. Seed ``s`` gets the same PRNG key as in any other
batch (:func:`~jaxrl.runner.sweep.seed_key`); the sampled values depend only on ``key``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.errors import ConfigError
from jaxrl.runner.sweep import Runs, seed_key


class Range(NamedTuple):
    """Draw uniformly in ``[low, high]``, or log-uniformly when ``log`` (needs ``low > 0``)."""

    low: float
    high: float
    log: bool = False


def _check(name: str, r: Range) -> None:
    if not (math.isfinite(r.low) and math.isfinite(r.high)) or r.low > r.high:
        raise ConfigError(f"range for {name} must have finite low <= high, got {r.low}:{r.high}")
    if r.log and r.low <= 0:
        raise ConfigError(f"log range for {name} needs low > 0, got {r.low}")


def sample_settings(num_samples: int, key: jax.Array, **ranges: Range) -> dict[str, np.ndarray]:
    """``num_samples`` values per named range: ``{name: [num_samples] float32}``.

    Each name draws from ``fold_in(key, i)`` with ``i`` its position in sorted order,
    so adding a range leaves the draws of the others unchanged.
    """
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be a positive integer, got {num_samples}")
    out = {}
    for i, name in enumerate(sorted(ranges)):
        r = Range(*ranges[name])
        _check(name, r)
        u = np.asarray(jax.random.uniform(jax.random.fold_in(key, i), (num_samples,)), np.float64)
        if r.log:
            lo, hi = math.log(r.low), math.log(r.high)
            values = np.exp(lo + u * (hi - lo))
        else:
            values = r.low + u * (r.high - r.low)
        out[name] = np.clip(values, r.low, r.high).astype(np.float32)
    return out


def random_search(
    hp: Any, seeds: Sequence[int], num_samples: int, key: jax.Array, **ranges: Range
) -> Runs:
    """``num_samples`` settings drawn from ``ranges`` (name -> ``(low, high[, log])``), each
    run for every seed.

    Args:
        hp: base HParams (scalar leaves); names not in ``ranges`` keep their value.
        seeds: seeds run for every setting.
        num_samples: number of settings drawn.
        key: PRNG key of the draws (independent of the seeds' keys).
        ranges: hyperparameter name -> :class:`Range` or a ``(low, high[, log])`` tuple.

    Returns:
        :class:`Runs` with ``R = num_samples * len(seeds)``, sample-major; labels are
        ``{"run", "seed", "sample", **values}`` with the values as Python floats.
    """
    unknown = set(ranges) - set(vars(hp))
    if unknown:
        raise ConfigError(
            f"unknown hyperparameter(s) {sorted(unknown)}; valid: {', '.join(sorted(vars(hp)))}"
        )
    values = sample_settings(num_samples, key, **ranges)
    names = sorted(values)
    labels, keys, leaves = [], [], {name: [] for name in names}
    for k in range(num_samples):
        for seed in seeds:
            setting = {name: float(values[name][k]) for name in names}
            labels.append({"run": len(labels), "seed": int(seed), "sample": k, **setting})
            keys.append(seed_key(int(seed)))
            for name in names:
                leaves[name].append(values[name][k])
    num = len(labels)
    hps = jax.tree.map(lambda x: jnp.broadcast_to(x, (num, *jnp.shape(x))), hp)
    hps = hps.replace(**{n: jnp.asarray(np.stack(leaves[n]), jnp.float32) for n in names})
    return Runs(jnp.stack(keys), hps, labels)
