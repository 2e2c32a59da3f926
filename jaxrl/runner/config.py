"""Resolving a run's settings: presets, ``--set key=value`` overrides, type checks.

A preset is a JSON file ``jaxrl/presets/<algo>/<name>.json``::

    {"env": "Pendulum-v1", "config": {...Config fields...}, "hparams": {...HParams fields...}}

``--set`` keys may name a ``Config`` field or an ``HParams`` field; values are parsed by
the field's type (``int``, ``float``, ``bool``, ``str``, ``tuple[int, ...]`` as ``64,64``).
Every problem is a :class:`~jaxrl.errors.ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable
from importlib import resources
from types import ModuleType
from typing import Any

from jaxrl.errors import ConfigError


def list_presets() -> list[str]:
    """Every preset as ``<algo>/<name>``."""
    root = resources.files("jaxrl.presets")
    return sorted(
        f"{algo.name}/{f.name.removesuffix('.json')}"
        for algo in root.iterdir()
        if algo.is_dir() and not algo.name.startswith("_")
        for f in algo.iterdir()
        if f.name.endswith(".json")
    )


def load_preset(name: str) -> dict[str, Any]:
    """Loads ``<algo>/<name>``; ConfigError lists the valid presets."""
    valid = list_presets()
    if name not in valid:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(valid) or '(none)'}")
    algo, preset = name.split("/")
    text = resources.files("jaxrl.presets").joinpath(algo, f"{preset}.json").read_text()
    return json.loads(text)


def parse_value(key: str, raw: str, annotation: Any) -> Any:
    """Parses ``raw`` as ``annotation`` (int, float, bool, str, tuple[int|float, ...])."""
    origin = typing.get_origin(annotation)
    try:
        if annotation is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation is int:
            return int(raw)
        if annotation is float:
            return float(raw)
        if annotation is str:
            return raw
        if origin is tuple:
            (elem, *_) = typing.get_args(annotation)
            parts = [p for p in raw.replace("(", "").replace(")", "").split(",") if p.strip()]
            return tuple(parse_value(key, p.strip(), elem) for p in parts)
    except ValueError:
        pass
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"--set {key}={raw}: expected {name}")


def parse_sets(pairs: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a pair without ``=`` is an error."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def resolve(
    algo: ModuleType,
    preset: dict[str, Any] | None,
    sets: dict[str, str],
    total_timesteps: int | None,
) -> tuple[Any, Any]:
    """Builds ``(Config, HParams)`` from a preset, ``--set`` strings and the step budget."""
    preset = preset or {}
    cfg_hints = typing.get_type_hints(algo.Config)
    hp_names = set(algo.HPARAM_DEFAULTS)
    cfg_values = dict(preset.get("config", {}))
    hp_values = dict(preset.get("hparams", {}))
    unknown = set(cfg_values) - set(cfg_hints) | set(hp_values) - hp_names
    if unknown:
        raise ConfigError(f"preset names unknown key(s) {sorted(unknown)}")
    for key, raw in sets.items():
        if key in cfg_hints:
            cfg_values[key] = parse_value(key, raw, cfg_hints[key])
        elif key in hp_names:
            cfg_values.pop(key, None)
            hp_values[key] = parse_value(key, raw, float)
        else:
            valid = sorted([*cfg_hints, *hp_names])
            raise ConfigError(f"unknown --set key {key!r}; valid keys: {', '.join(valid)}")
    if total_timesteps is not None:
        cfg_values["total_timesteps"] = total_timesteps
    cfg_values = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg_values.items()}
    cfg = algo.Config(**cfg_values)
    hp = algo.HParams.make(**hp_values)
    algo.check(cfg, hp)
    return cfg, hp


def config_dict(cfg: Any) -> dict[str, Any]:
    """A ``Config`` as a plain dict (for config.json)."""
    return dataclasses.asdict(cfg)
