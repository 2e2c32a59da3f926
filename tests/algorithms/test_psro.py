"""PSRO: the zero-sum meta-solver against a linear program, alpha-Rank against a float64
eigenvector and against games whose answer is known, the fixation probability against
its formula, masked populations, vmapped seeds against looped ones, config errors, and
PSRO reaching a Nash equilibrium of Kuhn poker with exact and with PPO best responses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog

from jaxrl.algorithms import psro
from jaxrl.envs import kuhn_poker as kp
from jaxrl.errors import ConfigError


def _lp_value(matrix: np.ndarray) -> float:
    """The row player's value of a zero-sum matrix game, by linear programming."""
    k1, k2 = matrix.shape
    # maximise v s.t. x^T A >= v, sum x = 1, x >= 0; variables (x, v).
    c = np.zeros(k1 + 1)
    c[-1] = -1.0
    a_ub = np.hstack([-matrix.T, np.ones((k2, 1))])
    a_eq = np.hstack([np.ones((1, k1)), np.zeros((1, 1))])
    bounds = [(0, None)] * k1 + [(None, None)]
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(k2), A_eq=a_eq, b_eq=[1.0], bounds=bounds)
    return float(res.x[-1])


@pytest.mark.parametrize("size", [6, 4])
def test_zero_sum_solver_matches_linear_programming(size):
    matrix = jax.random.normal(jax.random.key(size), (6, 6))
    w1, w2 = psro.solve_zero_sum(matrix, jnp.int32(size), 4_000)
    a = np.asarray(matrix, np.float64)[:size, :size]
    value = _lp_value(a)
    np.testing.assert_array_equal(np.asarray(w1)[size:], 0.0)
    np.testing.assert_array_equal(np.asarray(w2)[size:], 0.0)
    x, y = np.asarray(w1, np.float64)[:size], np.asarray(w2, np.float64)[:size]
    # Neither player gains more than 1e-2 by deviating, and the value is the LP's.
    assert np.max(a @ y) - value < 1e-2 and value - np.min(x @ a) < 1e-2
    np.testing.assert_allclose(x @ a @ y, value, atol=1e-2)


def test_fixation_probability_against_its_formula():
    m = 50
    for alpha, delta in [(1.0, 0.3), (1.0, -0.3), (0.5, 0.01), (2.0, -0.05)]:
        a = alpha * delta
        expected = (1 - np.exp(-a)) / (1 - np.exp(-m * a))
        np.testing.assert_allclose(psro.fixation_probability(delta, alpha, m), expected, rtol=1e-5)
    np.testing.assert_allclose(psro.fixation_probability(0.0, 1.0, m), 1 / m)
    extreme = psro.fixation_probability(jnp.array([-4.0, 4.0]), 1e3, m)
    assert bool(jnp.all(jnp.isfinite(extreme)))
    np.testing.assert_allclose(extreme, [0.0, 1.0], atol=1e-6)


def _alpharank_float64(matrix: np.ndarray, alpha: float, m: int) -> np.ndarray:
    """alpha-Rank's stationary distribution over profiles, by a float64 eigenvector."""
    k = matrix.shape[0]
    eta = 2 * (k - 1)

    def rho(d):
        a = alpha * d
        return 1 / m if a == 0 else (1 - np.exp(-a)) / (1 - np.exp(-m * a))

    t = np.zeros((k * k, k * k))
    for i in range(k):
        for j in range(k):
            for a in range(k):
                if a != i:
                    t[i * k + j, a * k + j] = rho(matrix[a, j] - matrix[i, j]) / eta
            for b in range(k):
                if b != j:
                    t[i * k + j, i * k + b] = rho(matrix[i, j] - matrix[i, b]) / eta
            t[i * k + j, i * k + j] = 1 - t[i * k + j].sum()
    values, vectors = np.linalg.eig(t.T)
    pi = np.real(vectors[:, np.argmin(np.abs(values - 1))])
    return (pi / pi.sum()).reshape(k, k)


def test_alpharank_matches_a_float64_eigenvector_and_ignores_empty_slots():
    matrix = np.asarray(jax.random.normal(jax.random.key(3), (4, 4)), np.float64)
    pi = _alpharank_float64(matrix, 2.0, 20)
    padded = jnp.zeros((6, 6)).at[:4, :4].set(jnp.asarray(matrix, jnp.float32))
    w1, w2 = psro.alpharank(padded, jnp.int32(4), 2.0, 20)
    np.testing.assert_allclose(w1[:4], pi.sum(1), atol=1e-4)
    np.testing.assert_allclose(w2[:4], pi.sum(0), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(w1)[4:], 0.0)


def test_alpharank_on_games_with_known_answers():
    # Matching pennies cycles: every strategy equally often.
    pennies = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    w1, w2 = psro.alpharank(pennies, jnp.int32(2), 5.0, 50)
    np.testing.assert_allclose(w1, [0.5, 0.5], atol=1e-5)
    np.testing.assert_allclose(w2, [0.5, 0.5], atol=1e-5)
    # A saddle point in pure strategies (row 1, column 0) takes all the mass.
    saddle = jnp.array([[0.0, 2.0, 1.0], [1.0, 3.0, 2.0], [-1.0, 0.0, 0.5]])
    w1, w2 = psro.alpharank(saddle, jnp.int32(3), 10.0, 50)
    np.testing.assert_allclose(w1, [0.0, 1.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(w2, [1.0, 0.0, 0.0], atol=1e-4)


def test_psro_with_exact_responses_reaches_kuhns_equilibrium():
    cfg = psro.Config(iterations=10)
    state, metrics = jax.jit(lambda k: psro.train(cfg, psro.init(cfg, k), psro.HParams.make()))(
        jax.random.key(0)
    )
    exploitability = np.asarray(metrics["exploitability"])
    np.testing.assert_allclose(exploitability[0], 11 / 24, rtol=1e-5)  # the random start
    assert exploitability[-1] < 1e-3, exploitability
    np.testing.assert_allclose(metrics["payoff"][-1], kp.GAME_VALUE, atol=2e-3)
    np.testing.assert_allclose(metrics["oracle_gap"][:-1], 0.0, atol=1e-6)
    assert int(state.size) == 11
    # Every added strategy is pure: exact best responses.
    assert set(np.unique(np.asarray(state.pop1[1:]))) <= {0.0, 1.0}


def test_uniform_meta_solver_weighs_the_filled_slots_equally():
    cfg = psro.Config(solver="uniform", iterations=3)
    w1, w2 = psro.meta_solve(cfg, jnp.zeros((4, 4)), jnp.int32(3))
    np.testing.assert_allclose(w1, [1 / 3, 1 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(w2, w1)


def test_vmapped_seeds_match_looped_ones_with_ppo_responses():
    cfg = psro.Config(iterations=2, oracle="ppo", ppo_updates=2)
    hp = psro.HParams.make()
    run = lambda k: psro.train(cfg, psro.init(cfg, k), hp)
    keys = jax.random.split(jax.random.key(1), 2)
    state_v, metrics_v = jax.jit(jax.vmap(run))(keys)
    run_jit = jax.jit(run)
    for i in range(2):
        state_i, metrics_i = run_jit(keys[i])
        np.testing.assert_allclose(state_v.pop1[i], state_i.pop1, atol=1e-4)
        np.testing.assert_allclose(state_v.pop2[i], state_i.pop2, atol=1e-4)
        np.testing.assert_allclose(
            metrics_v["exploitability"][i], metrics_i["exploitability"], atol=1e-4
        )


def test_config_errors():
    with pytest.raises(ConfigError, match="solver must be one of"):
        psro.Config(solver="replicator")
    with pytest.raises(ConfigError, match="oracle must be one of"):
        psro.Config(oracle="dqn")
    with pytest.raises(ConfigError, match="alpha"):
        psro.Config(alpha=0.0)
    with pytest.raises(ConfigError, match="iterations"):
        psro.Config(iterations=0)
    with pytest.raises(ConfigError, match="learning_rate"):
        psro.check(psro.Config(), psro.HParams.make(learning_rate=-1.0))


@pytest.mark.learning
def test_psro_with_ppo_responses_approaches_equilibrium():
    """Two seeds, PSRO-Nash with PPO best responses: exploitability below 0.02 after 10
    iterations (from 0.46 for the random start)."""
    cfg = psro.Config(iterations=10, oracle="ppo")
    hp = psro.HParams.make()
    run = lambda k: psro.train(cfg, psro.init(cfg, k), hp)[1]["exploitability"]
    exploitability = np.asarray(jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(2), 2)))
    assert np.all(exploitability[:, -1] < 0.02), exploitability
