"""TRPO / NPG: Fisher-vector products vs explicit Fishers, CG vs a direct solve, the line
search, the trust region after real updates, vmapped vs looped, configs, learning."""

from __future__ import annotations

import dataclasses
import functools
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxrl import envs
from jaxrl.algorithms import base, trpo
from jaxrl.losses import natural
from jaxrl.runner import config, loop, sweep

SMALL = trpo.Config(
    num_envs=4, rollout_len=128, num_epochs=2, num_minibatches=4, hidden=(32, 32),
    total_timesteps=512 * 30,
)  # fmt: skip


def _numeric(tree):
    is_key = lambda x: isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def _allclose(a, b, **kw):
    chex.assert_trees_all_close(_numeric(a), _numeric(b), **({"rtol": 1e-4, "atol": 1e-5} | kw))


@functools.cache
def _cartpole():
    """The CartPole env and two compiled programs shared by the tests below.

    ``update(state, hp) -> (batch, npg, (state, metrics))``: one TRPO update, the batch it
    learned from (the same key, so the same rollout) and NPG's policy step on that batch,
    asserted to trace once for every hparam value; ``train2``: two updates of two runs,
    vmapped. (Few programs, because compiling dominates these tests' time.)
    """
    env, _ = envs.make("CartPole-v1")
    npg = dataclasses.replace(SMALL, line_search=False)

    def update(state, hp):
        _, rollout = trpo.collect(SMALL, env, state)
        batch = trpo.make_batch(SMALL, env, state.params, rollout, hp)
        npg_step = trpo.policy_step(npg, env, state.params, batch, hp)
        return batch, npg_step, trpo.update(SMALL, env, state, hp)

    train2 = jax.jit(jax.vmap(lambda s, h: trpo.train(SMALL, env, s, h, 2)))
    return env, jax.jit(chex.assert_max_traces(update, n=1)), train2


def _two_runs(**hparams):
    """Seeds 0 and 1 with per-run hyperparameters (lists of 2)."""
    runs = sweep.grid(trpo.HParams.make(), seeds=[0, 1])
    hps = runs.hps.replace(**{k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()})
    return sweep.Runs(runs.keys, hps, runs.labels)


def _init_runs(env, runs):
    """Every run's ``trpo.init`` (unjitted, one by one), stacked on a leading run axis."""
    states = [
        trpo.init(SMALL, env, runs.keys[i], jax.tree.map(lambda x, i=i: x[i], runs.hps))
        for i in range(len(runs))
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


# ---------------------------------------------------------------- Fisher-vector products


TINY = dataclasses.replace(SMALL, hidden=(5,), ortho_init=False)


@functools.cache
@functools.partial(jax.jit, static_argnums=0)
def _tiny_actor(env):
    """TRPO's KL function for a tiny actor at randomly perturbed parameters on 7 random
    observations; its FVP (damping 0 and 0.1) and the Jacobians of the policy's
    outputs (log-probabilities, or mean and log-std) for the explicit Fisher. For a
    categorical policy also ``trpo.policy_gradient`` on random actions and advantages."""
    key_obs, key_init, key_noise, key_v, key_a, key_adv = jax.random.split(jax.random.key(0), 6)
    obs_dim = env.observation_space(env.default_params()).shape[0]
    obs = jax.random.normal(key_obs, (7, obs_dim))
    params = trpo.network(TINY, env).init(key_init, obs)
    flat, unravel_all = ravel_pytree(params)
    params = unravel_all(flat + 0.5 * jax.random.normal(key_noise, flat.shape))
    kl_fn, theta, unravel = trpo.make_kl_fn(TINY, env, params, obs)
    v = jax.random.normal(key_v, theta.shape)
    policy = lambda t: trpo.network(TINY, env).apply(unravel(t), obs, method="policy")
    out = dict(
        v=v,
        fvp=natural.fisher_vector_product(kl_fn, theta, 0.0)(v),
        fvp_damped=natural.fisher_vector_product(kl_fn, theta, 0.1)(v),
    )
    if hasattr(policy(theta), "logits"):
        log_p = lambda t: jax.nn.log_softmax(policy(t).logits)  # [B, A]
        action = jax.random.randint(key_a, (7,), 0, 2)
        adv = jax.random.normal(key_adv, (7,))
        log_prob = policy(theta).log_prob(action)
        batch = trpo.Batch(obs, action, log_prob, jnp.zeros(7), adv, jnp.zeros(7))
        pg = trpo.policy_gradient(TINY, env, params, batch, trpo.HParams.make())
        return out | dict(
            p=jnp.exp(log_p(theta)),
            jac=jax.jacobian(log_p)(theta),
            action=action,
            adv=adv,
            pg=ravel_pytree(pg)[0],
        )
    mean = lambda t: policy(t).loc  # [B, D]
    log_std = lambda t: jnp.log(policy(t).scale_diag)  # [B, D]
    return out | dict(
        inv_var=policy(theta).scale_diag ** -2,
        j_mu=jax.jacobian(mean)(theta),
        j_ls=jax.jacobian(log_std)(theta),
    )


def _explicit_fisher(o):
    """The Fisher by its definition, in float64, ``[P, P]``. Categorical:
    ``mean_s Σ_a π(a|s) ∇log π(a|s) ∇log π(a|s)ᵀ``; diagonal Gaussian (Fisher ``diag(σ⁻², 2)``
    in (μ, log σ), pulled back through the network): ``mean_s J_μᵀ diag(σ⁻²) J_μ + 2 J_ℓᵀ J_ℓ``."""
    o = {k: np.asarray(o[k], np.float64) for k in ("p", "jac", "inv_var", "j_mu", "j_ls") if k in o}
    if "p" in o:
        return np.einsum("ba,bap,baq->pq", o["p"], o["jac"], o["jac"]) / len(o["p"])
    fisher = np.einsum("bd,bdp,bdq->pq", o["inv_var"], o["j_mu"], o["j_mu"])
    return (fisher + 2.0 * np.einsum("bdp,bdq->pq", o["j_ls"], o["j_ls"])) / len(o["j_mu"])


@pytest.mark.parametrize("env_name", ["CartPole-v1", "Pendulum-v1"])  # categorical, Gaussian
def test_fisher_vector_product_equals_explicit_fisher_times_vector(env_name):
    env, _ = envs.make(env_name)
    o = _tiny_actor(env)
    fisher = _explicit_fisher(o)
    expected = fisher @ np.asarray(o["v"], np.float64)
    assert np.linalg.norm(expected) > 1e-2  # not a vacuous comparison
    scale = np.abs(expected).max()
    np.testing.assert_allclose(o["fvp"], expected, rtol=2e-4, atol=2e-5 * scale)
    damped = np.asarray(o["fvp"]) + 0.1 * np.asarray(o["v"])
    np.testing.assert_allclose(o["fvp_damped"], damped, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- CG, step size, line search


def _spd(n, seed):
    a = jax.random.normal(jax.random.key(seed), (n, n))
    return a @ a.T + 0.5 * jnp.eye(n), jax.random.normal(jax.random.key(seed + 1), (n,))


@functools.cache
def _toys():
    """CG, step size and line search on hand-made problems, in one compiled program."""

    @jax.jit
    def run():
        a6, b6 = _spd(6, 0)
        a8, b8 = _spd(8, 3)
        a5, g5 = _spd(5, 7)
        step, sfs = natural.trust_region_step(jnp.linalg.solve(a5, g5), lambda v: a5 @ v, 0.03)
        zero, _ = natural.trust_region_step(jnp.zeros(5), lambda v: a5 @ v, 0.03)
        theta, full = jnp.zeros(2), jnp.array([1.0, 0.0])
        objective = lambda t: t[0] - 1.5 * t[0] ** 2  # improves for 0 < t0 < 2/3
        kl = lambda t: t[0] ** 2  # <= 0.2 for t0 <= 0.447
        search = lambda f: natural.backtracking_line_search(f, kl, theta, full, 0.0, 0.2, 0.5, 5)
        return dict(
            cg6=(natural.conjugate_gradient(lambda v: a6 @ v, b6, 6), a6, b6),
            cg3=(natural.conjugate_gradient(lambda v: a8 @ v, b8, 3), a8, b8),
            # more iterations than dimensions: exact after 3, then frozen (no 0/0)
            cg_over=natural.conjugate_gradient(lambda v: jnp.arange(1.0, 4.0) * v, b8[:3], 10),
            cg_zero=natural.conjugate_gradient(lambda v: a6 @ v, jnp.zeros(6), 5),
            step=(step, sfs, zero, a5, g5),
            search=search(objective),
            search_none=search(lambda t: -t[0]),
        )

    return jax.device_get(run())


def test_conjugate_gradient_solves_spd_system():
    x, a, b = _toys()["cg6"]
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=2e-3, atol=2e-3)


def test_conjugate_gradient_freezes_once_solved():
    x, (_, _, b) = _toys()["cg_over"], _toys()["cg3"]
    np.testing.assert_allclose(x, b[:3] / np.arange(1.0, 4.0), rtol=1e-5)
    np.testing.assert_array_equal(_toys()["cg_zero"], 0.0)


def test_conjugate_gradient_runs_exactly_iters_textbook_steps():
    got, a, b = _toys()["cg3"]
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    x, r, p = np.zeros(8), b.copy(), b.copy()
    for _ in range(3):  # the textbook recursion, stopped after 3 of the 8 iterations
        alpha = (r @ r) / (p @ a @ p)
        x, r_new = x + alpha * p, r - alpha * a @ p
        p, r = r_new + (r_new @ r_new) / (r @ r) * p, r_new
    np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-5)
    assert not np.allclose(x, np.linalg.solve(a, b), atol=1e-3)  # 3 iterations differ


def test_trust_region_step_has_kl_delta_under_the_quadratic_model():
    step, sfs, zero, a, g = _toys()["step"]
    np.testing.assert_allclose(0.5 * step @ a @ step, 0.03, rtol=1e-4)
    assert sfs > 0 and float(step @ g) > 0  # an ascent direction
    np.testing.assert_array_equal(zero, 0.0)


def test_line_search_accepts_first_improving_candidate_within_kl():
    new, info = _toys()["search"]
    # fractions 1, .5, .25: 1 does not improve, .5 improves but KL .25 > .2, .25 is taken
    np.testing.assert_allclose(new, [0.25, 0.0])
    assert bool(info.accepted) and int(info.backtracks) == 2
    np.testing.assert_allclose(info.kl, 0.0625)
    np.testing.assert_allclose(info.improvement, 0.25 - 1.5 * 0.0625, rtol=1e-6)
    # nothing acceptable (the step only worsens the objective): no step at all
    new, info = _toys()["search_none"]
    np.testing.assert_array_equal(new, [0.0, 0.0])
    assert not bool(info.accepted) and int(info.backtracks) == 5 and float(info.fraction) == 0


# ---------------------------------------------------------------- the actor's objective


def test_policy_gradient_is_the_score_function_estimate():
    env, _ = envs.make("CartPole-v1")
    o = jax.device_get(_tiny_actor(env))
    action, adv = o["action"], np.asarray(o["adv"], np.float64)
    scores = np.asarray(o["jac"], np.float64)[np.arange(7), action]  # ∇log π(a_i|s_i) [B, P]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    expected = np.mean(adv[:, None] * scores, axis=0)  # mean_i A_i ∇log π(a_i|s_i)
    assert np.linalg.norm(expected) > 1e-3
    np.testing.assert_allclose(o["pg"], expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- real updates


def _kl_and_surrogate(env, old_params, new_params, batch):
    """Measured by hand (numpy, float64): mean KL(π_old ‖ π_new) and both surrogates."""
    net = trpo.network(SMALL, env)
    log_soft = lambda p: np.asarray(
        jax.nn.log_softmax(net.apply(p, batch.obs, method="policy").logits), np.float64
    )
    lp_old, lp_new = log_soft(old_params), log_soft(new_params)
    kl = np.mean(np.sum(np.exp(lp_old) * (lp_old - lp_new), axis=-1))
    adv = np.asarray(batch.advantage, np.float64)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    a = np.asarray(batch.action)
    rows = np.arange(len(a))
    surrogate = lambda lp: np.mean(np.exp(lp[rows, a] - lp_old[rows, a]) * adv)
    return kl, surrogate(lp_old), surrogate(lp_new)


@pytest.mark.parametrize("max_kl,cg_damping", [(0.01, 0.1), (0.1, 1e-3)])
def test_every_update_stays_in_the_trust_region_and_improves(max_kl, cg_damping):
    env, update, _ = _cartpole()
    hp = trpo.HParams.make(max_kl=max_kl, cg_damping=cg_damping)
    state = trpo.init(SMALL, env, jax.random.key(0), hp)
    accepted = 0
    for _ in range(6):
        batch, _, (new, metrics) = update(state, hp)
        kl, surr_old, surr_new = _kl_and_surrogate(env, state.params, new.params, batch)
        assert kl <= 1.5 * max_kl
        assert kl <= max_kl * (1 + 1e-3)  # the line search's own criterion
        np.testing.assert_allclose(metrics["train/kl"], kl, rtol=1e-3, atol=1e-7)
        if metrics["train/line_search_accepted"]:
            accepted += 1
            assert surr_new > surr_old
            np.testing.assert_allclose(
                metrics["train/surrogate_improvement"], surr_new - surr_old, rtol=2e-2
            )
        else:
            _allclose(trpo.split_params(new.params)[0], trpo.split_params(state.params)[0])
        critic_new, critic_old = (trpo.split_params(p)[1] for p in (new.params, state.params))
        assert not np.allclose(ravel_pytree(critic_new)[0], ravel_pytree(critic_old)[0])
        state = new
    assert accepted >= 4


def test_npg_takes_the_full_step_and_trpo_a_fraction_of_it():
    env, update, _ = _cartpole()
    # seed 1 with little damping: the full step overshoots the KL bound, so TRPO backs off
    hp = trpo.HParams.make(max_kl=0.1, cg_damping=1e-3)
    state = trpo.init(SMALL, env, jax.random.key(1), hp)
    _, (p_npg, m_npg), (new, m_trpo) = update(state, hp)
    flat = lambda p: ravel_pytree(trpo.split_params(p)[0])[0]
    theta = flat(state.params)
    full_step = flat(p_npg) - theta  # NPG's whole move: the full step, of the reported norm
    np.testing.assert_allclose(np.linalg.norm(full_step), m_npg["train/full_step_norm"], rtol=1e-4)
    np.testing.assert_allclose(m_trpo["train/full_step_norm"], m_npg["train/full_step_norm"])
    assert float(m_npg["train/step_fraction"]) == 1.0 and float(m_npg["train/kl"]) > 0.1
    fraction = float(m_trpo["train/step_fraction"])
    np.testing.assert_allclose(flat(new.params) - theta, fraction * full_step, rtol=1e-4, atol=1e-6)
    assert 0 < fraction < 1.0 and float(m_trpo["train/kl"]) <= 0.1
    # NPG leaves the critic alone (update fits it afterwards)
    _allclose(trpo.split_params(p_npg)[1], trpo.split_params(state.params)[1], rtol=0, atol=0)


def test_vmapped_seeds_and_hparams_equal_one_by_one():
    env, update, train2 = _cartpole()
    runs = _two_runs(max_kl=[0.005, 0.03], cg_damping=[0.05, 0.2], learning_rate=[1e-3, 3e-3])
    batched, metrics = train2(_init_runs(env, runs), runs.hps)
    for i in range(2):
        hp_i = jax.tree.map(lambda x, i=i: x[i], runs.hps)
        state = trpo.init(SMALL, env, runs.keys[i], hp_i)
        for u in range(2):
            _, _, (state, m) = update(state, hp_i)
            _allclose(jax.tree.map(lambda x, i=i, u=u: x[i, u], metrics), m)
        # atol 5e-5: with jax 0.11 one bias in 32 differed by 1.2e-5 after two updates (the
        # conjugate-gradient reductions run in another order under vmap)
        _allclose(jax.tree.map(lambda x, i=i: x[i], batched), state, atol=5e-5)
    # the runs' hyperparameters differ, and so do their results
    assert not np.allclose(metrics["train/kl"][0], metrics["train/kl"][1])


@pytest.mark.learning
def test_learns_cartpole_in_15k_steps():
    """Two seeds, 30 updates of 512 steps: from ~22 (random) to >= 150 mean return."""
    env, _, train2 = _cartpole()
    runs = _two_runs(max_kl=[0.02, 0.02])
    state = _init_runs(env, runs)
    returns = []
    for _ in range(SMALL.num_updates // 2):
        state, metrics = train2(state, runs.hps)
        returns.append(np.asarray(metrics["episode/return"]))
    returns = np.concatenate(returns, axis=1)  # [2, 30]
    assert np.all(np.nanmean(returns[:, :3], axis=1) < 50), returns
    assert np.all(np.nanmean(returns[:, -6:], axis=1) >= 150), returns


# ---------------------------------------------------------------- configs and presets


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(shared_torso=True), "shared_torso"),
        (dict(num_envs=3, rollout_len=5, num_minibatches=4), "divisible"),
        (dict(cg_iters=0), "cg_iters"),
        (dict(backtrack_iters=1.5), "backtrack_iters"),
        (dict(torso="rnn"), "torso"),
        (dict(total_timesteps=100), "less than one update"),
    ],
)
def test_bad_configs_are_errors(overrides, match):
    with pytest.raises(base.ConfigError, match=match):
        trpo.Config(**overrides)


@pytest.mark.parametrize(
    "name,value", [("max_kl", -0.01), ("backtrack_coef", 1.5), ("cg_damping", -1.0)]
)
def test_out_of_range_hparams_are_errors(name, value):
    with pytest.raises(base.ConfigError, match=name):
        trpo.check(trpo.Config(), trpo.HParams.make(**{name: value}))


def test_unknown_hparam_is_an_error():
    with pytest.raises(base.ConfigError, match="unknown"):
        trpo.HParams.make(clip_eps=0.2)


@pytest.mark.parametrize("preset", ["trpo/cartpole", "trpo/pendulum"])
def test_presets_resolve(preset):
    cfg, hp = config.resolve(trpo, config.load_preset(preset), {"line_search": "false"}, None)
    assert cfg.line_search is False and cfg.num_updates * cfg.steps_per_update <= 500_000
    assert float(hp.max_kl) > 0


# ---------------------------------------------------------------- full learning checks


def _train_preset(name: str, num_seeds: int = 4):
    preset = config.load_preset(name)
    cfg, hp = config.resolve(trpo, preset, {}, None)
    env, _ = envs.make(preset["env"])
    runs = sweep.grid(hp, seeds=range(num_seeds))
    t0 = time.perf_counter()
    result = loop.run(trpo, env, cfg, runs, env_name=preset["env"], algo_name="trpo", quiet=True)
    final = np.asarray(result.summary["final_return"]["per_run"])
    print(f"{name}: final {final}, wall {time.perf_counter() - t0:.1f} s")
    return cfg, final


@pytest.mark.slow
def test_trpo_cartpole_reaches_450_over_4_seeds_in_500k_steps():
    cfg, final = _train_preset("trpo/cartpole")
    assert cfg.num_updates * cfg.steps_per_update <= 500_000
    assert np.isfinite(final).all() and final.mean() >= 450, final


@pytest.mark.slow
def test_trpo_pendulum_reaches_minus_400_over_4_seeds_in_500k_steps():
    cfg, final = _train_preset("trpo/pendulum")
    assert cfg.num_updates * cfg.steps_per_update <= 500_000
    assert np.isfinite(final).all() and final.mean() >= -400, final
