"""Replay buffers: uniform sampling (chi-square), FIFO overwrite, consecutive windows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.errors import ConfigError
from jaxrl.replay import buffers


def test_flat_buffer_samples_uniformly():
    buf = buffers.flat_buffer(capacity=16, batch_size=12)
    state = buf.init({"x": jnp.zeros((), jnp.int32)})
    state = buf.add(state, {"x": jnp.arange(10, dtype=jnp.int32)})
    assert not buf.can_sample(state)  # 10 < min_size = batch_size
    buf = buffers.flat_buffer(capacity=16, batch_size=12, min_size=1)
    assert buf.can_sample(state)
    sample = jax.jit(jax.vmap(buf.sample, in_axes=(None, 0)))
    xs = np.asarray(sample(state, jax.random.split(jax.random.key(0), 500)).experience["x"])
    counts = np.bincount(xs.reshape(-1), minlength=16)
    assert counts[10:].sum() == 0  # never an empty slot
    expected = xs.size / 10
    chi2 = np.sum((counts[:10] - expected) ** 2 / expected)
    assert chi2 < 27.9  # 99.9 % quantile of chi-square with 9 degrees of freedom


def test_flat_buffer_overwrites_oldest_when_full():
    buf = buffers.flat_buffer(capacity=4, batch_size=4, min_size=1)
    state = buf.init({"x": jnp.zeros((), jnp.int32)})
    for start in (0, 3):
        state = buf.add(state, {"x": jnp.arange(start, start + 3, dtype=jnp.int32)})
    sample = jax.vmap(buf.sample, in_axes=(None, 0))
    xs = sample(state, jax.random.split(jax.random.key(1), 64)).experience["x"]
    xs = set(np.asarray(xs).reshape(-1).tolist())
    assert xs == {2, 3, 4, 5}  # 0 and 1 were the oldest


def test_sequence_buffer_windows_are_consecutive_steps_of_one_env():
    buf = buffers.sequence_buffer(num_envs=2, capacity=40, batch_size=64, sequence_length=5)
    state = buf.init({"t": jnp.zeros((), jnp.int32), "env": jnp.zeros((), jnp.int32)})
    for t in range(12):
        step = {"t": jnp.full((2, 1), t, jnp.int32), "env": jnp.arange(2)[:, None]}
        state = buf.add(state, step)
    window = buf.sample(state, jax.random.key(2)).experience
    t, env = np.asarray(window["t"]), np.asarray(window["env"])
    assert t.shape == (64, 5)
    np.testing.assert_array_equal(np.diff(t, axis=1), 1)
    assert np.all(env == env[:, :1])  # one env per window
    assert set(env[:, 0]) == {0, 1}


@pytest.mark.parametrize(
    "make",
    [
        lambda: buffers.flat_buffer(0, 4),
        lambda: buffers.flat_buffer(8, 4, min_size=9),
        lambda: buffers.flat_buffer(8, 9),
        lambda: buffers.sequence_buffer(4, 12, 2, sequence_length=5),
        lambda: buffers.sequence_buffer(2, 40, 2.5, 5),
    ],
)
def test_bad_sizes_raise_config_error(make):
    with pytest.raises(ConfigError):
        make()
