"""SAC (continuous and discrete): tanh log-prob vs a numeric change of variables, the
soft targets and actor losses by hand, the temperature loss, bounds, vmapped equals
looped, errors, and learning on probes."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import sac
from jaxrl.envs import registry
from jaxrl.errors import ConfigError

TINY = dict(total_timesteps=400, hidden=(16, 16), batch_size=8, buffer_size=64, learning_starts=16)


@pytest.fixture(scope="module")
def cont():
    env, _ = registry.make("probe/continuous_target")
    cfg = sac.Config(**TINY)
    hp = sac.HParams.make(discount=0.9, tau=0.1, init_alpha=0.3)
    return cfg, env, hp


@pytest.fixture(scope="module")
def disc():
    env, _ = registry.make("CartPole-v1")
    cfg = sac.Config(**TINY)
    hp = sac.HParams.make(discount=0.9, tau=0.1, init_alpha=0.3, target_entropy_scale=0.5)
    return cfg, env, hp


LOG_ALPHA = math.log(0.3)


def _params(cfg, env, key, log_alpha=LOG_ALPHA):
    """Actor, online and target critics all different, so each loss uses the right ones."""
    actor, critic = sac.networks(cfg, env)
    d = env.observation_space(env.default_params()).shape[0]
    obs = jnp.zeros((1, d))
    k = jax.random.split(key, 3)
    if sac.is_discrete(env):
        c0, c1 = critic.init(k[1], obs), critic.init(k[2], obs)
    else:
        act = jnp.zeros((1, sac.num_actions(env)))
        c0, c1 = critic.init(k[1], obs, act), critic.init(k[2], obs, act)
    return sac.Params(actor.init(k[0], obs), c0, c1, jnp.float32(log_alpha))


def _batch(env, key, b=6):
    k = jax.random.split(key, 6)
    d = env.observation_space(env.default_params()).shape[0]
    if sac.is_discrete(env):
        action = jax.random.randint(k[1], (b,), 0, sac.num_actions(env))
    else:
        action = jax.random.uniform(k[1], (b, sac.num_actions(env)), minval=-1, maxval=1)
    tr = sac.Transition(
        obs=jax.random.normal(k[0], (b, d)),
        action=action,
        reward=jax.random.normal(k[2], (b,)),
        terminated=jnp.array([0, 1, 0, 0, 1, 0], jnp.float32)[:b],
        next_obs=jax.random.normal(k[3], (b, d)),
    )
    return sac.Batch(tr, k[4])


# ---------------------------------------------------------------- the tanh-Gaussian actor


def test_tanh_log_prob_matches_a_numeric_change_of_variables(cont):
    cfg, env, _ = cont
    actor, _ = sac.networks(cfg, env)
    params = actor.init(jax.random.key(0), jnp.zeros((1, 1)))
    obs = jnp.array([[0.7], [-0.3], [1.5]])
    dist = actor.apply(params, obs)
    a, logp = sac.tanh_sample_and_log_prob(dist, jax.random.key(1))
    assert a.shape == (3, 1) and logp.shape == (3,)
    base = dist.distribution
    mu, sigma = np.asarray(base.mean())[:, 0], np.asarray(base.stddev())[:, 0]
    # The density of a = tanh(u), u ~ N(mu, sigma): the derivative of its CDF,
    # P(A <= a) = Phi((arctanh(a) - mu) / sigma), by central differences in float64.
    phi = lambda z: 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    cdf = lambda x: phi((np.arctanh(x) - mu) / sigma)
    for x in (np.asarray(a, np.float64)[:, 0], np.array([-0.9, 0.1, 0.95])):
        h = 1e-5
        numeric = (cdf(x + h) - cdf(x - h)) / (2 * h)
        got = np.exp(np.asarray(dist.log_prob(jnp.asarray(x[:, None], jnp.float32))))
        np.testing.assert_allclose(got, numeric, rtol=2e-3)
    # And the closed form log N(u; mu, sigma) - log(1 - tanh(u)^2) for the sample itself.
    u = np.arctanh(np.asarray(a, np.float64)[:, 0])
    closed = (
        -0.5 * ((u - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
        - np.log(1 - np.tanh(u) ** 2)
    )  # fmt: skip
    np.testing.assert_allclose(logp, closed, rtol=1e-3, atol=1e-3)


def test_samples_and_actions_respect_the_bounds(cont):
    cfg, env, hp = cont  # bounds [-2, 2]
    cfg = sac.Config(**(TINY | dict(num_envs=128, learning_starts=0)))
    state = sac.init(cfg, env, jax.random.key(2), hp)
    action, env_action, _ = sac.explore(cfg, env, state, 50.0 * state.obs, jax.random.key(3))
    assert float(jnp.abs(action).max()) <= 1.0
    np.testing.assert_allclose(env_action, 2.0 * action, rtol=1e-6)
    greedy = sac.act(cfg, env, state.params, 50.0 * state.obs)
    stochastic = sac.policy(cfg, env, state.params, 50.0 * state.obs, jax.random.key(4), False)
    assert float(jnp.abs(greedy).max()) <= 2.0 and float(jnp.abs(stochastic).max()) <= 2.0


# ---------------------------------------------------------------- losses by hand


def test_continuous_critic_and_actor_losses_by_hand(cont):
    cfg, env, hp = cont
    actor, critic = sac.networks(cfg, env)
    params = _params(cfg, env, jax.random.key(5))
    batch = _batch(env, jax.random.key(6))
    tr = batch.transition
    loss, _ = sac.critic_loss(cfg, env, params.critic, params, batch, hp)
    dist = actor.apply(params.actor, tr.next_obs)
    a2, logp2 = sac.tanh_sample_and_log_prob(dist, jax.random.fold_in(batch.key, 0))
    q2 = np.asarray(critic.apply(params.target_critic, tr.next_obs, a2))
    v2 = q2.min(0) - 0.3 * np.asarray(logp2)
    y = np.asarray(tr.reward) + 0.9 * (1 - np.asarray(tr.terminated)) * v2
    q = np.asarray(critic.apply(params.critic, tr.obs, tr.action))
    assert q.shape == (2, 6)
    np.testing.assert_allclose(loss, ((q - y) ** 2).mean(1).sum(), rtol=1e-5)

    a_loss, metrics = sac.actor_loss(cfg, env, params.actor, params, batch, hp)
    dist = actor.apply(params.actor, tr.obs)
    a, logp = sac.tanh_sample_and_log_prob(dist, jax.random.fold_in(batch.key, 1))
    qa = np.asarray(critic.apply(params.critic, tr.obs, a)).min(0)
    np.testing.assert_allclose(a_loss, np.mean(0.3 * np.asarray(logp) - qa), rtol=1e-5)
    np.testing.assert_allclose(metrics["train/entropy"], -np.mean(logp), rtol=1e-5)


def test_discrete_critic_and_actor_losses_by_hand(disc):
    cfg, env, hp = disc
    actor, critic = sac.networks(cfg, env)
    params = _params(cfg, env, jax.random.key(7))
    batch = _batch(env, jax.random.key(8))
    tr = batch.transition
    loss, _ = sac.critic_loss(cfg, env, params.critic, params, batch, hp)
    logits2 = np.asarray(actor.apply(params.actor, tr.next_obs).logits, np.float64)
    pi2 = np.exp(logits2) / np.exp(logits2).sum(-1, keepdims=True)
    q2 = np.asarray(critic.apply(params.target_critic, tr.next_obs))  # [2, B, 2]
    assert q2.shape == (2, 6, 2)
    v2 = sum(pi2[:, a] * (q2[:, :, a].min(0) - 0.3 * np.log(pi2[:, a])) for a in range(2))
    y = np.asarray(tr.reward) + 0.9 * (1 - np.asarray(tr.terminated)) * v2
    q_all = np.asarray(critic.apply(params.critic, tr.obs))
    q = np.stack([[q_all[k, i, int(tr.action[i])] for i in range(6)] for k in range(2)])
    np.testing.assert_allclose(loss, ((q - y) ** 2).mean(1).sum(), rtol=1e-5)

    a_loss, metrics = sac.actor_loss(cfg, env, params.actor, params, batch, hp)
    logits = np.asarray(actor.apply(params.actor, tr.obs).logits, np.float64)
    pi = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    qmin = q_all.min(0)
    want = np.mean(sum(pi[:, a] * (0.3 * np.log(pi[:, a]) - qmin[:, a]) for a in range(2)))
    np.testing.assert_allclose(a_loss, want, rtol=1e-5)
    entropy = -np.mean((pi * np.log(pi)).sum(-1))
    np.testing.assert_allclose(metrics["train/entropy"], entropy, rtol=1e-5)


def test_temperature_loss_values_and_gradient_sign():
    log_alpha = jnp.log(jnp.float32(0.5))
    low = jnp.array([0.1, 0.3])  # entropy below the target 1.0: alpha must grow
    loss, _ = sac.temperature_loss(log_alpha, low, jnp.float32(1.0))
    np.testing.assert_allclose(loss, 0.5 * np.mean([-0.9, -0.7]), rtol=1e-6)
    grad = jax.grad(lambda la: sac.temperature_loss(la, low, 1.0)[0])(log_alpha)
    np.testing.assert_allclose(grad, 0.5 * -0.8, rtol=1e-6)  # d/dlog(alpha) = alpha (H - H*)
    high = jnp.array([2.0, 3.0])
    assert float(jax.grad(lambda la: sac.temperature_loss(la, high, 1.0)[0])(log_alpha)) > 0
    # The entropy enters without a gradient (the actor is not pushed by this loss).
    g = jax.grad(lambda h: sac.temperature_loss(log_alpha, h, 1.0)[0])(low)
    assert float(jnp.abs(g).max()) == 0.0


def test_target_entropy_defaults(cont, disc):
    _, env_c, _ = cont
    _, env_d, hp_d = disc
    np.testing.assert_allclose(sac.target_entropy(env_c, sac.HParams.make()), -1.0)
    np.testing.assert_allclose(sac.target_entropy(env_d, hp_d), 0.5 * math.log(2), rtol=1e-6)


def test_loss_gradients_reach_each_parameter_from_its_own_term(cont):
    cfg, env, hp = cont
    params = _params(cfg, env, jax.random.key(9))
    batch = _batch(env, jax.random.key(10))
    grads = jax.grad(lambda p: sac.loss(cfg, env, p, batch, hp)[0])(params)
    own = jax.grad(lambda c: sac.critic_loss(cfg, env, c, params, batch, hp)[0])(params.critic)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), grads.critic, own)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads.target_critic))
    own_alpha = jax.grad(lambda la: sac.alpha_loss(cfg, env, la, params, batch, hp)[0])(
        params.log_alpha
    )
    np.testing.assert_allclose(grads.log_alpha, own_alpha, rtol=1e-5)


# ---------------------------------------------------------------- updates and invariances


@pytest.fixture(scope="module")
def cont_update(cont):
    """One compiled ``update(state, hp)``, shared; it must never trace twice."""
    cfg, env, hp = cont
    chex.clear_trace_counter()
    fn = chex.assert_max_traces(lambda s, h: sac.update(cfg, env, s, h)[0], n=1)
    return jax.jit(fn)


def test_warmup_then_every_step_updates_and_alpha_moves(cont, cont_update):
    cfg, env, hp = cont
    state = sac.init(cfg, env, jax.random.key(0), hp)
    for _ in range(15):
        state = cont_update(state, hp)
    assert int(state.grad_steps) == 0
    s1 = cont_update(state, hp)
    assert int(s1.grad_steps) == 1
    assert float(s1.params.log_alpha) != float(state.params.log_alpha)
    expected = jax.tree.map(
        lambda t, o: 0.9 * t + 0.1 * o, state.params.target_critic, s1.params.critic
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        s1.params.target_critic,
        expected,
    )


@pytest.mark.slow
def test_without_autotune_alpha_stays_and_the_actor_learns(cont, cont_update):
    cfg, env, hp = cont
    s1 = sac.init(cfg, env, jax.random.key(0), hp)
    for _ in range(16):
        s1 = cont_update(s1, hp)
    fixed = sac.Config(**TINY, autotune=False)
    batch = sac.sample_batch(fixed, s1.buffer, jax.random.key(1))
    s2, _ = sac.gradient_step(fixed, env, s1, batch, hp, jnp.bool_(True))
    assert float(s2.params.log_alpha) == float(s1.params.log_alpha)
    moved = jax.tree.map(lambda x, y: bool(jnp.any(x != y)), s2.params.actor, s1.params.actor)
    assert all(jax.tree.leaves(moved))  # the actor still learns


def test_temperature_step_uses_the_actor_steps_entropy(cont, cont_update):
    """The alpha step is Adam on :func:`sac.alpha_loss` at the pre-update actor (the actor
    loss's own sample), which gradient_step takes from the actor step's metrics."""
    cfg, env, hp = cont
    s1 = sac.init(cfg, env, jax.random.key(0), hp)
    for _ in range(16):
        s1 = cont_update(s1, hp)
    batch = sac.sample_batch(cfg, s1.buffer, jax.random.key(1))
    s2, metrics = jax.jit(lambda s: sac.gradient_step(cfg, env, s, batch, hp, True))(s1)
    _, a_metrics = sac.actor_loss(cfg, env, s1.params.actor, s1.params, batch, hp)
    np.testing.assert_allclose(metrics["train/entropy"], a_metrics["train/entropy"], rtol=1e-5)
    grad = jax.grad(lambda la: sac.alpha_loss(cfg, env, la, s1.params, batch, hp)[0])(
        s1.params.log_alpha
    )
    updates, _ = sac.optimizer(hp).update(grad, s1.alpha_opt_state, s1.params.log_alpha)
    np.testing.assert_allclose(s2.params.log_alpha, s1.params.log_alpha + updates, rtol=1e-5)


def test_vmapped_learn_keeps_real_branches_and_skips_delayed_steps(cont):
    cfg, env, hp = cont
    cfg = sac.Config(**TINY, policy_delay=2)
    state = sac.init(cfg, env, jax.random.key(0), hp)
    states = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    jaxpr = str(jax.make_jaxpr(jax.vmap(lambda s: sac.learn(cfg, env, s, hp)))(states))
    assert jaxpr.count(" cond[") >= 2  # a batched predicate would have left selects only
    update = jax.jit(jax.vmap(lambda s: sac.update(cfg, env, s, hp)))
    for _ in range(15):
        states, m = update(states)
    assert np.isnan(m["train/critic_loss"]).all()  # warm-up: nothing learned
    states, m1 = update(states)  # gradient step 1: critics only
    states, m2 = update(states)  # gradient step 2: critics, actor, temperature
    assert np.isfinite(m1["train/critic_loss"]).all() and np.isnan(m1["train/actor_loss"]).all()
    assert np.isfinite(m2["train/actor_loss"]).all() and np.isfinite(m2["train/alpha"]).all()
    np.testing.assert_array_equal(states.actor_opt_state[0].count, [1, 1])
    np.testing.assert_array_equal(states.critic_opt_state[0].count, [2, 2])


def test_one_program_for_every_hyperparameter_value(cont, cont_update):
    cfg, env, hp = cont
    state = sac.init(cfg, env, jax.random.key(0), hp)
    for lr, scale in ((1e-4, 1.0), (1e-3, 0.5)):
        cont_update(
            state,
            hp.replace(learning_rate=jnp.float32(lr), target_entropy_scale=jnp.float32(scale)),
        )


def test_vmapped_update_equals_looped(cont, cont_update):
    cfg, env, hp = cont
    states = [sac.init(cfg, env, jax.random.key(k), hp) for k in (4, 5)]
    for _ in range(16):  # past the warm-up, so the update learns
        states = [cont_update(st, hp) for st in states]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
    batched = jax.jit(jax.vmap(lambda st: sac.update(cfg, env, st, hp)[0]))(stacked)
    for i in range(2):
        single = cont_update(states[i], hp)
        assert int(single.grad_steps) == 2
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6),
            batched.params,
            single.params,
        )


@pytest.mark.slow
@pytest.mark.parametrize("which", ["cont", "disc"])
def test_vmapped_equals_looped(which, request):
    cfg, env, hp = request.getfixturevalue(which)
    keys = jax.random.split(jax.random.key(4), 2)
    run = lambda k: sac.train(cfg, env, sac.init(cfg, env, k, hp), hp, 20)
    _, batched = jax.jit(jax.vmap(run))(keys)
    for i in range(2):
        _, single = jax.jit(run)(keys[i])
        for name in ("train/critic_loss", "train/alpha"):
            np.testing.assert_allclose(batched[name][i], single[name], rtol=1e-4, atol=1e-6)


def test_bad_settings_raise_before_compiling():
    with pytest.raises(ConfigError, match="batch_size"):
        sac.Config(batch_size=512, buffer_size=100)
    with pytest.raises(ConfigError, match="learning_starts"):
        sac.Config(learning_starts=-1)
    with pytest.raises(ConfigError, match="gradient_steps"):
        sac.Config(gradient_steps=0)
    with pytest.raises(ConfigError, match="total_timesteps"):
        sac.Config(total_timesteps=3, num_envs=4)
    with pytest.raises(ConfigError, match="init_alpha"):
        sac.check(sac.Config(), sac.HParams.make(init_alpha=0.0))
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        sac.HParams.make(alpha=0.2)


@pytest.mark.learning
def test_learns_the_continuous_probe():
    """One-step episodes, best action = obs: the last 200 episodes score above -0.06."""
    env, _ = registry.make("probe/continuous_target")
    cfg = sac.Config(total_timesteps=2000, hidden=(32, 32), batch_size=64, learning_starts=200)
    hp = sac.HParams.make(init_alpha=0.1, learning_rate=1e-3)
    run = lambda k: sac.train(cfg, env, sac.init(cfg, env, k, hp), hp, cfg.num_updates)
    _, metrics = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 2))
    returns = np.asarray(metrics["episode/return"])[:, -200:]
    assert returns.mean(1).min() > -0.06, returns.mean(1)


@pytest.mark.slow
@pytest.mark.learning
def test_discrete_learns_the_reward_from_obs_probe():
    """One-step episodes, the right action is ``obs > 0``: most late episodes get it."""
    env, _ = registry.make("probe/reward_from_obs")
    cfg = sac.Config(total_timesteps=1500, hidden=(32, 32), batch_size=64, learning_starts=200)
    hp = sac.HParams.make(init_alpha=0.1, learning_rate=1e-3, target_entropy_scale=0.1)
    run = lambda k: sac.train(cfg, env, sac.init(cfg, env, k, hp), hp, cfg.num_updates)
    _, metrics = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 2))
    returns = np.asarray(metrics["episode/return"])[:, -200:]
    assert returns.mean(1).min() > 0.8, returns.mean(1)


@pytest.mark.slow
def test_preset_pendulum_reaches_minus_250_over_4_seeds_in_20k_steps(preset_final_returns):
    cfg, final = preset_final_returns(sac, "sac/pendulum")
    assert cfg.num_updates * cfg.steps_per_update <= 20_000
    assert final.mean() >= -250, final


@pytest.mark.slow
def test_discrete_preset_cartpole_reaches_400_over_4_seeds(preset_final_returns):
    _, final = preset_final_returns(sac, "sac/cartpole")
    assert final.mean() >= 400, final
