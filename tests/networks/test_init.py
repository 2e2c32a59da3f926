"""jaxrl.networks.init.orthogonal: flax's matrices, and a vmap that cannot hang XLA:CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxrl.networks.init import orthogonal

SHAPES = [(7, 5), (5, 7), (3, 3, 4, 6)]  # tall, wide, a conv kernel


@pytest.mark.parametrize("shape", SHAPES)
def test_equals_flax_orthogonal_unbatched_and_vmapped(shape):
    keys = jax.random.split(jax.random.key(3), 4)
    ours, theirs = orthogonal(1.7), nn.initializers.orthogonal(1.7)
    for k in keys:
        np.testing.assert_array_equal(ours(k, shape), theirs(k, shape))
    batched = jax.jit(jax.vmap(lambda k: ours(k, shape)))(keys)
    np.testing.assert_array_equal(batched, np.stack([theirs(k, shape) for k in keys]))
    # nested vmap (seeds x hyperparameters) maps over both axes
    grid = jax.jit(jax.vmap(jax.vmap(lambda k: ours(k, shape))))(keys.reshape(2, 2))
    np.testing.assert_array_equal(grid.reshape(batched.shape), batched)
    m = np.asarray(batched[0]).reshape(-1, shape[-1])
    small = min(m.shape)
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(gram, 1.7**2 * np.eye(small), atol=1e-5)


# Initialising 4 seeds at once in one program sharded over two CPU devices: with flax's
# orthogonal this is a batched QR per layer, and on jax 0.10 with 2 cores the process hung
# for ever (docs/design.md, decision 9). Run in a subprocess with a time limit, so a
# regression fails here instead of hanging the suite.
SHARDED_INIT = textwrap.dedent(
    """
    import jax, numpy as np
    jax.config.update("jax_num_cpu_devices", 2)
    from jaxrl import envs
    from jaxrl.algorithms import ppo, r2d2
    from jaxrl.distributed import run_mesh, shard_runs
    keys = jax.random.split(jax.random.key(0), 4)
    for algo, env_name in ((ppo, "CartPole-v1"), (r2d2, "CartPole-v1")):
        env, _ = envs.make(env_name)
        cfg, hp = algo.Config(), algo.HParams.make()
        init = lambda k: algo.init(cfg, env, k, hp).params
        params = jax.jit(jax.vmap(init))(shard_runs(keys, run_mesh()))
        looped = [init(k) for k in keys]
        for i in range(4):
            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(looped[i]), strict=True):
                np.testing.assert_array_equal(np.asarray(a)[i], np.asarray(b))
    print("ok")
    """
)


def test_vmapped_init_sharded_over_two_cpu_devices_finishes_and_equals_a_loop():
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", SHARDED_INIT], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
