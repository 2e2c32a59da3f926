"""Traced gates of PPO's and TRPO's code-level switches (clip_value, scale_reward, ortho_init,
anneal_lr): gate 0 equals the program compiled with the switch off, gate 1 the switch on,
and all 16 combinations run as one vmapped program."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import envs
from jaxrl.algorithms import ppo, trpo
from jaxrl.losses.returns import episode_gae
from jaxrl.losses.value import value_loss
from jaxrl.runner import sweep

SWITCHES = dict(
    clip_value_on="clip_value",
    scale_reward_on="scale_reward",
    ortho_init_on="ortho_init",
    anneal_lr_on="anneal_lr",
)
ON = dict.fromkeys(SWITCHES.values(), True)
CONFIGS = {
    ppo: ppo.Config(
        num_envs=2, rollout_len=16, num_epochs=2, num_minibatches=2, hidden=(8,),
        total_timesteps=32 * 4, **ON,
    ),
    trpo: trpo.Config(
        num_envs=2, rollout_len=16, num_epochs=2, num_minibatches=2, hidden=(8,),
        total_timesteps=32 * 4, cg_iters=2, backtrack_iters=2, **ON,
    ),
}  # fmt: skip
# Large steps and small value-clip radii, so that every gate binds within a few tiny updates:
HPARAMS = {
    ppo: dict(learning_rate=0.02, clip_eps=0.001),
    trpo: dict(learning_rate=0.02, vf_clip_eps=0.001),
}
NUM_UPDATES = 3
COMBOS = list(itertools.product([1.0, 0.0], repeat=len(SWITCHES)))  # COMBOS[0]: all on


def _numeric(tree):
    is_key = lambda x: isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
    return jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if is_key(x) else x), tree)


def _runs(algo):
    """The 16 gate combinations (seed 0 each): keys ``[16]``, HParams with leaves ``[16]``."""
    gates = {name: [c[i] for c in COMBOS] for i, name in enumerate(SWITCHES)}
    hp = algo.HParams.make(**HPARAMS[algo])
    hps = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(COMBOS),)), hp)
    hps = hps.replace(**{n: jnp.asarray(v, jnp.float32) for n, v in gates.items()})
    return jnp.broadcast_to(sweep.seed_key(0), (len(COMBOS),)), hps


@functools.cache
def _train16(algo, cfg):
    """``NUM_UPDATES`` updates of the 16 gate combinations under ``cfg``, one vmapped program
    (init by lax.map): ``(params, opt_state, obs, key)`` and metrics, leaves ``[16, ...]``."""
    env, _ = envs.make("Pendulum-v1")
    keys, hps = _runs(algo)
    state = sweep.init_runs(algo, cfg, env, keys, hps)
    fn = jax.jit(jax.vmap(lambda s, h: algo.train(cfg, env, s, h, NUM_UPDATES)))
    state, metrics = fn(state, hps)
    return _numeric((state.params, state.opt_state, state.obs, state.key)), _numeric(metrics)


def _rows(tree, index):
    return jax.tree.map(lambda x: x[np.asarray(index)], tree)


def _assert_equal(a, b):
    """Equal leaves (NaN == NaN) up to float rounding. A gate at 0 or 1 multiplies the dropped
    branch by exactly 0 and the kept one by exactly 1, and the batch shapes are the same; the
    reward, init and lr gates give bitwise-equal programs, the value-clip gate differs in the
    last bits (XLA fuses the two value losses differently), about 1e-6 relative after 3
    updates, while any gate flipped changes the numbers by 1e-3 or more."""
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-7), a, b)


@pytest.mark.parametrize("algo", [ppo, trpo], ids=["ppo", "trpo"])
def test_sixteen_combinations_run_as_one_program(algo):
    (params, *_), metrics = _train16(algo, CONFIGS[algo])
    leaves = jax.tree.leaves(params)
    assert leaves[0].shape[0] == len(COMBOS)
    assert all(np.isfinite(x).all() for x in leaves)
    # Every combination trains differently (each gate changes the numbers).
    flat = np.concatenate([x.reshape(len(COMBOS), -1) for x in leaves], axis=1)
    assert len({row.tobytes() for row in flat}) == len(COMBOS)
    lr = metrics["train/learning_rate"][:, -1]  # update 3 of 4: annealed to half where on
    anneal_on = np.array([c[list(SWITCHES).index("anneal_lr_on")] for c in COMBOS])
    np.testing.assert_allclose(lr, np.where(anneal_on == 1.0, 0.01, 0.02), rtol=1e-6)


@pytest.mark.parametrize(
    "algo", [ppo, pytest.param(trpo, marks=pytest.mark.slow)], ids=["ppo", "trpo"]
)  # trpo: one more compiled program (about 10 s)
def test_all_gates_zero_equals_all_switches_off(algo):
    """With every switch off the gates are ignored: all 16 runs equal the gated program's
    all-zero combination."""
    gated = _train16(algo, CONFIGS[algo])
    off = _train16(algo, dataclasses.replace(CONFIGS[algo], **dict.fromkeys(ON, False)))
    zero = COMBOS.index((0.0,) * len(SWITCHES))
    _assert_equal(off, _rows(gated, [zero] * len(COMBOS)))


@pytest.mark.slow  # 8 more compiled programs (about 50 s)
@pytest.mark.parametrize("gate", list(SWITCHES))
@pytest.mark.parametrize("algo", [ppo, trpo], ids=["ppo", "trpo"])
def test_gate_zero_equals_switch_off(algo, gate):
    """With one switch off, run ``c`` equals the gated program's run ``c`` with that gate 0."""
    gated = _train16(algo, CONFIGS[algo])
    off = _train16(algo, dataclasses.replace(CONFIGS[algo], **{SWITCHES[gate]: False}))
    i = list(SWITCHES).index(gate)
    zeroed = [COMBOS.index(c[:i] + (0.0,) + c[i + 1 :]) for c in COMBOS]
    _assert_equal(off, _rows(gated, zeroed))


# ------------------------------------------------- gate 1: the switch on, as computed without gates


def _pendulum_state(cfg):
    env, _ = envs.make("Pendulum-v1")
    return env, ppo.init(cfg, env, jax.random.key(1), ppo.HParams.make())


def test_gate_one_is_the_switch_on_ppo_pieces():
    cfg = CONFIGS[ppo]
    env, state = _pendulum_state(cfg)
    hp = ppo.HParams.make(clip_eps=0.05)
    # ortho init: the orthogonal init itself, bit for bit
    key_net = jax.random.split(jax.random.key(1), 3)[1]
    want = ppo.network(cfg, env).init(key_net, state.obs)
    jax.tree.map(np.testing.assert_array_equal, state.params, want)
    # learning-rate annealing: lr · (1 − k / num_updates)
    count = jnp.int32(1)
    np.testing.assert_array_equal(
        ppo.learning_rate(cfg, hp, count, hp.anneal_lr_on),
        hp.learning_rate * jnp.maximum(1.0 - count.astype(jnp.float32) / cfg.num_updates, 0.0),
    )
    np.testing.assert_allclose(ppo.learning_rate(cfg, hp, count, 0.0), hp.learning_rate)
    # value clipping: the clipped loss, and the half-way gate the mean of both
    v, old, target = (jax.random.normal(jax.random.key(i), (8,)) for i in range(3))
    clipped, raw = value_loss(v, old, target, 0.05, True), value_loss(v, old, target, 0.05, False)
    assert clipped > raw
    np.testing.assert_array_equal(ppo.gated_value_loss(v, old, target, 0.05, True, 1.0), clipped)
    np.testing.assert_allclose(
        ppo.gated_value_loss(v, old, target, 0.05, True, 0.5), (clipped + raw) / 2, rtol=1e-6
    )
    np.testing.assert_array_equal(ppo.gated_value_loss(v, old, target, 0.05, True, 0.0), raw)
    # reward scaling: GAE on the scaled rewards; gate 0 on the raw ones
    state, rollout = jax.jit(lambda s: ppo.collect(cfg, env, s))(state)
    raw_reward = rollout.info["raw_reward"]
    assert not np.allclose(rollout.reward, raw_reward)
    for on, reward in ((1.0, rollout.reward), (0.0, raw_reward)):
        batch = ppo.make_batch(cfg, env, state.params, rollout, hp.replace(scale_reward_on=on))
        net = ppo.network(cfg, env)
        bootstrap = net.apply(state.params, rollout.final_obs, method="value")
        adv, _ = episode_gae(
            reward, rollout.value, bootstrap, rollout.terminated, rollout.truncated,
            hp.discount, hp.gae_lambda,
        )  # fmt: skip
        np.testing.assert_array_equal(batch.advantage, adv.reshape(-1))


def test_gates_are_in_hparams_and_ranges():
    for algo in (ppo, trpo):
        hp = algo.HParams.make()
        for name in SWITCHES:
            assert getattr(hp, name).dtype == jnp.float32 and float(getattr(hp, name)) == 1.0
            assert algo.HPARAM_RANGES[name] == (0.0, 1.0)
        with pytest.raises(Exception, match="clip_value_on"):
            algo.check(CONFIGS[algo], algo.HParams.make(clip_value_on=1.5))
