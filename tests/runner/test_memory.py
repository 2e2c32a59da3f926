"""Device memory stays flat as a run gets longer: metrics leave the device every chunk."""

from __future__ import annotations

import gc

import jax
import numpy as np

from jaxrl.algorithms import ppo
from jaxrl.envs.probe import RewardFromObs
from jaxrl.runner import loop, sweep


def _device_bytes() -> int:
    """Bytes in use on the device: the allocator's count where it has one (GPU/TPU), else the
    total size of every live ``jax.Array`` (the CPU backend keeps no allocator statistics)."""
    gc.collect()
    stats = jax.devices()[0].memory_stats()
    if stats and "bytes_in_use" in stats:
        return int(stats["bytes_in_use"])
    return sum(x.nbytes for x in jax.live_arrays())


def _train(num_updates: int):
    """``num_updates`` (a multiple of 10) in chunks of 10 updates. Without learning-rate
    annealing (whose horizon is the update count) every run length lowers to the same
    program, compiled once (the persistent cache)."""
    env = RewardFromObs()
    cfg = ppo.Config(
        num_envs=4, rollout_len=8, num_minibatches=2, num_epochs=1, hidden=(16,),
        total_timesteps=32 * num_updates, anneal_lr=False,
    )  # fmt: skip
    runs = sweep.grid(ppo.HParams.make(), [0, 1])
    target_chunks = num_updates // 10
    assert loop.choose_chunk(num_updates, target_chunks) == 10
    return loop.run(
        ppo, env, cfg, runs, env_name="probe/reward_from_obs", algo_name="ppo", quiet=True,
        devices=jax.devices()[:1], target_chunks=target_chunks,
    )  # fmt: skip


def test_device_memory_after_10x_more_updates_is_not_higher():
    short = _train(20)
    short_bytes = _device_bytes()
    del short
    long = _train(200)
    long_bytes = _device_bytes()
    # The metric history is on the host (numpy), growing with the run (2 chunks, then 20);
    # the device holds only the final state of the same shapes.
    assert long.metrics["episode/return"].shape == (2, 200)
    assert all(isinstance(v, np.ndarray) for v in long.metrics.values())
    assert long_bytes <= short_bytes + 16 * 1024, (short_bytes, long_bytes)
