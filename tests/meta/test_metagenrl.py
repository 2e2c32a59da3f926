"""Tests for jaxrl.meta.metagenrl: the learned objective and its meta-gradient."""

from __future__ import annotations

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import td3
from jaxrl.envs import registry
from jaxrl.errors import ConfigError
from jaxrl.meta import metagenrl as mg

_apply = jax.jit(mg.objective_apply, static_argnums=0)
# Compilation dominates this file (second-order gradients through the objective's LSTM);
# XLA's cheaper CPU backend settings cut it.
jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


@functools.partial(jit, static_argnums=(0, 1))
def _meta_value_and_grad(cfg, env, alpha, params, windows, hp):
    """``(L_meta, ∇_α L_meta)``: one compiled program per config, env(s) and shapes, shared
    by the tests below (a Pendulum population of 2 serves four of them)."""
    return jax.value_and_grad(lambda a: mg.meta_loss(cfg, env, a, params, windows, hp))(alpha)


def _cfg(**kw) -> mg.Config:
    agent = td3.Config(hidden=(8,), batch_size=3, buffer_size=64, learning_starts=16)
    return mg.Config(**{"agent": agent, "seq_len": 4, "lstm_size": 4, "head_hidden": 4, **kw})


def _inputs(key, batch=3, length=5, dims=2, dtype=jnp.float32) -> mg.ObjectiveInputs:
    k = jax.random.split(key, 5)

    def normal(key, shape):
        return jax.random.normal(key, shape, dtype)

    return mg.ObjectiveInputs(
        reward=normal(k[0], (batch, length)),
        done=jnp.zeros((batch, length), dtype),
        value=normal(k[1], (batch, length)),
        q=normal(k[2], (batch, length)),
        action=jnp.tanh(normal(k[3], (batch, length, dims))),
        policy_action=jnp.tanh(normal(k[4], (batch, length, dims))),
    )


class ObjectiveTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_shapes(self):
        cfg = _cfg()
        alpha = mg.init_objective(cfg, jax.random.key(0))
        y = self.variant(lambda a, x: mg.objective_apply(cfg, a, x))(
            alpha, _inputs(jax.random.key(1), batch=3, length=5, dims=2)
        )
        chex.assert_shape(y, (3, 5, 2))
        chex.assert_tree_all_finite(y)

    def test_same_alpha_for_any_action_dim(self):
        """Each dimension is its own sequence with shared weights: the outputs of a 2-D
        input equal the outputs of each of its 1-D slices."""
        cfg = _cfg()
        alpha = mg.init_objective(cfg, jax.random.key(0))
        x2 = _inputs(jax.random.key(1), dims=2)
        y2 = _apply(cfg, alpha, x2)
        for i in range(2):
            x1 = x2.replace(
                action=x2.action[..., i : i + 1], policy_action=x2.policy_action[..., i : i + 1]
            )
            np.testing.assert_allclose(_apply(cfg, alpha, x1)[..., 0], y2[..., i], atol=1e-6)
        # The two dimensions have different inputs, so their outputs differ.
        assert not np.allclose(y2[..., 0], y2[..., 1])

    def test_reward_scale_and_offset_invariance(self):
        cfg = _cfg()
        alpha = mg.init_objective(cfg, jax.random.key(0))
        x = _inputs(jax.random.key(1))
        y = _apply(cfg, alpha, x)
        scaled = x.replace(reward=20 * x.reward - 7, value=20 * x.value - 3, q=20 * x.q - 3)
        np.testing.assert_allclose(_apply(cfg, alpha, scaled), y, atol=1e-4)

    def test_backward_lstm_resets_at_episode_end(self):
        """The LSTM runs backwards: outputs at t see inputs at t' >= t of the same episode.
        With an episode end at t = 2, changing inputs at t = 3, 4 leaves outputs at t <= 2
        unchanged; without the end it changes them."""
        cfg = _cfg()
        alpha = mg.init_objective(cfg, jax.random.key(0))
        x = _inputs(jax.random.key(1), length=5)
        x = x.replace(done=x.done.at[:, 2].set(1.0), value=jnp.zeros_like(x.value))
        x = x.replace(q=jnp.zeros_like(x.q))  # keep the normalisation stats fixed below
        changed_pi = x.policy_action.at[:, 3:].set(-x.policy_action[:, 3:])
        y = _apply(cfg, alpha, x)
        y_changed = _apply(cfg, alpha, x.replace(policy_action=changed_pi))
        np.testing.assert_allclose(y_changed[:, :3], y[:, :3], atol=1e-6)
        assert not np.allclose(y_changed[:, 3:], y[:, 3:])
        # Without the episode end the change reaches back to earlier steps.
        no_done = x.replace(done=jnp.zeros_like(x.done))
        y0 = _apply(cfg, alpha, no_done)
        y0_changed = _apply(cfg, alpha, no_done.replace(policy_action=changed_pi))
        assert np.max(np.abs(y0_changed[:, :3] - y0[:, :3])) > 1e-5
        # Changing inputs *before* the end changes outputs before it only (t <= 1 here).
        y_early = mg.objective_apply(
            cfg, alpha, x.replace(policy_action=x.policy_action.at[:, 1].set(0.3))
        )
        np.testing.assert_allclose(y_early[:, 2:], y[:, 2:], atol=1e-6)


def _population(cfg, env, num_agents, key):
    """Fresh agents and random replay windows ``[N, B, L]`` (no env rollout needed)."""
    hp = mg.HParams.make()
    agents = jax.vmap(lambda k: mg.init_agent(cfg, env, k, hp))(jax.random.split(key, num_agents))
    b, t = cfg.agent.batch_size, cfg.seq_len
    (obs_dim,) = env.observation_space(env.default_params()).shape
    act_dim = td3.action_dim(env)
    k = jax.random.split(jax.random.fold_in(key, 1), 4)
    obs = jax.random.normal(k[0], (num_agents, b, t, obs_dim))
    done = (jax.random.uniform(k[1], (num_agents, b, t)) < 0.2).astype(jnp.float32)
    window = mg.Item(
        obs=obs,
        action=jax.random.uniform(k[2], (num_agents, b, t, act_dim), minval=-1, maxval=1),
        reward=jax.random.normal(k[3], (num_agents, b, t)),
        terminated=jnp.zeros_like(done),
        done=done,
        next_obs=obs,
    )
    return agents.params, window


def test_meta_gradient_nonzero_for_every_leaf():
    cfg = _cfg()
    env, _ = registry.make("Pendulum-v1")
    params, windows = _population(cfg, env, 2, jax.random.key(0))
    alpha = mg.init_objective(cfg, jax.random.key(1))
    hp = mg.HParams.make(inner_lr=0.1)
    _, grads = _meta_value_and_grad(cfg, env, alpha, params, windows, hp)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), path
        assert np.linalg.norm(g) > 0, path


def test_meta_gradient_matches_finite_differences():
    cfg = _cfg()
    env, _ = registry.make("Pendulum-v1")
    with jax.enable_x64(True):
        params, windows = _population(cfg, env, 1, jax.random.key(0))
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        windows = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), windows)
        alpha = jax.tree.map(
            lambda x: jnp.asarray(x, jnp.float64), mg.init_objective(cfg, jax.random.key(1))
        )
        hp = mg.HParams.make(inner_lr=0.5)
        hp = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), hp)

        value_and_grad = jit(
            jax.value_and_grad(lambda a: mg.meta_loss(cfg, env, a, params, windows, hp))
        )

        def f(a):
            return value_and_grad(a)[0]

        grads = value_and_grad(alpha)[1]
        leaves, treedef = jax.tree.flatten(alpha)
        dirs = [
            jax.random.normal(k, x.shape, jnp.float64)
            for k, x in zip(jax.random.split(jax.random.key(2), len(leaves)), leaves, strict=True)
        ]
        d = jax.tree.unflatten(treedef, dirs)
        eps = 1e-5
        plus = f(jax.tree.map(lambda a, v: a + eps * v, alpha, d))
        minus = f(jax.tree.map(lambda a, v: a - eps * v, alpha, d))
        fd = (plus - minus) / (2 * eps)
        analytic = sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(grads), dirs, strict=True))
        assert abs(float(analytic)) > 1e-6
        np.testing.assert_allclose(float(fd), float(analytic), rtol=1e-5)


def _two_groups(cfg):
    """Pendulum (obs 3, action 1) and nav2d (obs 2, action 2) populations of 2 and 3."""
    envs = (registry.make("Pendulum-v1")[0], registry.make("meta/nav2d")[0])
    sizes = (2, 3)
    pops = [_population(cfg, envs[i], sizes[i], jax.random.key(i)) for i in range(2)]
    params, windows = zip(*pops, strict=True)
    return envs, params, windows


@pytest.mark.parametrize("normalise", [False, True])
def test_two_group_meta_gradient_is_sum_of_groups(normalise):
    """One ``α`` for two env types with their own obs/action shapes: the population's
    meta-loss and meta-gradient are the sums of each group's computed alone, and every
    ``α`` leaf gets a non-zero meta-gradient."""
    cfg = _cfg(normalise_meta_loss=normalise)
    envs, params, windows = _two_groups(cfg)
    alpha = mg.init_objective(cfg, jax.random.key(7))
    hp = mg.HParams.make(inner_lr=0.1)

    loss, grads = _meta_value_and_grad(cfg, envs, alpha, params, windows, hp)
    (loss_0, grads_0), (loss_1, grads_1) = (
        _meta_value_and_grad(cfg, e, alpha, p, w, hp)
        for e, p, w in zip(envs, params, windows, strict=True)
    )
    np.testing.assert_allclose(loss, loss_0 + loss_1, rtol=1e-6)
    summed = jax.tree.map(jnp.add, grads_0, grads_1)
    for (path, g), s, g0, g1 in zip(
        jax.tree_util.tree_leaves_with_path(grads),
        jax.tree.leaves(summed),
        jax.tree.leaves(grads_0),
        jax.tree.leaves(grads_1),
        strict=True,
    ):
        scale = np.max(np.abs(s))
        np.testing.assert_allclose(g, s, rtol=1e-5, atol=1e-6 * scale, err_msg=str(path))
        assert np.linalg.norm(g) > 0, path
        # Both groups contribute to every leaf (the sum is not just one of them).
        assert np.linalg.norm(g0) > 0 and np.linalg.norm(g1) > 0, path


def test_single_env_is_one_group():
    """A single env and a 1-tuple of it give the same meta-loss and meta-gradient."""
    cfg = _cfg()
    env, _ = registry.make("Pendulum-v1")
    params, windows = _population(cfg, env, 2, jax.random.key(0))
    alpha = mg.init_objective(cfg, jax.random.key(1))
    hp = mg.HParams.make(inner_lr=0.1)
    single = _meta_value_and_grad(cfg, env, alpha, params, windows, hp)
    grouped = _meta_value_and_grad(cfg, (env,), alpha, (params,), (windows,), hp)
    chex.assert_trees_all_equal(single, grouped)


def test_groups_must_match_envs():
    env, _ = registry.make("Pendulum-v1")
    with pytest.raises(ConfigError, match="2 envs but 1 groups"):
        mg.as_groups((env, env), (1,))
    with pytest.raises(ConfigError):
        mg.as_groups(())
    envs, data = mg.as_groups((env, env), None)
    assert envs == (env, env) and data == (None, None)


def _scale_critic(params, c):
    """Critic params whose ``Q`` outputs are ``c`` times the original (last layer scaled)."""
    last = params.critic["params"]["VmapQNetwork_0"]["Dense_0"]
    critic = jax.tree.map(lambda x: x, params.critic)
    critic["params"]["VmapQNetwork_0"]["Dense_0"] = jax.tree.map(lambda x: c * x, last)
    return params.replace(critic=critic)


def test_normalised_meta_gradient_ignores_value_scale():
    """With ``normalise_meta_loss`` a critic whose values are 50x larger (another env's
    reward scale) gives the same meta-gradient; without it the meta-gradient is 50x larger."""
    env, _ = registry.make("Pendulum-v1")
    alpha = mg.init_objective(_cfg(), jax.random.key(1))
    hp = mg.HParams.make(inner_lr=0.1)
    params, windows = _population(_cfg(), env, 2, jax.random.key(0))
    for normalise in (True, False):
        cfg = _cfg(normalise_meta_loss=normalise)
        g1 = _meta_value_and_grad(cfg, env, alpha, params, windows, hp)[1]
        g50 = _meta_value_and_grad(cfg, env, alpha, _scale_critic(params, 50.0), windows, hp)[1]
        want = g1 if normalise else jax.tree.map(lambda x: 50 * x, g1)
        for a, b in zip(jax.tree.leaves(g50), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4 * np.max(np.abs(b)))


# Recorded from the single-env implementation before groups were added (float32, CPU):
# _cfg(num_agents=2), Pendulum-v1, HParams defaults, key 0, 20 updates (5 meta-steps).
_GOLDEN_HEAD2 = [-0.3222768, 0.2687478, -1.2001876, -0.14942953]
_GOLDEN_META_LOSS = [0.0605681, 0.040220648, -0.0152578065, -0.0047294237]


def test_single_env_training_matches_previous_behaviour():
    cfg = _cfg(num_agents=2)
    env, _ = registry.make("Pendulum-v1")
    hp = mg.HParams.make()
    state = mg.init(cfg, env, jax.random.key(0), hp)
    state, m = jit(lambda s: mg.train(cfg, env, s, hp, 20))(state)
    assert isinstance(state.agents, td3.State)  # one env: no 1-tuple around the population
    assert int(state.meta_steps) == 5
    np.testing.assert_allclose(state.alpha["head2"]["w"][:, 0], _GOLDEN_HEAD2, rtol=1e-4)
    np.testing.assert_allclose(m["meta/loss"][-4:], _GOLDEN_META_LOSS, rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(m["meta/loss"], m["meta/loss/group0"])


@pytest.mark.slow  # ~22 s quiet, ~32 s under load; the meta-gradient tests cover the groups
def test_two_env_types_meta_train_one_alpha():
    """A population of two groups (Pendulum, nav2d) trains; α moves once every agent of
    both groups is ready, and each group keeps its own shapes and metrics."""
    cfg = _cfg(num_agents=2, normalise_meta_loss=True)
    envs = (registry.make("Pendulum-v1")[0], registry.make("meta/nav2d")[0])
    hp = mg.HParams.make()
    state = mg.init(cfg, envs, jax.random.key(0), hp)
    assert isinstance(state.agents, tuple) and len(state.agents) == 2
    new, m = jax.jit(lambda s: mg.train(cfg, envs, s, hp, 20))(state)
    assert int(new.meta_steps) == 5
    chex.assert_shape(new.agents[0].obs, (2, 1, 3))
    chex.assert_shape(new.agents[1].obs, (2, 1, 2))
    assert not np.allclose(new.alpha["head2"]["w"], state.alpha["head2"]["w"])
    chex.assert_tree_all_finite(new.alpha)
    g0, g1 = m["meta/grad_norm/group0"][-5:], m["meta/grad_norm/group1"][-5:]
    assert np.all(g0 > 0) and np.all(g1 > 0)
    np.testing.assert_allclose(
        m["meta/loss"], (m["meta/loss/group0"] + m["meta/loss/group1"]) / 2, rtol=1e-5
    )
    # The two groups' agents are distinct (different keys), as are their metrics.
    assert not np.allclose(m["train/actor_loss/group0"], m["train/actor_loss/group1"])


@pytest.mark.slow
def test_one_tuple_group_trains_like_a_single_env():
    cfg = _cfg(num_agents=2)
    env, _ = registry.make("Pendulum-v1")
    hp = mg.HParams.make()
    runs = []
    for e in (env, (env,)):
        state = mg.init(cfg, e, jax.random.key(0), hp)
        runs.append(jax.jit(lambda s, e=e: mg.train(cfg, e, s, hp, 20))(state))
    (single, m_single), (grouped, m_grouped) = runs
    chex.assert_trees_all_equal(single.alpha, grouped.alpha)
    chex.assert_trees_all_equal(single.agents, grouped.agents[0])
    chex.assert_trees_all_equal(m_single, m_grouped)


@pytest.mark.slow
def test_meta_training_moves_alpha_once_agents_are_ready():
    cfg = _cfg(num_agents=2)
    env, _ = registry.make("Pendulum-v1")
    hp = mg.HParams.make()
    state = mg.init(cfg, env, jax.random.key(0), hp)
    # learning_starts = 16 steps: the first 15 updates leave alpha alone.
    train = jax.jit(lambda s: mg.train(cfg, env, s, hp, 15))
    early, _ = train(state)
    chex.assert_trees_all_equal(early.alpha, state.alpha)
    assert int(early.meta_steps) == 0
    late, m = train(early)
    assert int(late.meta_steps) == 15
    assert not np.allclose(late.alpha["head2"]["w"], state.alpha["head2"]["w"])
    chex.assert_tree_all_finite(late.alpha)
    assert np.all(np.isfinite(m["meta/loss"]))


def test_save_load_round_trip(tmp_path):
    cfg = _cfg()
    alpha = mg.init_objective(cfg, jax.random.key(3))
    path = os.path.join(tmp_path, "alpha")
    mg.save(path, alpha, cfg)
    chex.assert_trees_all_equal(mg.load(path, cfg), alpha)
    assert [f for f in os.listdir(os.path.dirname(path)) if ".tmp" in f] == []


def test_load_errors(tmp_path):
    cfg = _cfg()
    tmp = str(tmp_path)
    with pytest.raises(ConfigError):
        mg.load(os.path.join(tmp, "missing"), cfg)
    path = os.path.join(tmp, "alpha")
    mg.save(path, mg.init_objective(cfg, jax.random.key(3)), cfg)
    with pytest.raises(ConfigError, match="lstm_size"):
        mg.load(path, _cfg(lstm_size=8))
    with open(path + ".msgpack", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ConfigError):
        mg.load(path, cfg)
    with open(path + ".json", "w") as f:
        f.write("{not json")
    with pytest.raises(ConfigError):
        mg.load(path, cfg)
    with open(path + ".json", "w") as f:
        f.write('{"format": "jaxrl.lpg/1"}')
    with pytest.raises(ConfigError, match="not a saved MetaGenRL objective"):
        mg.load(path, cfg)


def test_load_rejects_mismatched_shapes_in_file(tmp_path):
    """A msgpack written for other sizes under a json claiming ours is rejected."""
    cfg, other = _cfg(), _cfg(lstm_size=6)
    tmp = str(tmp_path)
    mg.save(os.path.join(tmp, "a"), mg.init_objective(cfg, jax.random.key(0)), cfg)
    mg.save(os.path.join(tmp, "b"), mg.init_objective(other, jax.random.key(0)), other)
    os.replace(os.path.join(tmp, "b.msgpack"), os.path.join(tmp, "a.msgpack"))
    with pytest.raises(ConfigError):
        mg.load(os.path.join(tmp, "a"), cfg)


def test_config_errors():
    with pytest.raises(ConfigError):
        _cfg(seq_len=0)
    with pytest.raises(ConfigError):
        _cfg(seq_len=100)  # longer than the 64-step buffer


def test_annealed_actor_loss_blends_dpg_into_the_learned_objective():
    """``p = 0`` gives DPG's actor gradient, ``p = 1`` the learned objective's, and ``p``
    between them the same blend of the two gradients (the loss is linear in ``p``)."""
    cfg = _cfg(anneal_steps=100)
    env, _ = registry.make("Pendulum-v1")
    params, windows = _population(cfg, env, 1, jax.random.key(3))
    params, windows = jax.tree.map(lambda x: x[0], (params, windows))
    alpha = mg.init_objective(cfg, jax.random.key(4))
    batch = td3.Batch(windows, jnp.zeros(()))

    def grad(fn):
        return jax.grad(lambda a: fn(cfg.agent, env, a, params, batch, None)[0])(params.actor)

    g_dpg, g_learned = grad(td3.actor_loss), grad(mg.learned_actor_loss(cfg, alpha))
    for p in (0.0, 0.3, 1.0):
        got = grad(mg.annealed_actor_loss(cfg, alpha, jnp.asarray(p)))
        want = jax.tree.map(lambda d, w, p=p: (1 - p) * d + p * w, g_dpg, g_learned)
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)
    assert not np.allclose(jax.tree.leaves(g_dpg)[0], jax.tree.leaves(g_learned)[0])


def test_anneal_progress_counts_env_steps_after_warm_up():
    cfg = _cfg(anneal_steps=100)  # learning_starts = 16
    env, _ = registry.make("Pendulum-v1")
    state = mg.init_agent(cfg, env, jax.random.key(0), mg.HParams.make())
    at = lambda n: float(mg.anneal_progress(cfg, state.replace(env_steps=jnp.int32(n))))
    assert [at(0), at(16), at(66), at(116), at(500)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert float(mg.anneal_progress(_cfg(), state)) == 1.0  # off: L_α from the start
    with pytest.raises(ConfigError, match="anneal_steps"):
        _cfg(anneal_steps=-1)


def test_annealing_keeps_meta_training_agents_on_dpg_at_first():
    """With a long anneal the agents' first actor steps are DPG's: the population equals one
    trained by the same TD3 steps with ``L_α`` never used (``p`` = 0 until warm-up ends +
    one step), while α still gets its meta-gradient."""
    cfg = _cfg(num_agents=2, anneal_steps=10**6)
    env, _ = registry.make("Pendulum-v1")
    hp = mg.HParams.make()
    state = mg.init(cfg, env, jax.random.key(0), hp)
    new, m = jit(lambda s: mg.train(cfg, env, s, hp, 20))(state)
    assert int(new.meta_steps) == 5
    assert not np.allclose(new.alpha["head2"]["w"], state.alpha["head2"]["w"])
    # The same agents trained by plain DPG (the objective's α fixed and unused).
    dpg = jax.vmap(lambda s: mg.train_agent(cfg, env, s, hp, 20, None)[0])(state.agents)
    chex.assert_trees_all_close(new.agents.params.actor, dpg.params.actor, rtol=2e-3, atol=1e-5)
