"""One jitted program object per set of static arguments, so a process traces it once.

JAX caches traces and compiled executables per function object: two ``jax.jit`` wrappers of
equal closures trace, lower and compile twice. :func:`per_arguments` memoises a builder of
jitted functions on its (hashable) arguments, e.g. ``(algo, cfg, env, num_updates)``, so the
runs of one process (a run, its interrupted twin and its resume, the settings of a sweep,
the tests of a module) share one program.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def per_arguments(build: Callable[..., Any], maxsize: int = 8) -> Callable[..., Any]:
    """``build`` memoised on its positional arguments (the last ``maxsize`` distinct ones).

    Arguments that cannot be hashed (e.g. an env holding a list) get a fresh ``build(*args)``
    on every call, so the result is always correct and at worst compiled again.
    """
    cached = functools.lru_cache(maxsize=maxsize)(build)

    @functools.wraps(build)
    def get(*args: Any) -> Any:
        try:
            hash(args)
        except TypeError:
            return build(*args)
        return cached(*args)

    get.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return get
