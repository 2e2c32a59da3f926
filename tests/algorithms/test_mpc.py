"""CEM-MPC with the env as its model: sequence returns against a Python loop through the
env, the CEM refits by hand, the plan's shift, the planner picking the rewarded action,
config errors, and control of CartPole and Pendulum with no learning."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import mpc
from jaxrl.envs import registry, spaces
from jaxrl.errors import ConfigError

SMALL = mpc.Config(horizon=20, samples=64, elites=8, iterations=3)


def test_sequence_returns_match_a_python_loop_and_stop_at_the_episode_end():
    env, params = registry.make("CartPole-v1")
    _, state = env.reset(jax.random.key(0), params)
    pushes = jnp.stack([jnp.ones(60, jnp.int32), jnp.zeros(60, jnp.int32),
                        jnp.arange(60, dtype=jnp.int32) % 2])  # fmt: skip
    key = jax.random.key(1)
    got = mpc.sequence_returns(env, params, state, pushes, key)
    for i, sequence in enumerate(pushes):
        s, total, done = state, 0.0, False
        for t in range(60):
            _, s, out = env.step(jax.random.key(t), s, sequence[t], params)
            if not done:
                total += float(out.reward)
            done = done or bool(out.done)
        np.testing.assert_allclose(got[i], total)
    # pushing one way topples the pole sooner than alternating does
    assert max(got[0], got[1]) < 20 < got[2]


def test_the_refits_are_the_elites_statistics():
    env, _ = registry.make("CartPole-v1")
    space = spaces.Discrete(2)
    elites = jnp.array([[0, 1, 1], [0, 0, 1], [0, 1, 1], [1, 1, 1]])  # [K=4, H=3]
    plan = mpc._refit(SMALL, space, elites)
    freq = np.array([[0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    np.testing.assert_allclose(plan.mean, 0.9 * freq + 0.1 / 2, rtol=1e-6)
    box = spaces.Box(-2.0, 2.0, (1,))
    elites = jax.random.uniform(jax.random.key(0), (8, 3, 1), minval=-2, maxval=2)
    plan = mpc._refit(SMALL, box, elites)
    np.testing.assert_allclose(plan.mean, np.mean(np.asarray(elites), 0), rtol=1e-5)
    np.testing.assert_allclose(plan.std, np.std(np.asarray(elites), 0), rtol=1e-5)
    # sampled Box sequences stay inside the bounds, however wide the distribution
    wide = mpc.Plan(jnp.zeros((3, 1)), jnp.full((3, 1), 100.0))
    samples = mpc._sample(SMALL, box, wide, jax.random.key(1))
    assert samples.shape == (64, 3, 1) and float(jnp.max(jnp.abs(samples))) == 2.0


def test_shift_drops_the_first_step_and_appends_a_fresh_one():
    env, params = registry.make("Pendulum-v1")
    fresh = mpc.initial_plan(SMALL, env, params)
    np.testing.assert_allclose(fresh.mean, 0.0)
    np.testing.assert_allclose(fresh.std, 0.5 * 2.0)  # init_std half-ranges of [-2, 2]
    plan = mpc.Plan(jnp.arange(20.0)[:, None], jnp.ones((20, 1)))
    shifted = mpc.shift(SMALL, env, params, plan)
    np.testing.assert_allclose(shifted.mean[:-1, 0], np.arange(1.0, 20.0))
    np.testing.assert_allclose(shifted.mean[-1], fresh.mean[0])
    np.testing.assert_allclose(shifted.std[-1], fresh.std[0])


def test_the_planner_takes_the_rewarded_action_of_a_probe():
    env, params = registry.make("probe/action_reward")  # +1 for action 1, -1 for action 0
    _, state = env.reset(jax.random.key(0), params)
    plan = mpc.initial_plan(SMALL, env, params)
    action, plan, best = mpc.plan_action(SMALL, env, params, state, plan, jax.random.key(1))
    assert int(action) == 1 and float(best) == 1.0
    assert float(plan.mean[0, 1]) > 0.9  # the refit puts the first step's mass on it
    ret, length = mpc.episode(SMALL, env, jax.random.key(2), params)
    assert float(ret) == 1.0 and int(length) == 1


def test_config_errors_come_before_compiling():
    with pytest.raises(ConfigError, match="elites = 65 must be at most samples = 64"):
        mpc.Config(samples=64, elites=65)
    with pytest.raises(ConfigError, match="horizon"):
        mpc.Config(horizon=0)
    with pytest.raises(ConfigError, match="init_std must be positive"):
        mpc.Config(init_std=-1.0)
    with pytest.raises(ConfigError, match="smoothing"):
        mpc.Config(smoothing=1.5)


@pytest.mark.learning
def test_mpc_balances_cartpole_and_swings_up_pendulum_with_no_learning():
    cfg = mpc.Config()  # horizon 40, 512 samples, 64 elites, 8 rounds
    env, _ = registry.make("CartPole-v1")
    run = jax.jit(jax.vmap(lambda k: mpc.episode(cfg, env, k)))
    returns, lengths = run(jax.random.split(jax.random.key(0), 2))
    np.testing.assert_array_equal(returns, [500.0, 500.0])
    np.testing.assert_array_equal(lengths, [500, 500])
    env, _ = registry.make("Pendulum-v1")
    returns, _ = jax.jit(jax.vmap(lambda k: mpc.episode(cfg, env, k)))(
        jax.random.split(jax.random.key(0), 4)
    )
    assert np.all(np.asarray(returns) > -300), returns
