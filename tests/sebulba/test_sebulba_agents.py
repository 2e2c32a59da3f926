"""The Sebulba learning halves are the algorithms' own: on the same rollout they give the
algorithm's in-JAX ``update`` (PPO, IMPALA, DQN), and their ``init`` its ``init``."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import envs
from jaxrl.algorithms import dqn, impala, ppo
from jaxrl.errors import ConfigError
from jaxrl.sebulba import agents
from jaxrl.sebulba.host_envs import EnvSpec

ENV, ENV_PARAMS = envs.make("CartPole-v1")
SPEC = EnvSpec("CartPole-v1", ENV.observation_space(ENV_PARAMS), ENV.action_space(ENV_PARAMS))


def _numeric(tree):
    is_key = lambda x: isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def _close(a, b):
    chex.assert_trees_all_close(_numeric(a), _numeric(b), rtol=1e-5, atol=1e-6)


def _trajectory(rollout) -> agents.Trajectory:
    """The host trajectory an actor would have sent for an in-JAX rollout ``[T, N]``."""
    return agents.Trajectory(
        obs=rollout.obs,
        action=rollout.action,
        log_prob=rollout.log_prob,
        reward=rollout.reward,
        terminated=rollout.terminated,
        truncated=rollout.truncated,
        final_obs=rollout.final_obs,
        episode_return=rollout.info["episode_return"],
        episode_length=rollout.info["episode_length"],
    )


def _moved(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return any(not np.allclose(x, y) for x, y in pairs)


def _strip_env(state):
    return state.replace(env_state=None, obs=None, env_params=None)


@pytest.mark.parametrize("objective", ["clip", pytest.param("kl", marks=pytest.mark.slow)])
def test_ppo_learn_equals_ppo_update_on_the_same_rollout(objective):
    cfg = ppo.Config(num_envs=4, rollout_len=16, hidden=(16, 16), total_timesteps=64 * 20,
                     objective=objective)  # fmt: skip
    hp = ppo.HParams.make()
    agent = agents.make("ppo", cfg, hp, SPEC, num_actors=2)

    def both(state):
        # A second update, so that the annealed rate and the KL coefficient have moved.
        state, _ = ppo.update(cfg, ENV, state, hp)
        ref, ref_metrics = ppo.update(cfg, ENV, state, hp)
        collected, rollout = ppo.collect(cfg, ENV, state)
        learner_state = _strip_env(state).replace(key=collected.key)
        mine, metrics = agent.learn(learner_state, _trajectory(rollout))
        return state, ref, ref_metrics, mine, metrics

    state, ref, ref_metrics, mine, metrics = jax.jit(both)(
        ppo.init(cfg, ENV, jax.random.key(3), hp)
    )
    assert int(mine.update_count) == int(ref.update_count) == 2
    _close(mine.params, ref.params)
    _close(mine.opt_state, ref.opt_state)
    _close(mine.kl_beta, ref.kl_beta)
    assert _moved(state.params, ref.params)
    assert set(metrics) == set(ref_metrics)
    for name in ref_metrics:
        np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=1e-5, atol=1e-6)


def test_impala_learn_equals_impala_update_with_lag_0():
    cfg = impala.Config(num_envs=4, rollout_len=8, hidden=(16, 16), total_timesteps=32 * 20)
    hp = impala.HParams.make()
    agent = agents.make("impala", cfg, hp, SPEC, num_actors=4)

    def both(state):
        state, _ = impala.update(cfg, ENV, state, hp)
        ref, ref_metrics = impala.update(cfg, ENV, state, hp)
        collected, rollout = impala.collect(cfg, ENV, state)
        mine, metrics = agent.learn(_strip_env(state).replace(key=collected.key),
                                    _trajectory(rollout))  # fmt: skip
        return state, ref, ref_metrics, mine, metrics

    state, ref, ref_metrics, mine, metrics = jax.jit(both)(
        impala.init(cfg, ENV, jax.random.key(4), hp)
    )
    assert _moved(state.params, ref.params)
    _close(mine.params, ref.params)
    _close(mine.stale_params, ref.stale_params)
    _close(mine.opt_state, ref.opt_state)
    assert int(mine.update_count) == int(ref.update_count) == 2
    for name in ref_metrics:
        np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "variant",
    [dict(), pytest.param(dict(prioritised=True, n_step=3, double=True), marks=pytest.mark.slow)],
)
def test_dqn_learn_equals_dqn_update_on_the_same_transitions(variant):
    cfg = dqn.Config(total_timesteps=2_000, num_envs=4, train_freq=2, gradient_steps=2,
                     buffer_size=400, batch_size=16, learning_starts=40,
                     target_update_period=4, hidden=(16, 16), **variant)  # fmt: skip
    hp = dqn.HParams.make()
    agent = agents.make("dqn", cfg, hp, SPEC, num_actors=2)

    def both(state):
        # Past learning_starts, so that the replay is sampled and the nets move.
        state, _ = dqn.train(cfg, ENV, state, hp, 8)
        ref, ref_metrics = dqn.update(cfg, ENV, state, hp)
        collected, trans, info = dqn.collect(cfg, ENV, state, hp)
        traj = agents.Trajectory(
            obs=trans.obs, action=trans.action, log_prob=jnp.zeros_like(trans.reward),
            reward=trans.reward, terminated=trans.terminated > 0,
            truncated=(trans.done > 0) & (trans.terminated == 0), final_obs=trans.next_obs,
            episode_return=info["episode_return"], episode_length=info["episode_length"],
        )  # fmt: skip
        mine, metrics = agent.learn(_strip_env(state).replace(key=collected.key), traj)
        return state, ref, ref_metrics, mine, metrics

    state, ref, ref_metrics, mine, metrics = jax.jit(both)(
        dqn.init(cfg, ENV, jax.random.key(5), hp)
    )
    assert int(mine.env_steps) == int(ref.env_steps) and int(mine.grad_steps) == int(ref.grad_steps)
    assert int(ref.grad_steps) > int(state.grad_steps) and _moved(state.params, ref.params)
    _close(mine.params, ref.params)
    _close(mine.opt_state, ref.opt_state)
    _close(mine.buffer, ref.buffer)
    for name in ref_metrics:
        np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "algo, module, cfg",
    [
        ("ppo", ppo, ppo.Config(num_envs=4, rollout_len=8, total_timesteps=64)),
        ("impala", impala, impala.Config(num_envs=4, rollout_len=8, total_timesteps=64)),
        ("dqn", dqn, dqn.Config(num_envs=4, total_timesteps=64, buffer_size=64, batch_size=8)),
    ],
)
def test_init_gives_the_algorithms_networks_and_optimiser(algo, module, cfg):
    hp = module.HParams.make()
    key = jax.random.key(11)
    ref = module.init(cfg, ENV, key, hp)
    mine = jax.jit(agents.make(algo, cfg, hp, SPEC, num_actors=2).init)(key)
    _close(mine.params, ref.params)
    _close(mine.opt_state, ref.opt_state)
    _close(mine.key, ref.key)


def test_act_samples_the_policy_with_its_log_prob():
    cfg = ppo.Config(num_envs=4, rollout_len=8, total_timesteps=64)
    agent = agents.make("ppo", cfg, ppo.HParams.make(), SPEC, num_actors=2)
    state = agent.init(jax.random.key(0))
    obs = jax.random.normal(jax.random.key(1), (2, 4))
    key, action, log_prob = jax.jit(agent.act)(state.params, obs, jax.random.key(2), 0, 1)
    dist, _ = ppo.network(cfg, SPEC).apply(state.params, obs)
    chex.assert_shape([action, log_prob], (2,))
    np.testing.assert_allclose(log_prob, dist.log_prob(action), rtol=1e-6)
    assert key.shape == ()


def test_dqn_apex_exploration_gives_each_env_column_its_epsilon():
    cfg = dqn.Config(num_envs=4, total_timesteps=64, buffer_size=64, batch_size=8,
                     learning_starts=0)  # fmt: skip
    agent = agents.make("dqn", cfg, dqn.HParams.make(), SPEC, 2, exploration="apex")
    params = agent.actor_params(agent.init(jax.random.key(0)))
    obs = jnp.zeros((2, 4))
    act = jax.jit(agent.act)
    # Column 0 of actor 0 explores at 0.4, column 1 of actor 1 at 0.4**8 ~ 7e-4: greedy.
    actions = np.array([act(params, obs, jax.random.key(i), 10, a)[1] for i in range(200)
                        for a in (0, 1)]).reshape(200, 2, 2)  # fmt: skip
    greedy = int(dqn.act(cfg, SPEC, dqn.Params(params, params), obs[:1])[0])
    assert 0.05 < np.mean(actions[:, 0, 0] != greedy) < 0.35  # eps 0.4, half the random hit it
    assert np.mean(actions[:, 1, 1] != greedy) < 0.02


@pytest.mark.parametrize(
    "algo, cfg, match",
    [
        ("ppo", ppo.Config(num_envs=4, rollout_len=8, total_timesteps=64, normalize_obs=True),
         "normalize_obs"),
        ("impala", impala.Config(num_envs=4, rollout_len=8, total_timesteps=64, lag=2), "lag=0"),
        ("ppo", ppo.Config(num_envs=4, rollout_len=8, total_timesteps=64), "split evenly"),
        ("sac", ppo.Config(num_envs=4, rollout_len=8, total_timesteps=64), "one of"),
        ("ppo", ppo.Config(num_envs=4, rollout_len=8, total_timesteps=64, data_shards=2),
         "data_shards=1"),
    ],
)  # fmt: skip
def test_unsupported_settings_are_clear_errors(algo, cfg, match):
    num_actors = 3 if match == "split evenly" else 2
    with pytest.raises(ConfigError, match=match):
        agents.make(algo, cfg, ppo.HParams.make(), SPEC, num_actors)


def test_dqn_on_continuous_actions_is_a_clear_error():
    spec = dataclasses.replace(SPEC, act_space=envs.make("Pendulum-v1")[0].action_space(None))
    with pytest.raises(ConfigError, match="discrete actions"):
        agents.make("dqn", dqn.Config(num_envs=2, total_timesteps=64, buffer_size=64,
                                      batch_size=8), dqn.HParams.make(), spec, 1)  # fmt: skip


@pytest.mark.parametrize(
    "algo, num_actors, hp, match",
    [
        ("ppo", 0, ppo.HParams.make(), "split evenly"),
        ("ppo", 3, ppo.HParams.make(), "split evenly"),
        ("sac", 1, ppo.HParams.make(), "one of"),
        ("ppo", 2, ppo.HParams.make(learning_rate=-1.0), "learning_rate"),
    ],
)
def test_run_rejects_bad_settings_before_making_envs(algo, num_actors, hp, match, monkeypatch):
    from jaxrl import sebulba
    from jaxrl.sebulba import host_envs

    def no_envs(*args, **kwargs):
        raise AssertionError("an env was made")

    monkeypatch.setattr(host_envs, "make", no_envs)
    cfg = ppo.Config(num_envs=4, rollout_len=8, total_timesteps=64)
    with pytest.raises(ConfigError, match=match):
        sebulba.run(algo, "gymnasium/CartPole-v1", cfg, hp, num_actors=num_actors)
