"""Bernoulli bandit tasks (jaxrl.envs.bandits) and the bandit baselines against closed forms."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs.bandits import BernoulliBandit
from jaxrl.errors import ConfigError
from jaxrl.meta import bandit_baselines as bb


def test_rewards_are_bernoulli_with_the_task_probability():
    env = BernoulliBandit(num_arms=3)
    params = env.default_params().replace(probs=jnp.array([0.2, 0.7, 0.95]))
    obs, state = env.reset(jax.random.key(0), params)
    np.testing.assert_array_equal(obs, [1.0])
    num = 20_000
    keys = jax.random.split(jax.random.key(1), num)
    for arm, p in enumerate([0.2, 0.7, 0.95]):
        step = jax.vmap(lambda k, a=arm: env.step(k, state, jnp.int32(a), params)[2])(keys)
        mean = float(step.reward.mean())
        assert abs(mean - p) < 4 * np.sqrt(p * (1 - p) / num), (arm, mean)
        assert set(np.unique(step.reward)) <= {0.0, 1.0}
        np.testing.assert_allclose(step.info["expected_reward"], p)
        np.testing.assert_allclose(step.info["regret"], 0.95 - p, atol=1e-6)
        assert np.all(step.terminated) and not np.any(step.truncated)  # one pull = one episode


def test_task_distributions():
    keys = jax.random.split(jax.random.key(0), 4000)
    probs = jax.vmap(BernoulliBandit(num_arms=5).sample_params)(keys).probs
    assert probs.shape == (4000, 5) and probs.min() >= 0 and probs.max() <= 1
    assert abs(float(probs.mean()) - 0.5) < 0.01
    for task, low in [("dependent_easy", 0.1), ("dependent_medium", 0.25), ("dependent_hard", 0.4)]:
        env = BernoulliBandit(num_arms=2, task=task)
        p = np.asarray(jax.vmap(env.sample_params)(keys).probs, np.float64)
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
        assert {float(x) for x in np.round(p[:, 0], 4)} == {round(low, 4), round(1 - low, 4)}
        assert abs(np.mean(p[:, 0] > 0.5) - 0.5) < 0.05
    env = BernoulliBandit(num_arms=2, task="dependent_uniform")
    p = np.asarray(jax.vmap(env.sample_params)(keys).probs)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    assert abs(p[:, 0].mean() - 0.5) < 0.02 and p[:, 0].std() > 0.25


def test_bad_config_raises():
    with pytest.raises(ConfigError):
        BernoulliBandit(num_arms=0)
    with pytest.raises(ConfigError):
        BernoulliBandit(task="restless")
    with pytest.raises(ConfigError):
        BernoulliBandit(num_arms=3, task="dependent_easy")
    probs = jnp.full((4, 2), 0.5)
    with pytest.raises(ConfigError):
        bb.run("gittins_discounted", jax.random.key(0), probs, 5)
    with pytest.raises(ConfigError, match="concrete"):
        jax.jit(lambda a: bb.run("gittins", jax.random.key(0), probs, 5, alpha=a))(1.0)
    with pytest.raises(ConfigError):
        bb.gittins_indices(5, 1.0, 0.0)
    with pytest.raises(ConfigError):
        bb.run("ucb1", jax.random.key(0), probs, 5, epsilon=0.1)
    with pytest.raises(ConfigError):
        bb.run("random", jax.random.key(0), probs[0], 5)


def test_random_is_half_of_n_in_expectation():
    """Random play: E[total] = n · mean(p) exactly; over U[0,1] tasks that is n / 2."""
    probs = jnp.tile(jnp.array([[0.1, 0.3, 0.9]]), (4000, 1))
    total, best, regret = bb.run("random", jax.random.key(0), probs, 10)
    want = 10 * (0.1 + 0.3 + 0.9) / 3
    assert abs(float(total.mean()) - want) < 4 * float(total.std()) / np.sqrt(4000)
    np.testing.assert_allclose(float(regret.sum(0).mean()), 9.0 - want, atol=0.1)
    assert abs(float(best.mean()) - 1 / 3) < 0.01


def test_one_pull_every_strategy_gets_the_mean_arm():
    """With no information yet, every strategy picks uniformly: E[reward] = mean(p)."""
    probs = jnp.tile(jnp.array([[0.1, 0.5, 0.9]]), (20_000, 1))
    for strategy in bb.STRATEGIES:
        total, best, _ = bb.run(strategy, jax.random.key(0), probs, 1)
        assert best.shape == (1, 20_000)
        assert abs(float(total.mean()) - 0.5) < 0.015, strategy
        assert abs(float(best.mean()) - 1 / 3) < 0.015, strategy


def test_greedy_sticks_with_a_sure_arm():
    """Arms p = (1, 0): once greedy (Beta(1,1) prior) sees a success it never switches."""
    probs = jnp.tile(jnp.array([[1.0, 0.0]]), (2000, 1))
    total, best, regret = bb.run("greedy", jax.random.key(0), probs, 10)
    # First pull: arm 0 w.p. 1/2 (then 10 successes); else a failure on arm 1, then arm 0.
    np.testing.assert_allclose(np.unique(total), [9.0, 10.0])
    assert np.all(best[1:]) and np.all(regret[1:] == 0)
    assert abs(float(total.mean()) - 9.5) < 0.05


def test_ucb1_on_a_deterministic_bandit_tries_every_arm_then_exploits():
    """p = (0, 0, 1) is deterministic. UCB1 (c = 0.2, Beta(1,1) prior): an untried arm scores
    0.5 + bonus, a failed arm 1/3 + bonus, a paying arm >= 2/3 + bonus, which beats both for
    t <= 10; so UCB1 tries untried arms in random order until the sure arm pays, then keeps it."""
    probs = jnp.tile(jnp.array([[0.0, 0.0, 1.0]]), (3000, 1))
    total, best, _ = bb.run("ucb1", jax.random.key(0), probs, 10)
    # The sure arm is found at pull 1, 2 or 3 with probability 1/3 each: total 10, 9 or 8.
    np.testing.assert_allclose(np.unique(total), [8.0, 9.0, 10.0])
    assert abs(float(total.mean()) - 9.0) < 0.05
    assert np.all(best[3:])


def test_thompson_samples_the_beta_posterior():
    """After ``s`` successes in ``n`` pulls, TS picks arm 0 over a known-0.5 arm with
    probability ``P(Beta(1 + s, 1 + n - s) > θ_1)``; check the select rule against it."""
    counts = jnp.array([4.0, 1e6])
    successes = jnp.array([3.0, 0.5e6])  # arm 1: posterior is a spike at 0.5
    hp = {k: jnp.float32(v) for k, v in bb.DEFAULTS["thompson"].items()}
    keys = jax.random.split(jax.random.key(0), 40_000)
    arms = jax.vmap(lambda k: bb.select("thompson", k, counts, successes, 4, hp))(keys)
    # P(Beta(4, 2) > 0.5) = 1 - I_0.5(4, 2) = 13/16.
    assert abs(float(jnp.mean(arms == 0)) - 13 / 16) < 0.01


def _gittins_by_bisection(pulls_left, s, f, alpha, beta):
    """Finite-horizon Gittins index by 50 bisection steps on an exact memoised recursion."""

    def advantage(lam):
        @functools.cache
        def value(k, s, f):
            return 0.0 if k == 0 else max(lam * k, pull(k, s, f))

        @functools.cache
        def pull(k, s, f):
            mean = (s + alpha) / (s + f + alpha + beta)
            return mean * (1 + value(k - 1, s + 1, f)) + (1 - mean) * value(k - 1, s, f + 1)

        return pull(pulls_left, s, f) - lam * pulls_left

    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if advantage(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0)])
def test_gittins_indices_match_bisection(alpha, beta):
    """The grid sweep's table against per-state bisection, every reachable state of n = 9."""
    n = 9
    table = bb.gittins_indices(n, alpha, beta)
    want = [
        (table[h, s, f], _gittins_by_bisection(h, s, f, alpha, beta))
        for h in range(1, n + 1)
        for s in range(n - h + 1)
        for f in range(n - h + 1 - s)
    ]
    np.testing.assert_allclose(*np.array(want).T, atol=1e-4)


def test_gittins_index_closed_forms_and_monotonicity():
    """One pull left: the posterior mean. Two pulls from Beta(1, 1): pull again only after a
    success, so the rate is (1/2 + 1/2 · 2/3) / (1 + 1/2) = 5/9. More pulls left, more
    successes or fewer failures never lower the index."""
    n = 20
    table = bb.gittins_indices(n)
    s, f = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    mask = s + f <= n - 1
    np.testing.assert_allclose(table[1, :n, :n][mask], ((s + 1) / (s + f + 2))[mask], atol=1e-6)
    np.testing.assert_allclose(table[2, 0, 0], 5 / 9, atol=1e-5)
    for h in range(2, n):
        m = n - h + 1
        assert np.all(table[h, :m, :m] >= table[h - 1, :m, :m] - 1e-6)
        assert np.all(np.diff(table[h, :m, :m], axis=0) >= -1e-6)
        assert np.all(np.diff(table[h, :m, :m], axis=1) <= 1e-6)


def test_gittins_finds_a_sure_arm():
    """Arms p = (1, 0), n = 3, Beta(1, 1): both arms start at the same index, so the first
    pull is a coin flip; a success makes arm 0 the strict best for good, and a failure on
    arm 1 makes the untried arm 0 better; so totals are 3 or 2, half each."""
    probs = jnp.tile(jnp.array([[1.0, 0.0]]), (4000, 1))
    total, best, _ = bb.run("gittins", jax.random.key(0), probs, 3)
    np.testing.assert_allclose(np.unique(total), [2.0, 3.0])
    assert abs(float(total.mean()) - 2.5) < 0.04
    assert np.all(best[1:])


# Duan et al. (2016) table for n = 10 (n = 100, k in {5, 10}: experiments/meta/rl2_bandits.py r1).
PAPER = [
    ("random", 10, 5, 5.0),
    ("greedy", 10, 5, 6.6),
    ("epsilon_greedy", 10, 5, 6.6),
    ("ucb1", 10, 5, 6.7),
    ("thompson", 10, 5, 5.7),
    ("ucb1", 10, 10, 6.7),
    ("thompson", 10, 10, 5.5),
    ("gittins", 10, 5, 6.6),
    ("gittins", 10, 10, 6.6),
]


@pytest.mark.parametrize("strategy,num_pulls,num_arms,paper", PAPER)
def test_baselines_match_duan_table(strategy, num_pulls, num_arms, paper):
    probs = bb.sample_probs(jax.random.key(7), 20_000, num_arms)
    hp = bb.tuned(strategy, num_pulls)
    run = jax.jit(lambda key, p: bb.run(strategy, key, p, num_pulls, **hp)[0])
    got = float(run(jax.random.key(8), probs).mean())
    assert abs(got - paper) <= 0.03 * paper, (strategy, num_pulls, got, paper)
