"""IMPALA: V-trace by hand and vs rlax, lag 0 = A2C, the lag ring buffer, invariances."""

from __future__ import annotations

import dataclasses
import functools
import time

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

from jaxrl import envs
from jaxrl.algorithms import base, impala
from jaxrl.algorithms import rollout as rollout_lib
from jaxrl.runner import config, loop, sweep

SMALL = dict(num_envs=4, rollout_len=8, hidden=(16, 16), total_timesteps=32 * 8)


def _numeric(tree):
    """PRNG keys as their raw bits, so whole states can be compared."""
    is_key = lambda x: isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def _allclose(a, b, **kw):
    chex.assert_trees_all_close(_numeric(a), _numeric(b), **({"rtol": 1e-5, "atol": 1e-6} | kw))


def _differ(a, b) -> bool:
    return any(
        not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


# ---------------------------------------------------------------- V-trace by hand


def _vtrace_by_hand(v_tm1, v_t, r, disc, cut, rho, lam, rho_bar, c_bar, pg_rho_bar, pg_rho=None):
    """IMPALA eq. (1) as a backward loop in float64; the trace stops at cuts and at T.
    ``pg_rho`` (default ``rho``) weights the policy-gradient advantage."""
    pg_rho = rho if pg_rho is None else pg_rho
    T = len(r)
    vs = np.zeros(T)
    for s in reversed(range(T)):
        delta = min(rho_bar, rho[s]) * (r[s] + disc[s] * v_t[s] - v_tm1[s])
        carry = 0.0 if (cut[s] or s == T - 1) else vs[s + 1] - v_tm1[s + 1]
        vs[s] = v_tm1[s] + delta + disc[s] * lam * min(c_bar, rho[s]) * carry
    vs_next = [v_t[s] if (cut[s] or s == T - 1) else vs[s + 1] for s in range(T)]
    adv = np.array(
        [min(pg_rho_bar, pg_rho[s]) * (r[s] + disc[s] * vs_next[s] - v_tm1[s]) for s in range(T)]
    )
    return vs, adv


def _trajectory():
    """T = 7: a termination at s = 2 (discount 0), a truncation at s = 4 (V(x'_4) ≠ V(x_5))."""
    v_tm1 = np.array([0.5, -0.2, 1.0, 0.3, 0.8, -0.4, 0.1], np.float32)
    v_t = np.array([-0.2, 1.0, 7.0, 0.8, 2.5, 0.1, 0.6], np.float32)  # v_t[2] unused (terminal)
    r = np.array([1.0, 0.5, -1.0, 0.2, 1.5, 0.0, 0.7], np.float32)
    terminated = np.array([0, 0, 1, 0, 0, 0, 0], bool)
    truncated = np.array([0, 0, 0, 0, 1, 0, 0], bool)
    rho = np.array([1.3, 0.4, 2.0, 0.9, 1.7, 0.05, 1.1], np.float32)
    disc = 0.9 * (1.0 - terminated.astype(np.float32))
    return v_tm1, v_t, r, disc, truncated, rho


class VTraceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_hand_recursion_with_termination_and_truncation(self):
        v_tm1, v_t, r, disc, cut, rho = _trajectory()
        for lam, rho_bar, c_bar, pg_rho_bar in [(1.0, 1.0, 1.0, 1.0), (0.8, 1.5, 0.7, 2.0)]:
            fn = self.variant(impala.vtrace)
            vs, adv = fn(
                v_tm1, v_t, r, disc, cut, rho, *map(jnp.float32, (lam, rho_bar, c_bar, pg_rho_bar))
            )
            chex.assert_shape([vs, adv], (7,))
            want_vs, want_adv = _vtrace_by_hand(
                *(np.asarray(x, np.float64) for x in (v_tm1, v_t, r, disc)), cut,
                np.asarray(rho, np.float64), lam, rho_bar, c_bar, pg_rho_bar,
            )  # fmt: skip
            np.testing.assert_allclose(vs, want_vs, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-6)
        # the terminal step's target ignores v_t there; the truncation bootstraps from V(x'_4)
        np.testing.assert_allclose(vs[2], v_tm1[2] + min(rho_bar, rho[2]) * (r[2] - v_tm1[2]))
        assert abs(vs[4] - v_tm1[4] - 1.5 * (r[4] + 0.9 * v_t[4] - v_tm1[4])) < 1e-5

    @chex.variants(with_jit=True, without_jit=True)
    def test_equals_rlax_when_nothing_is_cut(self):
        """λ = 1, c̄ = 1, no truncation: targets and pg advantages are rlax's."""
        v_tm1, _, r, disc, _, rho = _trajectory()
        v_t = np.concatenate([v_tm1[1:], [0.3]]).astype(np.float32)  # V(x'_s) = V(x_{s+1})
        no_cut = np.zeros(7, bool)
        one = jnp.float32(1.0)
        for rho_bar, pg_rho_bar in [(1.0, 1.0), (1.5, 0.8)]:
            vs, adv = self.variant(impala.vtrace)(
                v_tm1, v_t, r, disc, no_cut, rho, one, jnp.float32(rho_bar), one,
                jnp.float32(pg_rho_bar),
            )  # fmt: skip
            ref = rlax.vtrace_td_error_and_advantage(
                v_tm1, v_t, r, disc, rho, 1.0, rho_bar, pg_rho_bar
            )
            np.testing.assert_allclose(vs, ref.errors + v_tm1, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(adv, ref.pg_advantage, rtol=1e-6, atol=1e-6)

    def test_on_policy_targets_are_lambda_returns(self):
        """ρ = 1: V-trace is the λ-return (rlax.lambda_returns), whatever the clips ≥ 1."""
        v_tm1, _, r, disc, _, _ = _trajectory()
        v_t = np.concatenate([v_tm1[1:], [0.3]]).astype(np.float32)
        vs, _ = impala.vtrace(
            v_tm1, v_t, r, disc, np.zeros(7, bool), np.ones(7, np.float32),
            jnp.float32(0.7), jnp.float32(2.0), jnp.float32(3.0), jnp.float32(1.0),
        )  # fmt: skip
        np.testing.assert_allclose(vs, rlax.lambda_returns(r, disc, v_t, 0.7), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- compiled once per module

ENV, _ = envs.make("CartPole-v1")
HP = impala.HParams.make()
CFG = impala.Config(**SMALL, lag=2)  # the off-policy programs
# On-policy, with terminations and a 20-step time limit so truncations happen too.
CFG0 = impala.Config(num_envs=4, rollout_len=40, hidden=(16, 16), total_timesteps=160, lag=0)
ENV_PARAMS0 = ENV.default_params().replace(max_steps_in_episode=20)

_init = jax.jit(impala.init, static_argnums=(0, 1))
_collect = jax.jit(impala.collect, static_argnums=(0, 1))


# Every call with CFG reuses this program; test_one_compile_... counts its traces.
def _update_cfg(state, hp):
    return impala.update(CFG, ENV, state, hp)


_update = jax.jit(chex.assert_max_traces(_update_cfg, n=1))
# Gradients with respect to the parameters and the hyperparameters, in one program.
_loss_and_grad = jax.value_and_grad(impala.loss, argnums=(2, 4), has_aux=True)
_loss_and_grad_jit = jax.jit(_loss_and_grad, static_argnums=(0, 1))


@functools.cache
def _on_policy_rollout():
    state = _init(CFG0, ENV, jax.random.key(2), HP, ENV_PARAMS0)
    _, rollout = _collect(CFG0, ENV, state)
    return state, rollout


# ---------------------------------------------------------------- lag 0 is A2C


def _a2c_loss(cfg, env, params, rollout, hp):
    """On-policy actor-critic with λ = 1 returns (``rollout.advantages``), i.e. A2C."""
    net = impala.network(cfg, env)
    advantage, target = rollout_lib.advantages(net, params, rollout, hp.discount, 1.0)
    advantage, target = jax.lax.stop_gradient((advantage, target))
    dist, value = net.apply(params, rollout.obs)
    pg = -jnp.mean(dist.log_prob(rollout.action) * advantage)
    v_loss = 0.5 * jnp.mean(jnp.square(value - target))
    return pg + hp.vf_coef * v_loss - hp.ent_coef * jnp.mean(dist.entropy())


def test_lag_zero_loss_and_gradient_equal_on_policy_actor_critic():
    state, rollout = _on_policy_rollout()
    assert bool(rollout.truncated.any()) and bool(rollout.terminated.any())
    assert all(x.shape[0] == 1 for x in jax.tree.leaves(state.stale_params))
    _allclose(impala.behaviour_params(CFG0, state), state.params, rtol=0, atol=0)
    hp = HP.replace(ent_coef=jnp.float32(0.03), vf_coef=jnp.float32(0.7))
    batch = impala.make_batch(rollout)
    (total, metrics), (grads, _) = _loss_and_grad_jit(CFG0, ENV, state.params, batch, hp)
    a2c = jax.jit(jax.value_and_grad(lambda p: _a2c_loss(CFG0, ENV, p, rollout, hp)))
    ref, ref_grads = a2c(state.params)
    np.testing.assert_allclose(total, ref, rtol=1e-5, atol=1e-6)
    _allclose(grads, ref_grads, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["train/rho_mean"], 1.0, atol=1e-5)
    assert abs(float(metrics["train/approx_kl"])) < 1e-6


def _off_policy_batch():
    """The on-policy batch with behaviour log-probs moved, so ρ spreads around 1."""
    state, rollout = _on_policy_rollout()
    batch = impala.make_batch(rollout)
    noise = 0.5 * jax.random.normal(jax.random.key(9), batch.behaviour_log_prob.shape)
    return state, batch.replace(behaviour_log_prob=batch.behaviour_log_prob + noise)


OFF_POLICY_HP = HP.replace(
    discount=jnp.float32(0.95),
    vtrace_lambda=jnp.float32(0.9),
    rho_bar=jnp.float32(1.5),
    c_bar=jnp.float32(0.8),
    pg_rho_bar=jnp.float32(1.2),
    ent_coef=jnp.float32(0.03),
    vf_coef=jnp.float32(0.7),
)


# (target_correction_on, pg_correction_on): V-trace, no correction, the paper's 1-step
# importance sampling, and gates between 0 and 1 (the ratios' powers).
GATES = [(1.0, 1.0), (0.0, 0.0), (0.0, 1.0), (0.5, 0.25)]


@pytest.mark.parametrize("target_on, pg_on", GATES)
def test_off_policy_loss_matches_hand_computation(target_on, pg_on):
    """Every term of the loss in float64 numpy, V-trace per env by the hand recursion, with
    ``ρ^target_on`` in the targets and ``ρ^pg_on`` in the policy gradient."""
    state, batch = _off_policy_batch()
    hp = OFF_POLICY_HP.replace(
        target_correction_on=jnp.float32(target_on), pg_correction_on=jnp.float32(pg_on)
    )
    (total, metrics), _ = _loss_and_grad_jit(CFG0, ENV, state.params, batch, hp)

    net = impala.network(CFG0, ENV)
    dist, value = net.apply(state.params, batch.obs)
    f64 = lambda x: np.asarray(x, np.float64)
    logits, value = f64(dist.logits), f64(value)
    bootstrap = f64(net.apply(state.params, batch.final_obs, method="value"))
    log_pi = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    logp = np.take_along_axis(log_pi, np.asarray(batch.action)[..., None], -1)[..., 0]
    rho = np.exp(logp - f64(batch.behaviour_log_prob))
    disc = 0.95 * (1.0 - np.asarray(batch.terminated, np.float64))
    vs, adv = np.zeros_like(value), np.zeros_like(value)
    for n in range(value.shape[1]):
        vs[:, n], adv[:, n] = _vtrace_by_hand(
            value[:, n], bootstrap[:, n], f64(batch.reward[:, n]), disc[:, n],
            np.asarray(batch.truncated[:, n]), rho[:, n] ** target_on, 0.9, 1.5, 0.8, 1.2,
            rho[:, n] ** pg_on,
        )  # fmt: skip
    pg = -np.mean(logp * adv)
    v_loss = 0.5 * np.mean((vs - value) ** 2)
    entropy = -np.mean((np.exp(log_pi) * log_pi).sum(-1))
    np.testing.assert_allclose(total, pg + 0.7 * v_loss - 0.03 * entropy, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics["train/policy_loss"], pg, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics["train/value_loss"], v_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics["train/rho_mean"], rho.mean(), rtol=1e-5)  # ungated
    assert (rho > 1.5).any() and (rho < 0.8).any()  # both clips are active


def test_correction_gates_at_zero_treat_the_data_as_on_policy():
    """With both gates 0 the loss and its gradient are those of the same batch relabelled as
    the learner's own (``μ := π``, every ``ρ`` 1): the paper's "no correction" baseline."""
    state, batch = _off_policy_batch()
    off = OFF_POLICY_HP.replace(
        target_correction_on=jnp.float32(0.0), pg_correction_on=jnp.float32(0.0)
    )
    dist = impala.network(CFG0, ENV).apply(state.params, batch.obs, method="policy")
    relabelled = batch.replace(behaviour_log_prob=dist.log_prob(batch.action))
    (total, metrics), (grads, _) = _loss_and_grad_jit(CFG0, ENV, state.params, batch, off)
    (ref, ref_metrics), (ref_grads, _) = _loss_and_grad_jit(
        CFG0, ENV, state.params, relabelled, OFF_POLICY_HP
    )
    np.testing.assert_allclose(total, ref, rtol=1e-6)
    _allclose(grads, ref_grads, rtol=1e-5, atol=1e-7)
    assert float(metrics["train/rho_clip_fraction"]) == 0.0
    assert abs(float(metrics["train/rho_mean"]) - 1.0) > 0.05  # the data is off-policy
    np.testing.assert_allclose(ref_metrics["train/rho_mean"], 1.0, atol=1e-5)


def test_loss_jit_equals_no_jit():
    state, batch = _off_policy_batch()
    jitted, _ = _loss_and_grad_jit(CFG0, ENV, state.params, batch, OFF_POLICY_HP)
    plain = impala.loss(CFG0, ENV, state.params, batch, OFF_POLICY_HP)
    _allclose(jitted, plain, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_vtrace_hyperparameters():
    """Targets stop gradients on network outputs only, so ∂L/∂γ, ∂L/∂λ, ∂L/∂ρ̄, ∂L/∂c̄ ≠ 0."""
    state, batch = _off_policy_batch()
    _, (_, grads) = _loss_and_grad_jit(CFG0, ENV, state.params, batch, OFF_POLICY_HP)
    names = ("discount", "vtrace_lambda", "rho_bar", "c_bar", "pg_rho_bar", "ent_coef")
    for name in names + ("target_correction_on", "pg_correction_on"):
        g = float(getattr(grads, name))
        assert np.isfinite(g) and g != 0.0, name


def test_policy_gradient_loss_is_rlax_for_categorical():
    state, rollout = _on_policy_rollout()
    adv = jax.random.normal(jax.random.key(5), rollout.reward.shape)
    dist = impala.network(CFG0, ENV).apply(state.params, rollout.obs, method="policy")
    log_prob = dist.log_prob(rollout.action)
    got = impala.policy_gradient_loss(dist, rollout.action, log_prob, adv)
    want = -np.mean(np.asarray(log_prob, np.float64) * np.asarray(adv, np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-5)


# ---------------------------------------------------------------- the lag


def test_behaviour_params_are_lag_updates_old():
    lag = CFG.lag
    hp = HP.replace(learning_rate=jnp.float32(1e-2))
    state = _init(CFG, ENV, jax.random.key(0), hp)
    policy = jax.jit(
        lambda p, obs, a: impala.network(CFG, ENV).apply(p, obs, method="policy").log_prob(a)
    )
    history = [state.params]
    for k in range(5):
        # the ring buffer holds the parameters after updates k-lag .. k (the initial ones for j<0)
        for j in range(k - lag, k + 1):
            slot = j % (lag + 1)
            _allclose(jax.tree.map(lambda x, s=slot: x[s], state.stale_params), history[max(j, 0)])
        behaviour = impala.behaviour_params(CFG, state)
        _allclose(behaviour, history[max(k - lag, 0)], rtol=0, atol=0)
        assert k == 0 or _differ(behaviour, state.params)
        # the rollout's log-probs are the behaviour policy's, not the learner's
        _, rollout = _collect(CFG, ENV, state)
        np.testing.assert_allclose(
            rollout.log_prob, policy(behaviour, rollout.obs, rollout.action), rtol=1e-5, atol=1e-6
        )
        state, metrics = _update(state, hp)
        history.append(state.params)
        if k >= 1:  # off-policy: the importance ratios are not all 1
            logp_pi = policy(history[k], rollout.obs, rollout.action)
            rho = np.exp(np.asarray(logp_pi) - np.asarray(rollout.log_prob))
            assert np.abs(rho - 1).max() > 1e-2
            assert metrics["train/approx_kl"] > 1e-6
            np.testing.assert_allclose(metrics["train/rho_mean"], rho.mean(), rtol=1e-4)


# ---------------------------------------------------------------- invariances


def test_one_compile_serves_every_hyperparameter_value():
    state = _init(CFG, ENV, jax.random.key(0), HP)
    chex.clear_trace_counter()
    for lr, rho_bar, c_bar in [(1e-4, 1.0, 1.0), (1e-3, 2.0, 0.5), (3e-3, 0.5, 2.0)]:
        _update(state, impala.HParams.make(learning_rate=lr, rho_bar=rho_bar, c_bar=c_bar))


def test_train_equals_repeated_updates_and_vmapped_runs_equal_one_by_one():
    """``train(2)`` vmapped over seeds x c̄ equals two unbatched updates of each run."""
    hp = HP.replace(learning_rate=jnp.float32(3e-3))
    runs = sweep.grid(hp, seeds=[0, 1], c_bar=[0.5, 1.0])
    hps = [hp.replace(c_bar=jnp.float32(label["c_bar"])) for label in runs.labels]
    states = [_init(CFG, ENV, key, h) for key, h in zip(runs.keys, hps, strict=True)]
    train = jax.jit(jax.vmap(lambda s, h: impala.train(CFG, ENV, s, h, 2)))
    batched = train(jax.tree.map(lambda *x: jnp.stack(x), *states), runs.hps)
    for i, (state, hp_i) in enumerate(zip(states, hps, strict=True)):
        state, m1 = _update(state, hp_i)
        state, m2 = _update(state, hp_i)
        metrics = jax.tree.map(lambda a, b: jnp.stack([a, b]), m1, m2)
        _allclose(
            jax.tree.map(lambda x, i=i: x[i], batched), (state, metrics), rtol=1e-4, atol=1e-5
        )
    # different c̄ must give different parameters (the grid is not ignored)
    assert _differ(*(jax.tree.map(lambda x, i=i: x[i], batched[0].params) for i in (0, 2)))


def test_policy_gradient_loss_for_continuous_actions_is_the_log_prob_form():
    mean = jnp.array([[0.1, -0.3], [0.5, 0.2], [0.0, 1.0]])
    dist = distrax.MultivariateNormalDiag(mean, jnp.full_like(mean, 0.7))
    action = jnp.array([[0.0, 0.0], [1.0, -1.0], [0.3, 0.9]])
    adv = jnp.array([1.0, -2.0, 0.5])
    log_prob = dist.log_prob(action)
    got = impala.policy_gradient_loss(dist, action, log_prob, adv)
    by_hand = -0.5 * np.sum(((action - mean) / 0.7) ** 2, -1) - 2 * np.log(0.7 * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(got, -np.mean(by_hand * np.asarray(adv)), rtol=1e-5)


# ---------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(lag=-1), "lag"),
        (dict(lag=1.5), "lag"),
        (dict(lag=True), "lag"),
        (dict(optimizer="sgd"), "optimizer"),
        (dict(num_envs=0), "num_envs"),
        (dict(total_timesteps=10), "less than one update"),
    ],
)
def test_bad_configs_are_errors(overrides, match):
    with pytest.raises(base.ConfigError, match=match):
        impala.Config(**{**SMALL, **overrides})


@pytest.mark.parametrize(
    "name,value", [("rho_bar", -1.0), ("vtrace_lambda", 1.5), ("learning_rate", -1e-3)]
)
def test_out_of_range_hparams_are_errors(name, value):
    with pytest.raises(base.ConfigError, match=name):
        impala.check(impala.Config(), impala.HParams.make(**{name: value}))


def test_unknown_hparam_is_an_error():
    with pytest.raises(base.ConfigError, match="unknown"):
        impala.HParams.make(gae_lambda=0.9)


# ---------------------------------------------------------------- learning


@pytest.mark.learning
def test_learns_cartpole_with_lag_quickly():
    """38k steps with lag 2: mean return ~34 -> ~215 with this key (seeds 1-3: 317, 204, 314)."""
    cfg = dataclasses.replace(CFG, total_timesteps=CFG.steps_per_update * 1200)
    hp = HP.replace(learning_rate=jnp.float32(3e-3))
    state = _init(CFG, ENV, jax.random.key(0), hp)  # the same State as under `cfg`
    _, metrics = jax.jit(lambda s: impala.train(cfg, ENV, s, hp, cfg.num_updates))(state)
    returns = np.asarray(metrics["episode/return"])
    first, last = np.nanmean(returns[:120]), np.nanmean(returns[-120:])
    assert last > 120 and last > 3 * first, (first, last)


def _run_preset(name: str, seeds):
    preset = config.load_preset(name)
    cfg, hp = config.resolve(impala, preset, {}, None)
    env, _ = envs.make(preset["env"])
    runs = sweep.grid(hp, seeds=seeds)
    t0 = time.perf_counter()
    result = loop.run(
        impala, env, cfg, runs, env_name=preset["env"], algo_name="impala", quiet=True
    )
    return cfg, result.summary, time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.learning
def test_preset_cartpole_lag_4_reaches_450_over_4_seeds_in_500k_steps():
    cfg, summary, seconds = _run_preset("impala/cartpole", seeds=range(4))
    assert cfg.lag == 4
    assert cfg.num_updates * cfg.steps_per_update <= 500_000
    final = np.asarray(summary["final_return"]["per_run"])
    sps = summary["steps_per_second"]
    print(f"impala/cartpole final returns {final}, wall {seconds:.1f} s, {sps:.0f} steps/s")
    assert np.isfinite(final).all()
    assert final.mean() >= 450, final
