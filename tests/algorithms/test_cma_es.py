"""CMA-ES policy search: the policy's actions, fitness against looped evaluation from common
resets, unfinished members ranked last, generations split and resumed, config errors, and
CartPole balanced by the search distribution's mean."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import cma_es
from jaxrl.envs import registry
from jaxrl.errors import ConfigError
from jaxrl.runner import evaluate

SMALL = dict(population=8, episodes=2, hidden=(8,))


def _setup(env_id="CartPole-v1", **overrides):
    env, _ = registry.make(env_id)
    cfg = cma_es.Config(**(SMALL | overrides))
    return env, cfg, cma_es.init(cfg, env, jax.random.key(0))


def test_box_actions_are_squashed_into_the_bounds_and_discrete_ones_are_the_argmax():
    env, cfg, state = _setup("Pendulum-v1")
    params = cma_es.params(cfg, env, state)
    obs = 10.0 * jax.random.normal(jax.random.key(1), (64, 3))
    action = cma_es.policy(cfg, env, params, obs, None, True)
    assert action.shape == (64, 1)
    dense = params["params"]["Dense_0"]
    hidden = np.tanh(np.asarray(obs) @ np.asarray(params["params"]["MLP_0"]["Dense_0"]["kernel"])
                     + np.asarray(params["params"]["MLP_0"]["Dense_0"]["bias"]))  # fmt: skip
    x = hidden @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    np.testing.assert_allclose(action, -2.0 + (np.tanh(x) + 1.0) / 2.0 * 4.0, atol=1e-5)
    assert np.all(np.abs(np.asarray(action)) <= 2.0)
    env, cfg, state = _setup()
    params = cma_es.params(cfg, env, state)
    obs = jax.random.normal(jax.random.key(2), (64, 4))
    action = cma_es.policy(cfg, env, params, obs, None, True)
    assert action.shape == (64,) and set(np.unique(action)) <= {0, 1}


def test_fitness_is_each_members_mean_return_from_common_resets():
    env, cfg, state = _setup()
    with jax.numpy_rank_promotion("allow"):  # evosax broadcasts implicitly
        population, _ = cma_es.strategy(cfg, env).ask(
            jax.random.key(3), state.es_state, cma_es.es_params(cfg, env)
        )
    key = jax.random.key(4)
    returns, steps = jax.jit(lambda p: cma_es.fitness(cfg, env, p, key))(population)
    assert len(set(np.asarray(returns).tolist())) > 1  # the members differ
    for i in range(cfg.population):
        member = jax.tree.map(lambda x, i=i: x[i], population)
        r, n = evaluate.evaluate_episodes(cma_es, cfg, env, member, key, 2, True)
        np.testing.assert_allclose(returns[i], jnp.mean(r), rtol=1e-6)
        assert int(steps[i]) == int(jnp.sum(n))
    # CartPole pays 1 per step: a member's return is its steps per episode
    np.testing.assert_allclose(returns * cfg.episodes, steps)


def test_an_unfinished_member_is_nan_and_ranks_last():
    env, cfg, state = _setup(max_steps=12)
    _, metrics = jax.jit(lambda s: cma_es.update(cfg, env, s))(state)
    unfinished = int(metrics["es/unfinished"])
    assert 0 < unfinished < cfg.population  # some fell within 12 steps, some did not
    assert np.isnan(float(metrics["es/mean_return"]))


def test_generations_split_in_two_runs_resume_to_the_same_numbers():
    env, cfg, state = _setup()
    run = jax.jit(lambda s, n: cma_es.train(cfg, env, s, n), static_argnums=1)
    whole, m_whole = run(state, 6)
    half, m_a = run(state, 3)
    resumed, m_b = run(half, 3)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        m_whole["es/mean_return"], np.concatenate([m_a["es/mean_return"], m_b["es/mean_return"]])
    )
    assert int(whole.generation) == 6


def test_config_errors_come_before_compiling():
    with pytest.raises(ConfigError, match="population must be at least 2"):
        cma_es.Config(population=1)
    with pytest.raises(ConfigError, match="sigma_init must be positive"):
        cma_es.Config(sigma_init=0.0)
    with pytest.raises(ConfigError, match="episodes"):
        cma_es.Config(episodes=0)
    with pytest.raises(ConfigError, match="unknown|hidden"):
        cma_es.Config(hidden=(0,))


@pytest.mark.learning
def test_the_search_mean_balances_cartpole_on_4_seeds_in_40_generations():
    env, _ = registry.make("CartPole-v1")
    cfg = cma_es.Config()

    def run(key):
        state = cma_es.init(cfg, env, key)
        state, metrics = cma_es.train(cfg, env, state, 40)
        greedy = evaluate.evaluate(
            cma_es, cfg, env, cma_es.params(cfg, env, state), jax.random.fold_in(key, 1), 16, True
        )
        return greedy, metrics["es/env_steps"].sum()

    greedy, steps = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 4))
    per_seed = np.asarray(greedy).mean(axis=1)
    assert per_seed.mean() >= 475 and np.all(per_seed >= 450), per_seed
    assert np.all(np.asarray(steps) <= 40 * 32 * 500)
