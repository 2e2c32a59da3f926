"""GAIL: the discriminator's loss and reward against optax and closed forms, the env's
reward never reaching learning, discriminator steps separating the data, Box actions,
config errors, and learning CartPole from two scripted episodes; behavioural cloning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from rescaled_env import assert_learning_ignores_the_env_reward

from jaxrl.algorithms import bc, demos, gail
from jaxrl.envs import registry
from jaxrl.errors import ConfigError
from jaxrl.runner import config, evaluate, loop, sweep

DEMOS = str(Path(__file__).resolve().parents[1] / "data" / "cartpole_demos.npz")
SMALL = dict(demos=DEMOS, num_envs=4, rollout_len=16, num_minibatches=2, hidden=(16,))


def _setup(env_id="CartPole-v1", demos_path=DEMOS, **overrides):
    env, _ = registry.make(env_id)
    cfg = gail.Config(**(SMALL | dict(demos=demos_path) | overrides))
    hp = gail.HParams.make()
    return env, cfg, hp, gail.init(cfg, env, jax.random.key(0), hp)


def test_disc_loss_is_the_binary_cross_entropy_of_optax():
    env, cfg, hp, state = _setup()
    key_o, key_a = jax.random.split(jax.random.key(1))
    expert = (state.demos.obs[:32], state.demos.action[:32])
    policy = (jax.random.normal(key_o, (32, 4)), jax.random.randint(key_a, (32,), 0, 2))
    key = jax.random.key(2)
    value, metrics = gail.disc_loss(cfg, env, state.disc_params, expert, policy, hp, key)
    f_e = gail.logits(cfg, env, state.disc_params, *expert)
    f_p = gail.logits(cfg, env, state.disc_params, *policy)
    want = jnp.mean(optax.sigmoid_binary_cross_entropy(f_e, jnp.ones(32))) + jnp.mean(
        optax.sigmoid_binary_cross_entropy(f_p, jnp.zeros(32))
    )
    np.testing.assert_allclose(value, want, rtol=1e-6)  # no penalty by default
    np.testing.assert_allclose(metrics["train/disc_expert_accuracy"], np.mean(f_e > 0))


def test_gradient_penalty_matches_finite_differences_of_the_logit():
    env, cfg, hp, state = _setup()
    expert = (state.demos.obs[:8], state.demos.action[:8])
    policy = (state.demos.obs[100:108] + 0.1, 1 - state.demos.action[100:108])
    key = jax.random.key(3)
    _, metrics = gail.disc_loss(cfg, env, state.disc_params, expert, policy, hp, key)
    # the same interpolation points, the gradient by central differences in float64
    mix = np.asarray(jax.random.uniform(key, (8, 1)), float)
    x_e = np.asarray(gail.disc_inputs(env, *expert), float)
    x_p = np.asarray(gail.disc_inputs(env, *policy), float)
    between = mix * x_e + (1 - mix) * x_p
    net = gail.discriminator(cfg)
    f = lambda x: np.asarray(net.apply(state.disc_params, jnp.asarray(x, jnp.float32)), float)
    eps, grads = 1e-2, np.zeros_like(between)
    for j in range(between.shape[1]):
        step = np.zeros_like(between)
        step[:, j] = eps
        grads[:, j] = (f(between + step) - f(between - step)) / (2 * eps)
    want = np.mean(np.sum(grads**2, axis=-1))
    np.testing.assert_allclose(metrics["train/disc_grad_penalty"], want, rtol=2e-2)
    weighted = hp.replace(disc_grad_penalty=jnp.float32(10.0))
    total, m = gail.disc_loss(cfg, env, state.disc_params, expert, policy, weighted, key)
    np.testing.assert_allclose(total, m["train/disc_loss"] + 10.0 * want, rtol=2e-2)


def test_reward_is_minus_log_one_minus_d():
    env, cfg, hp, state = _setup()
    obs, action = state.demos.obs[:64], state.demos.action[:64]
    logit = np.asarray(gail.logits(cfg, env, state.disc_params, obs, action), float)
    d = 1.0 / (1.0 + np.exp(-logit))
    got = gail.reward(cfg, env, state.disc_params, obs, action)
    np.testing.assert_allclose(got, -np.log(1.0 - d), rtol=1e-5)
    assert np.all(np.asarray(got) > 0)


def test_learning_never_reads_the_env_reward():
    env, cfg, hp, _ = _setup()
    assert_learning_ignores_the_env_reward(gail, cfg, env, hp, ("params", "disc_params"))


def test_discriminator_steps_separate_expert_from_policy_pairs():
    env, cfg, hp, state = _setup(disc_steps=200)
    hp = hp.replace(disc_learning_rate=jnp.float32(3e-3))
    policy = (jnp.zeros((256, 4)) + 0.3, jnp.zeros((256,), jnp.int32))  # not the expert's
    expert = (state.demos.obs[:256], state.demos.action[:256])
    key = jax.random.key(4)
    before, _ = gail.disc_loss(cfg, env, state.disc_params, expert, policy, hp, key)
    params, _, metrics = gail.train_discriminator(cfg, env, state, policy, hp, jax.random.key(2))
    after, m = gail.disc_loss(cfg, env, params, expert, policy, hp, key)
    assert after < 0.25 * before
    assert m["train/disc_expert_accuracy"] > 0.9 and m["train/disc_policy_accuracy"] == 1.0
    # the reward ranks the expert's pairs above the policy's
    r_expert = gail.reward(cfg, env, params, *expert)
    assert jnp.mean(r_expert) > jnp.max(gail.reward(cfg, env, params, *policy))


def test_box_actions_reach_the_discriminator_clipped(tmp_path):
    env, _ = registry.make("Pendulum-v1")

    class Swing:
        __name__ = "swing"

        @staticmethod
        def policy(cfg, env, params, obs, key, deterministic, hp=None):
            return jnp.clip(-3.0 * obs[:, 2:3], -2.0, 2.0)

    data, _ = demos.record(Swing, None, env, None, jax.random.key(0), 2, max_steps=200)
    demos.save(tmp_path / "pendulum.npz", data)
    env, cfg, hp, state = _setup("Pendulum-v1", str(tmp_path / "pendulum.npz"))
    np.testing.assert_array_equal(
        demos.executed_action(env, jnp.array([[-5.0], [0.5], [9.0]])), [[-2.0], [0.5], [2.0]]
    )
    state, metrics = jax.jit(lambda s: gail.update(cfg, env, s, hp))(state)
    assert np.isfinite(float(metrics["train/disc_loss"]))
    assert state.demos.action.shape == (400, 1)


def test_normalised_observations_normalise_the_expert_pairs_too():
    env, cfg, hp, state = _setup(normalize_obs=True)
    state, _ = jax.jit(lambda s: gail.update(cfg, env, s, hp))(state)
    stats = evaluate.obs_stats(state.env_state)
    obs = state.demos.obs[:5]
    want = np.clip((np.asarray(obs) - stats.mean[None]) / np.sqrt(stats.var[None] + 1e-8), -10, 10)
    np.testing.assert_allclose(gail.expert_obs(cfg, env, state, obs), want, rtol=1e-5, atol=1e-6)
    plain_cfg = dataclasses.replace(cfg, normalize_obs=False)
    np.testing.assert_array_equal(gail.expert_obs(plain_cfg, env, state, obs), obs)


def test_config_errors_come_before_compiling(tmp_path):
    hp = gail.HParams.make()
    with pytest.raises(ConfigError, match="GAIL needs demonstrations: demos="):
        gail.check(gail.Config(), hp)
    with pytest.raises(ConfigError, match="does not exist"):
        gail.check(gail.Config(demos=str(tmp_path / "none.npz")), hp)
    with pytest.raises(ConfigError, match="scale_reward must be False"):
        gail.Config(demos=DEMOS, scale_reward=True)
    with pytest.raises(ConfigError, match="data_shards must be 1"):
        gail.Config(demos=DEMOS, data_shards=2)
    with pytest.raises(ConfigError, match="disc_steps"):
        gail.Config(demos=DEMOS, disc_steps=0)
    with pytest.raises(ConfigError, match="disc_learning_rate"):
        gail.check(gail.Config(demos=DEMOS), gail.HParams.make(disc_learning_rate=-1.0))
    pendulum, _ = registry.make("Pendulum-v1")
    with pytest.raises(ConfigError, match="observations have shape"):
        gail.init(gail.Config(demos=DEMOS), pendulum, jax.random.key(0), hp)


@pytest.mark.learning
def test_cartpole_from_two_scripted_episodes_reaches_475_over_4_seeds_in_200k_steps():
    algo = gail
    preset = config.load_preset("gail/cartpole")
    cfg, hp = config.resolve(algo, preset, {"demos": DEMOS}, None)
    env, _ = registry.make(preset["env"])
    runs = sweep.grid(hp, seeds=range(4))
    result = loop.run(algo, env, cfg, runs, env_name=preset["env"], algo_name="gail", quiet=True)
    assert cfg.num_updates * cfg.steps_per_update <= 200_000
    final = np.asarray(result.summary["final_return"]["per_run"])
    assert final.mean() >= 475 and np.all(final >= 450), final


@pytest.mark.learning
def test_behavioural_cloning_of_the_scripted_expert_balances_cartpole():
    env, _ = registry.make("CartPole-v1")
    cfg, hp = bc.Config(demos=DEMOS, num_steps=1_000), bc.HParams.make()
    bc.check(cfg, hp)
    state = bc.init(cfg, env, jax.random.key(0), hp)
    state, metrics = jax.jit(lambda s: bc.train(cfg, env, s, hp, cfg.num_steps))(state)
    assert int(state.step) == 1_000
    assert metrics["train/nll"][-1] < 0.3 * metrics["train/nll"][0]
    assert metrics["train/accuracy"][-1] > 0.95
    returns = evaluate.evaluate(bc, cfg, env, state.params, jax.random.key(1), 8, True)
    assert np.all(np.asarray(returns) >= 475), returns


def test_behavioural_cloning_loss_is_the_policys_negative_log_likelihood():
    env, _ = registry.make("CartPole-v1")
    cfg, hp = bc.Config(demos=DEMOS), bc.HParams.make()
    state = bc.init(cfg, env, jax.random.key(0), hp)
    batch = jax.tree.map(lambda x: x[:40], state.demos)
    value, metrics = bc.loss(cfg, env, state.params, batch, hp)
    dist, _ = bc.network(cfg, env).apply(state.params, batch.obs)
    logits = np.asarray(dist.logits, float)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -np.mean(log_p[np.arange(40), np.asarray(batch.action)])
    np.testing.assert_allclose(value, want, rtol=1e-5)
    with pytest.raises(ConfigError, match="needs demonstrations"):
        bc.check(bc.Config(), hp)
