"""Algorithms, each a module with Config, HParams, State, init, update, train, loss."""

from __future__ import annotations

import types

from jaxrl.algorithms import ppo

ALGORITHMS: dict[str, types.ModuleType] = {"ppo": ppo}


def get(name: str) -> types.ModuleType:
    """Returns the algorithm module called ``name``; ValueError lists the valid names."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]
