"""kfac-jax imported where it works: with it missing, only ACKTR fails, with a clear error."""

from __future__ import annotations

import pytest

from jaxrl import envs
from jaxrl.algorithms import acktr, ppo
from jaxrl.errors import ConfigError
from jaxrl.optim import kfac_jax_compat


def test_without_kfac_jax_acktr_raises_a_clear_error_before_compiling(monkeypatch):
    """As on jax 0.11, where kfac-jax 0.0.8 fails to import: every algorithm module still
    imports, and ACKTR's ``check`` and estimator name the cause instead of failing deep in
    a trace."""
    cause = AttributeError("jax.core.Effects was removed")
    monkeypatch.setattr(kfac_jax_compat, "kfac_jax", None)
    monkeypatch.setattr(kfac_jax_compat, "IMPORT_ERROR", cause)
    with pytest.raises(ConfigError, match="ACKTR needs kfac-jax.*jax.core.Effects was removed"):
        acktr.check(acktr.Config(), acktr.HParams.make())
    env, _ = envs.make("CartPole-v1")
    with pytest.raises(ConfigError, match="run ACKTR with Python 3.11 and jax 0.10"):
        acktr.estimator(acktr.Config(num_envs=2, rollout_len=2, hidden=(4,)), env)
    ppo.check(ppo.Config(), ppo.HParams.make())  # the rest does not need kfac-jax


def test_require_returns_kfac_jax_where_it_imports():
    if kfac_jax_compat.kfac_jax is None:
        assert kfac_jax_compat.IMPORT_ERROR is not None
        with pytest.raises(ConfigError):
            kfac_jax_compat.require()
    else:
        assert kfac_jax_compat.require().BlockDiagonalCurvature is not None
