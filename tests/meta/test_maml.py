"""MAML-RL: baseline fit, the M2 hand-derived meta-gradient, TRPO, jit/vmap invariance, errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs.nav2d import Nav2D, Nav2DParams
from jaxrl.errors import ConfigError
from jaxrl.meta import maml

ENV = Nav2D()
SMALL = dict(meta_batch_size=2, num_traj=3, horizon=8, hidden=(4,))
TINY = dict(meta_batch_size=2, num_traj=2, horizon=4, hidden=(4,))  # for eager runs
# Compilation dominates these tests; XLA's cheaper CPU settings cut it.
jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


def random_traj(rng, n, t, obs_dim=2, act_dim=2, dtype=np.float32):
    """Trajectories with random contents; trajectory ``i`` ends after ``t - i`` steps."""
    lengths = np.maximum(t - np.arange(n), 1)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(dtype)
    return maml.Trajectories(
        obs=jnp.asarray(rng.normal(size=(n, t, obs_dim)) * 0.3, dtype),
        action=jnp.asarray(rng.normal(size=(n, t, act_dim)), dtype),
        reward=jnp.asarray(-rng.uniform(size=(n, t)) * mask, dtype),
        mask=jnp.asarray(mask),
        log_prob=jnp.asarray(rng.normal(size=(n, t)) - 2.0, dtype),
    )


# ------------------------------------------------------------------ linear feature baseline


def test_advantages_match_numpy_lstsq_baseline():
    cfg = maml.Config(**SMALL, normalize_advantages=False)
    hp = maml.HParams.make(discount=0.9, baseline_reg=1e-5)
    traj = random_traj(np.random.default_rng(0), n=5, t=12)
    adv = np.asarray(maml.advantages(cfg, traj, hp), np.float64)

    obs, rew, mask = (np.asarray(x, np.float64) for x in (traj.obs, traj.reward, traj.mask))
    feats, targets, per_traj = [], [], []
    for i in range(obs.shape[0]):
        length = int(mask[i].sum())
        ret = np.zeros(length)
        acc = 0.0
        for t in reversed(range(length)):  # rllab's discount_cumsum, no bootstrap
            acc = rew[i, t] + 0.9 * acc
            ret[t] = acc
        o = np.clip(obs[i, :length], -10, 10)
        al = np.arange(length)[:, None] / 100.0
        f = np.concatenate([o, o**2, al, al**2, al**3, np.ones((length, 1))], axis=1)
        feats.append(f)
        targets.append(ret)
        per_traj.append((length, f, ret))
    f, r = np.concatenate(feats), np.concatenate(targets)
    w = np.linalg.lstsq(f.T @ f + 1e-5 * np.eye(f.shape[1]), f.T @ r, rcond=None)[0]
    for i, (length, fi, ret) in enumerate(per_traj):
        np.testing.assert_allclose(adv[i, :length], ret - fi @ w, rtol=1e-3, atol=1e-4)
        np.testing.assert_array_equal(adv[i, length:], 0.0)
    # The fit is not trivial: it removes most of the return's variance.
    assert np.var(np.concatenate([adv[i, :n] for i, (n, _, _) in enumerate(per_traj)])) < (
        0.5 * np.var(r)
    )


def test_baseline_stays_finite_with_collinear_task_features():
    """The oracle appends the (per-task constant) goal to obs: collinear with the 1 feature."""
    cfg = maml.Config(**SMALL)
    rng = np.random.default_rng(2)
    traj = random_traj(rng, n=20, t=100, obs_dim=4)
    goal = jnp.broadcast_to(jnp.asarray([0.37, -0.21]), (20, 100, 2))
    traj = traj.replace(obs=jnp.concatenate([traj.obs[..., :2], goal], axis=-1))
    hp = maml.HParams.make()
    advantages = lambda t: maml.advantages(cfg, t, hp)  # noqa: E731
    # one program (op by op the two least-squares fits cost more than its compile)
    adv, plain = jit(lambda t: (advantages(t), advantages(t.replace(obs=t.obs[..., :2]))))(traj)
    assert bool(jnp.all(jnp.isfinite(adv)))
    np.testing.assert_allclose(adv, plain, atol=2e-2)  # the goal columns add nothing


def test_normalized_advantages_are_standardised_over_valid_steps():
    cfg = maml.Config(**SMALL)
    traj = random_traj(np.random.default_rng(1), n=5, t=12)
    adv = np.asarray(maml.advantages(cfg, traj, maml.HParams.make()))
    valid = adv[np.asarray(traj.mask) > 0]
    np.testing.assert_allclose([valid.mean(), valid.std()], [0.0, 1.0], atol=1e-4)
    np.testing.assert_array_equal(adv[np.asarray(traj.mask) == 0], 0.0)


# ------------------------------------------------------------- M2: hand-derived meta-gradient


def _hand_meta_grad(w, log_std, alpha, inner, inner_adv, outer, outer_adv):
    """Outer gradient of one task for a linear Gaussian policy, derived by hand (float64).

    Per action dim ``j``, with ``x = [s, 1]``, ``u = a_j − w_j·x``, ``e = exp(−2 ℓ_j)``:
    ``log π_j = −½ u² e − ℓ_j − ½ log 2π``, ``∂w = u e x``, ``∂ℓ = u² e − 1``, ``∂²ww = −e x xᵀ``,
    ``∂²wℓ = −2 u e x``, ``∂²ℓℓ = −2 u² e``. Inner loss ``L = −Σ m Â log π / Σ m`` gives
    ``θ' = θ − α ∇L``; the outer loss ``−Σ m' Â' ρ / Σ m'`` with ``ρ = π_θ'(a'|s')/π_old``
    has ``∇θ = (I − α ∇²L)(∇θ' L_out)``.

    ``w``: ``[A, O + 1]`` (kernel rows and bias); returns ``(dw [A, O+1], dlog_std [A])``.
    """
    num_a, dim = w.shape

    def per_sample(theta_w, theta_l, traj, adv):
        s = traj.obs.reshape(-1, traj.obs.shape[-1])
        x = np.concatenate([s, np.ones((s.shape[0], 1))], axis=1)  # [B, D]
        a = traj.action.reshape(-1, num_a)
        m = (traj.mask * adv).reshape(-1)
        u = a - x @ theta_w.T  # [B, A]
        e = np.exp(-2.0 * theta_l)  # [A]
        logp = np.sum(-0.5 * u**2 * e - theta_l - 0.5 * np.log(2 * np.pi), axis=1)
        return x, u, e, m, logp

    # Inner gradient and Hessian of L_in (blocks per action dim, layout [w_j (D), ℓ_j]).
    x, u, e, m, _ = per_sample(w, log_std, inner, inner_adv)
    c = np.sum(inner.mask)
    size = dim + 1
    g_in = np.zeros((num_a, size))
    h_in = np.zeros((num_a, size, size))
    for j in range(num_a):
        g_in[j, :dim] = -np.sum((m * u[:, j] * e[j])[:, None] * x, 0) / c
        g_in[j, dim] = -np.sum(m * (u[:, j] ** 2 * e[j] - 1.0)) / c
        h_in[j, :dim, :dim] = np.einsum("b,bi,bk->ik", m, x, x) * e[j] / c
        h_in[j, :dim, dim] = np.sum((m * 2.0 * u[:, j] * e[j])[:, None] * x, 0) / c
        h_in[j, dim, :dim] = h_in[j, :dim, dim]
        h_in[j, dim, dim] = np.sum(m * 2.0 * u[:, j] ** 2 * e[j]) / c
    w1 = w - alpha * g_in[:, :dim]
    l1 = log_std - alpha * g_in[:, dim]

    # Outer gradient at θ'.
    x, u, e, m, logp = per_sample(w1, l1, outer, outer_adv)
    rho = np.exp(logp - outer.log_prob.reshape(-1))
    c_out = np.sum(outer.mask)
    g_out = np.zeros((num_a, size))
    for j in range(num_a):
        g_out[j, :dim] = -np.sum((m * rho * u[:, j] * e[j])[:, None] * x, 0) / c_out
        g_out[j, dim] = -np.sum(m * rho * (u[:, j] ** 2 * e[j] - 1.0)) / c_out
    grad = np.stack([g_out[j] - alpha * h_in[j] @ g_out[j] for j in range(num_a)])
    return grad[:, :dim], grad[:, dim], g_out


def test_m2_nested_grad_equals_hand_derived_meta_gradient():
    """M2: linear Gaussian policy, one task, fixed trajectories, float64, rel. error < 1e-6."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        cfg = maml.Config(meta_batch_size=1, num_traj=6, horizon=10, hidden=())
        hp = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), maml.HParams.make(inner_lr=0.3))
        env_params = Nav2DParams()
        params = maml.init_params(cfg, ENV, jax.random.key(0), env_params)
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
        head = params["params"]["GaussianHead_0"]
        head["Dense_0"]["kernel"] = jnp.asarray(rng.normal(size=(2, 2)) * 0.5)
        head["Dense_0"]["bias"] = jnp.asarray(rng.normal(size=(2,)) * 0.1)
        head["log_std"] = jnp.asarray([-0.3, 0.2])

        inner = random_traj(rng, 6, 10, dtype=np.float64)
        outer = random_traj(rng, 6, 10, dtype=np.float64)
        inner_adv = jnp.asarray(rng.normal(size=(6, 10)), jnp.float64) * inner.mask
        outer_adv = jnp.asarray(rng.normal(size=(6, 10)), jnp.float64) * outer.mask
        data = maml.TaskData(env_params, (inner,), (inner_adv,), outer, outer_adv)
        batch = jax.tree.map(lambda x: x[None], data)

        grads = jit(jax.grad(maml.meta_loss, argnums=2), static_argnums=(0, 1))(
            cfg, ENV, params, batch, hp
        )
        g = grads["params"]["GaussianHead_0"]
        got_w = np.concatenate(
            [np.asarray(g["Dense_0"]["kernel"]).T, g["Dense_0"]["bias"][:, None]], 1
        )
        got_l = np.asarray(g["log_std"])
        assert got_w.dtype == np.float64

        w = np.concatenate(
            [np.asarray(head["Dense_0"]["kernel"]).T, np.asarray(head["Dense_0"]["bias"])[:, None]],
            1,
        )
        np_traj = lambda t: jax.tree.map(np.asarray, t)  # noqa: E731
        want_w, want_l, first_order = _hand_meta_grad(
            w, np.asarray(head["log_std"]), 0.3, np_traj(inner), np.asarray(inner_adv),
            np_traj(outer), np.asarray(outer_adv),
        )  # fmt: skip
        got = np.concatenate([got_w, got_l[:, None]], 1)
        want = np.concatenate([want_w, want_l[:, None]], 1)
        rel = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert rel < 1e-6, rel
        # The second-order term matters here, so the check would catch dropping it.
        assert np.linalg.norm(first_order - want) / np.linalg.norm(want) > 1e-2
    assert not jax.config.jax_enable_x64


# --------------------------------------------------------------------------- TRPO pieces


@pytest.fixture(scope="module")
def small_batch():
    cfg = maml.Config(**SMALL, outer="trpo")
    hp = maml.HParams.make(inner_lr=0.5, max_kl=0.01)

    def start():  # one program: op by op, init costs more than its compile
        state = maml.init(cfg, ENV, jax.random.key(1), hp)
        return state, maml.collect_meta_batch(cfg, ENV, state.params, jax.random.key(2), hp)

    state, data = jit(start)()
    return cfg, hp, state, data


def test_fisher_vector_product_is_the_kl_hessian(small_batch):
    cfg, hp, state, data = small_batch
    per_task_kl = jax.vmap(maml.task_kl, in_axes=(None, None, None, 0, None, None))

    @jit  # one program for both products (the linearisation op by op cost more)
    def products(params, data):
        fvp, flat, unravel = maml.fisher_vector_product(cfg, ENV, params, data, hp)

        def kl(x):
            return jnp.mean(per_task_kl(cfg, ENV, unravel(x), data, hp, params))

        v = jax.random.normal(jax.random.key(3), flat.shape)
        return v, fvp(v), jax.jvp(jax.grad(kl), (flat,), (v,))[1]

    v, got, exact = products(state.params, data)
    np.testing.assert_allclose(got, exact, rtol=2e-3, atol=1e-5 * float(jnp.abs(exact).max()))
    assert float(jnp.dot(v, got)) > 0.0


def test_trpo_step_respects_the_kl_bound(small_batch):
    cfg, hp, state, data = small_batch
    per_task_kl = jax.vmap(maml.task_kl, in_axes=(None, None, None, 0, None, None))

    @jit  # the step, and the KL and loss after it, as one program
    def step(params, data):
        new_params, metrics = maml.trpo_step(cfg, ENV, params, data, hp)
        kl = jnp.mean(per_task_kl(cfg, ENV, new_params, data, hp, params))
        return metrics, kl, maml.meta_loss(cfg, ENV, new_params, data, hp)

    metrics, kl, loss = step(state.params, data)
    kl, loss = float(kl), float(loss)
    assert float(metrics["train/step_frac"]) > 0.0  # a step was taken
    assert 0.0 < kl <= float(hp.max_kl) * (1 + 1e-4)
    np.testing.assert_allclose(kl, metrics["train/kl"], rtol=1e-3)
    assert loss < float(metrics["train/loss"])
    # A quadratic model of the KL: the first try is sized to max_kl, so the KL is near it.
    assert kl > 0.1 * float(hp.max_kl)


def test_conjugate_gradient_solves_spd_system():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(6, 6))
    a = jnp.asarray(q @ q.T + 6 * np.eye(6), jnp.float32)
    b = jnp.asarray(rng.normal(size=6), jnp.float32)
    x = maml.conjugate_gradient(lambda v: a @ v, b, 6)
    np.testing.assert_allclose(x, np.linalg.solve(np.asarray(a), np.asarray(b)), rtol=1e-3)


# ------------------------------------------------------------------ invariances, protocol


def test_vmapped_over_tasks_equals_looped(small_batch):
    cfg, hp, state, data = small_batch
    vmapped = jax.value_and_grad(lambda p: maml.meta_loss(cfg, ENV, p, data, hp))

    def looped(p):
        tasks = [jax.tree.map(lambda x, i=i: x[i], data) for i in range(cfg.meta_batch_size)]
        return sum(maml.task_surrogate(cfg, ENV, p, t, hp) for t in tasks) / len(tasks)

    both = jit(lambda p: (vmapped(p), jax.value_and_grad(looped)(p)))  # one program
    (loss_v, grad_v), (loss_l, grad_l) = both(state.params)
    np.testing.assert_allclose(loss_v, loss_l, rtol=1e-5, atol=1e-7)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad_v, grad_l
    )
    # Collection too: task i of the batch equals collect_task on task i alone.
    key_tasks, key_data = jax.random.split(jax.random.key(2))
    tasks = jax.vmap(ENV.sample_params)(jax.random.split(key_tasks, cfg.meta_batch_size))
    one = jit(lambda p, t, k: maml.collect_task(cfg, ENV, p, t, k, hp, 1))(
        state.params,
        jax.tree.map(lambda x: x[1], tasks),
        jax.random.split(key_data, cfg.meta_batch_size)[1],
    )
    np.testing.assert_allclose(one.outer.reward, data.outer.reward[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one.inner[0].action, data.inner[0].action[1], rtol=1e-5)


@pytest.mark.slow  # compile-heavy; run with --runslow
def test_jit_matches_no_jit():
    """Adam outer step (TRPO's step runs jitted in the KL-bound test)."""
    cfg = maml.Config(**TINY, outer="adam")
    hp = maml.HParams.make(inner_lr=0.5, learning_rate=1e-2)
    state = maml.init(cfg, ENV, jax.random.key(4), hp)
    s_jit, m_jit = jit(lambda s: maml.update(cfg, ENV, s, hp))(state)
    s_eager, m_eager = maml.update(cfg, ENV, state, hp)  # op by op (scan bodies compile)
    tol = dict(rtol=1e-3, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), s_jit.params, s_eager.params)
    for k in m_jit:
        np.testing.assert_allclose(m_jit[k], m_eager[k], **tol, err_msg=k)
    changed = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s_jit.params, state.params)
    assert max(jax.tree.leaves(changed)) > 0.0


def test_annealed_adam_stops_after_anneal_steps():
    cfg = maml.Config(**TINY, anneal_steps=1)
    hp = maml.HParams.make(learning_rate=1e-2)
    update = jit(lambda s: maml.update(cfg, ENV, s, hp)[0])
    s0 = maml.init(cfg, ENV, jax.random.key(5), hp)
    s1 = update(s0)
    s2 = update(s1)  # step 1 of 1: the step size has decayed to 0
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s1.params, s0.params)
    assert max(jax.tree.leaves(moved)) > 1e-4
    jax.tree.map(np.testing.assert_array_equal, s2.params, s1.params)


def test_collect_masks_after_termination():
    """A policy that always pushes +x reaches a goal at (0.3, 0) in 3 steps and stops there."""
    cfg = maml.Config(meta_batch_size=1, num_traj=2, horizon=8, hidden=())
    env_params = Nav2DParams(jnp.asarray([0.3, 0.0]), jnp.asarray(100, jnp.int32))
    params = maml.init_params(cfg, ENV, jax.random.key(0), env_params)
    head = params["params"]["GaussianHead_0"]
    head["Dense_0"]["kernel"] = jnp.zeros((2, 2))
    head["Dense_0"]["bias"] = jnp.asarray([50.0, 0.0])  # x velocity clipped to 0.1
    head["log_std"] = jnp.asarray([-20.0, -20.0])  # deterministic
    traj = maml.collect(cfg, ENV, params, env_params, jax.random.key(1))
    np.testing.assert_array_equal(traj.mask, [[1, 1, 1, 0, 0, 0, 0, 0]] * 2)
    np.testing.assert_allclose(traj.reward[0, :3], [-0.2, -0.1, 0.0], atol=1e-5)
    np.testing.assert_array_equal(traj.reward[:, 3:], 0.0)
    np.testing.assert_allclose(traj.episode_returns(), [-0.3, -0.3], atol=1e-5)
    np.testing.assert_allclose(traj.obs[0, :3, 0], [0.0, 0.1, 0.2], atol=1e-6)


def test_step_sizes_follow_the_test_protocol():
    hp = maml.HParams.make(inner_lr=0.4)
    np.testing.assert_allclose(maml.step_sizes(hp, 3), [0.4, 0.2, 0.2])


def test_evaluate_shape_and_oracle_features():
    cfg = maml.Config(**SMALL, oracle=True)
    hp = maml.HParams.make()
    params = maml.init_params(cfg, ENV, jax.random.key(0), ENV.default_params())
    assert params["params"]["MLP_0"]["Dense_0"]["kernel"].shape[0] == 4  # obs + goal
    out = jit(lambda p: maml.evaluate(cfg, ENV, p, jax.random.key(1), hp, 5, 2))(params)
    assert out.shape == (5, 3) and bool(jnp.all(out < 0))


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kw",
    [
        dict(outer="sgd"),
        dict(num_traj=0),
        dict(meta_batch_size=-1),
        dict(num_inner_steps=-1),
        dict(hidden=[32]),
        dict(action_scale=0.0),
        dict(anneal_steps=-1),
    ],
)
def test_bad_config_raises(kw):
    with pytest.raises(ConfigError):
        maml.Config(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        dict(inner_lr=-0.1),
        dict(learning_rate=0.0),
        dict(discount=1.5),
        dict(max_kl=0.0),
        dict(backtrack_ratio=1.5),
        dict(step_size=0.1),  # unknown name
    ],
)
def test_bad_hparams_raise_before_compiling(kw):
    with pytest.raises(ConfigError):
        maml.HParams.make(**kw)


def test_oracle_needs_a_float_task():
    cfg = maml.Config(**SMALL, oracle=True)
    with pytest.raises(ConfigError):
        maml.policy_obs(cfg, jnp.zeros(2), {"task": jnp.zeros((), jnp.int32)})


# ------------------------------------------------------------------------------- learning


@pytest.mark.learning
@pytest.mark.parametrize(
    "outer, num_inner_steps, inner_lr", [("adam", 1, 0.1), ("reptile", 2, 0.5)]
)
def test_learns_to_adapt_on_nav2d(outer, num_inner_steps, inner_lr):
    """A small MAML run (and Reptile's, with the larger α it needs): after training, one
    inner step improves the return a lot. For Reptile this catches a wrong sign or step in
    the plumbing; at this size joint training (k = 1) passes it too, so Reptile's edge over
    joint training is experiments/meta/RESULTS_maml.md's."""
    cfg = maml.Config(
        meta_batch_size=5, num_traj=10, horizon=100, hidden=(32, 32), outer=outer,
        num_inner_steps=num_inner_steps,
    )  # fmt: skip
    hp = maml.HParams.make(inner_lr=inner_lr, learning_rate=1e-2)
    state = maml.init(cfg, ENV, jax.random.key(0), hp)
    run = jax.jit(lambda s: maml.train(cfg, ENV, s, hp, 40))
    evaluate = jax.jit(lambda p: maml.evaluate(cfg, ENV, p, jax.random.key(7), hp, 20, 1))
    before = np.asarray(evaluate(state.params)).mean(0)
    state, metrics = run(state)
    after = np.asarray(evaluate(state.params)).mean(0)
    # Untrained, one step barely helps; trained, it gains > 10 per episode.
    assert after[1] - after[0] > 10.0, (before, after)
    assert after[1] > before[1] + 10.0, (before, after)


# ------------------------------------------------------------------------------- Reptile


def _tree_allclose(got, want, rtol=1e-4):
    """Leafwise ``got ≈ want``, atol scaled to the largest entry of ``want``."""
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(want))
    assert scale > 0.0
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale), got, want
    )


def test_reptile_with_one_step_is_the_joint_training_gradient():
    """k = 1: ``θ − θ' = α ∇L(θ)``, α times the pretrained learner's gradient on that data."""
    cfg = maml.Config(**SMALL, outer="reptile", num_inner_steps=1)
    hp = maml.HParams.make(inner_lr=0.3)

    @jit  # one program
    def both(key):
        params = maml.init_params(cfg, ENV, key, ENV.default_params())
        data = maml.collect_meta_batch(cfg, ENV, params, jax.random.key(2), hp)
        # The pretrained learner (no inner step) on the same trajectories: ρ = 1 at θ.
        joint = maml.TaskData(data.env_params, (), (), data.inner[0], data.inner_adv[0])
        joint_grad = jax.grad(maml.meta_loss, argnums=2)(cfg, ENV, params, joint, hp)
        return maml.reptile_grad(cfg, ENV, params, data, hp), joint_grad

    got, joint_grad = both(jax.random.key(1))
    _tree_allclose(got, jax.tree.map(lambda g: 0.3 * g, joint_grad))


def test_reptile_with_two_steps_equals_the_first_order_expression():
    """k = 2 on fixed data: ``g = mean_i α₁ ∇L₁(θ) + α₂ ∇L₂(θ − α₁ ∇L₁(θ))`` (α₂ = α₁ / 2)."""
    cfg = maml.Config(**SMALL, outer="reptile", num_inner_steps=2)
    hp = maml.HParams.make(inner_lr=0.5)
    alpha_1, alpha_2 = 0.5, 0.25
    grad_in = jax.grad(maml.inner_loss, argnums=2)
    axpy = lambda a, x, y: jax.tree.map(lambda u, v: a * u + v, x, y)  # noqa: E731

    @jit  # one program
    def run(key):
        params = maml.init_params(cfg, ENV, key, ENV.default_params())
        data = maml.collect_meta_batch(cfg, ENV, params, jax.random.key(2), hp)
        want, naive, stale = [], [], []
        for i in range(cfg.meta_batch_size):
            task = jax.tree.map(lambda x, i=i: x[i], data)
            g_1 = grad_in(cfg, ENV, params, task.env_params, task.inner[0], task.inner_adv[0])
            theta_1 = axpy(-alpha_1, g_1, params)
            args = (task.env_params, task.inner[1], task.inner_adv[1])
            g_2 = grad_in(cfg, ENV, theta_1, *args)
            want.append(axpy(alpha_1, g_1, jax.tree.map(lambda g: alpha_2 * g, g_2)))
            # The mistake the check must catch: the second gradient taken at θ, not θ₁.
            naive.append(axpy(alpha_1, g_1, jax.tree.map(lambda g: alpha_2 * g, grad_in(
                cfg, ENV, params, *args))))  # fmt: skip
            # The second batch was sampled by θ₁ (fresh data of the adapted policy).
            stale.append(maml.log_prob(cfg, ENV, theta_1, *args[:2]) - task.inner[1].log_prob)
        mean = lambda trees: jax.tree.map(lambda *x: sum(x) / len(x), *trees)  # noqa: E731
        got = maml.reptile_grad(cfg, ENV, params, data, hp)
        return got, mean(want), mean(naive), jnp.stack(stale)

    got, want, naive, stale = run(jax.random.key(1))
    np.testing.assert_allclose(stale, 0.0, atol=1e-4)
    _tree_allclose(got, want)
    # ... and it does: the naive sum differs from the expression well beyond the tolerance.
    diff = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), naive, want))
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(want))
    assert max(diff) > 1e-2 * scale, (diff, scale)


def test_reptile_update_jit_matches_no_jit():
    cfg = maml.Config(**TINY, outer="reptile", num_inner_steps=2, anneal_steps=5)
    hp = maml.HParams.make(inner_lr=0.5, learning_rate=1e-2)
    state = maml.init(cfg, ENV, jax.random.key(4), hp)
    s_jit, m_jit = jit(lambda s: maml.update(cfg, ENV, s, hp))(state)
    s_eager, m_eager = maml.update(cfg, ENV, state, hp)
    tol = dict(rtol=1e-3, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), s_jit.params, s_eager.params)
    for k in m_jit:
        np.testing.assert_allclose(m_jit[k], m_eager[k], **tol, err_msg=k)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s_jit.params, state.params)
    assert max(jax.tree.leaves(moved)) > 1e-4


def test_bad_outer_names_the_valid_ones():
    with pytest.raises(ConfigError, match="'adam', 'trpo', 'reptile'"):
        maml.Config(outer="fomaml")
    with pytest.raises(ConfigError, match="num_inner_steps >= 1"):
        maml.Config(outer="reptile", num_inner_steps=0)
