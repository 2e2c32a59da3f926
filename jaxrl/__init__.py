"""jaxrl: reinforcement learning as pure, jit-compiled, vmappable JAX functions.

Curated re-exports only; see the subpackages for everything else.
"""

__version__ = "0.1.0"

from jaxrl import algorithms, envs, networks  # noqa: E402
from jaxrl.runner.sweep import grid  # noqa: E402

__all__ = ["__version__", "algorithms", "envs", "grid", "networks"]
