"""Shared pytest setup: strict rank promotion, two CPU devices, one compilation cache per run,
the opt-in ``slow`` marker.

``learning`` and ``slow`` are declared in ``pyproject.toml``; tests marked ``slow``
are skipped unless ``--runslow`` is given (as gymnax's ``--all``).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import jax
import pytest

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
