"""Tests of ``jaxrl.networks``: shapes, distributions of the heads, init, actor-critic wiring."""

from __future__ import annotations

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs import spaces
from jaxrl.networks import (
    CNN,
    MLP,
    ActorCritic,
    CategoricalHead,
    GaussianHead,
    TanhGaussianHead,
    ValueHead,
)
from jaxrl.networks.torsos import patch_conv

KEY = jax.random.key(0)


def _num_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _normal_log_pdf(x, mean, std):
    x, mean, std = (np.asarray(a, np.float64) for a in (x, mean, std))
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


# ----------------------------------------------------------------------------- torsos


@pytest.mark.parametrize("batch_shape", [(), (5,), (3, 5)])
def test_mlp_shapes(batch_shape):
    mlp = MLP(hidden=(32, 16))
    x = jnp.ones((*batch_shape, 7))
    params = jax.eval_shape(mlp.init, KEY, x)  # shapes only: no compile, no compute
    assert jax.eval_shape(mlp.apply, params, x).shape == (*batch_shape, 16)
    kernels = [params["params"][f"Dense_{i}"]["kernel"].shape for i in range(2)]
    assert kernels == [(7, 32), (32, 16)]


def test_mlp_activation_is_applied():
    x = jax.random.normal(KEY, (9, 4)) * 10.0
    tanh_out = MLP((8,), "tanh").apply(MLP((8,), "tanh").init(KEY, x), x)
    assert np.all(np.abs(tanh_out) <= 1.0)
    relu = MLP((8,), "relu")
    relu_out = relu.apply(relu.init(KEY, x), x)
    assert np.all(relu_out >= 0.0) and np.any(relu_out > 1.0)
    with pytest.raises(ValueError, match="unknown activation"):
        MLP((8,), "nope").init(KEY, x)


@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 3)])
def test_cnn_shapes_on_10x10x4_images(batch_shape):
    cnn = CNN(hidden=(32,))
    x = jnp.zeros((*batch_shape, 10, 10, 4))
    params = jax.eval_shape(cnn.init, KEY, x)
    assert jax.eval_shape(cnn.apply, params, x).shape == (*batch_shape, 32)
    # One 3x3 SAME conv with 16 channels, then a dense layer on the 10*10*16 features.
    assert params["params"]["Conv_0"]["kernel"].shape == (3, 3, 4, 16)
    assert params["params"]["MLP_0"]["Dense_0"]["kernel"].shape == (10 * 10 * 16, 32)


def test_cnn_batch_elements_are_independent():
    """Flattening the batch and restoring it must not mix images."""
    cnn = CNN(hidden=(8,))
    x = jax.random.uniform(KEY, (2, 3, 10, 10, 4))
    params = cnn.init(KEY, x)
    batched = cnn.apply(params, x)
    np.testing.assert_allclose(batched[1, 2], cnn.apply(params, x[1, 2]), rtol=1e-5, atol=1e-6)


def test_nature_cnn_shapes():
    cnn = CNN(convs=((32, 8, 4), (64, 4, 2), (64, 3, 1)), hidden=(512,))
    x = jnp.zeros((2, 84, 84, 4))
    params = jax.eval_shape(cnn.init, KEY, x)
    out = jax.eval_shape(cnn.apply, params, x)
    assert out.shape == (2, 512)


@pytest.mark.parametrize(
    "image, window, stride, padding",
    [(10, 3, 1, "SAME"), (84, 8, 4, "VALID"), (20, 4, 2, "SAME"), (9, 3, 2, ((1, 0), (2, 1)))],
)
def test_patch_conv_and_its_gradients_equal_xla_convolution(image, window, stride, padding):
    """Values and both gradients (input and kernel) of the patch convolution against XLA's
    convolution, on random NHWC images and HWIO kernels."""
    key_x, key_k, key_g = jax.random.split(KEY, 3)
    x = jax.random.normal(key_x, (3, image, image, 5))
    k = jax.random.normal(key_k, (window, window, 5, 7)) / window
    nhwc = ("NHWC", "HWIO", "NHWC")

    def xla(x, k):
        dims = jax.lax.conv_dimension_numbers(x.shape, k.shape, nhwc)
        return jax.lax.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=dims)

    def patches(x, k):
        return patch_conv(x, k, (stride, stride), padding)

    want = xla(x, k)
    np.testing.assert_allclose(patches(x, k), want, rtol=1e-4, atol=1e-4)
    cotangent = jax.random.normal(key_g, want.shape)
    grad_xla = jax.vjp(xla, x, k)[1](cotangent)
    grad_patches = jax.vjp(patches, x, k)[1](cotangent)
    for got, expected in zip(grad_patches, grad_xla, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_cnn_equals_the_same_parameters_under_xla_convolution():
    """The torso (patch convolutions) against flax's own convolution with the same params."""
    convs = ((8, 4, 2), (6, 3, 1))
    x = jax.random.uniform(KEY, (2, 20, 20, 3))
    params = CNN(convs=convs, hidden=(16,)).init(KEY, x)

    class XlaCNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i, (features, window, stride) in enumerate(convs):
                x = nn.relu(
                    nn.Conv(features, (window, window), (stride, stride), name=f"Conv_{i}")(x)
                )
            x = x.reshape((x.shape[0], -1))
            return nn.relu(nn.Dense(16, name="Dense_0")(x))

    theirs = {"params": {**params["params"], "Dense_0": params["params"]["MLP_0"]["Dense_0"]}}
    del theirs["params"]["MLP_0"]
    np.testing.assert_allclose(
        CNN(convs=convs, hidden=(16,)).apply(params, x),
        XlaCNN().apply(theirs, x),
        rtol=1e-4,
        atol=1e-5,
    )


def test_patch_conv_rejects_grouped_convolution():
    with pytest.raises(ValueError, match="feature_group_count"):
        patch_conv(
            jnp.ones((1, 5, 5, 4)), jnp.ones((3, 3, 2, 4)), (1, 1), "SAME", feature_group_count=2
        )


# ----------------------------------------------------------------------------- heads


def test_categorical_head_log_prob_equals_log_softmax():
    head = CategoricalHead(num_actions=5)
    x = jax.random.normal(KEY, (6, 3)) * 30.0  # large inputs so the logits are not ~0
    params = head.init(KEY, x)
    dist = head.apply(params, x)
    assert isinstance(dist, distrax.Categorical)
    assert dist.batch_shape == (6,)
    dense = params["params"]["Dense_0"]
    logits = np.asarray(x, np.float64) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    log_softmax = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    actions = jnp.array([0, 1, 2, 3, 4, 2])
    np.testing.assert_allclose(
        dist.log_prob(actions), log_softmax[np.arange(6), actions], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(jax.nn.log_softmax(dist.logits), log_softmax, rtol=1e-5, atol=1e-6)


def test_gaussian_head_log_std_is_state_independent():
    head = GaussianHead(action_dim=3, log_std_init=-0.5)
    x = jax.random.normal(KEY, (4, 6)) * 50.0
    params = head.init(KEY, x)
    assert params["params"]["log_std"].shape == (3,)
    params["params"]["log_std"] = jnp.array([-1.0, 0.0, 0.5])
    dist = head.apply(params, x)
    assert isinstance(dist, distrax.MultivariateNormalDiag)
    assert dist.batch_shape == (4,) and dist.event_shape == (3,)
    std = np.asarray(dist.stddev())
    np.testing.assert_allclose(std, np.broadcast_to(np.exp([-1.0, 0.0, 0.5]), (4, 3)), rtol=1e-6)
    # The mean does depend on the state.
    mean = np.asarray(dist.mean())
    assert not np.allclose(mean[0], mean[1])
    # log_prob is the sum of independent normal log-densities.
    a = jnp.array([[0.1, -0.2, 0.3]] * 4)
    want = _normal_log_pdf(a, mean, std).sum(-1)
    np.testing.assert_allclose(dist.log_prob(a), want, rtol=1e-5)


def test_gaussian_head_initial_log_std():
    head = GaussianHead(action_dim=2, log_std_init=-0.5)
    params = head.init(KEY, jnp.ones((1, 3)))
    np.testing.assert_allclose(params["params"]["log_std"], [-0.5, -0.5])


def _tanh_head_params(head, x):
    """Params with a large output kernel, so the pre-tanh means reach the saturated range."""
    params = head.init(KEY, x)
    dense = params["params"]["Dense_0"]
    dense["kernel"] = dense["kernel"] * 300.0
    return params


def _sample_and_log_prob(dist, key):
    # distrax's sample_and_log_prob broadcasts by rank promotion internally (its Normal adds
    # a [1, ...] sample axis to [...] params), so it needs numpy semantics here.
    with jax.numpy_rank_promotion("allow"):
        return dist.sample_and_log_prob(seed=key)


def test_tanh_gaussian_samples_lie_in_open_interval():
    head = TanhGaussianHead(action_dim=2)
    x = jax.random.normal(KEY, (256, 5))
    dist = head.apply(head.init(KEY, x), x)
    assert dist.event_shape == (2,)
    samples, log_prob = _sample_and_log_prob(dist, jax.random.key(1))
    np.testing.assert_array_equal(dist.sample(seed=jax.random.key(1)), samples)
    assert samples.shape == (256, 2) and log_prob.shape == (256,)
    assert np.all(np.abs(np.asarray(samples)) < 1.0)
    assert np.all(np.isfinite(np.asarray(log_prob)))
    # At init log_std = -1.5 (the middle of [-5, 2]): the samples are spread, not all ~0.
    assert np.asarray(samples).std() > 0.1


def test_tanh_gaussian_log_prob_stays_finite_when_saturated():
    """In float32 tanh(u) rounds to exactly ±1 for |u| > 9; the joint log-prob is still finite."""
    head = TanhGaussianHead(action_dim=2)
    x = jax.random.normal(KEY, (64, 5))
    params = _tanh_head_params(head, x)
    samples, log_prob = _sample_and_log_prob(head.apply(params, x), jax.random.key(1))
    assert np.all(np.abs(np.asarray(samples)) <= 1.0)
    assert np.any(np.abs(np.asarray(samples)) > 0.999)  # this regime is really saturated
    assert np.all(np.isfinite(np.asarray(log_prob)))


def test_tanh_gaussian_log_prob_is_change_of_variables():
    head = TanhGaussianHead(action_dim=2)
    x = jax.random.normal(KEY, (8, 5))
    params = _tanh_head_params(head, x)
    dist = head.apply(params, x)
    # Recompute mean and squashed log-std from the dense layer by hand.
    dense = params["params"]["Dense_0"]
    out = np.asarray(x, np.float64) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    mean, raw_log_std = out[:, :2], out[:, 2:]
    log_std = -5.0 + 0.5 * (2.0 - -5.0) * (np.tanh(raw_log_std) + 1.0)
    assert np.all((log_std >= -5.0) & (log_std <= 2.0))
    assert not np.allclose(log_std[0], log_std[1])  # state-dependent, unlike GaussianHead
    u = np.asarray(jax.random.uniform(jax.random.key(2), (8, 2), minval=-2.0, maxval=2.0))
    want = (_normal_log_pdf(u, mean, np.exp(log_std)) - np.log(1.0 - np.tanh(u) ** 2)).sum(-1)
    got = dist.log_prob(jnp.tanh(jnp.asarray(u, jnp.float32)))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_value_head_shape():
    head = ValueHead()
    x = jnp.ones((3, 4, 7))
    assert head.apply(head.init(KEY, x), x).shape == (3, 4)


# ----------------------------------------------------------------------------- init


def _assert_orthogonal(kernel, gain):
    w = np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])  # [fan_in, fan_out]
    fan_in, fan_out = w.shape
    gram = w.T @ w if fan_in >= fan_out else w @ w.T
    np.testing.assert_allclose(gram, gain**2 * np.eye(min(fan_in, fan_out)), atol=2e-5)


def test_orthogonal_init_gives_orthogonal_kernels():
    net = ActorCritic(spaces.Discrete(3), hidden=(64, 16))
    params = net.init(KEY, jnp.ones((2, 32)))["params"]
    sqrt2 = np.sqrt(2.0)
    _assert_orthogonal(params["actor_torso"]["Dense_0"]["kernel"], sqrt2)  # 32 x 64
    _assert_orthogonal(params["actor_torso"]["Dense_1"]["kernel"], sqrt2)  # 64 x 16
    _assert_orthogonal(params["critic_torso"]["Dense_0"]["kernel"], sqrt2)
    _assert_orthogonal(params["policy_head"]["Dense_0"]["kernel"], 0.01)
    _assert_orthogonal(params["value_head"]["Dense_0"]["kernel"], 1.0)
    for leaf in jax.tree.leaves(params):
        if leaf.ndim == 1:  # biases start at zero
            np.testing.assert_array_equal(leaf, 0.0)


def test_orthogonal_init_of_conv_kernel():
    params = CNN().init(KEY, jnp.ones((1, 10, 10, 4)))["params"]
    _assert_orthogonal(params["Conv_0"]["kernel"], np.sqrt(2.0))  # 36 x 16 after reshape


def test_lecun_init_is_not_orthogonal():
    params = MLP((64,), ortho_init=False).init(KEY, jnp.ones((1, 64)))["params"]
    with pytest.raises(AssertionError):
        _assert_orthogonal(params["Dense_0"]["kernel"], np.sqrt(2.0))


# ----------------------------------------------------------------------------- actor-critic


@pytest.mark.parametrize("space", [spaces.Discrete(4), spaces.Box(-1.0, 1.0, (2,))])
def test_shared_torso_has_one_torso_fewer(space):
    obs = jnp.ones((3, 5))
    separate = ActorCritic(space, hidden=(32, 32), shared_torso=False)
    shared = ActorCritic(space, hidden=(32, 32), shared_torso=True)
    n_separate = _num_params(jax.eval_shape(separate.init, KEY, obs))
    n_shared = _num_params(jax.eval_shape(shared.init, KEY, obs))
    n_torso = _num_params(jax.eval_shape(MLP((32, 32)).init, KEY, obs))
    assert n_torso == 5 * 32 + 32 + 32 * 32 + 32
    assert n_separate - n_shared == n_torso
    heads = 32 * 4 + 4 if isinstance(space, spaces.Discrete) else 32 * 2 + 2 + 2  # + log_std
    assert n_shared == n_torso + heads + 32 + 1


@pytest.mark.parametrize("shared_torso", [False, True])
@pytest.mark.parametrize(
    "space", [spaces.Discrete(4), spaces.Box(-1.0, 1.0, (2,))], ids=["discrete", "box"]
)
def test_actor_critic_outputs_and_value_method(space, shared_torso):
    net = ActorCritic(space, hidden=(16,), shared_torso=shared_torso)
    obs = jax.random.normal(KEY, (2, 3, 5))
    params = net.init(KEY, obs)
    # Perturb every parameter so a wrong torso (e.g. actor's instead of critic's) shows.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = jax.tree.unflatten(
        treedef,
        [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)],
    )
    dist, value = net.apply(params, obs)
    assert value.shape == (2, 3)
    if isinstance(space, spaces.Discrete):
        assert isinstance(dist, distrax.Categorical) and dist.logits.shape == (2, 3, 4)
    else:
        assert isinstance(dist, distrax.MultivariateNormalDiag)
        assert dist.event_shape == (2,) and dist.batch_shape == (2, 3)
    np.testing.assert_allclose(net.apply(params, obs, method="value"), value, rtol=1e-6)
    np.testing.assert_allclose(net.apply(params, obs, method=ActorCritic.value), value, rtol=1e-6)


def test_separate_torsos_are_really_separate():
    """Changing the actor torso must not change the value when torsos are separate."""
    net = ActorCritic(spaces.Discrete(2), hidden=(8,))
    obs = jax.random.normal(KEY, (4, 3))
    params = net.init(KEY, obs)
    bumped = jax.tree.map(lambda p: p, params)
    bumped["params"]["actor_torso"] = jax.tree.map(
        lambda p: p + 1.0, params["params"]["actor_torso"]
    )
    dist, value = net.apply(params, obs)
    dist_b, value_b = net.apply(bumped, obs)
    np.testing.assert_array_equal(value, value_b)
    assert not np.allclose(dist.logits, dist_b.logits)


def test_actor_critic_on_images():
    for torso, obs_ndim in (("cnn", 3), ("mlp", 3)):
        net = ActorCritic(spaces.Discrete(3), hidden=(16,), torso=torso, obs_ndim=obs_ndim)
        obs = jax.random.uniform(KEY, (5, 10, 10, 4))
        params = net.init(KEY, obs)
        dist, value = net.apply(params, obs)
        assert dist.logits.shape == (5, 3) and value.shape == (5,)
        np.testing.assert_allclose(net.apply(params, obs, method="value"), value, rtol=1e-6)
        if torso == "mlp":  # the MLP sees the flattened image
            assert params["params"]["actor_torso"]["Dense_0"]["kernel"].shape == (400, 16)


def test_actor_critic_is_jittable_and_vmappable():
    net = ActorCritic(spaces.Box(-1.0, 1.0, (2,)), hidden=(8,))
    obs = jax.random.normal(KEY, (6, 3))
    params = net.init(KEY, obs)
    value_batched = jax.jit(lambda p, o: net.apply(p, o, method="value"))(params, obs)
    value_vmapped = jax.vmap(lambda o: net.apply(params, o, method="value"))(obs)
    np.testing.assert_allclose(value_vmapped, value_batched, rtol=1e-5, atol=1e-6)


def test_twin_q_heads_are_independent_and_context_reads_history():
    from jaxrl.networks.continuous import ContextEncoder, DeterministicActor, TwinQ, split_context

    obs_dim, act_dim, h = 3, 2, 4
    width = obs_dim + h * (obs_dim + act_dim + 1)
    obs = jax.random.normal(jax.random.key(0), (5, width))
    act = jnp.zeros((5, act_dim))
    q = TwinQ(act_dim, (8,), context_len=h)
    params = q.init(jax.random.key(1), obs, act)
    out = q.apply(params, obs, act)
    assert out.shape == (2, 5) and not np.allclose(out[0], out[1])
    o, hist = split_context(obs, act_dim, h)
    assert o.shape == (5, obs_dim) and hist.shape == (5, h, obs_dim + act_dim + 1)
    np.testing.assert_array_equal(hist[:, 1], obs[:, obs_dim + 6 : obs_dim + 12])
    # The GRU context equals a hand-unrolled GRU over the rows, oldest first.
    enc = ContextEncoder(6)
    p = enc.init(jax.random.key(2), hist)
    cell = nn.GRUCell(6)
    carry = jnp.zeros((5, 6))
    for t in range(h):
        carry, _ = cell.apply({"params": p["params"]["GRUCell_0"]}, carry, hist[:, t])
    np.testing.assert_allclose(enc.apply(p, hist), carry, rtol=1e-5, atol=1e-6)
    actor = DeterministicActor(act_dim, (8,), context_len=h)
    a = actor.apply(actor.init(jax.random.key(3), obs), obs)
    assert a.shape == (5, act_dim) and bool(jnp.all(jnp.abs(a) < 1))
    with pytest.raises(ValueError, match="context_len"):
        split_context(jnp.zeros((5, width + 1)), act_dim, h)
