"""Kuhn poker: the game's value and its equilibria, best responses against a brute force
over every pure strategy, mixtures against the payoff matrix, and the env's returns
against the exact payoff."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs import kuhn_poker as kp
from jaxrl.errors import ConfigError

PURE = jnp.array([np.reshape(b, (3, 2)) for b in itertools.product([0.0, 1.0], repeat=6)])


@pytest.mark.parametrize("alpha", [0.0, 0.2, 1 / 3])
def test_equilibria_have_the_game_value_and_no_exploitability(alpha):
    p1, p2 = kp.nash_strategies(alpha)
    np.testing.assert_allclose(kp.payoff(p1, p2), kp.GAME_VALUE, atol=1e-6)
    assert abs(float(kp.exploitability(p1, p2))) < 1e-6


def test_best_responses_match_a_brute_force_over_pure_strategies():
    for t in range(5):
        opponent = jax.random.uniform(jax.random.key(t), (3, 2))
        br1, v1 = kp.best_response(opponent, 1)
        br2, v2 = kp.best_response(opponent, 2)
        best1 = jnp.max(jax.vmap(kp.payoff, in_axes=(0, None))(PURE, opponent))
        best2 = -jnp.min(jax.vmap(kp.payoff, in_axes=(None, 0))(opponent, PURE))
        np.testing.assert_allclose(v1, best1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v2, best2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(kp.payoff(br1, opponent), v1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(-kp.payoff(opponent, br2), v2, rtol=1e-5, atol=1e-6)
    # Against the uniform opponent the exploitability is a known figure: 11/24.
    uniform = jnp.full((3, 2), 0.5)
    np.testing.assert_allclose(kp.exploitability(uniform, uniform), 11 / 24, rtol=1e-6)


def test_a_mixture_plays_like_its_payoff_matrix_average():
    keys = jax.random.split(jax.random.key(1), 4)
    pop1 = jax.random.uniform(keys[0], (5, 3, 2))
    pop2 = jax.random.uniform(keys[1], (4, 3, 2))
    w1 = jax.random.dirichlet(keys[2], jnp.ones(5))
    w2 = jax.random.dirichlet(keys[3], jnp.ones(4))
    matrix = kp.payoff_matrix(pop1, pop2)
    np.testing.assert_allclose(
        kp.payoff(kp.mix(pop1, w1, 1), kp.mix(pop2, w2, 2)), w1 @ matrix @ w2, rtol=1e-4, atol=1e-6
    )
    # Against every pure strategy too (so the mixture is right at every information set).
    against = jax.vmap(lambda s: kp.payoff(kp.mix(pop1, w1, 1), s))(PURE)
    expected = jax.vmap(lambda s: w1 @ jax.vmap(lambda p: kp.payoff(p, s))(pop1))(PURE)
    np.testing.assert_allclose(against, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seat", [1, 2])
def test_env_returns_match_the_exact_payoff(seat):
    env = kp.KuhnPoker(seat)
    pop = jax.random.uniform(jax.random.key(5), (2, 3, 2))
    params = kp.KuhnParams(pop, jnp.array([0.3, 0.7]))
    mine = jax.random.uniform(jax.random.key(6), (3, 2))

    def episode(key):
        keys = jax.random.split(key, 5)
        obs, state = env.reset(keys[0], params)
        card, decision = jnp.argmax(obs[:3]), jnp.argmax(obs[3:])
        action = (jax.random.uniform(keys[1]) < mine[card, decision]).astype(jnp.int32)
        obs, state, first = env.step(keys[2], state, action, params)
        action = (jax.random.uniform(keys[3]) < mine[card, 1]).astype(jnp.int32)
        _, _, second = env.step(keys[4], state, action, params)
        ret = jnp.where(first.terminated, first.reward, first.reward + second.reward)
        return ret, jnp.logical_or(first.terminated, second.terminated)

    n = 200_000
    returns, ended = jax.jit(jax.vmap(episode))(jax.random.split(jax.random.key(7), n))
    assert bool(jnp.all(ended))  # at most two decisions
    mixed = kp.mix(pop, params.weights, 3 - seat)
    exact = kp.payoff(mine, mixed) if seat == 1 else -kp.payoff(mixed, mine)
    stderr = float(jnp.std(returns)) / np.sqrt(n)
    assert abs(float(jnp.mean(returns)) - float(exact)) < 4 * stderr, (returns.mean(), exact)


def test_infoset_observations_are_the_envs():
    obs = kp.infoset_observations()
    env = kp.KuhnPoker(1)
    params = env.default_params()
    seen = set()
    for t in range(40):
        o, state = env.reset(jax.random.key(t), params)
        card = int(state.cards[0])
        np.testing.assert_array_equal(o, obs[card, 0])
        seen.add(card)
    assert seen == {0, 1, 2}
    with pytest.raises(ConfigError, match="seat"):
        kp.KuhnPoker(3)
