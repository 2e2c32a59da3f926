"""PPO learns: fixed seeds, the presets' settings, stated final returns."""

from __future__ import annotations

import numpy as np
import pytest

from jaxrl import algorithms, envs
from jaxrl.runner import config, loop, sweep

pytestmark = pytest.mark.learning


def _train_preset(name: str, num_seeds: int):
    algo = algorithms.get("ppo")
    preset = config.load_preset(name)
    cfg, hp = config.resolve(algo, preset, {}, None)
    env, _ = envs.make(preset["env"])
    runs = sweep.grid(hp, seeds=range(num_seeds))
    result = loop.run(algo, env, cfg, runs, env_name=preset["env"], algo_name="ppo", quiet=True)
    return cfg, result.summary


def test_cartpole_reaches_450_over_4_seeds_in_500k_steps():
    cfg, summary = _train_preset("ppo/cartpole", num_seeds=4)
    assert cfg.num_updates * cfg.steps_per_update <= 500_000
    final = np.asarray(summary["final_return"]["per_run"])
    assert np.isfinite(final).all()
    assert final.mean() >= 450, final


def test_pendulum_reaches_minus_300_over_4_seeds_in_300k_steps():
    cfg, summary = _train_preset("ppo/pendulum", num_seeds=4)
    assert cfg.num_updates * cfg.steps_per_update <= 300_000
    final = np.asarray(summary["final_return"]["per_run"])
    assert np.isfinite(final).all()
    assert final.mean() >= -300, final
