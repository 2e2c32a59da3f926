"""Sebulba trains PPO, IMPALA and DQN on host CartPole (envpool and gymnasium).

Smoke tests (default run): a few updates of each algorithm run end to end and move the
parameters. Learning tests (``slow``): the in-JAX CartPole presets, run on host envs with
two actor threads, reach the in-JAX learning tests' thresholds: PPO and IMPALA a final
training return >= 450 (``tests/algorithms/test_ppo_learning.py``, ``test_impala.py``), DQN
a greedy return >= 450 over 16 episodes (``test_dqn.py``). Figures in
``experiments/sebulba/RESULTS.md``.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxrl import algorithms, sebulba
from jaxrl.algorithms import dqn, impala, ppo
from jaxrl.runner import config

GYM, ENVPOOL = "gymnasium/CartPole-v1", "envpool/CartPole-v1"


def _moved(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return any(not np.allclose(x, y) for x, y in pairs)


def _envpool_or_skip(env_id: str) -> None:
    if env_id.startswith("envpool/"):
        pytest.importorskip("envpool")


SMOKE = {
    "ppo": ppo.Config(num_envs=4, rollout_len=16, num_minibatches=2, hidden=(16,),
                      total_timesteps=64 * 6),
    "impala": impala.Config(num_envs=4, rollout_len=16, hidden=(16,), total_timesteps=64 * 6),
    "dqn": dqn.Config(num_envs=4, train_freq=4, gradient_steps=2, buffer_size=400,
                      batch_size=16, learning_starts=32, target_update_period=2,
                      hidden=(16,), total_timesteps=16 * 6),
}  # fmt: skip


@pytest.mark.parametrize(
    "algo, env_id",
    [("ppo", GYM), ("ppo", ENVPOOL), ("ppo", "gymnasium/Pendulum-v1"), ("impala", GYM),
     ("dqn", ENVPOOL)],
)  # fmt: skip
def test_smoke_each_algorithm_runs_end_to_end(algo, env_id):
    _envpool_or_skip(env_id)
    cfg = SMOKE[algo]
    hp = algorithms.get(algo).HParams.make()
    result = sebulba.run(algo, env_id, cfg, hp, num_actors=2, seed=1)
    assert result.num_updates == cfg.num_updates == 6
    assert result.env_steps == 6 * cfg.steps_per_update
    assert len(result.ledger) == 2 * 6
    loss = result.metrics["train/loss" if algo == "dqn" else "train/total_loss"]
    assert loss.shape == (6,) and np.isfinite(loss).all()
    if "CartPole" in env_id:  # Pendulum's episodes (200 steps) outlast the 96 steps here
        assert result.metrics["episode/count"].sum() > 0
    assert np.all(result.metrics["sebulba/policy_lag_max"] >= 0)
    initial = result.agent.init(jax.random.key(1))
    assert _moved(initial.params, result.state.params)
    if algo == "dqn":
        assert int(result.state.grad_steps) > 0
        assert int(result.state.env_steps) == result.env_steps


# ------------------------------------------------------------------------------ learning


def _preset(algo: str, name: str, sets=None):
    return config.resolve(algorithms.get(algo), config.load_preset(name), sets or {}, None)


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.parametrize("env_id", [ENVPOOL, GYM])
def test_ppo_preset_reaches_450_on_host_cartpole(env_id):
    """``ppo/cartpole`` (4 envs x 128 steps, 5e5 env steps), 2 actors of 2 envs."""
    _envpool_or_skip(env_id)
    cfg, hp = _preset("ppo", "ppo/cartpole")
    finals = []
    for seed in (0, 1):
        result = sebulba.run("ppo", env_id, cfg, hp, num_actors=2, seed=seed)
        assert result.env_steps <= 500_000
        finals.append(result.summary["final_return"])
    assert np.mean(finals) >= 450, finals


@pytest.mark.slow
@pytest.mark.learning
def test_impala_preset_reaches_450_on_host_cartpole():
    """``impala/cartpole`` (8 envs x 16 steps, 5e5 env steps) with its simulated lag 4
    replaced by the real actor-learner lag, corrected by V-trace."""
    cfg, hp = _preset("impala", "impala/cartpole", {"lag": "0"})
    finals = []
    for seed in (0, 1):
        result = sebulba.run("impala", GYM, cfg, hp, num_actors=2, seed=seed)
        assert result.summary["policy_lag_max"] >= 1  # off-policy data reached the learner
        finals.append(result.summary["final_return"])
    assert np.mean(finals) >= 450, finals


@pytest.mark.slow
@pytest.mark.learning
def test_dqn_preset_reaches_450_greedy_on_host_cartpole():
    """``dqn/cartpole`` (10 envs, 1e5 env steps), 2 actors of 5 envs; greedy evaluation
    over 16 fresh gymnasium episodes per seed.

    Lock-step (``max_policy_lag=0``), so that the run is reproducible: the preset collapses
    late on some seeds, in JAX too (4 of 56 seeds, ``tests/algorithms/test_dqn.py``), and
    free-running actors make every run a new draw (1 of 6 free-running seeds fell to 255,
    ``experiments/sebulba/RESULTS.md``). In lock-step seeds 0-3 all reach 500.
    """
    cfg, hp = _preset("dqn", "dqn/cartpole")
    returns = []
    for seed in (0, 1):
        result = sebulba.run("dqn", ENVPOOL if _has_envpool() else GYM, cfg, hp,
                             num_actors=2, seed=seed, max_policy_lag=0)  # fmt: skip
        assert result.summary["policy_lag_max"] == 0
        greedy = sebulba.evaluate(result.agent, result.state.params, GYM, 16, seed=100)
        returns.append(np.mean(greedy))
    assert np.mean(returns) >= 450, returns


def _has_envpool() -> bool:
    try:
        import envpool  # noqa: F401
    except ImportError:
        return False
    return True
