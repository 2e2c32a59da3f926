"""TD3: the clipped double-Q target by hand, delayed actor and Polyak targets, warm-up,
branches that stay branches under vmap, vmapped equals looped, errors, and learning on a
continuous probe and Pendulum."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import td3
from jaxrl.envs import registry
from jaxrl.errors import ConfigError

TINY = dict(total_timesteps=400, hidden=(16, 16), batch_size=8, buffer_size=64, learning_starts=16)


@pytest.fixture(scope="module")
def setup():
    env, _ = registry.make("probe/continuous_target")
    cfg = td3.Config(**TINY)
    hp = td3.HParams.make(discount=0.9, tau=0.1)
    state = td3.init(cfg, env, jax.random.key(0), hp)
    return cfg, env, hp, state


@pytest.fixture(scope="module")
def update(setup):
    """One jitted ``update(state, hp)`` shared by the tests (one compile for the module)."""
    cfg, env, _, _ = setup
    return jax.jit(lambda s, h: td3.update(cfg, env, s, h))


def _random_params(cfg, env, key):
    """Online and target networks all different, so the target uses the right ones."""
    actor, critic = td3.networks(cfg, env)
    obs, act = jnp.zeros((1, 1)), jnp.zeros((1, 1))
    k = jax.random.split(key, 4)
    return td3.Params(
        actor.init(k[0], obs), critic.init(k[1], obs, act),
        actor.init(k[2], obs), critic.init(k[3], obs, act),
    )  # fmt: skip


def test_critic_loss_matches_hand_computation(setup):
    cfg, env, hp, _ = setup
    actor, critic = td3.networks(cfg, env)
    params = _random_params(cfg, env, jax.random.key(1))
    key = jax.random.split(jax.random.key(2), 5)
    b = 6
    tr = td3.Transition(
        obs=jax.random.normal(key[0], (b, 1)),
        action=jax.random.uniform(key[1], (b, 1), minval=-1, maxval=1),
        reward=jax.random.normal(key[2], (b,)),
        terminated=jnp.array([0, 1, 0, 0, 1, 0], jnp.float32),
        next_obs=jax.random.normal(key[3], (b, 1)),
    )
    noise = 3.0 * jax.random.normal(key[4], (b, 1))  # large, so the clip matters
    loss, _ = td3.critic_loss(cfg, env, params.critic, params, td3.Batch(tr, noise), hp)

    eps = np.clip(0.2 * np.asarray(noise), -0.5, 0.5)
    next_a = np.clip(np.asarray(actor.apply(params.target_actor, tr.next_obs)) + eps, -1, 1)
    q_next = np.asarray(critic.apply(params.target_critic, tr.next_obs, jnp.asarray(next_a)))
    y = np.asarray(tr.reward) + 0.9 * (1 - np.asarray(tr.terminated)) * q_next.min(0)
    q = np.asarray(critic.apply(params.critic, tr.obs, tr.action))
    expected = ((q[0] - y) ** 2).mean() + ((q[1] - y) ** 2).mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_loss_gradients_reach_each_network_from_its_own_term(setup):
    cfg, env, hp, _ = setup
    params = _random_params(cfg, env, jax.random.key(3))
    tr = td3.Transition(
        jnp.ones((4, 1)), jnp.zeros((4, 1)), jnp.ones(4), jnp.zeros(4), jnp.ones((4, 1))
    )
    batch = td3.Batch(tr, jnp.zeros((4, 1)))
    grads = jax.grad(lambda p: td3.loss(cfg, env, p, batch, hp)[0])(params)
    critic_only = jax.grad(lambda c: td3.critic_loss(cfg, env, c, params, batch, hp)[0])(
        params.critic
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), grads.critic, critic_only
    )
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads.target_critic))


def test_warmup_then_delayed_actor_and_polyak_targets(setup, update):
    cfg, env, hp, state = setup
    # Before learning_starts nothing learns.
    s0 = state
    for _ in range(15):
        s0, _ = update(s0, hp)
    assert int(s0.grad_steps) == 0  # update() learned nothing yet
    s1, _ = update(s0, hp)  # env_steps = 16: its learn step is gradient step 1
    assert int(s1.grad_steps) == 1
    same = lambda a, b: all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, b)))
    assert same(s1.params.actor, s0.params.actor)  # step 1: critic only (delay 2)
    assert not same(s1.params.critic, s0.params.critic)
    s2, _ = update(s1, hp)  # step 2: actor, then targets towards the online nets
    assert int(s2.grad_steps) == 2
    assert not same(s2.params.actor, s1.params.actor)
    expected = jax.tree.map(
        lambda t, o: 0.9 * t + 0.1 * o, s1.params.target_critic, s2.params.critic
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        s2.params.target_critic,
        expected,
    )


def test_actor_loss_reads_the_first_critic_alone(setup):
    cfg, env, hp, _ = setup
    params = _random_params(cfg, env, jax.random.key(5))
    actor, critic = td3.networks(cfg, env)
    obs = jax.random.normal(jax.random.key(6), (7, 1))
    action = actor.apply(params.actor, obs)
    both = critic.apply(params.critic, obs, action)  # [2, 7]
    q1 = td3.first_critic(cfg, env, params.critic, obs, action)
    np.testing.assert_allclose(q1, both[0], rtol=1e-6, atol=1e-7)
    assert not np.allclose(q1, both[1])
    batch = td3.Batch(td3.Transition(obs, action, jnp.zeros(7), jnp.zeros(7), obs), action)
    loss, _ = td3.actor_loss(cfg, env, params.actor, params, batch, hp)
    np.testing.assert_allclose(loss, -np.mean(both[0]), rtol=1e-6)


def test_vmapped_learn_keeps_real_branches(setup):
    """Warm-up and policy delay gate branches: under vmap a cond on a batched predicate
    would have become a select of both branches (no cond left in the program)."""
    cfg, env, hp, state = setup
    states = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    jaxpr = str(jax.make_jaxpr(jax.vmap(lambda s: td3.learn(cfg, env, s, hp)))(states))
    assert jaxpr.count(" cond[") >= 2  # learning started, and the delayed actor step


def test_skipped_steps_compute_nothing_and_report_nan(setup, update):
    cfg, env, hp, state = setup
    s, m = update(state, hp)  # warm-up: no learning, NaN train metrics
    assert int(s.grad_steps) == 0 and np.isnan(float(m["train/critic_loss"]))
    for _ in range(14):
        s, _ = update(s, hp)
    assert int(s.grad_steps) == 0
    s1, m1 = update(s, hp)  # env_steps = 16, gradient step 1: critic only
    s2, m2 = update(s1, hp)  # gradient step 2: critic and actor
    assert np.isfinite(float(m1["train/critic_loss"])) and np.isnan(float(m1["train/actor_loss"]))
    assert np.isfinite(float(m2["train/actor_loss"]))
    assert int(s2.actor_opt_state[0].count) == 1 and int(s2.critic_opt_state[0].count) == 2


def test_reverse_mode_gradient_through_the_branches(setup, update):
    """Meta-gradients pass the branches: 15 skipped updates, then one critic-only step, whose
    Adam update is linear in the learning rate (so finite differences are exact)."""
    cfg, env, hp, state = setup
    critic_sum = lambda s: sum(jnp.sum(x) for x in jax.tree.leaves(s.params.critic))

    def final(lr):
        new, _ = td3.train(cfg, env, state, hp.replace(learning_rate=lr), 16)
        return critic_sum(new)

    def final_by_updates(lr):  # the same 16 updates, by the module's compiled update
        s = state
        for _ in range(16):
            s, _ = update(s, hp.replace(learning_rate=lr))
        return critic_sum(s)

    lr = hp.learning_rate
    g = jax.jit(jax.grad(final))(lr)
    fd = (final_by_updates(2 * lr) - final_by_updates(0 * lr)) / (2 * lr)
    assert float(g) != 0.0
    np.testing.assert_allclose(g, fd, rtol=1e-3)


def test_vmapped_equals_looped(setup, update):
    """Two seeds warmed up by 14 updates, then 3 vmapped updates (the last skipped one, the
    critic-only gradient step 1 and step 2 with the actor and targets) equal looped ones."""
    cfg, env, hp, _ = setup
    keys = jax.random.split(jax.random.key(4), 2)
    states = []
    for k in keys:
        s = td3.init(cfg, env, k, hp)
        for _ in range(cfg.learning_starts - 2):
            s, _ = update(s, hp)
        states.append(s)
    vupdate = jax.jit(jax.vmap(lambda s: td3.update(cfg, env, s, hp)))
    batched = jax.tree.map(lambda *x: jnp.stack(x), *states)
    looped = list(states)
    for _ in range(3):
        batched, b_metrics = vupdate(batched)
        for i in range(2):
            looped[i], metrics = update(looped[i], hp)
            for name in ("train/critic_loss", "train/actor_loss"):
                np.testing.assert_allclose(b_metrics[name][i], metrics[name], rtol=1e-4, atol=1e-6)
    assert int(looped[0].grad_steps) == 2 and int(looped[0].actor_opt_state[0].count) == 1
    for i in range(2):
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6),
            batched.params,
            looped[i].params,
        )


def test_one_program_for_every_hyperparameter_value(setup):
    cfg, env, hp, state = setup
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(lambda s, h: td3.update(cfg, env, s, h), n=1))
    for lr, tau in ((1e-4, 0.01), (1e-3, 0.5)):
        step(state, hp.replace(learning_rate=jnp.float32(lr), tau=jnp.float32(tau)))


def test_bad_settings_raise_before_compiling():
    with pytest.raises(ConfigError, match="batch_size"):
        td3.Config(batch_size=512, buffer_size=100)
    with pytest.raises(ConfigError, match="learning_starts"):
        td3.Config(learning_starts=-1)
    with pytest.raises(ConfigError, match="tau"):
        td3.check(td3.Config(), td3.HParams.make(tau=1.5))
    env, _ = registry.make("CartPole-v1")
    with pytest.raises(ConfigError, match="continuous"):
        td3.init(td3.Config(), env, jax.random.key(0), td3.HParams.make())


@pytest.mark.learning
def test_learns_the_continuous_probe():
    """One-step episodes, best action = obs: the last 200 episodes score above -0.02."""
    env, _ = registry.make("probe/continuous_target")
    cfg = td3.Config(total_timesteps=2000, hidden=(32, 32), batch_size=64, learning_starts=200)
    hp = td3.HParams.make(exploration_noise=0.05)
    run = lambda k: td3.train(cfg, env, td3.init(cfg, env, k, hp), hp, cfg.num_updates)
    _, metrics = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 2))
    returns = np.asarray(metrics["episode/return"])[:, -200:]
    assert returns.mean(1).min() > -0.02, returns.mean(1)


@pytest.mark.slow
def test_preset_pendulum_reaches_minus_250_over_4_seeds_in_20k_steps(preset_final_returns):
    cfg, final = preset_final_returns(td3, "td3/pendulum")
    assert cfg.num_updates * cfg.steps_per_update <= 20_000
    assert final.mean() >= -250, final
