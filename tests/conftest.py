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
