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
* optional, where ``init`` keeps copies of the parameters outside ``State.params``
  (IMPALA, Ape-X): ``with_params(cfg, state, params) -> State``, the state as if the run
  started from ``params`` (used by ``jaxrl.meta.metagrad.with_params``).

Modules never call ``jit``: the runner and tests do, so every function nests under
``vmap`` and ``grad``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from collections.abc import Iterable, Mapping
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
            raise ConfigError(f"{name} must be finite, got {_shown(value, ~np.isfinite(value))}")
        outside = (value < low) | (value > high)
        if np.any(outside):
            raise ConfigError(f"{name} must lie in [{low}, {high}], got {_shown(value, outside)}")


def _shown(value: np.ndarray, bad: np.ndarray) -> str:
    """The ``bad`` entries of ``value`` for a message: ``-0.001`` (float32's ``-0.0010000000474``
    shown to 6 digits); for a run axis the first three and how many of how many runs."""
    shown = [f"{float(v):.6g}" for v in np.ravel(value[bad])]
    if value.ndim == 0:
        return shown[0]
    more = ", ..." if len(shown) > 3 else ""
    return f"{', '.join(shown[:3])}{more} (in {len(shown)} of {value.size} runs)"


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    """``{field name: its resolved annotation}`` of a ``Config`` dataclass (a field whose
    annotation cannot be resolved, e.g. a user subclass's local name, is left unchecked)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001  (any unresolvable name: check what is resolved)
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_finite_real(value) -> bool:
    real = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    return real and math.isfinite(value)


def check_fields(cfg) -> None:
    """Raises ``ConfigError`` for a ``cfg`` field whose value does not fit its annotation.

    ``bool`` fields take ``True``/``False`` only, ``int`` fields whole numbers, ``float``
    fields finite numbers, ``str`` fields strings; ``tuple[int, ...]`` fields (layer sizes)
    take ints >= 1, ``tuple[float, ...]`` finite numbers. Ranges beyond these are each
    algorithm's own checks.
    """
    for name, kind in _field_types(type(cfg)).items():
        value = getattr(cfg, name)
        if kind is bool:
            ok, want = isinstance(value, (bool, np.bool_)), "True or False"
        elif kind is int:
            ok, want = _is_int(value), "an integer"
        elif kind is float:
            ok, want = _is_finite_real(value), "a finite number"
        elif kind is str:
            ok, want = isinstance(value, str), "a string"
        elif typing.get_origin(kind) is tuple and typing.get_args(kind)[1:] == (Ellipsis,):
            elem = typing.get_args(kind)[0]
            if elem is int:
                ok = isinstance(value, tuple) and all(_is_int(v) and v >= 1 for v in value)
                want = "a tuple of integers >= 1"
            elif elem is float:
                ok = isinstance(value, tuple) and all(_is_finite_real(v) for v in value)
                want = "a tuple of finite numbers"
            else:
                continue
        else:
            continue
        if not ok:
            raise ConfigError(f"{name} must be {want}, got {value!r}")


def _check_ints(cfg, names: tuple[str, ...], minimum: int, want: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not _is_int(value) or value < minimum:
            raise ConfigError(f"{name} must be {want}, got {value!r}")


def check_positive_ints(cfg, names: tuple[str, ...]) -> None:
    """Raises ``ConfigError`` unless every named ``cfg`` field is an int >= 1."""
    _check_ints(cfg, names, 1, "a positive integer")


def check_non_negative_ints(cfg, names: tuple[str, ...]) -> None:
    """Raises ``ConfigError`` unless every named ``cfg`` field is an int >= 0."""
    _check_ints(cfg, names, 0, "an integer >= 0")


def check_choices(cfg, choices: Mapping[str, Iterable[str]]) -> None:
    """Raises ``ConfigError``, listing the valid values, if a named ``cfg`` field is not one.

    ``choices`` maps a field's name to its valid values (a tuple, or a dict's keys).
    """
    for name, valid in choices.items():
        value, valid = getattr(cfg, name), tuple(valid)
        if value not in valid:
            raise ConfigError(f"{name} must be one of {valid}, got {value!r}")


IMAGE_TORSOS = ("cnn", "minatar")  # torsos whose input is one [H, W, C] image per step


def check_torso_fits(torso: str, env) -> None:
    """Raises ``ConfigError`` if an image torso (:data:`IMAGE_TORSOS`) gets ``env``'s
    observations and they are not ``[H, W, C]`` images."""
    shape = env.observation_space(env.default_params()).shape
    if torso in IMAGE_TORSOS and len(shape) != 3:
        raise ConfigError(
            f"torso={torso!r} needs image observations [H, W, C]; {env.name}'s have shape "
            f"{tuple(shape)} (use torso='mlp')"
        )


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
