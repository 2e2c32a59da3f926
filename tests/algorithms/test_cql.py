"""CQL: the loss against a hand computation, Q regressing to the reward at discount 0, the
conservative term ranking the data's actions first, the target network's copies, config
errors, and CartPole learned offline from a noisy expert's data, where offline DQN's values
run past any possible return."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import cql, demos
from jaxrl.envs import registry
from jaxrl.errors import ConfigError
from jaxrl.runner import evaluate


class NoisyExpert:
    """CartPole's scripted expert ``a = [theta + 0.5 theta_dot > 0]``, replaced by a uniform
    random action with probability ``EPSILON``."""

    __name__ = "noisy_expert"
    EPSILON = 0.5

    @staticmethod
    def policy(cfg, env, params, obs, key, deterministic, hp=None):
        expert = (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(jnp.int32)
        key_action, key_coin = jax.random.split(key)
        uniform = jax.random.randint(key_action, expert.shape, 0, 2)
        coin = jax.random.uniform(key_coin, expert.shape)
        return jnp.where(coin < NoisyExpert.EPSILON, uniform, expert)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """20 episodes of the noisy expert (about 3,000 transitions)."""
    env, _ = registry.make("CartPole-v1")
    data, _ = demos.record(NoisyExpert, None, env, None, jax.random.key(0), 20, deterministic=False)
    path = tmp_path_factory.mktemp("cql") / "noisy_expert.npz"
    demos.save(path, data)
    return str(path)


def _setup(dataset, **overrides):
    env, _ = registry.make("CartPole-v1")
    cfg = cql.Config(**(dict(demos=dataset, hidden=(32,), batch_size=64) | overrides))
    hp = cql.HParams.make()
    return env, cfg, hp, cql.init(cfg, env, jax.random.key(0), hp)


def test_loss_is_td_plus_alpha_times_logsumexp_minus_the_datas_q(dataset):
    env, cfg, hp, state = _setup(dataset)
    ends = np.flatnonzero(np.asarray(state.data.terminated))[:8]
    index = np.concatenate([ends, np.arange(56)])  # a batch with episode ends in it
    batch = jax.tree.map(lambda x: x[index], state.data)
    target_params = jax.tree.map(lambda x: x * 1.5, state.params)  # differs from online
    hp = hp.replace(cql_alpha=jnp.float32(2.0), discount=jnp.float32(0.9))
    total, metrics = cql.loss(cfg, env, state.params, target_params, batch, hp)
    q = np.asarray(cql.q_values(cfg, env, state.params, batch.obs), float)
    next_q = np.asarray(cql.q_values(cfg, env, target_params, batch.next_obs), float)
    a = np.asarray(batch.action)
    q_data = q[np.arange(64), a]
    y = np.asarray(batch.reward) + 0.9 * (1 - np.asarray(batch.terminated)) * next_q.max(-1)
    td = np.mean(0.5 * (q_data - y) ** 2)
    lse = np.log(np.sum(np.exp(q), -1))
    np.testing.assert_allclose(metrics["train/td_loss"], td, rtol=1e-5)
    np.testing.assert_allclose(metrics["train/cql_term"], np.mean(lse - q_data), rtol=1e-5)
    np.testing.assert_allclose(total, td + 2.0 * np.mean(lse - q_data), rtol=1e-5)
    assert np.asarray(batch.terminated).any()  # the batch holds episode ends


def test_at_discount_zero_offline_dqn_regresses_q_to_the_reward(dataset):
    env, cfg, hp, state = _setup(dataset)
    hp = hp.replace(discount=jnp.float32(0.0), cql_alpha=jnp.float32(0.0))
    hp = hp.replace(learning_rate=jnp.float32(1e-3))
    state, _ = jax.jit(lambda s: cql.train(cfg, env, s, hp, 2_000))(state)
    data = state.data
    q = cql.q_values(cfg, env, state.params, data.obs)
    q_data = jnp.take_along_axis(q, data.action[:, None], axis=1)[:, 0]
    error = np.abs(np.asarray(q_data) - 1.0)  # CartPole pays 1 per step
    assert error.mean() < 0.02 and error.max() < 0.25, (error.mean(), error.max())


def test_the_conservative_term_ranks_the_datas_actions_first(dataset):
    env, cfg, hp, state = _setup(dataset)
    hp = hp.replace(cql_alpha=jnp.float32(50.0), learning_rate=jnp.float32(1e-3))
    data = state.data
    expert = np.asarray(data.obs[:, 2] + 0.5 * data.obs[:, 3] > 0).astype(int)
    state, _ = jax.jit(lambda s: cql.train(cfg, env, s, hp, 2_000))(state)
    greedy = np.asarray(jnp.argmax(cql.q_values(cfg, env, state.params, data.obs), -1))
    # the data takes the expert's action 3 times in 4: pushed up where the data acts, Q
    # ranks it first nearly everywhere
    assert np.mean(greedy == expert) > 0.9


def test_the_target_network_is_copied_every_period(dataset):
    env, cfg, hp, state = _setup(dataset, target_update_period=5)
    run = jax.jit(lambda s, n: cql.train(cfg, env, s, hp, n), static_argnums=1)
    four, _ = run(state, 4)
    five, _ = run(state, 5)
    for t, p0 in zip(
        jax.tree.leaves(four.target_params), jax.tree.leaves(state.params), strict=True
    ):
        np.testing.assert_array_equal(t, p0)
    for t, p in zip(jax.tree.leaves(five.target_params), jax.tree.leaves(five.params), strict=True):
        np.testing.assert_array_equal(t, p)
    assert int(five.step) == 5


def test_config_errors_come_before_compiling(tmp_path, dataset):
    hp = cql.HParams.make()
    with pytest.raises(ConfigError, match="CQL needs demonstrations: demos="):
        cql.check(cql.Config(), hp)
    pairs = str(registry.__file__)  # any path that is not a dataset
    with pytest.raises(ConfigError, match="not a readable .npz"):
        cql.check(cql.Config(demos=pairs), hp)
    np.savez(tmp_path / "pairs.npz", obs=np.zeros((3, 4)), action=np.zeros(3, int))
    with pytest.raises(ConfigError, match="CQL needs transitions"):
        cql.check(cql.Config(demos=str(tmp_path / "pairs.npz")), hp)
    with pytest.raises(ConfigError, match="cql_alpha"):
        cql.check(cql.Config(demos=dataset), cql.HParams.make(cql_alpha=-1.0))
    with pytest.raises(ConfigError, match="batch_size"):
        cql.Config(batch_size=0)
    pendulum, _ = registry.make("Pendulum-v1")
    with pytest.raises(ConfigError, match="observations have shape"):
        cql.init(cql.Config(demos=dataset), pendulum, jax.random.key(0), hp)


@pytest.mark.learning
def test_cartpole_offline_from_a_noisy_expert_where_offline_dqn_diverges(dataset):
    env, _ = registry.make("CartPole-v1")
    cfg = cql.Config(demos=dataset, num_steps=10_000)

    def run(alpha):
        hp = cql.HParams.make(cql_alpha=alpha)
        cql.check(cfg, hp)

        def one(key):
            state = cql.init(cfg, env, key, hp)
            state, metrics = cql.train(cfg, env, state, hp, cfg.num_steps)
            greedy = evaluate.evaluate(
                cql, cfg, env, state.params, jax.random.fold_in(key, 1), 20, True
            )
            return greedy.mean(), metrics["train/q_data"][-1]

        out = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(1), 4))
        return jax.tree.map(np.asarray, out)

    greedy, q = run(1.0)
    assert greedy.mean() >= 450, greedy
    assert np.all(q < 100), q  # below 1 / (1 - gamma), the most any policy can earn
    greedy, q = run(0.0)  # offline DQN on the same data and seeds
    assert np.all(q > 100), q  # values no policy can have
    assert greedy.mean() < 100, greedy
