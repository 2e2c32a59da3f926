"""DDPG: the single-critic target by hand, no delay, OU noise recursion and statistics,
action bounds, vmapped equals looped, errors, and learning on a continuous probe."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import ddpg, td3
from jaxrl.envs import registry
from jaxrl.errors import ConfigError

TINY = dict(total_timesteps=400, hidden=(16, 16), batch_size=8, buffer_size=64, learning_starts=16)


@pytest.fixture(scope="module")
def setup():
    env, _ = registry.make("probe/continuous_target")
    cfg = ddpg.Config(**TINY)
    hp = ddpg.HParams.make(discount=0.9, tau=0.1)
    state = ddpg.init(cfg, env, jax.random.key(0), hp)
    return cfg, env, hp, state


def _same(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, b)))


def test_one_critic_no_smoothing_target_by_hand(setup):
    cfg, env, hp, _ = setup
    actor, critic = ddpg.networks(cfg, env)
    obs, act = jnp.zeros((1, 1)), jnp.zeros((1, 1))
    k = jax.random.split(jax.random.key(1), 9)
    params = ddpg.Params(
        actor.init(k[0], obs), critic.init(k[1], obs, act),
        actor.init(k[2], obs), critic.init(k[3], obs, act),
    )  # fmt: skip
    assert critic.apply(params.critic, obs, act).shape == (1, 1)  # one critic
    b = 6
    tr = ddpg.Transition(
        obs=jax.random.normal(k[4], (b, 1)),
        action=jax.random.uniform(k[5], (b, 1), minval=-1, maxval=1),
        reward=jax.random.normal(k[6], (b,)),
        terminated=jnp.array([0, 1, 0, 0, 1, 0], jnp.float32),
        next_obs=jax.random.normal(k[7], (b, 1)),
    )
    noise = 3.0 * jax.random.normal(k[8], (b, 1))  # must be ignored: no target smoothing
    loss, _ = ddpg.critic_loss(cfg, env, params.critic, params, ddpg.Batch(tr, noise), hp)
    next_a = actor.apply(params.target_actor, tr.next_obs)
    q_next = np.asarray(critic.apply(params.target_critic, tr.next_obs, next_a))[0]
    y = np.asarray(tr.reward) + 0.9 * (1 - np.asarray(tr.terminated)) * q_next
    q = np.asarray(critic.apply(params.critic, tr.obs, tr.action))[0]
    np.testing.assert_allclose(loss, ((q - y) ** 2).mean(), rtol=1e-5)


@pytest.fixture(scope="module")
def update(setup):
    """One compiled ``update(state, hp)``, shared; it must never trace twice."""
    cfg, env, _, _ = setup
    chex.clear_trace_counter()
    fn = chex.assert_max_traces(lambda s, h: ddpg.update(cfg, env, s, h)[0], n=1)
    return jax.jit(fn)


def test_every_step_moves_actor_and_targets(setup, update):
    cfg, env, hp, state = setup
    s = state
    for _ in range(16):
        s = update(s, hp)
    assert int(s.grad_steps) == 1
    s1 = update(s, hp)  # gradient step 2: with policy_delay 1 the actor moves as well
    assert not _same(s1.params.actor, s.params.actor)
    expected = jax.tree.map(lambda t, o: 0.9 * t + 0.1 * o, s.params.target_actor, s1.params.actor)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        s1.params.target_actor,
        expected,
    )


def test_ou_recursion_and_stationary_statistics():
    theta, sigma = 0.15, 0.3
    eps = jax.random.normal(jax.random.key(5), (20_000, 64))
    # The recursion by hand for three steps.
    x = jnp.zeros(64)
    for t in range(3):
        x_new = ddpg.ou_step(x, eps[t], theta, sigma)
        np.testing.assert_allclose(x_new, 0.85 * x + 0.3 * eps[t], rtol=1e-6)
        x = x_new
    _, xs = jax.lax.scan(lambda x, e: (ddpg.ou_step(x, e, theta, sigma),) * 2, jnp.zeros(64), eps)
    xs = np.asarray(xs)[1000:]  # past the burn-in
    var = sigma**2 / (1 - (1 - theta) ** 2)
    np.testing.assert_allclose(xs.var(), var, rtol=0.05)
    lag1 = np.mean(xs[1:] * xs[:-1]) / np.mean(xs * xs)
    np.testing.assert_allclose(lag1, 1 - theta, atol=0.02)


def test_ou_noise_is_carried_per_env_and_reset_at_episode_end():
    env, _ = registry.make("Pendulum-v1")
    cfg = ddpg.Config(**(TINY | dict(num_envs=3, learning_starts=0)), noise="ou")
    hp = ddpg.HParams.make(exploration_noise=0.2, ou_theta=0.5)
    state = ddpg.init(cfg, env, jax.random.key(0), hp)
    key = jax.random.key(1)
    _, _, s1 = ddpg.explore(cfg, env, state, state.obs, key, hp)
    eps = jax.random.normal(jax.random.split(key)[0], (3, 1))
    np.testing.assert_allclose(s1.noise, 0.2 * eps, rtol=1e-6)
    _, _, s2 = ddpg.explore(cfg, env, s1, s1.obs, jax.random.key(2), hp)
    eps2 = jax.random.normal(jax.random.split(jax.random.key(2))[0], (3, 1))
    np.testing.assert_allclose(s2.noise, 0.5 * s1.noise + 0.2 * eps2, rtol=1e-5, atol=1e-7)
    reset = ddpg.reset_noise(s2, jnp.array([False, True, False]))
    np.testing.assert_allclose(reset.noise, s2.noise * jnp.array([[1.0], [0.0], [1.0]]))


@pytest.mark.parametrize("noise", ["gaussian", "ou"])
def test_actions_respect_the_bounds(setup, noise):
    _, env, _, state = setup  # bounds [-2, 2]
    cfg = ddpg.Config(**(TINY | dict(num_envs=256, learning_starts=0)), noise=noise)
    hp = ddpg.HParams.make(exploration_noise=5.0)
    state = ddpg.init(cfg, env, jax.random.key(3), hp)
    action, env_action, _ = ddpg.explore(cfg, env, state, state.obs, jax.random.key(4), hp)
    assert float(jnp.abs(action).max()) == 1.0  # clipped, and the clip is reached
    np.testing.assert_allclose(env_action, 2.0 * action, rtol=1e-6)
    greedy = ddpg.act(cfg, env, state.params, 100.0 * state.obs)
    assert float(jnp.abs(greedy).max()) <= 2.0


def test_vmapped_update_equals_looped(setup, update):
    cfg, env, hp, _ = setup
    states = [ddpg.init(cfg, env, jax.random.key(k), hp) for k in (4, 5)]
    for _ in range(16):  # past the warm-up, so the update learns
        states = [update(st, hp) for st in states]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
    batched = jax.jit(jax.vmap(lambda st: ddpg.update(cfg, env, st, hp)[0]))(stacked)
    for i in range(2):
        single = update(states[i], hp)
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6),
            batched.params,
            single.params,
        )


@pytest.mark.slow
def test_vmapped_equals_looped_with_ou_noise(setup):
    cfg, env, hp, _ = setup
    cfg = ddpg.Config(**TINY, noise="ou")
    keys = jax.random.split(jax.random.key(4), 2)
    run = lambda k: ddpg.train(cfg, env, ddpg.init(cfg, env, k, hp), hp, 20)
    _, batched = jax.jit(jax.vmap(run))(keys)
    for i in range(2):
        _, single = jax.jit(run)(keys[i])
        np.testing.assert_allclose(
            batched["train/critic_loss"][i], single["train/critic_loss"], rtol=1e-4, atol=1e-6
        )


def test_one_program_for_every_hyperparameter_value(setup, update):
    cfg, env, hp, state = setup
    for lr, theta in ((1e-4, 0.1), (1e-3, 0.5)):
        update(state, hp.replace(learning_rate=jnp.float32(lr), ou_theta=jnp.float32(theta)))


def test_td3_defaults_keep_two_critics_and_smoothing():
    assert td3.Config().num_critics == 2 and td3.Config().target_smoothing
    c = ddpg.Config()
    assert (c.num_critics, c.target_smoothing, c.policy_delay, c.noise) == (1, False, 1, "gaussian")


def test_bad_settings_raise_before_compiling():
    with pytest.raises(ConfigError, match="noise"):
        ddpg.Config(noise="pink")
    with pytest.raises(ConfigError, match="num_critics"):
        ddpg.Config(num_critics=0)
    with pytest.raises(ConfigError, match="target_smoothing=True needs TD3's policy_noise"):
        ddpg.Config(target_smoothing=True)
    with pytest.raises(ConfigError, match="batch_size"):
        ddpg.Config(batch_size=512, buffer_size=100)
    with pytest.raises(ConfigError, match="ou_theta"):
        ddpg.check(ddpg.Config(), ddpg.HParams.make(ou_theta=1.5))
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        ddpg.HParams.make(policy_noise=0.2)
    env, _ = registry.make("CartPole-v1")
    with pytest.raises(ConfigError, match="continuous"):
        ddpg.init(ddpg.Config(), env, jax.random.key(0), ddpg.HParams.make())


@pytest.mark.learning
def test_learns_the_continuous_probe():
    """One-step episodes, best action = obs: the last 200 episodes score above -0.05."""
    env, _ = registry.make("probe/continuous_target")
    cfg = ddpg.Config(total_timesteps=2000, hidden=(32, 32), batch_size=64, learning_starts=200)
    hp = ddpg.HParams.make(exploration_noise=0.05)
    run = lambda k: ddpg.train(cfg, env, ddpg.init(cfg, env, k, hp), hp, cfg.num_updates)
    _, metrics = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 2))
    returns = np.asarray(metrics["episode/return"])[:, -200:]
    assert returns.mean(1).min() > -0.05, returns.mean(1)


@pytest.mark.slow
def test_preset_pendulum_reaches_minus_400_over_4_seeds_in_30k_steps(preset_final_returns):
    cfg, final = preset_final_returns(ddpg, "ddpg/pendulum")
    assert cfg.num_updates * cfg.steps_per_update <= 30_000
    assert final.mean() >= -400, final
