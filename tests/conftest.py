"""Shared pytest setup: strict rank promotion, two CPU devices, one compilation cache per run,
XLA options that compile faster, the opt-in ``slow`` marker.

``learning`` and ``slow`` are declared in ``pyproject.toml``; tests marked ``slow``
are skipped unless ``--runslow`` is given (as gymnax's ``--all``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import jax
import pytest

# XLA:CPU options that trade some code optimisation for compile time, which dominates most
# tests: LLVM at -O1 without its expensive passes, the loop emitters instead of the fusion
# emitters. The whole suite took 0.59x the time of XLA's defaults (739 s against 1,250 s on
# 2 cores), and the tests dominated by running changed little (DQN solving CartPole 44 s
# against 43 s); -O0 instead was 0.76x on a subset, with that DQN run 2.8x slower. XLA reads
# XLA_FLAGS once, when the backend starts, so they are set here, before any computation,
# by the first process (workers, notebook kernels and CLI subprocesses inherit them).
# XLA aborts on a flag it does not know (jax 0.11's has no xla_cpu_use_fusion_emitters),
# so a subprocess tries them first. The user's own XLA_FLAGS come after ours and win. Workers
# find JAXRL_TEST_XLA_FLAGS set and leave XLA_FLAGS alone, as does a user who sets it (to ""
# for XLA's defaults).
FAST_COMPILE_XLA_FLAGS = (
    "--xla_backend_optimization_level=1",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
)


def _accepted_xla_flags(flags: tuple[str, ...]) -> tuple[str, ...]:
    """The ``flags`` with which a fresh process can start this jaxlib's CPU backend."""

    def starts(candidate: tuple[str, ...]) -> bool:
        env = os.environ | {"XLA_FLAGS": " ".join(candidate), "JAX_PLATFORMS": "cpu"}
        code = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
        return done.returncode == 0

    return flags if starts(flags) else tuple(f for f in flags if starts((f,)))


if "JAXRL_TEST_XLA_FLAGS" not in os.environ:
    os.environ["JAXRL_TEST_XLA_FLAGS"] = " ".join(_accepted_xla_flags(FAST_COMPILE_XLA_FLAGS))
    user_flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{os.environ['JAXRL_TEST_XLA_FLAGS']} {user_flags}".strip()

# As rlax does: an implicit broadcast between arrays of different rank is an error.
jax.config.update("jax_numpy_rank_promotion", "raise")
# Two XLA CPU devices, so tests can check that sharding runs over devices changes nothing.
jax.config.update("jax_num_cpu_devices", 2)

# One persistent compilation cache for the whole run, made by the first process (pytest
# itself, before xdist starts its workers, which inherit the variable; so do the notebook
# kernels and CLI subprocesses). Tests compile the same programs many times over (a run,
# its interrupted twin and its resume; jit against vmap against a loop); each compiles once.
# Every program is kept, however quick to compile: code run with jit disabled compiles each
# small op once per process (hundreds per test), and the two xdist workers share them.
# A cache of the user's own (JAX_COMPILATION_CACHE_DIR) is used as it is and kept.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxrl-tests-xla-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")),
)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # pytest itself, not a worker
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow", action="store_true", default=False, help="also run tests marked slow"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: opt in with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def cli_error_line(capsys):
    """``read(*must_mention)``: what the CLI printed, checked to be one ``jaxrl: error:`` line
    on stderr (no traceback, nothing on stdout) naming every ``must_mention``; returns it."""

    def read(*must_mention: str) -> str:
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("jaxrl: error: ")
        assert "Traceback" not in err and out == ""
        for word in must_mention:
            assert word in lines[0], (word, lines[0])
        return lines[0]

    return read


@pytest.fixture
def preset_final_returns():
    """``run(algo, name) -> (cfg, final [4])``: preset ``name`` trained on 4 seeds in one
    ``loop.run``; the final returns are checked finite and printed with the run time."""
    import numpy as np

    from jaxrl import envs
    from jaxrl.runner import config, loop, sweep

    def run(algo, name: str):
        preset = config.load_preset(name)
        cfg, hp = config.resolve(algo, preset, {}, None)
        env, _ = envs.make(preset["env"])
        runs = sweep.grid(hp, seeds=range(4))
        algo_name = name.split("/")[0]
        result = loop.run(algo, env, cfg, runs, env_name=preset["env"], algo_name=algo_name,
                          quiet=True)  # fmt: skip
        final = np.asarray(result.summary["final_return"]["per_run"])
        print(name, "final returns", final, result.summary["run_seconds"])
        assert np.isfinite(final).all(), final
        return cfg, final

    return run
