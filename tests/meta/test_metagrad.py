"""Meta-gradients through K PPO updates: finite differences, remat, first order, online step."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrl import envs
from jaxrl.algorithms import ppo
from jaxrl.errors import ConfigError
from jaxrl.meta import metagrad as mg

SMALL = dict(
    num_envs=4, rollout_len=8, num_epochs=2, num_minibatches=2, hidden=(16, 16),
    total_timesteps=32 * 8, anneal_lr=False,
)  # fmt: skip
K = 2
# Compilation dominates this file (each program is K PPO updates and their reverse pass;
# it runs in milliseconds). XLA's cheaper CPU backend settings cut compile time ~40 %.
jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


class Setup:
    """CartPole PPO, a start state and a *fixed* validation batch, so the outer objective
    is a deterministic function of the meta-parameters that finite differences can probe.

    ``programs(**options)`` gives one jitted ``meta_grad`` (and the outer value from it)
    per option set, shared between tests: each costs a compile of K PPO updates and
    their reverse pass, the bulk of this file's run time.
    """

    def __init__(self):
        self.env, _ = envs.make("CartPole-v1")
        self.cfg = ppo.Config(**SMALL)
        self.hp = ppo.HParams.make(learning_rate=3e-3, discount=0.9, gae_lambda=0.8)

        def start():  # jitted: op by op it costs more than its compile
            state0 = ppo.init(self.cfg, self.env, jax.random.key(0), self.hp)
            _, rollout = ppo.collect(self.cfg, self.env, state0.replace(key=jax.random.key(9)))
            return state0, ppo.make_batch(self.cfg, self.env, state0.params, rollout, self.hp)

        self.state0, batch = jit(start)()
        self.outer = lambda s: ppo.loss(self.cfg, self.env, s.params, batch, self.hp)
        self._programs = {}
        self._forward = None

    def args(self):
        return self.outer, ppo, self.cfg, self.env, self.state0, self.hp

    def programs(self, num_steps=K, **kw):
        key = (num_steps, tuple(sorted(kw.items())))
        if key not in self._programs:
            grad = jit(lambda m: mg.meta_grad(*self.args(), m, num_steps, **kw))
            # finite differences reuse the gradient program's outer value: one compile
            # instead of two (tested against meta_loss once, below)
            loss = lambda m: grad(m)[1][0]
            self._programs[key] = grad, loss
        return self._programs[key]

    def forward(self, meta):
        """``(meta_loss(meta)[0], ppo.train(state0, hp, K).params)``: the forward-only
        references of two tests, as one jitted program."""
        if self._forward is None:
            cfg, env, hp = self.cfg, self.env, self.hp
            self._forward = jit(
                lambda m, s: (
                    mg.meta_loss(m, *self.args(), K)[0],
                    ppo.train(cfg, env, s, hp, K)[0].params,
                )
            )
        return self._forward(meta, self.state0)


@pytest.fixture(scope="module")
def setup():
    return Setup()


HP_NAMES = ("learning_rate", "discount", "gae_lambda")


# The helpers below work in numpy or as one jitted program: op by op, every small jnp op
# would be compiled on its own (seconds in all).


def _central_difference(f, x, direction, eps):
    up = jax.tree.map(lambda a, d: np.asarray(a) + np.float32(eps) * np.asarray(d), x, direction)
    down = jax.tree.map(lambda a, d: np.asarray(a) - np.float32(eps) * np.asarray(d), x, direction)
    return float((f(up) - f(down)) / (2 * eps))


def _dot(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return float(sum(np.vdot(np.asarray(x), np.asarray(y)) for x, y in pairs))


def _norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x))) for x in jax.tree.leaves(tree))))


@jit
def _random_direction(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    d = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    norm = jnp.sqrt(sum(jnp.sum(x**2) for x in d))
    return jax.tree.unflatten(treedef, [x / norm for x in d])


# ---------------------------------------------------------------- (a) hyperparameters


def test_hparam_transform_round_trip():
    hp = ppo.HParams.make(learning_rate=3e-3, discount=0.9, gae_lambda=0.8)
    meta = mg.to_meta(hp, ("learning_rate", "discount"))
    np.testing.assert_allclose(meta["learning_rate"], np.log(3e-3), rtol=1e-6)
    np.testing.assert_allclose(meta["discount"], np.log(0.9 / 0.1), rtol=1e-6)
    back = mg.from_meta(hp, meta)
    chex.assert_trees_all_close(back, hp, rtol=1e-6)


def test_hparam_meta_grad_matches_finite_differences(setup):
    meta = mg.to_meta(setup.hp, HP_NAMES)
    grad, loss = setup.programs()
    grads, (value, _, _, _) = grad(meta)
    plain, _ = setup.forward(meta)  # meta_loss, forward only
    np.testing.assert_allclose(plain, value, rtol=1e-5)
    # λ has a clipping kink close by (FD drifts for eps > 1e-3); lr and γ are smooth here
    for name in ("learning_rate", "discount"):
        e = {n: np.float32(n == name) for n in meta}
        fd = _central_difference(loss, meta, e, eps=3e-3)
        assert np.isfinite(grads[name]) and abs(grads[name]) > 1e-4, name
        np.testing.assert_allclose(grads[name], fd, rtol=0.02, err_msg=name)
    assert np.isfinite(grads["gae_lambda"]) and abs(grads["gae_lambda"]) > 0


def test_remat_same_gradient_and_unroll_equals_train(setup):
    meta = mg.to_meta(setup.hp, HP_NAMES)
    g_plain, (_, _, s_plain, _) = setup.programs()[0](meta)
    g_remat, (_, _, s_remat, _) = setup.programs(remat=True)[0](meta)
    chex.assert_trees_all_close(g_remat, g_plain, rtol=1e-5, atol=1e-8)
    chex.assert_trees_all_close(s_remat.params, s_plain.params, rtol=1e-6, atol=1e-7)
    # the unroll is ppo.train in value (forward only: a cheap compile, shared)
    _, train_params = setup.forward(meta)
    chex.assert_trees_all_close(s_plain.params, train_params, rtol=1e-5, atol=1e-6)


def _zero_cotangent(tree):
    """Zero cotangents for a state: float zeros, and float0 for integer and key leaves."""

    def zero(x):
        if mg._is_float(x):
            return jnp.zeros_like(jnp.asarray(x, jnp.float32))
        return np.zeros(np.shape(x), jax.dtypes.float0)

    return jax.tree.map(zero, tree)


@pytest.mark.slow  # compile-heavy; run with --runslow
def test_first_order_is_the_documented_approximation(setup):
    """First order = Σ_k ∂u_k/∂η with each update's incoming state held fixed; written
    here by hand as two VJPs of the outer gradient at s_2, one per update."""
    cfg, env, hp, state0, outer = setup.cfg, setup.env, setup.hp, setup.state0, setup.outer
    meta = mg.to_meta(hp, HP_NAMES)
    g_exact, (_, _, s_exact, _) = setup.programs()[0](meta)
    g_fo, (_, _, s_fo, _) = setup.programs(first_order=True)[0](meta)
    chex.assert_trees_all_close(s_fo.params, s_exact.params, rtol=1e-6, atol=1e-7)  # same value

    def by_hand(m):
        upd = lambda s, m: ppo.update(cfg, env, s, mg.from_meta(hp, m))[0]
        s1, vjp1 = jax.vjp(lambda m: upd(state0, m), m)
        s2, vjp2 = jax.vjp(lambda m: upd(s1, m), m)  # s1 enters as a constant
        g_params = jax.grad(lambda p: outer(s2.replace(params=p))[0])(s2.params)
        (a,) = vjp1(_zero_cotangent(s1).replace(params=g_params))
        (b,) = vjp2(_zero_cotangent(s2).replace(params=g_params))
        return jax.tree.map(jnp.add, a, b)

    chex.assert_trees_all_close(g_fo, jit(by_hand)(meta), rtol=1e-4, atol=1e-7)
    # and it is an approximation at K = 2: the dropped Hessian terms matter
    assert any(abs(g_fo[n] - g_exact[n]) > 0.05 * abs(g_exact[n]) for n in HP_NAMES)


# ---------------------------------------------------------------- (b) initial parameters


def test_maml_grad_matches_finite_difference(setup):
    theta0 = setup.state0.params
    grad, loss = setup.programs(wrt="params")
    grads, _ = grad(theta0)
    d = _random_direction(jax.random.key(1), theta0)
    fd = _central_difference(loss, theta0, d, eps=1e-3)
    assert np.isfinite(_norm(grads)) and _norm(grads) > 1e-3
    np.testing.assert_allclose(_dot(grads, d), fd, rtol=0.03)


def test_fomaml_is_the_gradient_at_the_adapted_parameters(setup):
    """FOMAML with K = 1: ``∇_θ0 L(θ_1) ≈ ∇L(θ_1)`` (all second-derivative terms dropped)."""

    def both(theta0):  # one program: the op-by-op gradient at θ_1 cost more than its compile
        g_fo, (_, _, s1, _) = mg.meta_grad(*setup.args(), theta0, 1, wrt="params", first_order=True)
        return g_fo, jax.grad(lambda p: setup.outer(s1.replace(params=p))[0])(s1.params)

    g_fo, g_at_theta1 = jit(both)(setup.state0.params)
    chex.assert_trees_all_close(g_fo, g_at_theta1, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------- (c) a learned loss


def _learned_loss(eta, cfg, env, params, batch, hp):
    """PPO's loss on a learned advantage ``tanh(w · [A, target, 1])``: a toy LPG."""
    features = jnp.stack([batch.advantage, batch.target, jnp.ones_like(batch.target)], axis=-1)
    advantage = jnp.tanh(features @ eta["w"])
    return ppo.loss(cfg, env, params, batch.replace(advantage=advantage), hp)


def test_learned_loss_grad_matches_finite_difference(setup):
    eta = {"w": jnp.array([1.0, 0.3, 0.1], jnp.float32)}
    grad, loss = setup.programs(wrt="loss", loss_fn=_learned_loss)
    grads, _ = grad(eta)
    # a random direction along which the slope (~1e-3) is well above float32 FD noise
    # (~1e-5 here); key(2) gives a slope of 5e-5, which FD cannot resolve to 3 %
    d = _random_direction(jax.random.key(3), eta)
    fd = _central_difference(loss, eta, d, eps=1e-2)
    assert np.all(np.isfinite(grads["w"])) and abs(_dot(grads, d)) > 3e-4
    np.testing.assert_allclose(_dot(grads, d), fd, rtol=0.03)


# ---------------------------------------------------------------- online meta-gradient RL


@pytest.mark.slow  # compile-heavy; run with --runslow
def test_online_step_jits_and_vmap_equals_loop():
    env, _ = envs.make("CartPole-v1")
    cfg = ppo.Config(**SMALL)
    hp = ppo.HParams.make(discount=0.9, gae_lambda=0.8)
    hp_ref = ppo.HParams.make(discount=0.99, gae_lambda=1.0)
    meta_tx = optax.adam(0.1)
    names = ("discount", "gae_lambda")

    def start(key):
        state = ppo.init(cfg, env, key, hp)
        return mg.online_init(state, mg.to_meta(hp, names), meta_tx)

    step = functools.partial(mg.online_step, ppo, cfg, env, hp=hp, hp_ref=hp_ref, meta_tx=meta_tx)
    keys = jax.random.split(jax.random.key(0), 2)
    batched = jit(jax.vmap(lambda o: step(o)))(jax.vmap(start)(keys))
    single = jit(step)
    for i in range(2):
        one, _ = single(start(keys[i]))
        row = jax.tree.map(functools.partial(lambda i, x: x[i], i), batched[0])
        chex.assert_trees_all_close(row.meta_params, one.meta_params, rtol=1e-5)
        chex.assert_trees_all_close(row.state.params, one.state.params, rtol=1e-5, atol=1e-6)
    ostate, metrics = batched
    np.testing.assert_allclose(metrics["meta/discount"], 0.9, rtol=1e-6)  # value used
    moved = mg.from_meta(hp, jax.tree.map(lambda x: x[0], ostate.meta_params))
    assert abs(float(moved.discount) - 0.9) > 1e-3  # Adam moved γ by ~lr in logit space
    assert np.all(np.isfinite(metrics["meta/outer_loss"]))
    assert int(ostate.state.update_count[0]) == 1
    # reuse (default): the agent stops before the validation rollout, i.e. where one PPO
    # update leaves it; without reuse it is one more rollout further on
    ostate0 = start(keys[1])  # `one` is the reuse step from it
    after_update = jit(lambda s: ppo.update(cfg, env, s, hp)[0])(ostate0.state)
    after_rollout, _ = jit(lambda s: ppo.collect(cfg, env, s))(after_update)
    no_reuse, _ = jit(lambda o: step(o, reuse_rollout=False))(ostate0)
    for want, got in ((after_update, one.state), (after_rollout, no_reuse.state)):
        np.testing.assert_allclose(got.obs, want.obs, rtol=1e-6)
        np.testing.assert_array_equal(jax.random.key_data(got.key), jax.random.key_data(want.key))
    assert not np.allclose(after_update.obs, after_rollout.obs)


def test_online_step_reuses_the_validation_rollout(setup):
    """With ``reuse_rollout`` the agent is plain PPO under the meta-learned schedule: two
    online steps leave it exactly where two ``ppo.update`` calls with the ``γ, λ`` each step
    used leave it (one rollout per update, the validation rollout ``τ'`` being the next
    update's data), and step 1's meta-gradient is ``∇_η`` of ``ppo.loss(θ_1(η))`` on ``τ'``,
    written out by hand. (``reuse_rollout=False`` fails this: see the slow test below.)"""
    cfg, env, hp = setup.cfg, setup.env, setup.hp
    hp_ref = ppo.HParams.make(learning_rate=3e-3, discount=0.99, gae_lambda=1.0)
    names, meta_tx = ("discount", "gae_lambda"), optax.adam(0.1)
    ostate0 = mg.online_init(setup.state0, mg.to_meta(hp, names), meta_tx)

    step = lambda o, _: mg.online_step(ppo, cfg, env, o, hp, hp_ref, meta_tx)

    def by_hand(state0, used):  # ``used``: the γ, λ of the online run's second step
        def outer(meta):  # step 1's objective, through the first update
            state1, _ = ppo.update(cfg, env, state0, mg.from_meta(hp, meta))
            _, tau = ppo.collect(cfg, env, mg.stop_float_gradients(state1))  # τ', by θ_1
            batch = ppo.make_batch(cfg, env, state1.params, tau, hp_ref)
            batch = jax.lax.stop_gradient(batch)
            return ppo.loss(cfg, env, state1.params, batch, hp_ref)[0], state1

        grads, state1 = jax.grad(outer, has_aux=True)(ostate0.meta_params)
        state1 = mg.stop_float_gradients(state1)
        state2, _ = ppo.update(cfg, env, state1, hp.replace(**used))  # collects τ' again
        return state2, grads

    def online_and_by_hand(ostate0):  # one program (cheaper to compile than two)
        ostate2, metrics = jax.lax.scan(step, ostate0, None, 2)
        used = {n: metrics[f"meta/{n}"][1] for n in names}
        return ostate2, metrics, by_hand(ostate0.state, used)

    ostate2, metrics, (state2, grads) = jit(online_and_by_hand)(ostate0)
    got = ostate2.state
    chex.assert_trees_all_close(got.params, state2.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(got.env_state, state2.env_state, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(jax.random.key_data(got.key), jax.random.key_data(state2.key))
    for n in names:
        np.testing.assert_allclose(metrics[f"meta/grad/{n}"][0], grads[n], rtol=1e-4, atol=1e-8)


def test_conditioned_online_step_reads_the_validation_rollout_under_the_reference():
    """Xu et al.'s ``η``-conditioned agent (``condition_on``): the inner update acts and
    learns with ``c = (γ, λ)`` in use appended to its observations, and the outer loss
    reads ``τ'`` with ``c' = (γ', λ')`` instead, values and behaviour log-probabilities
    recomputed at ``sg(θ_1)`` (ratio 1). Two online steps against the same written out by
    hand: step 1's meta-gradient, and the condition of step 2 (the new ``γ, λ``). The
    hand-written gradient *without* re-reading ``τ'`` differs, so the test sees it."""
    names, meta_tx = ("discount", "gae_lambda"), optax.adam(0.1)
    env = envs.wrappers.Conditioned(envs.make("CartPole-v1")[0], size=2)
    cfg = ppo.Config(**SMALL)
    hp = ppo.HParams.make(learning_rate=3e-3, discount=0.9, gae_lambda=0.8)
    hp_ref = ppo.HParams.make(learning_rate=3e-3, discount=0.99, gae_lambda=1.0)
    c_ref = jnp.asarray([0.99, 1.0])
    net = ppo.network(cfg, env)
    step = lambda o, _: mg.online_step(ppo, cfg, env, o, hp, hp_ref, meta_tx, condition_on=names)

    def by_hand(ostate0, reread):
        c0 = jnp.asarray([hp.discount, hp.gae_lambda], jnp.float32)
        state0 = ostate0.state.replace(
            env_params=env.with_params(ostate0.state.env_params.env_params, c0)
        )

        def outer(meta):
            state1, _ = ppo.update(cfg, env, state0, mg.from_meta(hp, meta))
            _, tau = ppo.collect(cfg, env, mg.stop_float_gradients(state1))
            assert tau.obs.shape[-1] == 6
            if reread:
                obs = jnp.concatenate(
                    [tau.obs[..., :4], jnp.broadcast_to(c_ref, (*tau.obs.shape[:-1], 2))], -1
                )
                fin = jnp.concatenate(
                    [tau.final_obs[..., :4], jnp.broadcast_to(c_ref, (*obs.shape[:-1], 2))], -1
                )
                dist, value = net.apply(jax.lax.stop_gradient(state1.params), obs)
                tau = tau.replace(
                    obs=obs, final_obs=fin, value=value, log_prob=dist.log_prob(tau.action)
                )
            batch = jax.lax.stop_gradient(ppo.make_batch(cfg, env, state1.params, tau, hp_ref))
            return ppo.loss(cfg, env, state1.params, batch, hp_ref)[0]

        return jax.grad(outer)(ostate0.meta_params)

    def run(key):  # one program
        state0 = ppo.init(cfg, env, key, hp)
        ostate0 = mg.online_init(state0, mg.to_meta(hp, names), meta_tx)
        ostate2, metrics = jax.lax.scan(step, ostate0, None, 2)
        return ostate2, metrics, by_hand(ostate0, True), by_hand(ostate0, False)

    ostate2, metrics, grads, grads_plain = jit(run)(jax.random.key(0))
    for n in names:
        np.testing.assert_allclose(metrics[f"meta/grad/{n}"][0], grads[n], rtol=1e-4, atol=1e-8)
    differ = [abs(float(grads[n] - grads_plain[n])) > 1e-3 * abs(float(grads[n])) for n in names]
    assert any(differ), "re-reading τ' under (γ', λ') made no difference: test is blind"
    used2 = jnp.stack([metrics[f"meta/{n}"][1] for n in names])
    np.testing.assert_allclose(ostate2.state.env_params.condition, used2, rtol=1e-6)
    assert not np.allclose(used2, [0.9, 0.8]), "η did not move: step 2's condition untested"


def test_conditioned_online_step_needs_a_conditioned_env(setup):
    _, _, cfg, env, state0, hp = setup.args()
    ostate = mg.online_init(state0, mg.to_meta(hp, ["discount"]), optax.adam(1e-3))
    with pytest.raises(ConfigError, match=r"Conditioned\(env, size=1\)"):
        mg.online_step(ppo, cfg, env, ostate, hp, hp, optax.adam(1e-3), condition_on=("discount",))
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        mg.online_step(ppo, cfg, env, ostate, hp, hp, optax.adam(1e-3), condition_on=("gama",))


def _stats(state):
    """The float leaves of the normalisers' ``RunningStats`` in ``state.env_state``."""
    leaves = jax.tree_util.tree_flatten_with_path(state.env_state)[0]
    return [x for path, x in leaves if ".stats." in jax.tree_util.keystr(path)]


def test_online_step_with_normalisers_updates_stats_as_ppo_and_never_differentiates_them():
    """Pendulum with observation normalisation and reward scaling (``RunningStats`` in the
    env state, as in the ``ppo/pendulum`` preset), K = 2: one online step leaves the agent,
    normaliser statistics included, exactly where two ``ppo.update`` calls leave it, and
    ``∂ stats_K / ∂η`` is zero (the statistics see only observations and rewards, which
    sampled actions drive as data) while the meta-gradient is not."""
    env, _ = envs.make("Pendulum-v1")
    cfg = ppo.Config(**SMALL | dict(normalize_obs=True, scale_reward=True))
    hp = ppo.HParams.make(learning_rate=3e-3, discount=0.9, gae_lambda=0.8, ent_coef=0.0)
    hp_ref = ppo.HParams.make(learning_rate=3e-3, discount=0.99, gae_lambda=1.0, ent_coef=0.0)
    names, meta_tx = ("discount", "gae_lambda"), optax.adam(0.1)

    def run(key):  # one program, init included (op by op it costs more than its compile)
        state0 = ppo.init(cfg, env, key, hp)
        ostate = mg.online_init(state0, mg.to_meta(hp, names), meta_tx)
        ostate1, metrics = mg.online_step(ppo, cfg, env, ostate, hp, hp_ref, meta_tx, 2)
        used = mg.from_meta(hp, ostate.meta_params)  # hp, to float rounding
        plain, _ = ppo.train(cfg, env, ostate.state, used, 2)

        def stats_sum(meta):
            state_k, _ = mg.unroll(ppo, cfg, env, ostate.state, hp, meta, 2)
            return sum(jnp.sum(x) for x in _stats(state_k))

        # forward mode: the same derivative as jax.grad, without a second reverse pass
        return state0, ostate1, metrics, plain, jax.jacfwd(stats_sum)(ostate.meta_params)

    state0, ostate1, metrics, plain, d_stats = jit(run)(jax.random.key(0))
    got = ostate1.state
    chex.assert_trees_all_close(got.params, plain.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(_stats(got), _stats(plain), rtol=1e-6)
    np.testing.assert_allclose(got.obs, plain.obs, rtol=1e-6)
    # (mean, var, count) of the observation and the return normaliser: each saw 2 rollouts
    (_, _, obs_count, _, _, ret_count), start = _stats(got), _stats(state0)
    for count, count0 in ((obs_count, start[2]), (ret_count, start[5])):
        assert float(count) - float(count0) == 2 * cfg.steps_per_update
    for n in names:
        assert float(d_stats[n]) == 0.0
        assert np.isfinite(metrics[f"meta/grad/{n}"]) and metrics[f"meta/grad/{n}"] != 0.0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("num_steps", [0, -1, 1.5, True])
def test_bad_truncation_length_raises(setup, num_steps):
    outer, _, cfg, env, state0, hp = setup.args()
    with pytest.raises(ConfigError, match="num_steps"):
        mg.meta_grad(outer, ppo, cfg, env, state0, hp, mg.to_meta(hp, ["discount"]), num_steps)


def test_bad_names_and_modes_raise(setup):
    outer, _, cfg, env, state0, hp = setup.args()
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        mg.to_meta(hp, ("discout",))
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        mg.meta_grad(outer, ppo, cfg, env, state0, hp, {"lr": jnp.float32(0.0)}, 1)
    with pytest.raises(ConfigError, match="wrt must be one of"):
        mg.meta_grad(outer, ppo, cfg, env, state0, hp, {}, 1, wrt="hyper")
    with pytest.raises(ConfigError, match="loss_fn"):
        mg.meta_grad(outer, ppo, cfg, env, state0, hp, {}, 1, wrt="loss")
    ostate = mg.online_init(state0, state0.params, optax.adam(1e-3))
    with pytest.raises(ConfigError, match="online_step"):
        mg.online_step(ppo, cfg, env, ostate, hp, hp, optax.adam(1e-3), wrt="params")
