"""MR-MAML(W): the KL against distrax, the sampled weights, frozen layers in the inner step,
the meta-gradient against finite differences, ε = 0 against MAML, jit/vmap, errors."""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs.nav2d import CuedNav2D, Nav2D
from jaxrl.errors import ConfigError
from jaxrl.meta import maml, mr_maml

ENV = CuedNav2D(cue_dim=2, num_tasks=3)
SMALL = dict(meta_batch_size=2, num_traj=3, horizon=8, hidden=(4, 4))


def _state(cfg, hp, seed=0):
    """A fresh state with non-trivial means and spreads (so no term is zero by symmetry)."""
    state = mr_maml.init(cfg, ENV, jax.random.key(seed), hp)
    rng = np.random.default_rng(seed)
    log_std = jax.tree.map(
        lambda s: s + jnp.asarray(rng.normal(size=s.shape), s.dtype), state.log_std
    )
    return state.replace(log_std=log_std)


def test_kl_to_prior_is_distrax_normal_kl_summed():
    cfg = mr_maml.Config(**SMALL, frozen_layers=2)
    state = _state(cfg, mr_maml.HParams.make())
    got = mr_maml.kl_to_prior(cfg, state.params, state.log_std)
    mean = maml.frozen_layers_of(cfg, state.params)
    assert set(mean) == {"Dense_0", "Dense_1"}
    want = sum(
        float(jnp.sum(distrax.Normal(m, jnp.exp(s)).kl_divergence(distrax.Normal(0.0, 1.0))))
        for m, s in zip(jax.tree.leaves(mean), jax.tree.leaves(state.log_std), strict=True)
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_sampled_weights_replace_only_the_stochastic_layers():
    cfg = mr_maml.Config(**SMALL)
    state = _state(cfg, mr_maml.HParams.make())
    noise = jax.tree.map(jnp.ones_like, state.log_std)
    sampled = mr_maml.sample_weights(cfg, state.params, state.log_std, noise)
    torso, old = sampled["params"]["MLP_0"], state.params["params"]["MLP_0"]
    for leaf in ("kernel", "bias"):
        want = old["Dense_0"][leaf] + jnp.exp(state.log_std["Dense_0"][leaf])
        np.testing.assert_allclose(torso["Dense_0"][leaf], want, rtol=1e-6)
    same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
    same(torso["Dense_1"], old["Dense_1"])
    same(sampled["params"]["GaussianHead_0"], state.params["params"]["GaussianHead_0"])


def test_the_inner_step_leaves_frozen_layers_alone():
    hp = maml.HParams.make(inner_lr=0.5)
    task = ENV.sample_params(jax.random.key(1))
    for frozen in (0, 1, 2):
        cfg = maml.Config(**SMALL, frozen_layers=frozen)
        params = maml.init_params(cfg, ENV, jax.random.key(0), task)
        traj = maml.collect(cfg, ENV, params, task, jax.random.key(2))
        adapted = maml.adapt(cfg, ENV, params, task, traj, maml.advantages(cfg, traj, hp), 0.5)
        for i in range(2):
            kernel = lambda p, i=i: np.asarray(p["params"]["MLP_0"][f"Dense_{i}"]["kernel"])
            assert np.array_equal(kernel(adapted), kernel(params)) == (i < frozen)
        head = lambda p: np.asarray(p["params"]["GaussianHead_0"]["Dense_0"]["bias"])
        assert not np.array_equal(head(adapted), head(params))


def _fixed_batch(cfg, state, hp):
    return jax.jit(lambda s: mr_maml.collect_meta_batch(cfg, ENV, s, jax.random.key(5), hp))(state)


def test_zero_noise_gives_maml_with_frozen_layers():
    """ε = 0: the surrogate is MAML's meta-loss at the means (same data), and the loss adds
    β times the KL."""
    cfg = mr_maml.Config(**SMALL)
    hp = mr_maml.HParams.make(beta=0.3)
    state = _state(cfg, hp)
    data, noise = _fixed_batch(cfg, state, hp)
    zero = jax.tree.map(jnp.zeros_like, noise)
    loss, parts = mr_maml.meta_loss(cfg, ENV, state.params, state.log_std, data, zero, hp)
    frozen_maml = maml.Config(**SMALL, frozen_layers=1)
    want = maml.meta_loss(frozen_maml, ENV, state.params, data, hp)
    np.testing.assert_allclose(parts["surrogate"], want, rtol=1e-6)
    np.testing.assert_allclose(loss, want + 0.3 * parts["kl"], rtol=1e-6)


def test_meta_gradient_matches_finite_differences_and_reaches_every_leaf():
    """Float64, fixed data and noise: the directional derivative of the meta-loss along a
    random direction in (μ, φ, log σ) against a central difference; every leaf's gradient
    is non-zero."""
    with jax.enable_x64(True):
        cfg = mr_maml.Config(**SMALL)
        hp = mr_maml.HParams.make(beta=0.05)
        state = _state(cfg, hp)
        data, noise = _fixed_batch(cfg, state, hp)
        to64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)  # noqa: E731
        params, log_std, hp64 = to64(state.params), to64(state.log_std), to64(hp)
        data = jax.tree.map(
            lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x,
            data,
        )
        noise = to64(noise)
        loss = jax.jit(lambda p, s: mr_maml.meta_loss(cfg, ENV, p, s, data, noise, hp64)[0])
        grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, log_std)
        for g in jax.tree.leaves(grads):
            assert float(jnp.max(jnp.abs(g))) > 0.0
        rng = np.random.default_rng(7)
        direction = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), (params, log_std))
        h = 1e-5
        shift = lambda sign: jax.tree.map(  # noqa: E731
            lambda x, d: x + sign * h * d, (params, log_std), direction
        )
        fd = (loss(*shift(1.0)) - loss(*shift(-1.0))) / (2 * h)
        analytic = sum(
            float(jnp.sum(g * d))
            for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
        )
        np.testing.assert_allclose(analytic, float(fd), rtol=1e-6)
    assert not jax.config.jax_enable_x64


def test_update_vmapped_over_seeds_equals_a_loop():
    cfg = mr_maml.Config(**SMALL)
    hp = mr_maml.HParams.make(beta=1e-3)

    def run(key):
        state, metrics = mr_maml.train(cfg, ENV, mr_maml.init(cfg, ENV, key, hp), hp, 3)
        return state.params, state.log_std, state.opt_state, metrics

    keys = jax.random.split(jax.random.key(0), 2)
    batched = jax.jit(jax.vmap(run))(keys)
    single = jax.jit(run)
    for i in range(2):
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6),
            batched, single(keys[i]),
        )  # fmt: skip


@pytest.mark.parametrize(
    "make",
    [
        lambda: mr_maml.Config(**SMALL, frozen_layers=0),
        lambda: mr_maml.Config(**SMALL, frozen_layers=3),
        lambda: mr_maml.Config(**SMALL, outer="trpo"),
        lambda: mr_maml.Config(**SMALL, init_std=0.0),
        lambda: maml.Config(**SMALL, frozen_layers=-1),
        lambda: maml.Config(**SMALL, frozen_layers=1, outer="reptile", num_inner_steps=2),
        lambda: mr_maml.HParams.make(beta=-1e-3),
        lambda: mr_maml.HParams.make(beta="big"),
        lambda: mr_maml.HParams.make(inner_lr=-0.1),
        lambda: mr_maml.HParams.make(step=1.0),
    ],
)
def test_bad_input_raises_config_error(make):
    with pytest.raises(ConfigError):
        make()


@pytest.mark.learning
def test_learns_to_adapt_on_nav2d():
    """MAML's small learning check (tests/meta/test_maml.py) with the first layer stochastic,
    regularised and frozen: after 40 meta-iterations one inner step gains > 10 per episode
    on new goals, and the KL term has pulled the weights' spread up from its start."""
    env = Nav2D()
    cfg = mr_maml.Config(meta_batch_size=5, num_traj=10, horizon=100, hidden=(32, 32))
    hp = mr_maml.HParams.make(inner_lr=0.1, learning_rate=1e-2, beta=1e-3)
    state = mr_maml.init(cfg, env, jax.random.key(0), hp)
    evaluate = jax.jit(lambda s: mr_maml.evaluate(cfg, env, s, jax.random.key(7), hp, 20, 1))
    before = np.asarray(evaluate(state)).mean(0)
    state, metrics = jax.jit(lambda s: mr_maml.train(cfg, env, s, hp, 40))(state)
    after = np.asarray(evaluate(state)).mean(0)
    assert after[1] - after[0] > 10.0, (before, after)
    assert after[1] > before[1] + 10.0, (before, after)
    assert float(metrics["train/mean_std"][-1]) > 1.2 * cfg.init_std
