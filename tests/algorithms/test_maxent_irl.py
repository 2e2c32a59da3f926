"""Maximum-entropy IRL: soft and hard value iteration against float64 backward induction,
state visitation against a forward recursion, the likelihood's gradient against feature
matching, the grid world's dynamics, the reward recovered from many demonstrations,
input errors, and IRL imitating from two demonstrations where cloning cannot."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from jaxrl.algorithms import maxent_irl as irl
from jaxrl.errors import ConfigError

W_TRUE = jnp.array([0.0, 1.0, -1.0, 0.3])
PROBS = jnp.array([0.7, 0.1, 0.1, 0.1])


def _random_mdp(key, s=5, a=3, f=2):
    k1, k2 = jax.random.split(key)
    transition = jax.random.dirichlet(k1, jnp.ones(s), (s, a))
    features = jax.random.normal(k2, (s, f))
    return irl.TabularMDP(transition, features, jnp.full((s,), 1.0 / s))


def test_value_iteration_against_float64_backward_induction():
    mdp = _random_mdp(jax.random.key(0))
    reward = np.asarray(mdp.features @ jnp.array([0.7, -0.4]), np.float64)
    p = np.asarray(mdp.transition, np.float64)
    v_soft = np.zeros(5)
    v_hard = np.zeros(5)
    soft, hard = [], []
    for _ in range(4):
        q = reward[:, None] + p @ v_soft
        v_soft = logsumexp(q, axis=1)
        soft.append(q - v_soft[:, None])
        q_hard = reward[:, None] + p @ v_hard
        v_hard = q_hard.max(1)
        hard.append(q_hard.argmax(1))
    soft, hard = soft[::-1], hard[::-1]
    log_pi = irl.soft_policy(mdp, jnp.asarray(reward, jnp.float32), 4)
    np.testing.assert_allclose(log_pi, np.stack(soft), rtol=1e-5, atol=1e-5)
    greedy = irl.greedy_policy(mdp, jnp.asarray(reward, jnp.float32), 4)
    np.testing.assert_array_equal(np.argmax(greedy, axis=-1), np.stack(hard))
    # The greedy policy's return is the optimal value, averaged over the start.
    np.testing.assert_allclose(
        irl.policy_return(mdp, greedy, jnp.asarray(reward, jnp.float32)),
        v_hard.mean(),
        rtol=1e-5,
    )


def test_visitation_against_a_forward_recursion():
    mdp = _random_mdp(jax.random.key(1))
    log_pi = irl.soft_policy(mdp, jnp.arange(5.0) / 5, 3)
    start = jnp.array([0.5, 0.5, 0.0, 0.0, 0.0])
    ds = irl.visitation(mdp, log_pi, start)
    p, pi = np.asarray(mdp.transition, np.float64), np.exp(np.asarray(log_pi, np.float64))
    d = np.asarray(start, np.float64)
    for t in range(3):
        np.testing.assert_allclose(ds[t], d, rtol=1e-5, atol=1e-6)
        d = np.einsum("s,sa,sat->t", d, pi[t], p)


def test_likelihood_gradient_is_feature_matching_under_deterministic_dynamics():
    mdp = irl.grid_mdp(irl.random_colours(jax.random.key(2), (5, 5), PROBS), 4, 0.0)
    expert = irl.greedy_policy(mdp, mdp.features @ W_TRUE, 10)
    demos = irl.sample_demos(mdp, expert, jax.random.key(3), 7)
    for w in (jnp.zeros(4), jnp.array([0.5, -1.0, 2.0, 0.1])):
        grad = jax.grad(lambda v: irl.log_likelihood(mdp, v, demos))(w)
        np.testing.assert_allclose(grad, irl.feature_gap(mdp, w, demos), atol=2e-4)


def test_grid_dynamics():
    mdp = irl.grid_mdp(jnp.zeros((3, 4), jnp.int32), 2, 0.2)
    np.testing.assert_allclose(mdp.transition.sum(-1), 1.0, rtol=1e-6)
    # From the top-left corner (state 0), north and west stay; east goes to state 1.
    expected_east = np.full(12, 0.0)
    expected_east[[0, 1, 4]] += 0.2 * np.array([3, 1, 1]) / 5  # slip: N, W, stay -> 0
    expected_east[1] += 0.8
    np.testing.assert_allclose(mdp.transition[0, 1], expected_east, atol=1e-6)
    np.testing.assert_allclose(mdp.features.sum(-1), 1.0)


def test_fit_recovers_the_reward_up_to_a_constant():
    """Many demonstrations from the model's own soft-optimal demonstrator: the weights are
    recovered up to the constant shift one-hot features cannot see. (Every colour must be
    common enough to matter: with the sparse PROBS, this layout has no cell of colour 2
    and the likelihood is flat in its weight.)"""
    balanced = jnp.array([0.4, 0.2, 0.2, 0.2])
    mdp = irl.grid_mdp(irl.random_colours(jax.random.key(4), (6, 6), balanced), 4, 0.1)
    demonstrator = irl.soft_policy(mdp, mdp.features @ W_TRUE, 15)
    demos = irl.sample_demos(mdp, demonstrator, jax.random.key(5), 4_000)
    cfg = irl.Config(horizon=15, num_steps=400)
    w, metrics = jax.jit(lambda d: irl.fit(cfg, mdp, d, irl.HParams.make()))(demos)
    centred = lambda v: np.asarray(v) - np.mean(np.asarray(v))
    np.testing.assert_allclose(centred(w), centred(W_TRUE), atol=0.1)
    assert metrics["log_likelihood"][-1] > metrics["log_likelihood"][0]


def test_input_errors():
    cfg, hp = irl.Config(horizon=4), irl.HParams.make()
    mdp = irl.grid_mdp(jnp.zeros((2, 2), jnp.int32), 2, 0.0)
    ok = irl.Demos(jnp.zeros((3, 4), jnp.int32), jnp.zeros((3, 4), jnp.int32))
    irl.check(cfg, mdp, ok, hp)
    with pytest.raises(ConfigError, match="horizon"):
        irl.check(cfg, mdp, irl.Demos(ok.states[:, :3], ok.actions[:, :3]), hp)
    with pytest.raises(ConfigError, match="actions in"):
        irl.check(cfg, mdp, ok.replace(actions=ok.actions.at[0, 0].set(5)), hp)
    with pytest.raises(ConfigError, match="probability"):
        irl.check(cfg, mdp.replace(start=mdp.start * 2), ok, hp)
    with pytest.raises(ConfigError, match="features"):
        irl.check(cfg, mdp.replace(features=mdp.features[:3]), ok, hp)
    with pytest.raises(ConfigError, match="learning_rate"):
        irl.check(cfg, mdp, ok, irl.HParams.make(learning_rate=-1.0))
    with pytest.raises(ConfigError, match="horizon"):
        irl.Config(horizon=0)


@pytest.mark.learning
def test_irl_imitates_from_two_demonstrations_where_cloning_cannot():
    """Four 8x8 layouts with slip 0.1, two expert trajectories of 20 steps each: the
    greedy policy of the recovered reward gets at least 90 % of the way from a random
    policy's return to the expert's, on each layout and on a new one; cloning the two
    trajectories gets less than half of that on average."""

    def one(key):
        k1, k2, k3 = jax.random.split(key, 3)
        mdp = irl.grid_mdp(irl.random_colours(k1, (8, 8), PROBS), 4, 0.1)
        new = irl.grid_mdp(irl.random_colours(k3, (8, 8), PROBS), 4, 0.1)
        expert = irl.greedy_policy(mdp, mdp.features @ W_TRUE, 20)
        demos = irl.sample_demos(mdp, expert, k2, 2)
        w, _ = irl.fit(irl.Config(horizon=20), mdp, demos, irl.HParams.make())
        uniform = jnp.full((20, 64, 5), jnp.log(0.2))

        def score(m, log_pi):
            r = m.features @ W_TRUE
            best = irl.policy_return(m, irl.greedy_policy(m, r, 20), r)
            rand = irl.policy_return(m, uniform, r)
            return (irl.policy_return(m, log_pi, r) - rand) / (best - rand)

        return (
            score(mdp, irl.greedy_policy(mdp, mdp.features @ w, 20)),
            score(new, irl.greedy_policy(new, new.features @ w, 20)),
            score(mdp, irl.behavioural_cloning(64, 5, demos, 20)),
        )

    same, transfer, bc = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(6), 4))
    assert np.all(np.asarray(same) >= 0.9), same
    assert np.all(np.asarray(transfer) >= 0.9), transfer
    assert float(np.mean(bc)) < 0.45 * float(np.mean(same)), (bc, same)
