"""Tests of ``jaxrl.networks.q``: shapes, dueling identity, noisy layers, the R2D2 network."""

from __future__ import annotations

import itertools
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrl.errors import ConfigError
from jaxrl.networks.q import (
    TORSOS,
    NoisyDense,
    QNetwork,
    RecurrentQNetwork,
    factorised_noise,
)

KEY = jax.random.key(0)
A = 3
MINATAR_OBS = (10, 10, 4)


def _obs(torso: str, batch_shape: tuple[int, ...], seed: int = 1) -> jax.Array:
    key = jax.random.key(seed)
    if torso == "minatar":  # MinAtar observations are boolean images
        return jax.random.bernoulli(key, 0.3, (*batch_shape, *MINATAR_OBS))
    return jax.random.normal(key, (*batch_shape, 5))


def _zero_sigmas(params):
    """Sets every ``*_sigma`` leaf of a NoisyDense to zero."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    flat = {k: (jnp.zeros_like(v) if k[-1].endswith("_sigma") else v) for k, v in flat.items()}
    return flax.traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------- QNetwork


@pytest.mark.parametrize(
    "torso,dueling,noisy,num_atoms",
    list(itertools.product(TORSOS, (False, True), (False, True), (1, 4))),
)
def test_q_network_shapes(torso, dueling, noisy, num_atoms):
    kw = dict(torso=torso, dueling=dueling, noisy=noisy, num_atoms=num_atoms)
    net = QNetwork(A, hidden=(16, 8), **kw)
    params = net.init(KEY, _obs(torso, (2,)))
    atoms = (num_atoms,) if num_atoms > 1 else ()
    apply = net.apply  # eager: jit would compile once per shape (tests stay fast)
    for batch_shape in [(), (2, 3)]:
        obs = _obs(torso, batch_shape)
        q = apply(params, obs)
        assert q.shape == (*batch_shape, A, *atoms)
        noisy_q = apply(params, obs, rngs={"noise": jax.random.key(5)})
        assert noisy_q.shape == q.shape
        assert np.all(np.isfinite(q)) and np.all(np.isfinite(noisy_q))
        # The noise rng matters exactly when the network is noisy.
        assert np.array_equal(q, noisy_q) != noisy


def test_noisy_only_in_head_layers():
    params = QNetwork(A, hidden=(16, 8), dueling=True, noisy=True).init(KEY, _obs("mlp", (2,)))
    params = params["params"]
    assert set(params["torso"]["Dense_0"]) == {"kernel", "bias"}
    for name in ("value_hidden", "value", "advantage_hidden", "advantage"):
        assert set(params["head"][name]) == {"kernel_mu", "kernel_sigma", "bias_mu", "bias_sigma"}
    # Dueling streams have one hidden layer of hidden[-1] units.
    assert params["head"]["value_hidden"]["kernel_mu"].shape == (8, 8)
    assert params["head"]["advantage"]["kernel_mu"].shape == (8, A)


def test_noisy_sigma0_reaches_every_head_layer():
    obs = _obs("mlp", (2,))
    params = QNetwork(A, hidden=(16, 8), dueling=True, noisy=True, noisy_sigma0=0.1).init(KEY, obs)
    head = params["params"]["head"]
    for name in ("value_hidden", "value", "advantage_hidden", "advantage"):  # all 8 inputs wide
        np.testing.assert_allclose(head[name]["kernel_sigma"], 0.1 / math.sqrt(8), rtol=1e-6)
        np.testing.assert_allclose(head[name]["bias_sigma"], 0.1 / math.sqrt(8), rtol=1e-6)


def test_minatar_torso_is_the_default_cnn():
    params = QNetwork(A, torso="minatar").init(KEY, _obs("minatar", (1,)))["params"]["torso"]
    assert params["Conv_0"]["kernel"].shape == (3, 3, 4, 16)
    assert params["MLP_0"]["Dense_0"]["kernel"].shape == (10 * 10 * 16, 128)


@pytest.mark.parametrize("num_atoms", [1, 4])
@pytest.mark.parametrize("noisy", [False, True])
def test_dueling_identity(num_atoms, noisy):
    net = QNetwork(A, hidden=(16, 8), dueling=True, noisy=noisy, num_atoms=num_atoms)
    obs = _obs("mlp", (6,))
    params = net.init(KEY, obs)
    q, state = net.apply(params, obs, rngs={"noise": jax.random.key(3)}, capture_intermediates=True)
    head = state["intermediates"]["head"]
    v = np.asarray(head["value"]["__call__"][0])  # [B, num_atoms]
    adv = np.asarray(head["advantage"]["__call__"][0]).reshape(6, A, num_atoms)
    q = np.asarray(q).reshape(6, A, num_atoms)
    centred = adv - adv.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(q, v[:, None, :] + centred, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q.mean(axis=1), v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q - q.mean(axis=1, keepdims=True), centred, rtol=1e-5, atol=1e-6)
    assert np.std(centred) > 1e-3  # not trivially zero


def test_plain_head_is_one_linear_layer_on_the_torso():
    net = QNetwork(A, hidden=(16, 8), num_atoms=2)
    obs = _obs("mlp", (4,))
    params = net.init(KEY, obs)
    q, state = net.apply(params, obs, capture_intermediates=True)
    features = np.asarray(state["intermediates"]["torso"]["__call__"][0])
    dense = params["params"]["head"]["q"]
    want = (features @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])).reshape(4, A, 2)
    np.testing.assert_allclose(q, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [QNetwork, RecurrentQNetwork])
def test_bad_config_raises(cls):
    with pytest.raises(ConfigError, match="mlp.*minatar"):
        cls(A, torso="resnet")
    with pytest.raises(ConfigError):
        cls(A, activation="swish")
    with pytest.raises(ConfigError):
        cls(0)
    with pytest.raises(ConfigError):
        cls(A, hidden=(), dueling=True)


def test_num_atoms_below_one_raises():
    with pytest.raises(ConfigError, match="num_atoms"):
        QNetwork(A, num_atoms=0)


# ----------------------------------------------------------------------------- noisy layers


def test_noisy_dense_init():
    p, q, sigma0 = 400, 50, 0.5
    params = NoisyDense(q, sigma0).init(KEY, jnp.zeros((1, p)))["params"]
    bound = 1.0 / math.sqrt(p)
    for name, shape in (("kernel_mu", (p, q)), ("bias_mu", (q,))):
        mu = np.asarray(params[name])
        assert mu.shape == shape and np.all(np.abs(mu) <= bound)
    mu = np.asarray(params["kernel_mu"])
    np.testing.assert_allclose(mu.std(), bound / math.sqrt(3.0), rtol=0.02)  # U[-b, b]
    np.testing.assert_allclose(params["kernel_sigma"], sigma0 / math.sqrt(p), rtol=1e-6)
    np.testing.assert_allclose(params["bias_sigma"], sigma0 / math.sqrt(p), rtol=1e-6)
    assert params["kernel_sigma"].shape == (p, q) and params["bias_sigma"].shape == (q,)


def test_noisy_dense_without_noise_uses_mean_weights():
    layer = NoisyDense(4)
    x = jax.random.normal(jax.random.key(1), (2, 3, 5))
    params = layer.init(KEY, x)
    p = params["params"]
    want = np.einsum("bti,ij->btj", x, p["kernel_mu"]) + np.asarray(p["bias_mu"])
    np.testing.assert_allclose(layer.apply(params, x), want, rtol=1e-5, atol=1e-6)
    # With sigma = 0 the noise has no effect, so noisy and greedy outputs agree.
    zero = _zero_sigmas(params)
    noisy = layer.apply(zero, x, rngs={"noise": jax.random.key(7)})
    np.testing.assert_allclose(noisy, want, rtol=1e-5, atol=1e-6)


def test_noise_keys_change_outputs_and_zero_sigma_equals_greedy():
    net = QNetwork(A, hidden=(16, 8), dueling=True, noisy=True, num_atoms=3)
    obs = _obs("mlp", (5,))
    params = net.init(KEY, obs)
    apply = jax.jit(net.apply)
    q1 = apply(params, obs, rngs={"noise": jax.random.key(1)})
    q2 = apply(params, obs, rngs={"noise": jax.random.key(2)})
    q1_again = apply(params, obs, rngs={"noise": jax.random.key(1)})
    greedy = apply(params, obs)
    np.testing.assert_array_equal(q1, q1_again)
    assert np.max(np.abs(q1 - q2)) > 1e-3
    assert np.max(np.abs(q1 - greedy)) > 1e-3
    zero = _zero_sigmas(params)
    np.testing.assert_allclose(
        apply(zero, obs, rngs={"noise": jax.random.key(1)}), greedy, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(apply(zero, obs), greedy, rtol=1e-5, atol=1e-6)


def test_layer_noise_is_factorised():
    """With mu = 0 and sigma = 1 the layer's output reveals its noise: x = 0 gives the bias
    noise f(eps_out), x = e_i gives row i of the kernel noise, which must be f(eps_in)_i f(eps_out).
    """
    p, q = 6, 4
    layer = NoisyDense(q)
    params = layer.init(KEY, jnp.zeros((1, p)))
    params = jax.tree.map(jnp.zeros_like, params)
    params["params"]["kernel_sigma"] = jnp.ones((p, q))
    params["params"]["bias_sigma"] = jnp.ones((q,))
    x = jnp.concatenate([jnp.zeros((1, p)), jnp.eye(p)])
    out = np.asarray(layer.apply(params, x, rngs={"noise": jax.random.key(11)}), np.float64)
    f_out, eps_kernel = out[0], out[1:] - out[0]  # e_i rows also carry the bias noise
    assert np.all(np.abs(f_out) > 1e-3)
    f_in = eps_kernel[:, 0] / f_out[0]
    np.testing.assert_allclose(eps_kernel, np.outer(f_in, f_out), rtol=1e-4, atol=1e-6)
    assert np.all(np.abs(f_in) > 1e-3)
    # One noise sample per call: every batch row sees the same bias noise.
    rows = np.asarray(layer.apply(params, jnp.zeros((3, p)), rngs={"noise": jax.random.key(11)}))
    np.testing.assert_allclose(rows, np.broadcast_to(f_out, (3, q)), rtol=1e-6)


def test_factorised_noise_formula_and_statistics():
    key = jax.random.key(4)
    eps_kernel, eps_bias = factorised_noise(key, 5, 3)
    key_in, key_out = jax.random.split(key)
    e_in = np.asarray(jax.random.normal(key_in, (5,)), np.float64)
    e_out = np.asarray(jax.random.normal(key_out, (3,)), np.float64)
    f_in, f_out = np.sign(e_in) * np.sqrt(np.abs(e_in)), np.sign(e_out) * np.sqrt(np.abs(e_out))
    np.testing.assert_allclose(eps_kernel, np.outer(f_in, f_out), rtol=1e-5)
    np.testing.assert_allclose(eps_bias, f_out, rtol=1e-5)
    # f(eps)^2 = |eps| with eps ~ N(0, 1): mean sqrt(2 / pi), sd 0.60 / sqrt(n) here 0.004.
    _, f = factorised_noise(jax.random.key(5), 1, 20000)
    f = np.asarray(f)
    np.testing.assert_allclose(np.mean(f**2), math.sqrt(2.0 / math.pi), atol=0.02)
    assert abs(np.mean(f > 0) - 0.5) < 0.02


def test_noisy_dense_gradients():
    layer = NoisyDense(3)
    x = jax.random.normal(jax.random.key(1), (4, 5))
    params = layer.init(KEY, x)

    def f(params, x):
        return layer.apply(params, x, rngs={"noise": jax.random.key(2)})

    check_grads(f, (params, x), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
    # d sum(y) / d bias_sigma = f(eps_out) * batch size: non-zero, so sigma learns.
    g = jax.grad(lambda p: f(p, x).sum())(params)["params"]["bias_sigma"]
    assert np.all(np.abs(g) > 1e-4)


# ----------------------------------------------------------------------------- RecurrentQNetwork

T, B = 6, 3


def _sequence(seed=0, torso="mlp"):
    obs = _obs(torso, (T, B), seed)
    reset = jnp.zeros((T, B), bool).at[0].set(True).at[2, 1].set(True).at[4, 0].set(True)
    return obs, reset


def test_recurrent_initial_carry():
    net = RecurrentQNetwork(A, lstm_features=7)
    for batch, shape in ((B, (B, 7)), ((2, B), (2, B, 7))):
        carry = net.initial_carry(batch)
        assert len(carry) == 2
        for leaf in carry:
            assert leaf.shape == shape and not np.any(leaf)


@pytest.mark.parametrize("torso,dueling", [("mlp", True), ("mlp", False), ("minatar", True)])
def test_recurrent_shapes(torso, dueling):
    net = RecurrentQNetwork(A, hidden=(8,), lstm_features=6, torso=torso, dueling=dueling)
    obs, reset = _sequence(torso=torso)
    carry = net.initial_carry(B)
    params = net.init(KEY, carry, obs, reset)
    new_carry, q = jax.jit(net.apply)(params, carry, obs, reset)
    assert q.shape == (T, B, A)
    assert all(c.shape == (B, 6) for c in new_carry)


def test_recurrent_sequence_equals_single_steps():
    net = RecurrentQNetwork(A, hidden=(8,), lstm_features=6)
    obs, reset = _sequence()
    reset = reset.at[0].set(False)  # keep the non-zero initial carry at t = 0
    carry0 = jax.tree.map(lambda c: c + 0.5, net.initial_carry(B))
    params = net.init(KEY, carry0, obs, reset)
    carry_all, q_all = net.apply(params, carry0, obs, reset)
    carry, qs = carry0, []
    for t in range(T):
        carry, q_t = net.apply(params, carry, obs[t : t + 1], reset[t : t + 1])
        qs.append(q_t[0])
    np.testing.assert_allclose(q_all, np.stack(qs), rtol=1e-5, atol=1e-6)
    for a, b in zip(carry_all, carry, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The initial carry is used: a zero carry gives other Q-values at t = 0.
    _, q_zero = net.apply(params, net.initial_carry(B), obs, reset)
    assert np.max(np.abs(q_zero[0] - q_all[0])) > 1e-4


def test_recurrent_reset_zeroes_the_state():
    net = RecurrentQNetwork(A, hidden=(8,), lstm_features=6)
    obs, _ = _sequence()
    t0 = 3
    reset = jnp.zeros((T, B), bool).at[t0].set(True)
    junk = jax.tree.map(lambda c: c + 1.0, net.initial_carry(B))
    params = net.init(KEY, junk, obs, reset)
    _, q = net.apply(params, junk, obs, reset)
    # From t0 on, the outputs equal a fresh run on obs[t0:] from the zero carry.
    _, q_fresh = net.apply(params, net.initial_carry(B), obs[t0:], jnp.zeros((T - t0, B), bool))
    np.testing.assert_allclose(q[t0:], q_fresh, rtol=1e-5, atol=1e-6)
    # Without the reset the history does change them.
    _, q_noreset = net.apply(params, junk, obs, jnp.zeros((T, B), bool))
    assert np.max(np.abs(q_noreset[t0:] - q_fresh)) > 1e-4
