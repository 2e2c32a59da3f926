"""PPO: loss by hand, invariances of the pure functions, meta-gradients, truncation."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import envs
from jaxrl.algorithms import base, ppo
from jaxrl.runner import sweep

SMALL = dict(
    num_envs=4, rollout_len=8, num_epochs=2, num_minibatches=2, hidden=(16, 16),
    total_timesteps=32 * 8,
)  # fmt: skip


def _setup(env_name="CartPole-v1", **overrides):
    env, _ = envs.make(env_name)
    cfg = ppo.Config(**{**SMALL, **overrides})
    return cfg, env, ppo.HParams.make()


def _numeric(tree):
    """PRNG keys as their raw bits, so whole states can be compared."""
    is_key = lambda x: isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def _allclose(a, b, **kw):
    chex.assert_trees_all_close(_numeric(a), _numeric(b), **({"rtol": 1e-5, "atol": 1e-6} | kw))


# ---------------------------------------------------------------- the loss by hand


@pytest.mark.parametrize("clip_value", [True, False])
@pytest.mark.parametrize("normalize_advantages", [True, False])
def test_clip_loss_matches_hand_computation(clip_value, normalize_advantages):
    cfg, env, hp = _setup(clip_value=clip_value, normalize_advantages=normalize_advantages)
    hp = hp.replace(clip_eps=jnp.float32(0.1), ent_coef=jnp.float32(0.03))
    key = jax.random.key(3)
    state = ppo.init(cfg, env, key, hp)
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    batch = ppo.Batch(
        obs=jax.random.normal(k1, (6, 4)),
        action=jax.random.randint(k2, (6,), 0, 2),
        log_prob=jnp.log(jax.random.uniform(k3, (6,), minval=0.2, maxval=0.8)),
        value=jax.random.normal(k4, (6,)),
        advantage=jax.random.normal(k5, (6,)) * 2,
        target=jax.random.normal(k5, (6,)) + 1,
    )
    total, metrics = ppo.loss(cfg, env, state.params, batch, hp)

    dist, value = ppo.network(cfg, env).apply(state.params, batch.obs)
    logits = np.asarray(dist.logits, np.float64)
    logp_all = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    b = jax.tree.map(lambda x: np.asarray(x, np.float64), batch)
    logp = logp_all[np.arange(6), np.asarray(batch.action)]
    adv = b.advantage
    if normalize_advantages:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    ratio = np.exp(logp - b.log_prob)
    pg = -np.mean(np.minimum(ratio * adv, np.clip(ratio, 0.9, 1.1) * adv))
    v = np.asarray(value, np.float64)
    v_loss = (v - b.target) ** 2
    if clip_value:
        v_clip = b.value + np.clip(v - b.value, -0.1, 0.1)
        v_loss = np.maximum(v_loss, (v_clip - b.target) ** 2)
    v_loss = 0.5 * v_loss.mean()
    entropy = -(np.exp(logp_all) * logp_all).sum(-1).mean()
    expected = pg + 0.5 * v_loss - 0.03 * entropy
    np.testing.assert_allclose(total, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["train/value_loss"], v_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["train/entropy"], entropy, rtol=1e-5)
    np.testing.assert_allclose(
        metrics["train/clip_fraction"], np.mean(np.abs(ratio - 1) > 0.1), rtol=1e-6
    )


def test_kl_objective_adapts_beta():
    cfg, env, hp = _setup(objective="kl")
    hp = hp.replace(
        kl_target=jnp.float32(1e-9), kl_beta=jnp.float32(1.0), learning_rate=jnp.float32(1e-2)
    )
    state = ppo.init(cfg, env, jax.random.key(0), hp)
    update = jax.jit(functools.partial(ppo.update, cfg, env))  # one compile for both calls
    state, metrics = update(state, hp)
    # A tiny KL target is exceeded by any real update, so beta must double.
    assert metrics["train/approx_kl"] > 1.5e-9
    np.testing.assert_allclose(state.kl_beta, 2.0)
    # and a huge target halves it
    state, _ = update(state, hp.replace(kl_target=jnp.float32(1e3)))
    np.testing.assert_allclose(state.kl_beta, 1.0)


def test_custom_loss_fn_replaces_the_loss():
    cfg, env, hp = _setup()
    state = ppo.init(cfg, env, jax.random.key(0), hp)

    def frozen_loss(cfg, env, params, batch, hp):  # zero gradient: Adam must not move
        total, metrics = ppo.loss(cfg, env, params, batch, hp)
        return 0.0 * total, metrics | {"train/custom": jnp.float32(7.0)}

    new, metrics = jax.jit(lambda s: ppo.update(cfg, env, s, hp, frozen_loss))(state)
    _allclose(new.params, state.params, rtol=0, atol=0)
    assert metrics["train/custom"] == 7.0
    # hp as an argument: the program of test_one_compile_... (the compilation cache hits)
    moved, _ = jax.jit(lambda s, h: ppo.update(cfg, env, s, h))(state, hp)
    assert any(
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(moved.params), jax.tree.leaves(state.params), strict=False)
    )


# ---------------------------------------------------------------- invariances


def test_jit_equals_no_jit():
    cfg, env, hp = _setup()
    state = ppo.init(cfg, env, jax.random.key(0), hp)
    # the program of test_one_compile_... and test_custom_loss_... (the compilation cache hits)
    jitted = jax.jit(lambda s, h: ppo.update(cfg, env, s, h))(state, hp)
    with jax.disable_jit():
        eager = ppo.update(cfg, env, state, hp)
    _allclose(jitted, eager, rtol=1e-4, atol=1e-5)


# The vmapped and one-by-one tests and the chunked-training test share one Config (with
# both normalisers, whose statistics must carry over) and these compiled programs.
TRAIN_CFG = dict(normalize_obs=True, scale_reward=True)


@functools.cache
def _train_fns():
    """``(cfg, env, hp, train, vtrain3)``: ``train(state, hp, n)`` jitted (n static) and
    ``vtrain3`` its 3-update run vmapped over runs, compiled once for the module."""
    cfg, env, hp = _setup(**TRAIN_CFG)
    train = jax.jit(lambda s, h, n: ppo.train(cfg, env, s, h, n), static_argnums=2)
    vtrain3 = jax.jit(jax.vmap(lambda s, h: ppo.train(cfg, env, s, h, 3)))
    return cfg, env, hp, train, vtrain3


def test_vmapped_seeds_equal_one_by_one():
    cfg, env, hp, train, vtrain3 = _train_fns()
    runs = sweep.grid(hp, seeds=[0, 1, 2])
    batched = vtrain3(sweep.init_runs(ppo, cfg, env, runs.keys, runs.hps), runs.hps)
    for i in range(3):
        one = ppo.init(cfg, env, sweep.seed_key(i), hp)
        alone = train(one, hp, 3)
        _allclose(jax.tree.map(lambda x, i=i: x[i], batched), alone)


def test_vmapped_learning_rate_grid_equals_separate_runs():
    cfg, env, hp, train, vtrain3 = _train_fns()
    rates = [1e-4, 1e-3, 3e-3]
    runs = sweep.grid(hp, seeds=[7], learning_rate=rates)
    state, metrics = vtrain3(sweep.init_runs(ppo, cfg, env, runs.keys, runs.hps), runs.hps)
    np.testing.assert_allclose(metrics["train/learning_rate"][:, 0], rates, rtol=1e-6)
    for i, lr in enumerate(rates):
        hp_i = hp.replace(learning_rate=jnp.float32(lr))
        one = ppo.init(cfg, env, sweep.seed_key(7), hp_i)
        alone = train(one, hp_i, 3)
        _allclose(jax.tree.map(lambda x, i=i: x[i], (state, metrics)), alone)
    # different rates must give different parameters (the grid is not ignored)
    leaves = jax.tree.leaves(state.params)
    assert any(not np.allclose(x[0], x[1]) for x in leaves)


def test_one_compile_serves_every_hyperparameter_value():
    cfg, env, hp = _setup()
    state = ppo.init(cfg, env, jax.random.key(0), hp)
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(lambda s, h: ppo.update(cfg, env, s, h), n=1))
    for lr, disc, ent in [(1e-4, 0.99, 0.0), (1e-3, 0.9, 0.01), (3e-3, 0.5, 0.1)]:
        h = ppo.HParams.make(learning_rate=lr, discount=disc, ent_coef=ent)
        step(state, h)


def test_chunked_training_equals_one_long_scan():
    cfg, env, hp, train, _ = _train_fns()
    assert cfg.normalize_obs and cfg.scale_reward  # their statistics must carry over too
    state = ppo.init(cfg, env, jax.random.key(1), hp)
    long_state, long_metrics = train(state, hp, 6)
    s, m1 = train(state, hp, 3)
    s, m2 = train(s, hp, 3)
    chunked = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), m1, m2)
    _allclose(s, long_state)
    _allclose(chunked, long_metrics)


# ---------------------------------------------------------------- meta-gradients


@pytest.fixture(scope="module")
def meta():
    """One compiled meta-gradient for both tests below: the loss on a fixed batch after two
    updates, as a function of the whole HParams, its gradient (every hyperparameter at once)
    and the jitted function itself for finite differences."""
    cfg, env, hp = _setup(anneal_lr=False)
    state0 = ppo.init(cfg, env, jax.random.key(0), hp)
    _, rollout = ppo.collect(cfg, env, state0)
    batch = ppo.make_batch(cfg, env, state0.params, rollout, hp)

    def final_loss(h):
        state, _ = ppo.train(cfg, env, state0, h, 2)
        return ppo.loss(cfg, env, state.params, batch, h)[0]

    hp = hp.replace(learning_rate=jnp.float32(3e-3))
    return hp, jax.jit(jax.grad(final_loss))(hp), jax.jit(final_loss)


def test_grad_wrt_learning_rate_matches_finite_difference(meta):
    hp, grad, f = meta
    lr, grad = hp.learning_rate, grad.learning_rate
    eps = 5e-5  # 3e-4 is already outside the linear regime of a 2-update run
    fd = (f(hp.replace(learning_rate=lr + eps)) - f(hp.replace(learning_rate=lr - eps))) / (2 * eps)
    assert np.isfinite(grad) and abs(grad) > 1e-3
    np.testing.assert_allclose(grad, fd, rtol=0.02)


def test_grad_reaches_discount_and_lambda(meta):
    """The loss on the fixed batch reads neither: their gradient comes through training."""
    _, grad, _ = meta
    g_disc, g_lam = grad.discount, grad.gae_lambda
    assert np.isfinite(g_disc) and np.isfinite(g_lam)
    assert abs(g_disc) > 0 and abs(g_lam) > 0


# ---------------------------------------------------------------- truncation end to end


def test_targets_bootstrap_through_truncation_not_termination():
    """On TimeLimitChain (reward 1 forever, truncated every 10 steps) every target is
    1 + γ V(next); at the cut the bootstrap is V(pre-reset obs), never zero."""
    cfg, env, hp = _setup("probe/time_limit_chain", num_envs=2, rollout_len=12)
    hp = hp.replace(discount=jnp.float32(0.9), gae_lambda=jnp.float32(0.0))
    state = ppo.init(cfg, env, jax.random.key(0), hp)
    _, rollout = ppo.collect(cfg, env, state)
    batch = ppo.make_batch(cfg, env, state.params, rollout, hp)
    net = ppo.network(cfg, env)
    v_final = net.apply(state.params, rollout.final_obs, method="value")
    target = batch.target.reshape(12, 2)
    assert bool(rollout.truncated[9].all()) and not bool(rollout.terminated.any())
    np.testing.assert_allclose(target, 1.0 + 0.9 * v_final, rtol=1e-5, atol=1e-5)
    # the final obs at the cut is the time-limit state (obs 1.0), not the reset obs (0.0)
    np.testing.assert_allclose(rollout.final_obs[9], 1.0)


@pytest.mark.learning
def test_critic_learns_value_through_time_limits():
    """Treating truncation as termination would give V(t=9) ≈ 1; the true value is 10."""
    cfg, env, hp = _setup(
        "probe/time_limit_chain", num_envs=8, rollout_len=20, num_epochs=4, num_minibatches=4,
        total_timesteps=8 * 20 * 300, hidden=(32, 32),
    )  # fmt: skip
    hp = hp.replace(discount=jnp.float32(0.9), learning_rate=jnp.float32(3e-3))
    state = ppo.init(cfg, env, jax.random.key(0), hp)
    state, _ = jax.jit(lambda s: ppo.train(cfg, env, s, hp, cfg.num_updates))(state)
    obs = (jnp.arange(10, dtype=jnp.float32) / 10)[:, None]
    values = ppo.network(cfg, env).apply(state.params, obs, method="value")
    np.testing.assert_allclose(values, 10.0, rtol=0.15)


# ---------------------------------------------------------------- bad configs


def test_batch_not_divisible_by_minibatches_is_an_error():
    with pytest.raises(base.ConfigError, match="divisible"):
        ppo.Config(num_envs=3, rollout_len=5, num_minibatches=4)


@pytest.mark.parametrize("name,value", [("learning_rate", -1e-3), ("discount", 1.5)])
def test_out_of_range_hparams_are_errors(name, value):
    with pytest.raises(base.ConfigError, match=name):
        ppo.check(ppo.Config(), ppo.HParams.make(**{name: value}))


def test_non_numeric_hparam_is_an_error():
    with pytest.raises(base.ConfigError, match="number"):
        ppo.HParams.make(learning_rate="fast")
