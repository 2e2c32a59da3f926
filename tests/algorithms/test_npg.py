"""NPG: TRPO's Config with ``line_search=False``, the same program as ``trpo`` with that
setting, registered with a preset; the 500k-step CartPole check is opt-in (slow)."""

from __future__ import annotations

import dataclasses

import chex
import jax
import numpy as np
import pytest

from jaxrl import algorithms, envs
from jaxrl.algorithms import npg, trpo
from jaxrl.runner import config, loop, sweep

SMALL = dict(num_envs=2, rollout_len=32, num_epochs=1, num_minibatches=2, hidden=(8,))


def test_config_is_trpo_without_the_line_search():
    cfg = npg.Config()
    assert isinstance(cfg, trpo.Config) and cfg.line_search is False
    assert dataclasses.asdict(cfg) == dataclasses.asdict(trpo.Config(line_search=False))
    assert algorithms.get("npg") is npg and npg.HParams is trpo.HParams


def test_update_is_trpo_update_without_the_line_search():
    env, _ = envs.make("CartPole-v1")
    hp = npg.HParams.make(max_kl=0.1, cg_damping=1e-3)
    cfg_npg, cfg_trpo = npg.Config(**SMALL), trpo.Config(**SMALL)
    state = jax.jit(lambda k: npg.init(cfg_npg, env, k, hp))(jax.random.key(1))
    # Both updates in one program: one compile, a third faster than two separate ones.
    both = jax.jit(lambda s: (npg.update(cfg_npg, env, s, hp), trpo.update(cfg_trpo, env, s, hp)))
    (new_npg, m_npg), (new_trpo, m_trpo) = both(state)
    assert float(m_npg["train/step_fraction"]) == 1.0
    flat_npg, flat_trpo = (jax.flatten_util.ravel_pytree(s.params)[0] for s in (new_npg, new_trpo))
    np.testing.assert_allclose(m_npg["train/full_step_norm"], m_trpo["train/full_step_norm"])
    if float(m_trpo["train/step_fraction"]) == 1.0:  # TRPO accepted the full step: same move
        chex.assert_trees_all_close(new_npg.params, new_trpo.params)
    else:
        assert not np.allclose(flat_npg, flat_trpo)


def test_preset_resolves_to_the_full_step():
    cfg, hp = config.resolve(npg, config.load_preset("npg/cartpole"), {}, None)
    assert cfg.line_search is False and cfg.num_updates * cfg.steps_per_update <= 500_000
    assert float(hp.max_kl) > 0


@pytest.mark.slow
def test_npg_cartpole_reaches_450_over_4_seeds_in_500k_steps():
    preset = config.load_preset("npg/cartpole")
    cfg, hp = config.resolve(npg, preset, {}, None)
    env, _ = envs.make(preset["env"])
    runs = sweep.grid(hp, seeds=range(4))
    result = loop.run(npg, env, cfg, runs, env_name=preset["env"], algo_name="npg", quiet=True)
    final = np.asarray(result.summary["final_return"]["per_run"])
    assert np.isfinite(final).all() and final.mean() >= 450, final
