"""Critical states: the ELBO against a hand computation, the VAE learning a curve it can
reconstruct, the projection into the latent ball, the paper's Q scores by hand, the search
driving a known score past the data, and config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.analysis import critical_states as cs
from jaxrl.errors import ConfigError

SMALL = cs.Config(latent_dim=2, hidden=(32, 32), vae_steps=2_000, search_steps=200)


def _curve(n=2_000, key=0):
    """States on a closed curve in 3-D: ``(cos t, sin t, 0.5 cos 2t)``, ``t ~ U[0, 2 pi)``."""
    t = jax.random.uniform(jax.random.key(key), (n,), maxval=2 * jnp.pi)
    return jnp.stack([jnp.cos(t), jnp.sin(t), 0.5 * jnp.cos(2 * t)], axis=-1)


@pytest.fixture(scope="module")
def fitted():
    states = _curve()
    model, losses = jax.jit(lambda k: cs.fit(SMALL, states, k))(jax.random.key(1))
    return states, model, losses


def test_elbo_is_reconstruction_plus_beta_kl_by_hand():
    cfg = cs.Config(latent_dim=2, hidden=(8,), beta=0.5)
    x = jax.random.normal(jax.random.key(0), (5, 3))
    noise = jax.random.normal(jax.random.key(1), (5, 2))
    net = cs.network(cfg, (3,))
    params = net.init(jax.random.key(2), x, noise)
    mean, log_var = (np.asarray(a, np.float64) for a in net.apply(params, x, method=cs.VAE.encode))
    z = mean + np.exp(0.5 * log_var) * np.asarray(noise)
    x_hat = np.asarray(net.apply(params, jnp.asarray(z, jnp.float32), method=cs.VAE.decode))
    log_var_x = np.array([0.2, -0.5, 1.0])
    params = {"params": {**params["params"], "log_var_x": jnp.asarray(log_var_x, jnp.float32)}}
    squared = (np.asarray(x) - x_hat) ** 2 / np.exp(log_var_x)
    reconstruction = np.mean(0.5 * np.sum(squared + log_var_x, axis=-1))
    kl = np.mean(0.5 * np.sum(np.exp(log_var) + mean**2 - 1.0 - log_var, axis=-1))
    loss, (rec, k) = cs.elbo_loss(cfg, params, x, noise)
    np.testing.assert_allclose(rec, reconstruction, rtol=1e-5)
    np.testing.assert_allclose(k, kl, rtol=1e-5)
    np.testing.assert_allclose(loss, reconstruction + 0.5 * kl, rtol=1e-5)


def test_the_vae_learns_to_reconstruct_the_curve(fitted):
    states, model, losses = fitted
    assert float(losses[-100:].mean()) < 0.5 * float(losses[:100].mean())
    x = (states[:256] - model.mean[None]) / model.std[None]
    mean, _ = cs.network(SMALL, (3,)).apply(model.params, x, method=cs.VAE.encode)
    back = cs.decode(SMALL, model, mean)
    error = float(jnp.sqrt(jnp.mean(jnp.sum(jnp.square(back - states[:256]), axis=-1))))
    assert error < 0.15  # the curve's radius is 1
    prior = cs.decode(SMALL, model, jax.random.normal(jax.random.key(3), (512, 2)))
    radius = jnp.linalg.norm(prior[:, :2], axis=-1)
    assert 0.7 < float(jnp.median(radius)) < 1.3  # decoded prior draws lie near the curve


def test_projection_keeps_codes_in_the_ball():
    cfg = cs.Config(latent_radius=2.0)
    z = jnp.array([[3.0, 4.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    out = cs.project(cfg, z)
    np.testing.assert_allclose(out[0], [1.2, 1.6, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(out[1:], z[1:])


def test_q_scores_are_the_papers_targets():
    q = jnp.array([[1.0, 3.0, -2.0], [0.5, 0.5, 0.5]])
    scores = cs.q_scores(lambda obs: q)
    np.testing.assert_allclose(scores["best"](None), [3.0, 0.5])
    np.testing.assert_allclose(scores["worst"](None), [-3.0, -0.5])
    np.testing.assert_allclose(scores["decisive"](None), [5.0, 0.0])


def test_search_drives_a_score_past_the_data_and_stays_in_the_ball(fitted):
    states, model, _ = fitted
    cfg = SMALL
    score = lambda obs: obs[:, 2]  # noqa: E731 - the curve's height, 0.5 cos 2t
    found, values, z = jax.jit(lambda k: cs.search(cfg, model, score, k, 64))(jax.random.key(4))
    start = score(
        cs.decode(cfg, model, cs.project(cfg, jax.random.normal(jax.random.key(4), (64, 2))))
    )
    assert float(jnp.median(values)) > float(jnp.percentile(score(states), 80))
    assert float(jnp.mean(values)) > float(jnp.mean(start))
    assert float(jnp.max(jnp.linalg.norm(z, axis=-1))) <= cfg.latent_radius + 1e-5
    np.testing.assert_allclose(values, score(found), rtol=1e-6)
    lowest, low_values, _ = cs.search(cfg, model, lambda obs: -score(obs), jax.random.key(4), 64)
    assert float(jnp.median(-low_values)) < float(jnp.percentile(score(states), 20))


def test_bad_settings_and_states_are_config_errors():
    with pytest.raises(ConfigError, match="latent_dim must be a positive integer"):
        cs.Config(latent_dim=0)
    with pytest.raises(ConfigError, match="hidden must be positive layer sizes"):
        cs.Config(hidden=())
    with pytest.raises(ConfigError, match="latent_radius must be a finite number > 0"):
        cs.Config(latent_radius=-1.0)
    with pytest.raises(ConfigError, match="search_learning_rate"):
        cs.Config(search_learning_rate=float("nan"))
    with pytest.raises(ConfigError, match=r"states must be \[N >= 2"):
        cs.check(jnp.zeros((5,)))
    with pytest.raises(ConfigError, match=r"states must be \[N >= 2"):
        cs.check(jnp.zeros((1, 3)))
