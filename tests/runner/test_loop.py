"""The loop's pieces: chunk sizes, metric reductions, and chunking not changing the numbers."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxrl import envs
from jaxrl.algorithms import ppo
from jaxrl.checkpoint import io as checkpoint_io
from jaxrl.errors import ConfigError
from jaxrl.logger import metrics
from jaxrl.runner import loop, sweep


@pytest.mark.parametrize("num_updates", [1, 2, 3, 7, 20, 97, 100, 122, 1000, 4096])
def test_choose_chunk_covers_the_run_in_about_the_target_number_of_chunks(num_updates):
    chunk = loop.choose_chunk(num_updates, target_chunks=20)
    assert 1 <= chunk <= num_updates
    chunks = -(-num_updates // chunk)
    if num_updates >= 20:
        assert 5 <= chunks <= 80
    if num_updates % chunk:  # the fallback: a shorter last chunk, only when no divisor fits
        divisors = [d for d in range(1, num_updates + 1) if num_updates % d == 0]
        assert not any(5 <= num_updates / d <= 80 for d in divisors)


def test_choose_chunk_prefers_a_divisor():
    assert loop.choose_chunk(100, 20) == 5
    assert loop.choose_chunk(122, 20) == 2  # 61 chunks: the only divisor in range
    assert loop.choose_chunk(97, 20) == 4  # a prime: 24 chunks of 4, then one of 1


def test_final_return_weights_episodes_in_the_last_updates():
    returns = np.array([[1.0, np.nan, 10.0, 20.0], [5.0, 6.0, np.nan, np.nan]])
    counts = np.array([[1, 0, 1, 3], [2, 2, 0, 0]])
    got = metrics.final_return(returns, counts, fraction=0.5)  # last 2 updates
    np.testing.assert_allclose(got[0], (10 * 1 + 20 * 3) / 4)
    assert np.isnan(got[1])  # no episode finished in the window
    # the window is at least one update
    np.testing.assert_allclose(metrics.final_return(returns, counts, fraction=0.0)[0], 20.0)


def test_forward_fill_matches_a_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 30))
    x[rng.random(x.shape) < 0.5] = np.nan
    got = metrics.forward_fill(x)
    for row_in, row_out in zip(x, got, strict=True):
        last = np.nan
        for a, b in zip(row_in, row_out, strict=True):
            last = a if np.isfinite(a) else last
            np.testing.assert_equal(b, last)


# CartPole PPO for the chunking and device tests: one Config, three seeds, so the runs share
# compiled programs (``loop.train_fn`` is cached per Config and update count). 23 updates:
# with target_chunks=5 no divisor fits, so the chunked run also has a shorter last chunk.
NUM_UPDATES = 23
CFG = ppo.Config(total_timesteps=NUM_UPDATES * 64, num_envs=4, rollout_len=16, hidden=(16, 16))
KW = dict(env_name="CartPole-v1", algo_name="ppo", quiet=True)


def _runs():
    return sweep.grid(ppo.HParams.make(), seeds=[0, 1, 2])  # 3 runs: padded to 4 on 2 devices


@pytest.fixture(scope="module")
def whole_run():
    """The reference: all 23 updates in one chunk, the 3 runs on one device."""
    env, _ = envs.make("CartPole-v1")
    return loop.run(ppo, env, CFG, _runs(), target_chunks=1, devices=jax.devices()[:1], **KW)


def _state_arrays(result):
    """The final state's leaves as numpy arrays, PRNG keys as their raw bits."""
    as_data = lambda x: (  # noqa: E731
        jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    )
    return [np.asarray(as_data(x)) for x in jax.tree.leaves(result.state)]


def test_chunking_does_not_change_the_numbers(whole_run):
    env, _ = envs.make("CartPole-v1")
    chunked = loop.run(
        ppo, env, CFG, _runs(), target_chunks=5, devices=jax.devices()[:1], **KW
    )  # 23 = 5 x 4 + 3 updates
    assert loop.choose_chunk(NUM_UPDATES, 5) == 4  # chunks of 4, then a shorter one of 3
    whole = whole_run
    assert whole.metrics.keys() == chunked.metrics.keys()
    for name in whole.metrics:
        np.testing.assert_array_equal(whole.metrics[name], chunked.metrics[name], err_msg=name)
    for a, b in zip(_state_arrays(whole), _state_arrays(chunked), strict=True):
        np.testing.assert_array_equal(a, b)


def test_runs_sharded_over_devices_equal_runs_on_one_device(whole_run):
    assert len(jax.devices()) >= 2, "conftest exposes two CPU devices"
    env, _ = envs.make("CartPole-v1")
    # Two devices, in the default chunks (one update each): the sharded state is carried
    # from chunk to chunk. Chunking alone changes nothing (the test above).
    two = loop.run(ppo, env, CFG, _runs(), devices=jax.devices()[:2], **KW)
    one = whole_run
    assert len(one.summary["devices"]) == 1 and len(two.summary["devices"]) == 2
    for name in one.metrics:
        assert one.metrics[name].shape == two.metrics[name].shape == (3, NUM_UPDATES)
        np.testing.assert_allclose(one.metrics[name], two.metrics[name], rtol=1e-5, atol=1e-6)
    for a, b in zip(_state_arrays(one), _state_arrays(two), strict=True):
        assert a.shape == b.shape and a.shape[0] == 3
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_data_parallel_runs_use_a_run_by_data_mesh_and_equal_vmapped_shards(tmp_path):
    """``data_shards = 2`` on two devices: each run's shards on both devices (shard_map over
    "data"), equal to the shards vmapped on one device within float tolerance; the
    checkpoint and the resumed run see the same [R, ...] state."""
    assert len(jax.devices()) >= 2, "conftest exposes two CPU devices"
    env, _ = envs.make("CartPole-v1")
    cfg = dataclasses.replace(CFG, total_timesteps=6 * 64, data_shards=2)
    runs = _runs()  # 3 runs vmapped on one group
    # 3 chunks of 2 updates: the meshed state is carried from chunk to chunk (and
    # checkpointed after each).
    kw = dict(KW, target_chunks=3)
    one = loop.run(ppo, env, cfg, runs, devices=jax.devices()[:1], **kw)
    meshed = loop.run(ppo, env, cfg, runs, devices=jax.devices()[:2], run_dir=tmp_path, **kw)
    assert len(meshed.summary["devices"]) == 2
    assert checkpoint_io.latest_step(tmp_path) == 6
    env_state = jax.tree.leaves(meshed.state.env_state)[0]
    assert env_state.shape[:2] == (3, 2)  # [R, D, ...]
    assert env_state.sharding.spec[1] == "data", env_state.sharding  # one shard per device
    for name in one.metrics:
        np.testing.assert_allclose(one.metrics[name], meshed.metrics[name], rtol=1e-5, atol=1e-5)
    for a, b in zip(_state_arrays(one), _state_arrays(meshed), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _bad_runs():
    hp = ppo.HParams.make()
    two = sweep.grid(hp, seeds=[0, 1])
    three_lrs = two.hps.replace(learning_rate=jax.numpy.array([1e-3, 1e-4, 1e-5]))
    return {
        "no seeds": (lambda: sweep.grid(hp, seeds=[]), "at least one seed"),
        "unknown name": (lambda: sweep.grid(hp, seeds=[0], lr=[1e-3]), "unknown hyperparameter"),
        "no values": (lambda: sweep.grid(hp, seeds=[0], learning_rate=[]), "no values"),
        "out of range": (
            lambda: sweep.grid(hp, seeds=[0, 1], learning_rate=[1e-3, -1.0]),
            r"learning_rate must lie in \[0.0, 1.0\], got -1, -1 \(in 2 of 4 runs\)",
        ),
        "run axis": (
            lambda: dataclasses.replace(two, hps=three_lrs),
            r"2 runs, but these lack a leading axis of 2: learning_rate \(3,\)$",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_runs()))
def test_bad_runs_are_a_config_error_before_compiling(case, monkeypatch):
    make, match = _bad_runs()[case]
    monkeypatch.setattr(sweep, "init_runs", lambda *a: pytest.fail("init_runs was reached"))
    env, _ = envs.make("CartPole-v1")
    cfg = ppo.Config(total_timesteps=64, num_envs=4, rollout_len=16)
    with pytest.raises(ConfigError, match=match):
        loop.run(ppo, env, cfg, make(), env_name="CartPole-v1", algo_name="ppo", quiet=True)
