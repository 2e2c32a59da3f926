"""Shared pytest setup: strict rank promotion, two CPU devices, the opt-in ``slow`` marker.

``learning`` and ``slow`` are declared in ``pyproject.toml``; tests marked ``slow``
are skipped unless ``--runslow`` is given (as gymnax's ``--all``).
"""

from __future__ import annotations

import jax
import pytest

# As rlax does: an implicit broadcast between arrays of different rank is an error.
jax.config.update("jax_numpy_rank_promotion", "raise")
# Two XLA CPU devices, so tests can check that sharding runs over devices changes nothing.
jax.config.update("jax_num_cpu_devices", 2)


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
