"""The learner trains on every trajectory exactly once, in each actor's order, and measures
the policy lag from parameter versions."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import sebulba_fakes as fakes

from jaxrl import sebulba
from jaxrl.sebulba import learner as learner_lib

T, N, A = 4, 2, 2


def _train(num_updates: int, **kw):
    agent = fakes.ppo_agent(num_actors=A, envs_per_actor=N, rollout_len=T)
    envs = [fakes.CounterEnv(i, N) for i in range(A)]
    return sebulba.train(agent, envs, num_updates=num_updates, **kw), envs


@pytest.mark.parametrize("queue_size", [1, 3])
def test_each_trajectory_is_trained_on_exactly_once_in_order(queue_size, monkeypatch):
    monkeypatch.setattr(learner_lib, "FETCH_EVERY", 5)  # metrics cross two host fetches
    num_updates = 12
    result, envs = _train(num_updates, queue_size=queue_size)
    assert result.num_updates == num_updates and result.env_steps == num_updates * T * N * A
    assert all(env.closed.is_set() for env in envs)
    # The ledger: one (actor, seq) per trajectory, each actor's seq 0, 1, 2, ... in order.
    seen = [(info.actor_id, info.seq) for info, _ in result.ledger]
    assert len(seen) == len(set(seen)) == num_updates * A
    for a in range(A):
        assert [s for actor, s in seen if actor == a] == list(range(num_updates))
    assert [v for _, v in result.ledger] == [u for u in range(num_updates) for _ in range(A)]
    # What the learner actually trained on: update u, column a*N + n holds actor a's env n at
    # steps u*T .. u*T + T - 1, each step of each env exactly once.
    ids = result.metrics["ids"]
    assert ids.shape == (num_updates, T, A * N, 3)
    for u in range(num_updates):
        for col in range(A * N):
            np.testing.assert_array_equal(ids[u, :, col, 0], col // N)
            np.testing.assert_array_equal(ids[u, :, col, 1], col % N)
            np.testing.assert_array_equal(ids[u, :, col, 2], u * T + np.arange(T))
    # The actors ran ahead by at most what their queues and one rollout in hand hold.
    for steps in result.actor_env_steps:
        assert num_updates * T * N <= steps <= (num_updates + queue_size + 2) * T * N


def test_policy_lag_is_zero_on_policy_and_bounded_when_free():
    on_policy, _ = _train(6, max_policy_lag=0)
    assert all(info.params_version == version for info, version in on_policy.ledger)
    assert on_policy.summary["policy_lag_max"] == 0
    free, _ = _train(10, queue_size=2)
    lags = [version - info.params_version for info, version in free.ledger]
    assert min(lags) >= 0 and max(lags) <= 2 + 2, lags
    np.testing.assert_array_equal(
        free.metrics["sebulba/policy_lag_max"], np.max(np.reshape(lags, (10, A)), axis=1)
    )


def test_episode_statistics_reach_the_metrics():
    result, _ = _train(7)
    # CounterEnv episodes are 7 steps long with reward 1.
    returns = result.metrics["episode/return"]
    assert np.nanmax(returns) == np.nanmin(returns) == 7.0
    assert result.metrics["episode/count"].sum() == (7 * T // 7) * N * A
    assert result.summary["final_return"] == 7.0


def test_the_logged_return_is_the_newest_finished_episodes():
    """``log_fn`` sees the return of the newest update in which episodes ended, where the
    metrics of an update without one say NaN."""
    logged = []
    result, _ = _train(4, log_fn=lambda u, m: logged.append(m["episode/return"]), log_every=1)
    # Updates cover env steps [4u, 4u + 4) per env; the 7-step episodes end in updates 1, 3.
    np.testing.assert_array_equal(result.metrics["episode/return"], [np.nan, 7.0, np.nan, 7.0])
    np.testing.assert_array_equal(logged, [np.nan, 7.0, 7.0, 7.0])


def test_lock_step_runs_are_reproducible():
    """With ``max_policy_lag=0`` trajectory ``s`` is always acted by version ``s``, so thread
    timing cannot change the result: two runs give the same parameters, bit for bit."""
    first, _ = _train(6, max_policy_lag=0, seed=3)
    second, _ = _train(6, max_policy_lag=0, seed=3)
    for a, b in zip(jax.tree.leaves(first.state), jax.tree.leaves(second.state), strict=True):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    np.testing.assert_array_equal(first.metrics["train/total_loss"],
                                  second.metrics["train/total_loss"])  # fmt: skip


def _bits(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(x)
    return x
