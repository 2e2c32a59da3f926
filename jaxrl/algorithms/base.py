"""The algorithm contract and helpers shared by every algorithm module.

Every algorithm module exposes:

* ``Config``: a frozen dataclass of static settings (shapes, counts, switches).
* ``HParams``: a ``flax.struct.PyTreeNode`` of traced float32 scalars (rates,
  coefficients), with ``HParams.make(**overrides)``.
* ``State``: a pytree of arrays only (params, optimiser state, env state, key, counters).
* ``init(cfg, env, key, hp, env_params=None) -> State``
* ``update(cfg, env, state, hp) -> (State, Metrics)``: one iteration.
* ``train(cfg, env, state, hp, num_updates) -> (State, Metrics)``: ``num_updates``
  iterations as one ``lax.scan``; metrics come back stacked ``[num_updates, ...]``.
* ``loss(cfg, env, params, batch, hp) -> (scalar, Metrics)``.

Modules never call ``jit``: the runner and tests do, so every function nests under
``vmap`` and ``grad``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.errors import ConfigError  # noqa: F401  (re-exported: algorithms raise it)


def make_hparams(cls, defaults: Mapping[str, float], overrides: Mapping[str, Any]):
    """Builds an ``HParams`` of float32 arrays from defaults and overrides.

    Overrides may be numbers or arrays (a leading run axis for sweeps). Unknown names
    and non-numeric values raise :class:`ConfigError`.
    """
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ConfigError(
            f"unknown hyperparameter(s) {sorted(unknown)}; valid: {', '.join(sorted(defaults))}"
        )
    values = {}
    for name, value in {**defaults, **overrides}.items():
        if isinstance(value, bool) or isinstance(value, str):
            raise ConfigError(f"hyperparameter {name} must be a number, got {value!r}")
        try:
            values[name] = jnp.asarray(value, jnp.float32)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"hyperparameter {name} must be a number, got {value!r}") from err
    return cls(**values)


def check_ranges(hp, ranges: Mapping[str, tuple[float, float]]) -> None:
    """Raises :class:`ConfigError` if a concrete hyperparameter leaves its closed range.

    ``ranges`` maps a name to ``(low, high)``; works on scalars and run-axis arrays.
    """
    for name, (low, high) in ranges.items():
        value = np.asarray(getattr(hp, name))
        if not np.all(np.isfinite(value)):
            raise ConfigError(f"{name} must be finite, got {value}")
        if np.any(value < low) or np.any(value > high):
            raise ConfigError(f"{name} must lie in [{low}, {high}], got {value}")


def check_positive_ints(cfg, names: tuple[str, ...]) -> None:
    """Raises ``ConfigError`` unless every named ``cfg`` field is an int >= 1."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def config_from_dict(cls, values: Mapping[str, Any]):
    """Builds a ``Config`` dataclass, rejecting unknown keys and converting lists to tuples."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)}; valid: {', '.join(fields)}")
    values = {k: tuple(map(_tuple, v)) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


def _tuple(x):
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x


def nan_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean that is NaN when the weights sum to zero (no episode finished)."""
    total = jnp.sum(weights)
    return jnp.where(total > 0, jnp.sum(values * weights) / jnp.maximum(total, 1), jnp.nan)


def ceil_div(a: int, b: int) -> int:
    """Integer ``ceil(a / b)`` for positive ints."""
    return math.ceil(a / b)


def check_budget(cfg, per_update: str) -> None:
    """Raises ``ConfigError`` if ``cfg.total_timesteps`` is less than one update.

    ``per_update`` names how ``cfg.steps_per_update`` is made, e.g. ``"num_envs * train_freq"``.
    """
    if cfg.total_timesteps < cfg.steps_per_update:
        raise ConfigError(
            f"total_timesteps = {cfg.total_timesteps} is less than one update "
            f"({per_update} = {cfg.steps_per_update})"
        )


def check_batch_fits(cfg) -> None:
    """Raises ``ConfigError`` if ``cfg.batch_size`` exceeds ``cfg.buffer_size``."""
    if cfg.batch_size > cfg.buffer_size:
        raise ConfigError(f"batch_size = {cfg.batch_size} exceeds buffer_size = {cfg.buffer_size}")
