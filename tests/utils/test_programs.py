"""jaxrl.utils.programs: one program object per set of static arguments."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import envs
from jaxrl.algorithms import ppo
from jaxrl.runner import loop, sweep
from jaxrl.utils import programs


def test_equal_hashable_arguments_build_once_and_unhashable_ones_every_time():
    built = []

    @programs.per_arguments
    def build(a, b):
        built.append((a, b))
        return object()

    assert build(1, (2, 3)) is build(1, (2, 3))
    assert build(1, (2, 4)) is not build(1, (2, 3))
    assert len(built) == 2
    first, second = build(1, [2]), build(1, [2])  # a list cannot be hashed: built each call
    assert first is not second and len(built) == 4


def test_init_runs_and_train_fn_trace_once_per_config():
    traced = []

    def init(cfg, env, key, hp):
        traced.append("init")
        return ppo.init(cfg, env, key, hp)

    # a module-like algorithm (hashable by identity) that counts its traces
    algo = types.ModuleType("counting_ppo")
    algo.init, algo.train = init, ppo.train
    env, _ = envs.make("probe/constant_reward")
    cfg = ppo.Config(num_envs=2, rollout_len=4, num_minibatches=2, hidden=(4,))
    runs = sweep.grid(ppo.HParams.make(), seeds=range(2))
    a = sweep.init_runs(algo, cfg, env, runs.keys, runs.hps)
    b = sweep.init_runs(algo, cfg, env, runs.keys, runs.hps)
    assert traced == ["init"]  # the second call reused the first program
    np.testing.assert_array_equal(jax.tree.leaves(a)[0], jax.tree.leaves(b)[0])
    assert loop.train_fn(algo, cfg, env, 2) is loop.train_fn(algo, cfg, env, 2)
    assert loop.train_fn(algo, cfg, env, 3) is not loop.train_fn(algo, cfg, env, 2)
    wider = dataclasses.replace(cfg, hidden=(8,))
    other = sweep.init_runs(algo, wider, env, runs.keys, runs.hps)
    assert traced == ["init", "init"] and jnp.ndim(jax.tree.leaves(other)[0]) >= 1


def test_quick_jit_gives_the_numbers_of_jit():
    f = lambda x: jnp.tanh(x @ x.T).sum(0)  # noqa: E731
    x = jax.random.normal(jax.random.key(0), (8, 8))
    np.testing.assert_allclose(programs.quick_jit(f)(x), jax.jit(f)(x), rtol=1e-5)


def test_quick_compile_options_are_the_ones_this_xla_accepts():
    """Each accepted option compiles; each left out is one XLA rejects (jax 0.11 has no
    ``xla_cpu_use_fusion_emitters``), so quick_jit works on jax 0.10 and 0.11 alike."""
    accepted = programs.cpu_quick_compile_options()
    assert "xla_backend_optimization_level" in accepted
    shape = jax.ShapeDtypeStruct((), "float32")
    for name, value in programs.CPU_QUICK_COMPILE.items():
        jitted = jax.jit(lambda x: x * 2, compiler_options={name: value})
        if name in accepted:
            jitted.lower(shape).compile()
        else:
            with pytest.raises(jax.errors.JaxRuntimeError, match="compile option"):
                jitted.lower(shape).compile()
