"""SimPLe: the dataset statistics and model loss against numpy, the learned env's step,
reset and time limit against the model's outputs, real transitions against CartPole's
rules, the model's held-out error falling as data grows, vmapped seeds against looped
ones, config errors, and SimPLe beating PPO given four times its real steps."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import ppo, simple
from jaxrl.envs import registry
from jaxrl.errors import ConfigError
from jaxrl.runner import evaluate as evaluate_lib

TINY = simple.Config(
    iterations=2,
    real_envs=2,
    real_steps=32,
    model_hidden=(32,),
    model_steps=50,
    model_batch=32,
    model_horizon=10,
    ppo=dataclasses.replace(simple.IMAGINED_PPO, num_envs=4, rollout_len=16),
    ppo_updates=2,
    eval_episodes=2,
)


def _cartpole():
    return registry.make("CartPole-v1")[0]


def _random_dataset(key, capacity=12, size=7, obs_dim=3, num_actions=2):
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    return simple.Dataset(
        obs=jax.random.normal(k1, (capacity, obs_dim)) * 3.0 + 1.0,
        action=jax.random.randint(k2, (capacity,), 0, num_actions),
        reward=jax.random.normal(k3, (capacity,)),
        terminated=(jax.random.uniform(k4, (capacity,)) < 0.3).astype(jnp.float32),
        next_obs=jax.random.normal(k5, (capacity, obs_dim)),
        size=jnp.int32(size),
    )


def test_normalizer_uses_only_the_filled_rows():
    data = _random_dataset(jax.random.key(0))
    norm = simple.normalizer(data)
    obs = np.asarray(data.obs[:7], np.float64)
    delta = np.asarray(data.next_obs[:7], np.float64) - obs
    reward = np.asarray(data.reward[:7], np.float64)
    np.testing.assert_allclose(norm.obs_mean, obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.obs_std, obs.std(0), rtol=1e-4)
    np.testing.assert_allclose(norm.delta_mean, delta.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.delta_std, delta.std(0), rtol=1e-4)
    np.testing.assert_allclose(norm.reward_mean, reward.mean(), rtol=1e-5)
    np.testing.assert_allclose(norm.reward_std, reward.std(), rtol=1e-4)


def test_model_loss_against_numpy():
    data = _random_dataset(jax.random.key(1))
    norm = simple.normalizer(data)
    model = simple.WorldModel(obs_dim=3, hidden=(8,))
    space = _cartpole().action_space(None)
    params = model.init(jax.random.key(2), jnp.zeros(3), jnp.zeros(2))
    batch = data.replace(size=None)
    loss, metrics = simple.model_loss(model, params, norm, space, batch)
    norm, batch = jax.device_get((norm, batch))
    x = (batch.obs - norm.obs_mean) / norm.obs_std
    delta, reward, logit = (
        np.asarray(v, np.float64)
        for v in model.apply(params, jnp.asarray(x), jax.nn.one_hot(batch.action, 2))
    )
    d_target = (batch.next_obs - batch.obs - norm.delta_mean) / norm.delta_std
    r_target = (batch.reward - norm.reward_mean) / norm.reward_std
    z = np.asarray(batch.terminated, np.float64)
    p = 1.0 / (1.0 + np.exp(-logit))
    expected = {
        "model/delta_loss": np.mean(np.sum((delta - d_target) ** 2, -1)),
        "model/reward_loss": np.mean((reward - r_target) ** 2),
        "model/done_loss": np.mean(-(z * np.log(p) + (1 - z) * np.log(1 - p))),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-4)
    np.testing.assert_allclose(loss, sum(expected.values()), rtol=1e-4)


def _fitted_like_env_params(env, key, horizon=3):
    """A learned env with random model weights, statistics and start observations."""
    learned = simple.LearnedEnv(env, simple.WorldModel(obs_dim=4, hidden=(16,)), horizon)
    k1, k2, k3 = jax.random.split(key, 3)
    params = learned.model.init(k1, jnp.zeros(4), jnp.zeros(2))
    norm = simple.Normalizer(
        jnp.full(4, 0.5), jnp.full(4, 2.0), jnp.full(4, 0.1), jnp.full(4, 0.3),
        jnp.float32(1.0), jnp.float32(0.5),
    )  # fmt: skip
    start = jax.random.normal(k2, (10, 4))
    return learned, simple.LearnedEnvParams(params, norm, start, jnp.int32(6)), k3


def test_learned_env_step_applies_the_model():
    learned, env_params, key = _fitted_like_env_params(_cartpole(), jax.random.key(3))
    obs, state = learned.reset(key, env_params)
    next_obs, state2, step = learned.step(key, state, jnp.int32(1), env_params)
    norm = env_params.norm
    delta, reward, logit = learned.model.apply(
        env_params.model_params, (obs - norm.obs_mean) / norm.obs_std, jnp.array([0.0, 1.0])
    )
    np.testing.assert_allclose(next_obs, obs + delta * 0.3 + 0.1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(step.reward, reward * 0.5 + 1.0, rtol=1e-5)
    assert bool(step.terminated) == bool(logit > 0)
    np.testing.assert_array_equal(step.final_obs, next_obs)
    assert int(state2.time) == 1


def test_learned_env_starts_from_the_filled_rows_and_cuts_at_the_horizon():
    learned, env_params, _ = _fitted_like_env_params(_cartpole(), jax.random.key(4))
    keys = jax.random.split(jax.random.key(5), 600)
    obs, _ = jax.vmap(learned.reset, in_axes=(0, None))(keys, env_params)
    matches = np.asarray(obs)[:, None, :] == np.asarray(env_params.start_obs)[None]
    rows = np.argmax(matches.all(-1), axis=1)
    assert matches.all(-1).any(1).all()
    assert set(rows.tolist()) == set(range(6))  # every filled row, never rows 6..9
    # A model that never predicts termination: truncated exactly at step 3.
    never = jax.tree.map(jnp.zeros_like, env_params.model_params)
    never["params"]["Dense_1"]["bias"] = never["params"]["Dense_1"]["bias"].at[-1].set(-5.0)
    env_params = env_params.replace(model_params=never)
    obs, state = learned.reset(keys[0], env_params)
    flags = []
    for _ in range(3):
        obs, state, step = learned.step(keys[0], state, jnp.int32(0), env_params)
        flags.append((bool(step.terminated), bool(step.truncated)))
    assert flags == [(False, False), (False, False), (False, True)]


def test_real_transitions_follow_cartpole_and_fill_the_dataset():
    env = _cartpole()
    hp = simple.HParams.make()
    state = simple.init(TINY, env, jax.random.key(6), hp)
    state, rollout = jax.jit(lambda s: simple.collect_real(TINY, env, s))(state)
    state, _ = jax.jit(lambda s: simple.collect_real(TINY, env, s))(state)
    data = jax.device_get(state.data)
    n = TINY.steps_per_iteration
    assert int(data.size) == 2 * n == TINY.capacity
    np.testing.assert_array_equal(data.obs[:n], np.asarray(rollout.obs).reshape(n, 4))
    np.testing.assert_array_equal(data.reward, 1.0)
    x, theta = data.next_obs[:, 0], data.next_obs[:, 2]
    out = (np.abs(x) > 2.4) | (np.abs(theta) > 12 * 2 * np.pi / 360)
    np.testing.assert_array_equal(data.terminated, out.astype(np.float32))
    # Where no episode ended, the next row's observation is this one's next_obs.
    obs = data.obs.reshape(2, TINY.real_steps, TINY.real_envs, 4)
    nxt = data.next_obs.reshape(2, TINY.real_steps, TINY.real_envs, 4)
    ended = data.terminated.reshape(2, TINY.real_steps, TINY.real_envs)
    same = ended[:, :-1] == 0
    np.testing.assert_array_equal(nxt[:, :-1][same], obs[:, 1:][same])


def test_held_out_model_error_falls_as_data_grows():
    env = _cartpole()
    cfg = dataclasses.replace(TINY, iterations=4, model_hidden=(64, 64), model_steps=300)
    hp = simple.HParams.make()
    state = simple.init(cfg, env, jax.random.key(7), hp)
    _, metrics = jax.jit(lambda s: simple.train(cfg, env, s, hp))(state)
    error = np.asarray(metrics["model/heldout_obs_rmse"])
    # Iteration 0 measures the untrained model. Later ones measure the fitted model on data
    # it has not seen, from a policy that has since changed (so the error can rise a little
    # as the policy visits new states), and every one is a fraction of the first.
    assert np.all(error[1:] < 0.5 * error[0]), error
    assert np.median(error[1:]) < 0.25 * error[0], error
    assert np.all(np.asarray(metrics["model/heldout_done_accuracy"])[1:] > 0.9)
    np.testing.assert_array_equal(metrics["real/steps"], cfg.steps_per_iteration * np.arange(1, 5))


def test_vmapped_seeds_match_looped_ones():
    env = _cartpole()
    hp = simple.HParams.make()
    keys = jax.random.split(jax.random.key(8), 2)

    def run(key):
        return simple.train(TINY, env, simple.init(TINY, env, key, hp), hp)

    state_v, metrics_v = jax.jit(jax.vmap(run))(keys)
    run_jit = jax.jit(run)
    for i in range(2):
        state_i, metrics_i = run_jit(keys[i])
        np.testing.assert_array_equal(state_v.data.size[i], state_i.data.size)
        np.testing.assert_allclose(state_v.data.obs[i], state_i.data.obs, rtol=1e-4, atol=1e-5)
        for a, b in zip(
            jax.tree.leaves(state_v.agent.params),
            jax.tree.leaves(state_i.agent.params),
            strict=True,
        ):
            np.testing.assert_allclose(a[i], b, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(
            metrics_v["model/loss"][i], metrics_i["model/loss"], rtol=1e-3, atol=1e-5
        )


def test_config_and_hparam_errors():
    with pytest.raises(ConfigError, match="normalize_obs"):
        simple.Config(ppo=dataclasses.replace(simple.IMAGINED_PPO, normalize_obs=True))
    with pytest.raises(ConfigError, match="torso"):
        simple.Config(ppo=dataclasses.replace(simple.IMAGINED_PPO, torso="cnn"))
    with pytest.raises(ConfigError, match="real_steps"):
        simple.Config(real_steps=0)
    with pytest.raises(ConfigError, match="model_hidden"):
        simple.Config(model_hidden=(64, 0))
    with pytest.raises(ConfigError, match="model_learning_rate"):
        simple.check(simple.Config(), simple.HParams.make(model_learning_rate=-1.0))
    with pytest.raises(ConfigError, match="learning_rate"):
        simple.check(simple.Config(), simple.HParams.make(learning_rate=2.0))
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        simple.HParams.make(model_lr=1e-3)
    image_env = registry.make("Breakout-MinAtar")[0]
    with pytest.raises(ConfigError, match="observation vectors"):
        simple.init(TINY, image_env, jax.random.key(0), simple.HParams.make())


@pytest.mark.learning
def test_simple_beats_ppo_given_four_times_the_real_steps():
    """CartPole-v1, 4 seeds: SimPLe on 5,120 real steps reaches a mean return >= 250 and
    beats model-free PPO trained on 20,480 (the experiment's first two arms)."""
    env = _cartpole()
    cfg = simple.Config()  # 10 iterations of 4 x 128 real steps
    hp = simple.HParams.make()
    keys = jax.random.split(jax.random.key(1903), 4)
    eval_keys = jax.random.split(jax.random.key(7), 4)

    def run_simple(key):
        return simple.train(cfg, env, simple.init(cfg, env, key, hp), hp)[0].agent.params

    ppo_cfg = ppo.Config(total_timesteps=4 * cfg.capacity)
    ppo_hp = ppo.HParams.make()

    def run_ppo(key):
        state = ppo.init(ppo_cfg, env, key, ppo_hp)
        return ppo.train(ppo_cfg, env, state, ppo_hp, ppo_cfg.num_updates)[0].params

    def score(cfg_ppo, params):
        evaluate = lambda p, k: evaluate_lib.evaluate(ppo, cfg_ppo, env, p, k, 16, False)
        return np.asarray(jax.jit(jax.vmap(evaluate))(params, eval_keys)).mean()

    simple_score = score(cfg.ppo, jax.jit(jax.vmap(run_simple))(keys))
    ppo_score = score(ppo_cfg, jax.jit(jax.vmap(run_ppo))(keys))
    assert simple_score >= 250.0, (simple_score, ppo_score)
    assert simple_score > ppo_score, (simple_score, ppo_score)
