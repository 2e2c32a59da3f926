"""Q-learning targets and losses against hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.losses import q as qloss


def _loop_n_step(reward, done, terminated, discount):
    """Reference: walk each window until the first episode end."""
    returns, boots, lasts = [], [], []
    for r, d, t in zip(reward, done, terminated, strict=True):
        g, k = 0.0, 0
        for k in range(len(r)):
            g += discount**k * r[k]
            if d[k]:
                break
        returns.append(g)
        boots.append(discount ** (k + 1) * (1.0 - t[k]))
        lasts.append(k)
    return np.array(returns), np.array(boots), np.array(lasts)


def test_n_step_bootstrap_matches_a_loop():
    rng = np.random.default_rng(0)
    reward = rng.normal(size=(64, 5)).astype(np.float32)
    done = rng.random((64, 5)) < 0.25
    terminated = done & (rng.random((64, 5)) < 0.5)  # the rest are truncations
    g, boot, last = qloss.n_step_bootstrap(
        jnp.asarray(reward), jnp.asarray(done), jnp.asarray(terminated), jnp.float32(0.9)
    )
    ref_g, ref_boot, ref_last = _loop_n_step(reward, done, terminated, 0.9)
    np.testing.assert_allclose(g, ref_g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(boot, ref_boot, rtol=1e-5)
    np.testing.assert_array_equal(last, ref_last)


def test_one_step_window_is_the_one_step_target():
    reward = jnp.array([[1.0], [2.0], [3.0]])
    done = jnp.array([[0.0], [1.0], [1.0]])
    terminated = jnp.array([[0.0], [1.0], [0.0]])  # the third was truncated
    g, boot, last = qloss.n_step_bootstrap(reward, done, terminated, jnp.float32(0.5))
    np.testing.assert_allclose(g, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(boot, [0.5, 0.0, 0.5])
    np.testing.assert_array_equal(last, [0, 0, 0])


def test_take_last_picks_per_row():
    x = jnp.arange(24.0).reshape(4, 3, 2)
    out = qloss.take_last(x, jnp.array([0, 2, 1, 2]))
    np.testing.assert_array_equal(out, x[jnp.arange(4), jnp.array([0, 2, 1, 2])])


def test_scalar_td_error_max_and_double_targets():
    q_tm1 = jnp.array([[1.0, 2.0], [0.0, 0.5]])
    action = jnp.array([1, 0])
    returns = jnp.array([1.0, -1.0])
    discount = jnp.array([0.9, 0.0])
    q_target = jnp.array([[3.0, 5.0], [7.0, 1.0]])
    q_online = jnp.array([[4.0, 0.0], [0.0, 1.0]])
    dqn = qloss.scalar_td_error(q_tm1, action, returns, discount, q_target, q_target)
    double = qloss.scalar_td_error(q_tm1, action, returns, discount, q_target, q_online)
    np.testing.assert_allclose(dqn, [1.0 + 0.9 * 5.0 - 2.0, -1.0 - 0.0], rtol=1e-6)
    # Double: the online net picks action 0 in the first row, rated 3 by the target.
    np.testing.assert_allclose(double, [1.0 + 0.9 * 3.0 - 2.0, -1.0 - 0.0], rtol=1e-6)


def test_categorical_loss_is_zero_entropy_cross_entropy_for_a_point_mass_target():
    """With discount 0 the target puts all mass on the atom equal to the return: the loss
    is ``-log p(that atom)``."""
    atoms = jnp.linspace(-2.0, 2.0, 5)
    logits = jax.random.normal(jax.random.key(0), (3, 2, 5))
    action = jnp.array([0, 1, 1])
    returns = jnp.array([-2.0, 1.0, 0.0])
    zeros = jnp.zeros(3)
    loss = qloss.categorical_loss(
        atoms, logits, action, returns, zeros, logits, zeros[:, None] * jnp.ones((3, 2))
    )
    logp = jax.nn.log_softmax(logits, axis=-1)
    expected = -jnp.stack([logp[0, 0, 0], logp[1, 1, 3], logp[2, 1, 2]])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_quantile_loss_is_zero_at_the_target_and_matches_the_definition():
    taus = qloss.quantile_midpoints(4)
    np.testing.assert_allclose(taus, [0.125, 0.375, 0.625, 0.875])
    q_tm1 = jnp.zeros((1, 2, 4)).at[0, 1].set(jnp.array([1.0, 2.0, 3.0, 4.0]))
    q_t = jnp.zeros((1, 2, 4))
    action, returns, discount = jnp.array([1]), jnp.array([2.5]), jnp.array([0.0])
    loss = qloss.quantile_loss(q_tm1, action, returns, discount, q_t, q_t, huber=0.0)
    # Pinball loss summed over the quantiles (rlax averages over target samples only):
    # sum_i |tau_i - 1[target < theta_i]| |target - theta_i|.
    theta = np.array([1.0, 2.0, 3.0, 4.0])
    u = 2.5 - theta
    expected = np.sum(np.abs(np.array(taus) - (u < 0)) * np.abs(u))
    np.testing.assert_allclose(loss, [expected], rtol=1e-5)


@pytest.mark.parametrize("kind", ["huber", "l2"])
def test_regression(kind):
    td = jnp.array([-3.0, -0.5, 0.0, 2.0])
    out = qloss.regression(td, kind)
    ref = (
        np.where(np.abs(td) <= 1, 0.5 * td**2, np.abs(td) - 0.5) if kind == "huber" else 0.5 * td**2
    )
    np.testing.assert_allclose(out, ref)


def test_expected_q():
    atoms = jnp.array([0.0, 10.0])
    logits = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1]]]))
    np.testing.assert_allclose(qloss.expected_q(logits, "c51", atoms), [[5.0, 1.0]], rtol=1e-5)
    np.testing.assert_allclose(qloss.expected_q(jnp.ones((2, 3, 4)), "qr"), jnp.ones((2, 3)))
