"""K-FAC (``jaxrl.optim.kfac``): factors and natural gradients against an explicit float64
computation, the layer taps against autodiff, the sampled Fisher against the exact one,
and everything against kfac-jax 0.0.8 where it imports (jax 0.10: dense and conv blocks,
and one ACKTR step against ``kfac_jax.Optimizer``)."""

from __future__ import annotations

import functools
import importlib

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs import spaces
from jaxrl.networks.actor_critic import ActorCritic
from jaxrl.networks.torsos import CNN
from jaxrl.optim import kfac

try:  # kfac-jax 0.0.8 does not import with jax 0.11 (it reads removed jax.core names)
    import kfac_jax
except (AttributeError, ImportError, TypeError):
    kfac_jax = None

needs_kfac_jax = pytest.mark.skipif(kfac_jax is None, reason="kfac-jax does not import")

# ---------------------------------------------------------------- a tiny net, by hand

B, D_IN, D_H, D_A = 6, 3, 4, 2


class Tiny(nn.Module):
    """A shared tanh layer, then policy logits ``[B, 2]`` and a value ``[B]``."""

    @nn.compact
    def __call__(self, obs):
        h = jnp.tanh(nn.Dense(D_H, name="layer1")(obs))
        return nn.Dense(D_A, name="policy")(h), nn.Dense(1, name="value")(h)[:, 0]


def _tiny_predictive(params, obs):
    logits, value = Tiny().apply(params, obs)
    return kfac.Categorical(logits), kfac.Normal(value, 1.0)


def _tiny_loss(params, batch):
    """A2C's loss on the tiny net (vf_coef 0.5, ent_coef 0.01)."""
    obs, action, adv, target = batch
    logits, value = Tiny().apply(params, obs)
    logp = jax.nn.log_softmax(logits)
    pg = -jnp.mean(logp[jnp.arange(B), action] * adv)
    entropy = -jnp.mean(jnp.sum(jnp.exp(logp) * logp, -1))
    return pg + 0.5 * 0.5 * jnp.mean((value - target) ** 2) - 0.01 * entropy


def _tiny_batch(key):
    k = jax.random.split(key, 4)
    return (
        jax.random.normal(k[0], (B, D_IN)),
        jax.random.randint(k[1], (B,), 0, D_A),
        jax.random.normal(k[2], (B,)),
        jax.random.normal(k[3], (B,)),
    )


def _explicit_factors(params, obs):
    """The exact K-FAC factors ``(A, G)`` of each layer, in float64 numpy.

    ``A = mean(ā āᵀ)`` with ``ā = [input, 1]``; ``G = mean(Jᵀ F_out J)`` with ``J`` the
    Jacobian of the outputs w.r.t. the layer's pre-activation and ``F_out`` the output
    Fisher: ``diag(p) − p pᵀ`` for the logits, ``1/σ² = 1`` for the value.
    """
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
    x = np.asarray(obs, np.float64)
    h = np.tanh(x @ p["layer1"]["kernel"] + p["layer1"]["bias"])
    logits = h @ p["policy"]["kernel"] + p["policy"]["bias"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    f_logits = np.stack([np.diag(q) - np.outer(q, q) for q in probs])  # [B, 2, 2]
    ones = np.ones((B, 1))
    a1 = np.concatenate([x, ones], 1)
    a2 = np.concatenate([h, ones], 1)
    dtanh = 1.0 - h**2  # [B, 4]
    j_logits = p["policy"]["kernel"].T[None] * dtanh[:, None, :]  # d logits / d s1: [B, 2, 4]
    j_value = p["value"]["kernel"].T[None] * dtanh[:, None, :]  # d value / d s1: [B, 1, 4]
    g1 = np.einsum("bki,bkl,blj->ij", j_logits, f_logits, j_logits)
    g1 += np.einsum("bki,bkj->ij", j_value, j_value)
    return {
        "layer1": (a1.T @ a1 / B, g1 / B),
        "policy": (a2.T @ a2 / B, f_logits.mean(0)),
        "value": (a2.T @ a2 / B, np.ones((1, 1))),
    }


def _explicit_natural_gradient(factors, grad, damping):
    """``(A + π√λ I)⁻¹ ∇ (G + √λ/π I)⁻¹`` (π-adjusted factored damping,
    ``π = sqrt((tr A / dim A) / (tr G / dim G))``, Martens & Grosse 2015 §6.3); exactly
    ``(A ⊗ G + λI)⁻¹ ∇`` when ``G`` is ``1 x 1``."""
    a, g = factors
    v = np.concatenate([np.asarray(grad["kernel"]), np.asarray(grad["bias"])[None]], 0)
    v = v.astype(np.float64)
    if g.size == 1:
        m = np.kron(a, g) + damping * np.eye(a.shape[0] * g.shape[0])
        x = np.linalg.solve(m, v.reshape(-1)).reshape(v.shape)
    else:
        pi = np.sqrt((np.trace(a) / a.shape[0]) / (np.trace(g) / g.shape[0]))
        a_inv = np.linalg.inv(a + pi * np.sqrt(damping) * np.eye(a.shape[0]))
        g_inv = np.linalg.inv(g + np.sqrt(damping) / pi * np.eye(g.shape[0]))
        x = a_inv @ v @ g_inv
    return x[:-1], x[-1]


@pytest.fixture(scope="module")
def tiny():
    batch = _tiny_batch(jax.random.key(1))
    params = Tiny().init(jax.random.key(0), batch[0])
    grads = jax.jit(jax.grad(_tiny_loss))(params, batch)
    layers = kfac.find_layers(_tiny_predictive, params, batch[0])
    return params, batch, grads, layers


def _kfac_step(layers, predictive, mode, params, obs, grads, damping, max_step, max_kl):
    """The K-FAC pipeline: factors (decay 0.9, first update), inverses, ``Δθ = F̂⁻¹ g`` and
    the trust-region step size."""
    state = kfac.init(layers)
    state = kfac.update_curvature(
        layers, state, jax.random.key(3), predictive, params, obs, 0.9, mode
    )
    state = kfac.update_inverses(layers, state, damping)
    nat = kfac.natural_gradient(layers, state, grads)
    step, quad = kfac.trust_region_step_size(grads, nat, max_step, max_kl)
    return state, nat, step, quad


_kfac_step_jit = jax.jit(_kfac_step, static_argnums=(0, 1, 2))


def test_natural_gradient_matches_explicit_kronecker_computation(tiny):
    params, batch, grads, layers = tiny
    obs, damping = batch[0], 0.05
    assert [layer.path for layer in layers] == [("layer1",), ("policy",), ("value",)]
    f32 = jnp.float32
    args = (layers, _tiny_predictive, "fisher_exact", params, obs, grads, f32(damping))
    args += (f32(1.0), f32(1e-3))
    state, nat, step, quad = _kfac_step(*args)  # no jit

    factors = _explicit_factors(params, obs)
    for i, layer in enumerate(["layer1", "policy", "value"]):
        np.testing.assert_allclose(state.a[i], factors[layer][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.g[i], factors[layer][1], rtol=1e-4, atol=1e-6)
        want_w, want_b = _explicit_natural_gradient(factors[layer], grads["params"][layer], damping)
        got = nat["params"][layer]
        np.testing.assert_allclose(got["kernel"], want_w, rtol=2e-4, atol=1e-5, err_msg=layer)
        np.testing.assert_allclose(got["bias"], want_b, rtol=2e-4, atol=1e-5, err_msg=layer)
    # the quadratic form is <g, F̂⁻¹ g>
    np.testing.assert_allclose(quad, kfac.tree_vdot(grads, nat), rtol=1e-6)
    # jit equals no-jit for the whole K-FAC step
    chex.assert_trees_all_close(
        _kfac_step_jit(*args), (state, nat, step, quad), rtol=1e-4, atol=1e-6
    )


def test_moving_average_is_bias_corrected(tiny):
    """The first update sets the factors to the batch's; the second mixes at ``decay``."""
    params, batch, _, layers = tiny
    update = functools.partial(
        kfac.update_curvature, layers, predictive_fn=_tiny_predictive, params=params,
        key=jax.random.key(0), mode="fisher_exact",
    )  # fmt: skip
    other = batch[0][::-1] * 2.0
    first = update(curvature=kfac.init(layers), inputs=batch[0], decay=0.5)
    alone = update(curvature=kfac.init(layers), inputs=other, decay=0.5)
    second = update(curvature=first, inputs=other, decay=0.5)
    np.testing.assert_allclose(first.weight, 1.0)
    np.testing.assert_allclose(second.weight, 1.5)
    for i in range(len(layers)):  # (0.5 · 1 · A_1 + A_2) / 1.5
        want = (0.5 * first.a[i] + alone.a[i]) / 1.5
        np.testing.assert_allclose(second.a[i], want, rtol=1e-5, atol=1e-7)
        want = (0.5 * first.g[i] + alone.g[i]) / 1.5
        np.testing.assert_allclose(second.g[i], want, rtol=1e-5, atol=1e-7)


def test_sampled_fisher_averages_to_the_exact_one(tiny):
    """``fisher_gradients`` (ACKTR's: outputs drawn from the model) is unbiased for G."""
    params, batch, _, layers = tiny
    obs, state = batch[0], kfac.init(layers)

    def sample(key):  # decay 0: this batch's estimate alone
        s = kfac.update_curvature(layers, state, key, _tiny_predictive, params, obs, 0.0)
        return s.g

    mean = [g.mean(0) for g in jax.jit(jax.vmap(sample))(jax.random.split(jax.random.key(5), 4000))]
    factors = _explicit_factors(params, obs)
    for got, layer in zip(mean, ["layer1", "policy", "value"], strict=True):
        want = factors[layer][1]
        np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max(), err_msg=layer)


# ---------------------------------------------------------------- conv layers, taps


class ConvNet(nn.Module):
    """Two convolutions (the second strided), a dense layer, policy and value heads."""

    patches: bool = True

    @nn.compact
    def __call__(self, obs):
        h = CNN(convs=((4, 3, 1), (4, 2, 2)), hidden=(8,), patches=self.patches)(obs)
        return distrax.Categorical(logits=nn.Dense(3)(h)), nn.Dense(1)(h)[:, 0]


def _actor_critic(torso, patches=True):
    """A network ``obs -> (categorical policy, value [B])`` and an observation batch."""
    if torso == "cnn":
        return ConvNet(patches), jnp.zeros((5, 6, 7, 2))
    return ActorCritic(spaces.Discrete(3), hidden=(8, 8)), jnp.zeros((5, 4))


def _predictive(net):
    def fn(params, obs):
        dist, value = net.apply(params, obs)
        return kfac.Categorical(dist.logits), kfac.Normal(value, 1.0)

    return fn


@pytest.mark.parametrize("torso", ["mlp", "cnn"])
def test_taps_reproduce_every_weight_gradient(torso):
    """``Σ_{b,t} ā δᵀ`` from the recorded inputs (conv: image patches) and perturbation
    cotangents is autodiff's ``[∇W; ∇b]`` of ``<c, outputs>``, for each layer: the taps
    line up with the parameters, patch order included."""
    net, obs = _actor_critic(torso)
    obs = jax.random.normal(jax.random.key(0), obs.shape)
    params = net.init(jax.random.key(1), obs)
    predictive = _predictive(net)
    layers = kfac.find_layers(predictive, params, obs)
    if torso == "cnn":  # 2 convs (SAME padding), a dense layer, 2 heads
        assert [layer.positions for layer in layers] == [6 * 7, 3 * 4, 1, 1, 1]
        assert [layer.in_dim for layer in layers[:2]] == [3 * 3 * 2 + 1, 2 * 2 * 4 + 1]
    else:  # 2 torsos x 2 layers, 2 heads
        assert [layer.positions for layer in layers] == [1] * 6
    cots = [
        jax.random.normal(jax.random.key(2), (5, 3)),
        jax.random.normal(jax.random.key(3), (5,)),
    ]

    def objective(params, perturbations):
        dists, taps = kfac._apply_tapped(predictive, params, obs, perturbations)
        value = sum(jnp.vdot(c, d.output()) for c, d in zip(cots, dists, strict=True))
        return value, [x for _, x, _ in taps]

    zeros = [jnp.zeros((5, *layer.out_shape)) for layer in layers]
    (grads, deltas), xs = jax.grad(objective, argnums=(0, 1), has_aux=True)(params, zeros)
    for layer, x, delta in zip(layers, xs, deltas, strict=True):
        x = x.reshape(-1, x.shape[-1])
        x = jnp.concatenate([x, jnp.ones((x.shape[0], 1))], 1)
        got = x.T @ delta.reshape(-1, layer.out_dim)
        g = grads["params"]
        for name in layer.path:
            g = g[name]
        want = jnp.concatenate([g["kernel"].reshape(-1, layer.out_dim), g["bias"][None]], 0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=str(layer.path))


def test_conv_by_patches_or_by_xla_gives_the_same_curvature():
    """The factors do not depend on how the convolution is computed."""
    (fast, obs), (xla, _) = _actor_critic("cnn", True), _actor_critic("cnn", False)
    obs = jax.random.normal(jax.random.key(0), obs.shape)
    params = fast.init(jax.random.key(1), obs)
    states = []
    for net in (fast, xla):
        layers = kfac.find_layers(_predictive(net), params, obs)
        state = kfac.update_curvature(
            layers, kfac.init(layers), jax.random.key(2), _predictive(net), params, obs, 0.9
        )
        states.append((layers, state))
    assert states[0][0] == states[1][0]
    chex.assert_trees_all_close(states[0][1], states[1][1], rtol=1e-4, atol=1e-6)


def test_find_layers_rejects_what_it_cannot_factor():
    space = spaces.Box(-1.0, 1.0, (2,))
    net = ActorCritic(space, hidden=(4,))  # a Gaussian policy: a free log-std parameter
    params = net.init(jax.random.key(0), jnp.zeros((3, 2)))

    def gaussian(params, obs):
        dist, value = net.apply(params, obs)
        return kfac.Normal(dist.mean(), 1.0), kfac.Normal(value, 1.0)

    with pytest.raises(ValueError, match="no block for parameters.*log_std"):
        kfac.find_layers(gaussian, params, jnp.zeros((3, 2)))

    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x):
            layer = nn.Dense(2)
            return layer(layer(x))

    params = Twice().init(jax.random.key(0), jnp.zeros((3, 2)))
    twice = lambda p, x: (kfac.Categorical(Twice().apply(p, x)),)
    with pytest.raises(ValueError, match="runs more than once"):
        kfac.find_layers(twice, params, jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="estimation_mode"):
        layers = kfac.find_layers(_tiny_predictive, *_tiny_params_obs())
        kfac.update_curvature(
            layers, kfac.init(layers), jax.random.key(0), _tiny_predictive,
            *_tiny_params_obs(), 0.9, "fisher_empirical",
        )  # fmt: skip


def _tiny_params_obs():
    obs = jnp.ones((B, D_IN))
    return Tiny().init(jax.random.key(0), obs), obs


def test_pi_adjusted_factors_dead_layer_and_scalar_factor():
    """A zero factor (a dead layer) falls back to ``√λ I`` for both; with a ``1 x 1`` ``G``
    the damped product is exactly ``A ⊗ G + λ I``."""
    a = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    dead = kfac.pi_adjusted_factors(a, jnp.zeros((3, 3)), jnp.float32(0.04))
    np.testing.assert_allclose(dead[0], 0.2 * np.eye(2))
    np.testing.assert_allclose(dead[1], 0.2 * np.eye(3))
    a_hat, g_hat = kfac.pi_adjusted_factors(a, jnp.array([[3.0]]), jnp.float32(0.1))
    np.testing.assert_allclose(np.kron(a_hat, g_hat), 3.0 * a + 0.1 * np.eye(2), rtol=1e-6)


def test_psd_inverses_match_numpy():
    mats = []
    sizes = [(1, 1.0), (3, 1e-1), (9, 1e-3), (17, 1e-4), (kfac.BLOCK + 3, 1e-3)]
    for i, (d, ridge) in enumerate(sizes):
        x = jax.random.normal(jax.random.key(i), (d, 2 * d))
        mats.append(x @ x.T / (2 * d) + ridge * jnp.eye(d))  # condition numbers up to ~1e5
    got = jax.jit(kfac.psd_inverses)(mats)
    for m, inv in zip(mats, got, strict=True):
        want = np.linalg.inv(np.asarray(m, np.float64))
        np.testing.assert_allclose(inv, want, atol=2e-4 * np.abs(want).max())


@pytest.mark.parametrize("d", [kfac.BLOCK, 2 * kfac.BLOCK + 44])
def test_blocked_cholesky_and_triangular_inverse_match_numpy(d):
    """One block (column by column) and three blocks, the last partial; batched."""
    x = jax.random.normal(jax.random.key(d), (2, d, 2 * d))
    m = x @ jnp.swapaxes(x, -1, -2) / (2 * d) + 1e-2 * jnp.eye(d)[None]
    chol = jax.jit(kfac.cholesky)(m)
    want = np.linalg.cholesky(np.asarray(m, np.float64))
    np.testing.assert_allclose(chol, want, atol=1e-4 * np.abs(want).max())
    inv = jax.jit(kfac.lower_triangular_inverse)(chol)
    want = np.linalg.inv(np.asarray(chol, np.float64))
    np.testing.assert_allclose(inv, want, atol=1e-4 * np.abs(want).max())
    assert np.all(np.triu(np.asarray(inv), 1) == 0)


def test_trust_region_step_size_by_hand():
    grads = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[3.0]])}
    nat = {"a": jnp.array([0.5, 1.0]), "b": jnp.array([[0.5]])}  # <g, F⁻¹g> = 0.5 + 2 + 1.5 = 4
    step_fn = jax.jit(kfac.trust_region_step_size)
    step, quad = step_fn(grads, nat, jnp.float32(0.25), jnp.float32(0.01))
    np.testing.assert_allclose(quad, 4.0)
    np.testing.assert_allclose(step, np.sqrt(2 * 0.01 / 4.0), rtol=1e-6)  # 0.0707 < 0.25
    np.testing.assert_allclose(0.5 * step**2 * quad, 0.01, rtol=1e-5)  # predicted KL = δ
    step, _ = step_fn(grads, nat, jnp.float32(0.05), jnp.float32(0.01))
    np.testing.assert_allclose(step, 0.05)  # η_max binds
    zeros = jax.tree.map(jnp.zeros_like, grads)
    step, quad = step_fn(zeros, zeros, jnp.float32(0.25), jnp.float32(0.01))
    assert quad == 0.0 and step == np.float32(0.25)  # no NaN at g = 0


# ---------------------------------------------------------------- against kfac-jax 0.0.8


def _patch_kfac_jax():
    """kfac-jax 0.0.8's graph tracer unpacks ``get_bind_params`` as ``(subfuns, params)``;
    jax >= 0.9.2 returns the params alone. Its main branch's fix, installed for the test."""
    matcher = importlib.import_module("kfac_jax._src.tag_graph_matcher")

    def eval_jaxpr_eqn(eqn, in_values):
        bind_params = eqn.primitive.get_bind_params(eqn.params)
        with matcher.jex.source_info_util.user_context(eqn.source_info.traceback):
            output = eqn.primitive.bind(*in_values, **bind_params)
        return output if isinstance(output, list) else [output]

    eqn = jax.make_jaxpr(lambda x: -x)(1.0).jaxpr.eqns[0]
    try:
        matcher.eval_jaxpr_eqn(eqn, [jnp.float32(1.0)])
    except ValueError:  # "not enough values to unpack": the pre-0.9.2 unpacking
        matcher.eval_jaxpr_eqn = eval_jaxpr_eqn


def _registered(predictive):
    """``predictive_fn`` with its outputs registered with kfac-jax instead."""

    def fn(params, obs):
        for d in predictive(params, obs):
            if isinstance(d, kfac.Categorical):
                kfac_jax.register_categorical_predictive_distribution(d.logits)
            else:
                mean = d.mean.reshape(d.mean.shape[0], -1)
                kfac_jax.register_normal_predictive_distribution(mean, variance=d.variance)
        return jnp.zeros(())

    return fn


@needs_kfac_jax
@pytest.mark.parametrize("torso", ["mlp", "cnn"])
def test_natural_gradient_equals_kfac_jax(torso):
    """Two curvature updates (exact Fisher, decay 0.9) then ``(F̂ + λ I)⁻¹ g`` with
    π-adjusted damping: ours against kfac-jax's ``BlockDiagonalCurvature`` (dense blocks;
    conv blocks on the XLA-convolution twin of the network, ours on patch matmuls)."""
    _patch_kfac_jax()
    net, obs = _actor_critic(torso)
    keys = jax.random.split(jax.random.key(0), 4)
    obs = [jax.random.normal(k, obs.shape) for k in keys[:2]]
    params = net.init(keys[2], obs[0])
    grads = jax.tree.map(lambda x: jax.random.normal(keys[3], x.shape), params)
    damping = jnp.float32(0.01)

    layers = kfac.find_layers(_predictive(net), params, obs[0])
    ours = kfac.init(layers)
    for x in obs:
        ours = kfac.update_curvature(
            layers, ours, keys[0], _predictive(net), params, x, 0.9, "fisher_exact"
        )
    ours = kfac.update_inverses(layers, ours, damping)
    got = kfac.natural_gradient(layers, ours, grads)

    twin = _actor_critic(torso, patches=False)[0]
    with jax.numpy_rank_promotion("allow"):
        est = kfac_jax.BlockDiagonalCurvature(
            func=_registered(_predictive(twin)), default_estimation_mode="fisher_exact"
        )
        est.finalize((params, obs[0]))
        assert len(est.blocks) == len(layers)
        if torso == "cnn":
            conv = [b for b in est.blocks if isinstance(b, kfac_jax.Conv2DTwoKroneckerFactored)]
            assert len(conv) == 2
        state = est.init(keys[0], (params, obs[0]), None, None)

        @jax.jit  # one compile, not kfac-jax's eager tracing per call
        def theirs(state, obs):
            for x in obs:
                state = est.update_curvature_matrix_estimate(
                    state, ema_old=0.9, ema_new=1.0, identity_weight=damping,
                    batch_size=x.shape[0], rng=keys[0], func_args=(params, x),
                )  # fmt: skip
            return est.multiply_matpower(
                state, grads, identity_weight=damping, power=-1, exact_power=False,
                use_cached=False, pmap_axis_name=None,
            )  # fmt: skip

        want = theirs(state, obs)
    chex.assert_trees_all_close(got, want, rtol=1e-3, atol=5e-5)


@needs_kfac_jax
def test_step_equals_kfac_jax_optimizer_with_norm_constraint_two_delta(tiny):
    """ACKTR's ``θ − min(η_max, sqrt(2δ / gᵀF̂⁻¹g)) F̂⁻¹g`` is kfac-jax's own optimiser
    with ``norm_constraint = 2δ``, ``learning_rate = η_max`` and no momentum."""
    _patch_kfac_jax()
    params, batch, grads, layers = tiny
    lr, damping, max_kl = 0.5, 0.05, 1e-4
    registered = _registered(_tiny_predictive)

    def loss(params, batch):
        registered(params, batch[0])
        return _tiny_loss(params, batch)

    opt = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss),
        l2_reg=0.0,
        norm_constraint=2 * max_kl,
        num_burnin_steps=0,
        curvature_ema=0.9,
        inverse_update_period=1,
        estimation_mode="fisher_exact",
        multi_device=False,
    )
    with jax.numpy_rank_promotion("allow"):
        opt_state = opt.init(params, jax.random.key(2), batch)
        copy = functools.partial(jax.tree.map, jnp.copy)  # its step donates its arguments
        want, _, stats = opt.step(
            copy(params), opt_state, jax.random.key(3), batch=copy(batch),
            learning_rate=jnp.float32(lr), momentum=jnp.float32(0.0),
            damping=jnp.float32(damping),
        )  # fmt: skip

    f32 = jnp.float32
    _, nat, step, quad = _kfac_step_jit(
        layers, _tiny_predictive, "fisher_exact", params, batch[0], grads, f32(damping),
        f32(lr), f32(max_kl),
    )  # fmt: skip
    got = jax.tree.map(lambda p, d: p - step * d, params, nat)
    assert step < lr  # the trust region binds
    np.testing.assert_allclose(quad * lr**2, stats["scaled_grad_norm_sq"], rtol=1e-4)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)
