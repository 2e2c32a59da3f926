"""Compiling programs once, and quickly where they run briefly.

JAX caches traces and compiled executables per function object: two ``jax.jit`` wrappers of
equal closures trace, lower and compile twice. :func:`per_arguments` memoises a builder of
jitted functions on its (hashable) arguments, e.g. ``(algo, cfg, env, num_updates)``, so the
runs of one process (a run, its interrupted twin and its resume, the settings of a sweep,
the tests of a module) share one program. :func:`quick_jit` compiles small programs with
XLA:CPU options that trade execution speed for compile time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax


def per_arguments(build: Callable[..., Any]) -> Callable[..., Any]:
    """``build`` memoised on its positional arguments (the last 8 distinct ones).

    Arguments that cannot be hashed (e.g. an env holding a list) get a fresh ``build(*args)``
    on every call, so the result is always correct and at worst compiled again.
    """
    cached = functools.lru_cache(maxsize=8)(build)

    @functools.wraps(build)
    def get(*args: Any) -> Any:
        try:
            hash(args)
        except TypeError:
            return build(*args)
        return cached(*args)

    return get


# XLA:CPU options that cut compile time about threefold for small programs, at the cost of
# slower execution: for notebooks, examples and tests dominated by compiling, not running.
# Not every XLA knows every option (jax 0.11's has no xla_cpu_use_fusion_emitters):
# quick_jit passes only those this one accepts (cpu_quick_compile_options).
CPU_QUICK_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


@functools.cache
def cpu_quick_compile_options() -> dict[str, Any]:
    """The entries of :data:`CPU_QUICK_COMPILE` that this jaxlib's XLA:CPU accepts, each
    found by compiling a one-op program with it (once per process)."""
    accepted = {}
    for name, value in CPU_QUICK_COMPILE.items():
        probe = jax.jit(lambda x: x + 1, compiler_options={name: value})
        try:
            probe.lower(jax.ShapeDtypeStruct((), "float32")).compile()
        except jax.errors.JaxRuntimeError:  # INVALID_ARGUMENT: No such compile option
            continue
        accepted[name] = value
    return accepted


def quick_jit(fun: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """``jax.jit(fun, **jit_kwargs)`` compiled with :func:`cpu_quick_compile_options` on a
    CPU backend (other backends get plain ``jax.jit``). Use it for programs that run
    briefly; long training runs are faster with the default optimisations."""
    if jax.default_backend() == "cpu":
        jit_kwargs = {"compiler_options": cpu_quick_compile_options(), **jit_kwargs}
    return jax.jit(fun, **jit_kwargs)
