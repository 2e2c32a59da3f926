"""jaxrl: reinforcement learning as pure, jit-compiled, vmappable JAX functions.

Curated re-exports only; see the subpackages for everything else. They load on first
use, so ``import jaxrl`` starts nothing in JAX (the CLI sets device options first).
"""

import importlib

__version__ = "0.1.0"

__all__ = ["__version__", "algorithms", "envs", "grid", "networks"]


def __getattr__(name: str):
    if name in ("algorithms", "envs", "networks"):
        return importlib.import_module(f"jaxrl.{name}")
    if name == "grid":
        return importlib.import_module("jaxrl.runner.sweep").grid
    raise AttributeError(f"module 'jaxrl' has no attribute {name!r}")
