"""Meta-Q-Learning: task sampling, the propensity classifier, ESS, the proximal term, the
weighted TD3 losses, and an adaptation smoke run."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import td3
from jaxrl.envs.nav2d import Nav2D
from jaxrl.envs.wrappers import AutoReset
from jaxrl.meta import mql
from jaxrl.replay import buffers

NAV = Nav2D()
# Compilation dominates these tests; XLA's cheaper CPU settings cut it.
jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


def test_classifier_recovers_gaussian_propensity():
    # new ~ N(mu1, S), old ~ N(mu0, S): the Bayes logit is linear,
    # (mu1 - mu0)' S^-1 x - (mu1' S^-1 mu1 - mu0' S^-1 mu0) / 2 + log(n1 / n0).
    rng = np.random.default_rng(0)
    mu0, mu1 = np.array([0.0, 0.0]), np.array([1.0, -0.5])
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    n0, n1 = 6000, 3000
    chol = np.linalg.cholesky(cov)
    x0 = mu0 + rng.normal(size=(n0, 2)) @ chol.T
    x1 = mu1 + rng.normal(size=(n1, 2)) @ chol.T
    x = jnp.asarray(np.concatenate([x1, x0]), jnp.float32)
    y = jnp.concatenate([jnp.ones(n1), jnp.zeros(n0)])
    clf = jax.jit(lambda x, y: mql.fit_logistic(x, y, ridge=0.0))(x, y)
    prec = np.linalg.inv(cov)
    w_true = prec @ (mu1 - mu0)
    b_true = -0.5 * (mu1 @ prec @ mu1 - mu0 @ prec @ mu0) + np.log(n1 / n0)
    np.testing.assert_allclose(clf.w, w_true, atol=0.12)
    np.testing.assert_allclose(clf.b, b_true, atol=0.08)
    # The normalised weights of the old points estimate p_new / p_old up to scale.
    beta = mql.propensity_weights(clf.logit(x[n1:]), clip=1e6)
    ratio = np.exp(x0 @ w_true)
    ratio = ratio / ratio.mean()
    assert np.mean(np.abs(np.log(np.asarray(beta) / ratio))) < 0.1
    acc = np.mean((np.asarray(clf.logit(x)) > 0) == (np.asarray(y) > 0.5))
    assert acc > 0.7


def test_propensity_weights_clip_and_normalise():
    logits = jnp.log(jnp.array([1.0, 1.0, 1.0, 5.0]))
    # exp / mean -> [0.5, 0.5, 0.5, 2.5]; clip at 2 -> mean 0.875; / 0.875.
    expected = np.array([0.5, 0.5, 0.5, 2.0]) / 0.875
    np.testing.assert_allclose(mql.propensity_weights(logits, clip=2.0), expected, rtol=1e-6)
    np.testing.assert_allclose(
        mql.propensity_weights(logits, clip=10.0), [0.5, 0.5, 0.5, 2.5], rtol=1e-6
    )


def test_effective_sample_size():
    np.testing.assert_allclose(mql.effective_sample_size(jnp.full((7,), 0.3)), 1.0, rtol=1e-6)
    # (1 + 1 + 2)^2 / (3 (1 + 1 + 4)) = 16 / 18
    np.testing.assert_allclose(
        mql.effective_sample_size(jnp.array([1.0, 1.0, 2.0])), 16.0 / 18.0, rtol=1e-6
    )
    np.testing.assert_allclose(
        mql.effective_sample_size(jnp.array([3.0, 0.0, 0.0, 0.0])), 0.25, rtol=1e-6
    )


def test_proximal_penalty_value_and_gradient():
    rng = np.random.default_rng(1)
    params = {"a": jnp.asarray(rng.normal(size=(3, 2))), "b": [jnp.asarray(rng.normal(size=4))]}
    anchor = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(size=x.shape)), params)
    lam = jnp.float32(0.37)
    value = mql.proximal_penalty(params, anchor, lam)
    pairs = zip(jax.tree.leaves(params), jax.tree.leaves(anchor), strict=True)
    sq = sum(float(np.sum((np.asarray(p) - np.asarray(a)) ** 2)) for p, a in pairs)
    np.testing.assert_allclose(value, 0.5 * 0.37 * sq, rtol=1e-5)
    grads = jax.grad(mql.proximal_penalty)(params, anchor, lam)
    expected = jax.tree.map(lambda p, a: 0.37 * (p - a), params, anchor)
    jax.tree.map(
        lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7), grads, expected
    )
    # The anchor gets no gradient (it is the fixed meta-trained point).
    anchor_grads = jax.grad(mql.proximal_penalty, argnums=1)(params, anchor, lam)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(anchor_grads))


def _setup(context_len: int = 3):
    cfg = td3.Config(
        total_timesteps=64, num_envs=4, batch_size=8, buffer_size=256, learning_starts=0,
        hidden=(8,), context_len=context_len, context_features=4,
    )  # fmt: skip
    hp = td3.HParams.make()
    state = jit(lambda k: mql.meta_init(cfg, NAV, k, hp))(jax.random.key(0))
    env = mql.make_meta_env(NAV, context_len)
    rng = np.random.default_rng(2)
    d = state.obs.shape[-1]
    b = 8
    tr = td3.Transition(
        obs=jnp.asarray(rng.normal(size=(b, d)), jnp.float32),
        action=jnp.asarray(rng.uniform(-1, 1, size=(b, 2)), jnp.float32),
        reward=jnp.asarray(rng.normal(size=b), jnp.float32),
        terminated=jnp.asarray(rng.uniform(size=b) < 0.3, jnp.float32),
        next_obs=jnp.asarray(rng.normal(size=(b, d)), jnp.float32),
    )
    batch = td3.Batch(tr, jnp.asarray(rng.normal(size=(b, 2)), jnp.float32))
    # Targets differ from the online nets, so the check covers both.
    p = state.params
    params = p.replace(target_critic=jax.tree.map(lambda x: 0.9 * x, p.critic))
    return cfg, env, hp, params, batch


@pytest.mark.parametrize("context_len", [0, 3])
def test_weighted_losses_with_unit_weights_equal_td3(context_len):
    cfg, env, hp, params, batch = _setup(context_len)

    @jit
    def losses(params, batch):
        ones = jnp.ones(8)
        c = params.critic
        return (
            mql.weighted_critic_loss(cfg, env, c, params, batch, hp, ones)[0],
            td3.critic_loss(cfg, env, c, params, batch, hp)[0],
            mql.weighted_actor_loss(cfg, env, params.actor, params, batch, ones)[0],
            td3.actor_loss(cfg, env, params.actor, params, batch, hp)[0],
        )

    got_c, want_c, got_a, want_a = losses(params, batch)
    np.testing.assert_allclose(got_c, want_c, rtol=1e-6)
    np.testing.assert_allclose(got_a, want_a, rtol=1e-6)


def test_weighted_critic_loss_weights_select_transitions():
    # Weight 2 on the first half and 0 on the second = td3's loss on the first half.
    cfg, env, hp, params, batch = _setup()

    @jit
    def losses(params, batch):
        weights = jnp.concatenate([jnp.full(4, 2.0), jnp.zeros(4)])
        got, _ = mql.weighted_critic_loss(cfg, env, params.critic, params, batch, hp, weights)
        half = jax.tree.map(lambda x: x[:4], batch)
        want, _ = td3.critic_loss(cfg, env, params.critic, params, half, hp)
        return got, want

    got, want = losses(params, batch)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_task_per_episode_changes_task_at_reset_only():
    env = AutoReset(mql.TaskPerEpisode(NAV))
    params = NAV.default_params()  # max_steps = 100
    obs, state = env.reset(jax.random.key(0), params)

    def step(carry, key):
        _, state = carry
        obs, state, out = env.step(key, state, jnp.zeros(2), params)
        return (obs, state), (state.task.goal, out.done)

    _, (goals, done) = jax.lax.scan(step, (obs, state), jax.random.split(jax.random.key(1), 300))
    goals, done = np.asarray(goals), np.asarray(done)
    np.testing.assert_array_equal(np.flatnonzero(done), [99, 199, 299])
    # goals[t] is the task after step t: constant inside an episode, new after each reset.
    first = np.concatenate([[np.asarray(state.task.goal)], goals[:99]])
    np.testing.assert_array_equal(first, np.broadcast_to(first[0], first.shape))
    for start in (100, 200):
        block = goals[start - 1 + 1 : start + 99]
        np.testing.assert_array_equal(block, np.broadcast_to(goals[start - 1], block.shape))
        assert not np.allclose(goals[start - 1], goals[start - 2])
    assert np.all(np.abs(goals) <= NAV.goal_range)


def test_old_transitions_come_from_the_filled_part():
    cfg = td3.Config(buffer_size=10, batch_size=2, total_timesteps=8)
    buf = buffers.flat_buffer(10, 2)
    item = td3.Transition(jnp.zeros(1), jnp.zeros(1), jnp.zeros(()), jnp.zeros(()), jnp.zeros(1))
    state = buf.init(item)
    added = jax.tree.map(lambda x: jnp.stack([x + i + 1 for i in range(4)]), item)
    state = buf.add(state, added)
    got = mql.old_transitions(cfg, state, jax.random.key(0), 200)
    assert set(np.asarray(got.reward).tolist()) == {1.0, 2.0, 3.0, 4.0}


def _adapt_smoke(context_len: int):
    """Short meta-training, then both adaptation modes: finite, ESS in (0, 1], lam = 1 - ESS."""
    cfg = td3.Config(
        total_timesteps=8 * 40, num_envs=8, batch_size=16, buffer_size=512, learning_starts=64,
        hidden=(8,), context_len=context_len, context_features=4,
    )  # fmt: skip
    hp = td3.HParams.make()
    env = mql.make_meta_env(NAV, cfg.context_len)
    # one program for init and training (init op by op costs more than its compile)
    state, _ = jit(lambda k: td3.train(cfg, env, mql.meta_init(cfg, NAV, k, hp), hp, 40))(
        jax.random.key(0)
    )
    task = NAV.sample_params(jax.random.key(7))

    def run(s, key, acfg):
        params, info = mql.adapt(cfg, acfg, NAV, s, task, key, hp)
        return params, info, mql.evaluate(cfg, NAV, params, task, key)

    def both(s, key):  # both adaptation modes as one program
        configs = [
            mql.AdaptConfig(new_envs=2, new_steps=20, adapt_steps=4, old_pool=64, reuse=reuse)
            for reuse in (True, False)
        ]
        return [run(s, key, acfg) for acfg in configs]

    results = jit(both)(state, jax.random.key(1))
    for reuse, (params, info, ret) in zip((True, False), results, strict=True):
        assert all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(params))
        gap = lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b))))  # noqa: E731
        moved = jax.tree.map(gap, params, state.params)
        assert max(jax.tree.leaves(moved.critic)) > 0.0
        assert max(jax.tree.leaves(moved.actor)) > 0.0
        assert np.isfinite(float(ret)) and float(ret) <= 0.0
        if reuse:
            assert 0.0 < float(info.ess) <= 1.0 + 1e-6
            np.testing.assert_allclose(info.lam, 1.0 - info.ess, rtol=1e-6)
            np.testing.assert_allclose(jnp.mean(info.beta), 1.0, rtol=1e-5)
            assert float(jnp.min(info.beta)) >= 0.0
        else:
            assert float(info.lam) == 0.0


def test_adapt_smoke_without_context():
    _adapt_smoke(0)


@pytest.mark.slow
def test_adapt_smoke_with_context():
    _adapt_smoke(3)


def test_task_per_episode_needs_sampler():
    from jaxrl.envs.probe import RewardFromObs  # noqa: PLC0415

    with pytest.raises(mql.ConfigError):
        mql.TaskPerEpisode(RewardFromObs())


def test_config_shapes_match_between_meta_and_task_env():
    # Networks meta-trained on the task-per-episode env run on the fixed-task env.
    cfg, _, _, params, _ = _setup(3)
    obs, _ = mql.make_task_env(NAV, 3).reset(jax.random.key(0), NAV.default_params())
    actor, _ = td3.networks(cfg, mql.make_task_env(NAV, 3))
    assert actor.apply(params.actor, obs).shape == (2,)
