"""RL^2: the trial wrapper, recurrent PPO's carry resets, loss vs a hand computation, learning."""

from __future__ import annotations

import dataclasses
import functools

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from jaxrl.algorithms import recurrent_ppo as rp
from jaxrl.envs import spaces
from jaxrl.envs.bandits import BernoulliBandit
from jaxrl.envs.base import Env, Step
from jaxrl.errors import ConfigError
from jaxrl.meta import rl2
from jaxrl.networks.recurrent import initial_carry


class GoalParams(struct.PyTreeNode):
    goal: jax.Array  # int32: the rewarded action of this task


@dataclasses.dataclass(frozen=True)
class TwoStepGoal(Env):
    """Episodes of two steps; reward 1 for the task's ``goal`` action; obs = [step index]."""

    def default_params(self):
        return GoalParams(jnp.int32(0))

    def sample_params(self, key):
        return GoalParams(jax.random.randint(key, (), 0, 3))

    def reset(self, key, params):
        return jnp.zeros((1,)), jnp.zeros((), jnp.int32)

    def step(self, key, state, action, params):
        time = state + 1
        obs = time.astype(jnp.float32)[None]
        reward = (action == params.goal).astype(jnp.float32)
        step = Step(reward, time >= 2, jnp.zeros((), bool), obs, {"goal": params.goal})
        return obs, time, step

    def observation_space(self, params):
        return spaces.Box(0.0, 2.0, (1,))

    def action_space(self, params):
        return spaces.Discrete(3)


def test_bandit_trial_observations_and_termination():
    env = rl2.TrialWrapper(BernoulliBandit(4), episodes_per_trial=3, include_time=True)
    obs, state = env.reset(jax.random.key(0))
    np.testing.assert_array_equal(obs, [1, 0, 0, 0, 0, 0, 0, 0])  # [obs, a, r, d, t]
    state = state.replace(task=state.task.replace(probs=jnp.array([0.0, 1.0, 0.0, 1.0])))
    for t, action in enumerate([1, 2, 3]):
        obs, state, step = env.step(jax.random.key(t), state, jnp.int32(action))
        reward = float(action in (1, 3))
        want = [1.0] + [float(a == action) for a in range(4)] + [reward, 1.0, (t + 1) / 3]
        np.testing.assert_allclose(obs, want, rtol=1e-6)
        assert float(step.reward) == reward
        assert bool(step.terminated) == (t == 2) and not bool(step.truncated)
    assert env.observation_space().shape == obs.shape


def test_trial_spans_several_episodes_with_one_task():
    """Two-step episodes, 3 per trial: the trial ends after 6 steps, the task env resets
    inside it (done flag in the obs), and the task stays the same for the whole trial."""
    env = rl2.TrialWrapper(TwoStepGoal(), episodes_per_trial=3)
    obs, state = env.reset(jax.random.key(1))
    goal = int(state.task.goal)
    dones, terms = [], []
    for t in range(6):
        obs, state, step = env.step(jax.random.key(t), state, jnp.int32(goal))
        dones.append(float(obs[-1]))
        terms.append(bool(step.terminated))
        assert float(step.reward) == 1.0 and int(step.info["goal"]) == goal
        # The task env's own obs: step index, back to 0 after its episode ended.
        assert float(obs[0]) == (0.0 if t % 2 else 1.0)
    assert dones == [0, 1, 0, 1, 0, 1] and terms == [False] * 5 + [True]


def test_task_env_without_sample_params_is_rejected():
    from jaxrl.envs.probe import RewardFromObs

    with pytest.raises(ConfigError):
        rl2.TrialWrapper(RewardFromObs(), episodes_per_trial=2)


def _setup(cell="gru", num_envs=4, n=3, trials_per_rollout=2, algo="ppo"):
    env = rl2.TrialWrapper(BernoulliBandit(3), episodes_per_trial=n)
    cfg = rp.Config(num_envs=num_envs, rollout_len=n * trials_per_rollout, hidden=8, cell=cell,
                    num_minibatches=2, num_epochs=2, algo=algo)  # fmt: skip
    hp = rp.HParams.make(gae_lambda=0.3)
    state = rp.init(cfg, env, jax.random.key(0), hp)
    return cfg, env, state, hp


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_carry_resets_between_trials_and_persists_inside(cell):
    """Outputs in the second trial of a rollout equal the network run on that trial alone from
    a zero carry; inside a trial they depend on the earlier pulls (the carry persists)."""
    cfg, env, state, _ = _setup(cell)
    n = env.episodes_per_trial
    net = rp.network(cfg, env)
    zero = initial_carry(cell, (cfg.num_envs,), cfg.hidden)

    @jax.jit  # one program (op by op, the four recurrent scans cost more than its compile)
    def run(params):
        _, ro = rp.collect(cfg, env, state)
        no_reset = jnp.zeros((n, cfg.num_envs), bool)
        _, dist2, value2 = net.apply(params, zero, ro.obs[n:], no_reset)
        log_prob2 = dist2.log_prob(ro.action[n:])
        _, _, value_leak = net.apply(params, zero, ro.obs, jnp.zeros_like(ro.reset))
        _, _, value_all = net.apply(params, ro.carry0, ro.obs, ro.reset)
        return ro, value2, log_prob2, value_leak, value_all

    ro, value2, log_prob2, value_leak, value_all = run(state.params)
    np.testing.assert_array_equal(ro.reset[:, 0], [1, 0, 0, 1, 0, 0])
    np.testing.assert_allclose(value2, ro.value[n:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_prob2, ro.log_prob[n:], atol=1e-5)
    # Without the reset the carry of trial 1 leaks into trial 2 and changes the values.
    assert np.max(np.abs(value_leak[n:] - ro.value[n:])) > 1e-5
    # The loss re-runs whole rollouts from carry0 and reproduces the rollout's values.
    np.testing.assert_allclose(value_all, ro.value, rtol=1e-5, atol=1e-6)


def test_carry_resets_at_episode_ends_of_any_env():
    """General recurrent PPO on a plain env (two-step episodes): reset = previous done, and the
    carry at the rollout boundary is handed to the next rollout."""
    env = TwoStepGoal()
    cfg = rp.Config(num_envs=2, rollout_len=3, hidden=8, num_minibatches=1)
    hp = rp.HParams.make()
    state = rp.init(cfg, env, jax.random.key(0), hp)
    state1, ro1 = rp.collect(cfg, env, state)
    _, ro2 = rp.collect(cfg, env, state1)
    reset = np.concatenate([ro1.reset[:, 0], ro2.reset[:, 0]])
    np.testing.assert_array_equal(reset, [1, 0, 1, 0, 1, 0])
    done = np.concatenate([ro1.terminated[:, 0], ro2.terminated[:, 0]])
    np.testing.assert_array_equal(reset[1:], done[:-1])
    net = rp.network(cfg, env)
    obs = jnp.concatenate([ro1.obs, ro2.obs])
    _, _, value = net.apply(state.params, ro1.carry0, obs, jnp.asarray(reset[:, None]).repeat(2, 1))
    np.testing.assert_allclose(value[3:], ro2.value, rtol=1e-5, atol=1e-6)


def _gae_by_hand(r, v, boot, term, gamma, lam):
    adv, next_adv = np.zeros_like(r), 0.0
    for t in reversed(range(len(r))):
        disc = gamma * (1.0 - term[t])
        delta = r[t] + disc * boot[t] - v[t]
        next_adv = delta + disc * lam * next_adv
        adv[t] = next_adv
    return adv


def test_gae_cuts_at_trial_ends_only():
    cfg, env, state, hp = _setup()
    _, ro = rp.collect(cfg, env, state)
    batch = rp.make_batch(ro, hp)
    # Inside a trial the bootstrap value is the next step's value (same carry, same obs).
    n = env.episodes_per_trial
    inside = ~np.asarray(ro.terminated)
    np.testing.assert_allclose(
        np.asarray(ro.bootstrap_value)[:-1][inside[:-1]],
        np.asarray(ro.value)[1:][inside[:-1]],
        rtol=1e-5,
        atol=1e-6,
    )
    assert np.all(np.asarray(ro.terminated)[n - 1 :: n])
    for i in range(cfg.num_envs):
        want = _gae_by_hand(*(np.asarray(x[:, i], np.float64) for x in (
            ro.reward, ro.value, ro.bootstrap_value, ro.terminated)), 0.99, 0.3)  # fmt: skip
        np.testing.assert_allclose(batch.advantage[:, i], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch.target, batch.advantage + ro.value, rtol=1e-6)


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_loss_matches_hand_computation(algo):
    cfg, env, state, hp = _setup(algo=algo)
    hp = hp.replace(ent_coef=jnp.float32(0.05), vf_coef=jnp.float32(0.7))
    _, ro = rp.collect(cfg, env, state)
    batch = rp.make_batch(ro, hp)
    # Perturb the parameters so the ratio differs from 1 and clipping happens.
    params = jax.tree.map(lambda p: p * 1.5 + 0.3, state.params)
    got, metrics = rp.loss(cfg, env, params, batch, hp)
    _, dist, value = rp.network(cfg, env).apply(params, batch.carry0, batch.obs, batch.reset)
    logits, value = np.asarray(dist.logits, np.float64), np.asarray(value, np.float64)
    logp_all = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    logp = np.take_along_axis(logp_all, np.asarray(batch.action)[..., None], -1)[..., 0]
    adv = np.asarray(batch.advantage, np.float64)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    if algo == "ppo":
        ratio = np.exp(logp - np.asarray(batch.log_prob))
        pg = -np.mean(np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv))
    else:
        pg = -np.mean(logp * adv)
    vl = 0.5 * np.mean((value - np.asarray(batch.target)) ** 2)
    ent = -np.mean((np.exp(logp_all) * logp_all).sum(-1))
    np.testing.assert_allclose(float(metrics["train/policy_loss"]), pg, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(metrics["train/value_loss"]), vl, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["train/entropy"]), ent, rtol=1e-4)
    np.testing.assert_allclose(float(got), pg + 0.7 * vl - 0.05 * ent, rtol=1e-4, atol=1e-6)


@functools.cache
def _annealed_update():
    """``_setup()`` with the entropy bonus annealed over 5 updates, and its jitted update
    (``hp`` traced): one compile shared by the two tests below."""
    cfg, env, state, hp = _setup()
    cfg = dataclasses.replace(cfg, total_timesteps=5 * cfg.steps_per_update, anneal_ent=True)
    return cfg, env, state, hp, jax.jit(lambda s, h: rp.update(cfg, env, s, h))


def test_update_jit_equals_no_jit():
    cfg, env, state, hp, upd = _annealed_update()
    want, m_want = rp.update(cfg, env, state, hp)  # op by op (scan bodies still compile)
    got, m_got = upd(state, hp)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5),
                 got.params, want.params)  # fmt: skip
    np.testing.assert_allclose(m_got["episode/return"], m_want["episode/return"])


def test_entropy_coef_anneals_linearly_to_zero():
    cfg, _, _, hp = _setup()
    hp = hp.replace(ent_coef=jnp.float32(0.08))
    cfg_anneal = dataclasses.replace(cfg, total_timesteps=4 * cfg.steps_per_update, anneal_ent=True)
    counts = jnp.array([0, 1, 2, 4, 6])
    got = jax.vmap(lambda c: rp.entropy_coef(cfg_anneal, hp, c))(counts)
    np.testing.assert_allclose(got, [0.08, 0.06, 0.04, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(rp.entropy_coef(cfg, hp, jnp.int32(3)), 0.08)  # off: constant


def test_update_uses_annealed_entropy_coef():
    """At ``update_count = num_updates`` the entropy bonus is gone: ``ent_coef`` 0.5 and 0 give
    the same update; at count 0 they differ. One compile (``hp`` is traced)."""
    _, _, state, hp, upd = _annealed_update()
    big, zero = hp.replace(ent_coef=jnp.float32(0.5)), hp.replace(ent_coef=jnp.float32(0.0))
    end = state.replace(update_count=jnp.int32(5))
    (a, m), (b, _) = upd(end, big), upd(end, zero)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    assert float(m["train/ent_coef"]) == 0.0
    (c, m0), (d, _) = upd(state, big), upd(state, zero)
    assert float(m0["train/ent_coef"]) == 0.5
    diff = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), c.params, d.params)
    assert max(jax.tree.leaves(diff)) > 1e-6


def test_recurrent_policy_steps_equal_one_unroll_and_evaluate_plays_it():
    """Step by step, ``recurrent_policy`` acts as one unroll of the network over the episode
    (greedy: argmax; sampled: the categorical at the key); ``jaxrl.runner.evaluate`` plays
    it to the episode ends."""
    from jaxrl.envs import registry
    from jaxrl.runner import evaluate

    env, env_params = registry.make("pomdp/CartPole-v1")
    cfg = rp.Config(num_envs=4, rollout_len=8, hidden=16, num_minibatches=2)
    params = rp.init(cfg, env, jax.random.key(0), rp.HParams.make(), env_params).params
    policy = jax.jit(functools.partial(rp.recurrent_policy, cfg, env), static_argnums=4)
    obs = jax.random.normal(jax.random.key(1), (12, 3, 2))
    carry, greedy, sampled = rp.policy_carry(cfg, 3), [], []
    for t in range(12):
        _, a_sampled = policy(params, carry, obs[t], jax.random.key(t), False)
        carry, a_greedy = policy(params, carry, obs[t], jax.random.key(t), True)
        greedy.append(a_greedy)
        sampled.append(a_sampled)
    _, dist, _ = rp.network(cfg, env).apply(
        params, rp.policy_carry(cfg, 3), obs, jnp.zeros((12, 3), bool)
    )
    logits = dist.logits
    np.testing.assert_array_equal(np.stack(greedy), np.argmax(logits, -1))
    for t in (0, 11):
        expected = distrax.Categorical(logits=logits[t]).sample(seed=jax.random.key(t))
        np.testing.assert_array_equal(sampled[t], expected)
    returns = evaluate.evaluate(rp, cfg, env, params, jax.random.key(2), 4, True, env_params)
    assert returns.shape == (4,) and bool(jnp.all(returns >= 1))


def test_evaluate_keeps_weights_and_resets_between_trials():
    cfg, env, state, _ = _setup()
    out = jax.jit(lambda p: rl2.evaluate(cfg, env, p, jax.random.key(3), 5, 6))(state.params)
    assert out.reward.shape == (6, 5)
    np.testing.assert_array_equal(out.terminated[:, 0], [0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(out.info["trial_time"][:, 0], [0, 1, 2, 0, 1, 2])


@pytest.mark.learning
def test_rl2_learns_to_explore_and_exploit_n10_k5():
    """RL^2 on Duan's n = 10, k = 5 trials beats random (5.0) clearly: > 6.0 per trial."""
    env = rl2.TrialWrapper(BernoulliBandit(5), episodes_per_trial=10)
    cfg = rp.Config(num_envs=128, rollout_len=10, hidden=64, num_minibatches=2, num_epochs=4)
    hp = rp.HParams.make(gae_lambda=0.3, learning_rate=3e-3)
    state = rp.init(cfg, env, jax.random.key(0), hp)
    state, _ = jax.jit(lambda s: rp.train(cfg, env, s, hp, 150))(state)
    out = jax.jit(lambda p: rl2.evaluate(cfg, env, p, jax.random.key(1), 4000, 10))(state.params)
    assert float(out.reward.sum(0).mean()) > 6.0
