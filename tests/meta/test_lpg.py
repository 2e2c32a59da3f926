"""LPG: backward scan, masking, agent loss, REINFORCE plumbing (L0), meta-gradient vs finite
differences (L1), bandit, meta-update invariances, save/load."""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs import delayed_chain
from jaxrl.errors import ConfigError
from jaxrl.meta import lpg

TINY = lpg.Config(
    num_lifetimes=2, num_envs=2, rollout_len=5, num_inner=2, lifetime_len=4, lstm_size=8,
    pred_dim=4, lr_grid=(1.0, 2.0), alpha_y_grid=(0.1, 0.5, 1.0),
)  # fmt: skip


# Compilation dominates the meta-update tests; XLA's cheaper CPU backend settings cut it.
jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)
_UPDATE_TRACES = []  # the envs of every trace of _meta_update


@functools.partial(jit, static_argnums=0)
def _meta_init(envs, key, hp):
    return lpg.init(TINY, envs, key, hp)


@functools.partial(jit, static_argnums=0)
def _meta_update(envs, state, hp):
    """One compiled meta-update per env (tuple), shared by the meta-update tests."""
    _UPDATE_TRACES.append(envs)
    return lpg.update(TINY, envs, state, hp)


def _inputs(key, t=6, b=2, m=4, done=None, dtype=jnp.float32):
    k = jax.random.split(key, 4)
    if done is None:
        done = jnp.zeros((t, b)).at[2, 0].set(1.0).at[4, 1].set(1.0)
    return lpg.LPGInputs(
        reward=jax.random.normal(k[0], (t, b), dtype),
        done=done.astype(dtype),
        discount=jnp.asarray(0.9, dtype),
        pi_a=jax.random.uniform(k[1], (t, b), dtype),
        y_t=jax.nn.softmax(jax.random.normal(k[2], (t, b, m), dtype)),
        y_tp1=jax.nn.softmax(jax.random.normal(k[3], (t, b, m), dtype)),
    )


def test_returns_rule_is_discounted_return_to_go_within_segment():
    r = jnp.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
    done = jnp.array([[0.0], [1.0], [0.0], [0.0], [0.0]])
    inputs = lpg.LPGInputs(
        r, done, jnp.asarray(0.5), r, jnp.ones((5, 1, 4)) / 4, jnp.ones((5, 1, 4)) / 4
    )
    pi_hat, log_y_hat = lpg.returns_rule(TINY, None, inputs)
    # episode 1 = steps 0,1; episode 2 = steps 2..4, cut at the segment end
    expected = [1 + 0.5 * 2, 2, 3 + 0.5 * 4 + 0.25 * 5, 4 + 0.5 * 5, 5]
    np.testing.assert_allclose(pi_hat[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(jnp.exp(log_y_hat), 0.25, rtol=1e-6)


@pytest.mark.parametrize("jit", [True, False])
def test_lpg_shapes_and_episode_reset(jit):
    eta = lpg.init_lpg(TINY, jax.random.key(0))
    apply = lambda inp: lpg.lpg_apply(TINY, eta, inp)  # noqa: E731
    apply = jax.jit(apply) if jit else apply
    inputs = _inputs(jax.random.key(1))
    pi_hat, log_y_hat = apply(inputs)
    chex.assert_shape(pi_hat, (6, 2))
    chex.assert_shape(log_y_hat, (6, 2, 4))
    np.testing.assert_allclose(jnp.exp(log_y_hat).sum(-1), 1.0, rtol=1e-5)
    # Env 0 ends its episode at t = 2: changing anything after t = 2 must not change outputs
    # at t <= 2; changing reward at t = 3 must change outputs at t = 3 (it is not masked).
    changed = inputs.replace(reward=inputs.reward.at[3:, 0].add(5.0))
    pi_hat2, log_y_hat2 = apply(changed)
    np.testing.assert_allclose(pi_hat2[:3, 0], pi_hat[:3, 0], rtol=1e-6)
    np.testing.assert_allclose(log_y_hat2[:3, 0], log_y_hat[:3, 0], rtol=1e-6)
    np.testing.assert_allclose(pi_hat2[:, 1], pi_hat[:, 1], rtol=1e-6)
    assert not np.allclose(pi_hat2[3, 0], pi_hat[3, 0])
    # y(s_{t+1}) is zeroed where d_t = 1; elsewhere it matters
    y2 = inputs.replace(y_tp1=inputs.y_tp1.at[2, 0].set(jnp.array([1.0, 0, 0, 0])))
    np.testing.assert_allclose(apply(y2)[0], pi_hat, rtol=1e-6)
    y3 = inputs.replace(y_tp1=inputs.y_tp1.at[1, 0].set(jnp.array([1.0, 0, 0, 0])))
    assert not np.allclose(apply(y3)[0][1, 0], pi_hat[1, 0])


def _random_batch(key, t, b, d, dtype=jnp.float32):
    k = jax.random.split(key, 5)
    obs = jax.nn.one_hot(jax.random.randint(k[0], (t, b), 0, d), d, dtype=dtype)
    next_obs = jax.nn.one_hot(jax.random.randint(k[1], (t, b), 0, d), d, dtype=dtype)
    done = (jax.random.uniform(k[2], (t, b)) < 0.25).astype(dtype)
    return lpg.Batch(
        obs=obs,
        action=jax.random.randint(k[3], (t, b), 0, 2),
        reward=jax.random.normal(k[4], (t, b), dtype),
        done=done,
        terminated=done,
        next_obs=next_obs,
        episode_return=jnp.zeros((t, b), dtype),
    )


def test_agent_loss_gradient_matches_closed_form():
    """Tabular: d/dW_pi[s] of −mean(log π(a|s) π̂) = −Σ_{t: s_t=s} π̂_t (onehot(a_t) − π(s)) / n."""
    batch = _random_batch(jax.random.key(0), 5, 3, 4)
    theta = {"pi": jax.random.normal(jax.random.key(1), (4, 2)), "y": jnp.zeros((4, 4))}
    pi_hat = jax.random.normal(jax.random.key(2), (5, 3))
    log_y_hat = jnp.full((5, 3, 4), -jnp.log(4.0))
    grad = jax.grad(lpg.agent_loss, argnums=1)(TINY, theta, batch, pi_hat, log_y_hat, 0.7)
    obs, a = np.asarray(batch.obs).reshape(15, 4), np.asarray(batch.action).reshape(15)
    w = np.asarray(theta["pi"], np.float64)
    expected = np.zeros((4, 2))
    for i in range(15):
        s = obs[i].argmax()
        p = np.exp(w[s]) / np.exp(w[s]).sum()
        expected[s] -= np.asarray(pi_hat).reshape(15)[i] * (np.eye(2)[a[i]] - p) / 15
    np.testing.assert_allclose(grad["pi"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad["y"], 0.0, atol=1e-7)  # y is uniform = ŷ: KL minimum


def test_l0_reinforce_plumbing_on_short_chain():
    """Acceptance L0: hand rule π̂ = return-to-go, α_y = 0, tabular agent, L <= 10."""
    env = delayed_chain.make("short", max_length=10)
    cfg = lpg.Config(num_envs=16, rollout_len=20, pred_dim=4, lstm_size=8)
    hp = lpg.HParams.make()

    def run(key):
        lt, m = lpg.train_agent(
            cfg, env, None, key, 300, hp, agent_lr=5.0, alpha_y=0.0, rule_fn=lpg.returns_rule
        )
        p = jax.nn.softmax(lpg.agent_apply(cfg, lt.theta, jax.nn.one_hot(0, env.num_states))[0])
        return p[lt.env_params.good_action], m["train/episode_return"]

    p_good, curve = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 4))
    assert np.all(p_good >= 0.95), p_good
    assert float(curve[:, :5].mean()) < 0.5 < 0.9 < float(curve[:, -10:].mean())


def test_l1_meta_gradient_matches_finite_differences():
    """Acceptance L1: float64, LSTM 8, m = 4, K = 2, 2 envs, fixed data."""
    with jax.enable_x64(True):
        f64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)  # noqa: E731
        cfg, d, t = TINY, 5, 6
        hp = f64(lpg.HParams.make())
        eta = f64(lpg.init_lpg(cfg, jax.random.key(0)))
        keys = jax.random.split(jax.random.key(1), 4)
        batches = jax.vmap(lambda k: _random_batch(k, t, 2, d, jnp.float64))(keys[:2])
        eval_batch = _random_batch(keys[2], t, 2, d, jnp.float64)
        adv = jax.random.normal(keys[3], (t, 2), jnp.float64)
        theta = {
            "pi": 0.3 * jax.random.normal(jax.random.key(2), (d, 2), jnp.float64),
            "y": 0.3 * jax.random.normal(jax.random.key(3), (d, cfg.pred_dim), jnp.float64),
        }
        lr, ay = jnp.float64(2.0), jnp.float64(0.5)
        opt = lpg.agent_tx(cfg, lr).init(theta)

        def loss(e):
            return lpg.fixed_data_meta_loss(
                cfg, lpg.lpg_apply, e, theta, opt, batches, eval_batch, adv, lr, ay, hp
            )

        # finite differences reuse the gradient program's value: one compile, not two
        value_and_grad = jit(jax.value_and_grad(loss))
        grad = value_and_grad(eta)[1]
        for path, g in jax.tree_util.tree_leaves_with_path(grad):
            assert float(jnp.max(jnp.abs(g))) > 1e-8, f"zero meta-gradient for {path}"
        loss_j = lambda e: value_and_grad(e)[0]  # noqa: E731
        leaves, treedef = jax.tree.flatten(eta)
        eps = 1e-5
        for i in range(5):
            dk = jax.random.split(jax.random.key(100 + i), len(leaves))
            u = [
                jax.random.normal(k, x.shape, jnp.float64) for k, x in zip(dk, leaves, strict=True)
            ]
            u = jax.tree.unflatten(treedef, u)
            plus = jax.tree.map(lambda x, v: x + eps * v, eta, u)
            minus = jax.tree.map(lambda x, v: x - eps * v, eta, u)
            fd = (loss_j(plus) - loss_j(minus)) / (2 * eps)
            an = sum(
                jnp.vdot(a, b)
                for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(u), strict=True)
            )
            assert abs(float(fd - an)) <= 1e-4 * abs(float(an)), (i, float(fd), float(an))


@pytest.mark.slow  # compile-heavy; run with --runslow
def test_grad_through_inputs_flag_changes_the_meta_gradient():
    batches = jax.vmap(lambda k: _random_batch(k, 6, 2, 5))(jax.random.split(jax.random.key(1), 2))
    eval_batch = _random_batch(jax.random.key(2), 6, 2, 5)
    adv = jax.random.normal(jax.random.key(3), (6, 2))
    theta = {"pi": 0.3 * jax.random.normal(jax.random.key(4), (5, 2)), "y": jnp.zeros((5, 4))}
    hp = lpg.HParams.make()
    eta = lpg.init_lpg(TINY, jax.random.key(0))

    def grad(cfg):
        opt = lpg.agent_tx(cfg, 2.0).init(theta)
        f = lambda e: lpg.fixed_data_meta_loss(  # noqa: E731
            cfg, lpg.lpg_apply, e, theta, opt, batches, eval_batch, adv, 2.0, 0.5, hp
        )
        return jax.jit(jax.grad(f))(eta)

    full = grad(TINY)
    groove = grad(dataclasses.replace(TINY, grad_through_inputs=False))
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), full, groove)
    assert max(jax.tree.leaves(diff)) > 1e-6


def test_bandit_logits_and_ring_buffer():
    hp = lpg.HParams.make(bandit_temperature=0.5, bandit_bonus=0.2)
    b = lpg.init_bandit(TINY, window=2)
    for score in (1.0, 2.0, 4.0):  # window 2: the first score is overwritten
        b = lpg.bandit_update(b, jnp.int32(3), jnp.float32(score), jnp.bool_(True))
    b = lpg.bandit_update(b, jnp.int32(1), jnp.float32(9.0), jnp.bool_(False))  # masked out
    logits = lpg.bandit_logits(b, hp)
    expected = np.full(6, 0.2 / 0.5)
    expected[3] = ((4.0 + 2.0) / 2 + 0.2 / np.sqrt(3)) / 0.5
    np.testing.assert_allclose(logits, expected, rtol=1e-6)
    lr, ay = lpg.arm_values(TINY, jnp.int32(4))
    assert (float(lr), float(ay)) == (2.0, 0.5)


def test_meta_update_one_program_resets_and_finite(tmp_path):
    env = delayed_chain.make("short", max_length=6)
    hp = lpg.HParams.make(learning_rate=1e-3)
    state = _meta_init(env, jax.random.key(0), hp)
    np.testing.assert_array_equal(state.lifetimes[0].num_updates, [0, 2])  # staggered
    eta0 = state.eta
    state, m = _meta_update(env, state, hp)
    np.testing.assert_array_equal(state.lifetimes[0].num_updates, [2, 0])  # lifetime 1 was reset
    assert int(m["meta/lifetimes_ended"]) == 1 and int(state.bandits[0].counts.sum()) == 1
    traces = len(_UPDATE_TRACES)
    state, m = _meta_update(env, state, hp.replace(learning_rate=jnp.float32(3e-4)))
    assert len(_UPDATE_TRACES) == traces  # new hyperparameter values: no retrace
    assert all(np.isfinite(float(v)) for v in m.values())
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.eta, eta0)
    assert min(jax.tree.leaves(moved)) > 0.0
    # save / load round trip rebuilds config and parameters
    lpg.save(str(tmp_path / "lpg"), state.eta, TINY)
    eta, cfg = lpg.load(str(tmp_path / "lpg"))
    assert cfg == TINY
    chex.assert_trees_all_equal(eta, jax.device_get(state.eta))


def test_bad_config_raises():
    with pytest.raises(ConfigError):
        lpg.Config(agent="transformer")
    with pytest.raises(ConfigError):
        lpg.Config(num_inner=0)
    with pytest.raises(ConfigError):
        lpg.HParams.make(learning_rat=1.0)


def test_mlp_agent_reinforce_on_distraction_chain():
    """The MLP agent (Adam) learns the 22-bit State-Distraction chain with the REINFORCE rule."""
    env = delayed_chain.make("distraction", max_length=8)
    cfg = lpg.Config(agent="mlp", agent_optimizer="adam", num_envs=16, pred_dim=4, lstm_size=8)

    def run(key):
        _, m = lpg.train_agent(
            cfg, env, None, key, 80, lpg.HParams.make(), agent_lr=1e-2, alpha_y=0.0,
            rule_fn=lpg.returns_rule,
        )  # fmt: skip
        return m["train/episode_return"]

    curve = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 2))
    assert float(curve[:, -10:].mean()) > 0.9


def test_two_env_meta_update_keeps_the_first_env_as_alone():
    """With envs (A, B), A's lifetimes and metrics are those of meta-training on A alone
    (same keys), and B gets its own lifetimes and bandit."""
    env_a = delayed_chain.make("short", max_length=6)
    env_b = delayed_chain.make("short_noisy", max_length=6)
    hp = lpg.HParams.make(learning_rate=1e-3)

    def run(envs):  # env_a alone: the program test_meta_update_one_program_... compiles
        return _meta_update(envs, _meta_init(envs, jax.random.key(0), hp), hp)

    (alone, m_alone), (both, m_both) = run(env_a), run((env_a, env_b))
    assert len(both.lifetimes) == len(both.bandits) == 2
    chex.assert_trees_all_close(both.lifetimes[0], alone.lifetimes[0], rtol=1e-6)
    chex.assert_trees_all_equal(both.bandits[0], alone.bandits[0])
    np.testing.assert_allclose(m_both["meta/pg/0"], m_alone["meta/pg"], rtol=1e-6)
    np.testing.assert_allclose(
        m_both["meta/pg"], (m_both["meta/pg/0"] + m_both["meta/pg/1"]) / 2, rtol=1e-6
    )
    assert not np.allclose(both.eta["pi_head"]["w"], alone.eta["pi_head"]["w"])  # B counted
    with pytest.raises(ConfigError, match="made for 2 envs"):
        lpg.update(TINY, env_a, both, hp)


def test_a2c_reference_learns_short_chain():
    env = delayed_chain.make("short", max_length=8)
    cfg = dataclasses.replace(TINY, num_envs=8, rollout_len=10)

    def run(key):
        _, m = lpg.train_a2c_agent(cfg, env, key, 150, lpg.HParams.make(), agent_lr=5.0)
        r, n = m["train/episode_return"][-10:], m["train/episodes"][-10:]
        return jnp.sum(r * n) / jnp.maximum(jnp.sum(n), 1.0)

    final = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 4))
    assert float(final.mean()) > 0.9, final


def test_load_rejects_missing_corrupt_and_mismatched_files(tmp_path):
    eta = lpg.init_lpg(TINY, jax.random.key(0))
    path = str(tmp_path / "lpg")
    with pytest.raises(ConfigError, match="cannot read"):
        lpg.load(path)
    lpg.save(path, eta, TINY)
    data = (tmp_path / "lpg.msgpack").read_bytes()
    (tmp_path / "lpg.msgpack").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ConfigError, match="corrupt"):
        lpg.load(path)
    lpg.save(path, eta, dataclasses.replace(TINY, lstm_size=16))  # params of another config
    (tmp_path / "lpg.msgpack").write_bytes(data)
    with pytest.raises(ConfigError, match="corrupt|do not match"):
        lpg.load(path)
    (tmp_path / "lpg.json").write_text('{"num_envs": 2}')
    with pytest.raises(ConfigError, match="format"):
        lpg.load(path)
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temporaries
