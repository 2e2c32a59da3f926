"""Tests of ``jaxrl.losses.returns``: GAE by formula, against rlax, across episode ends."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax
from absl.testing import parameterized
from jax.test_util import check_grads

from jaxrl.losses import returns


def _tiny_trajectory():
    """T=5, written by hand; the third transition ends the episode (discount 0)."""
    r_t = np.array([1.0, -0.5, 2.0, 0.0, 1.5], np.float32)
    discount_t = np.array([0.9, 0.9, 0.0, 0.9, 0.9], np.float32)
    v_tm1 = np.array([0.3, 1.2, -0.4, 0.8, 0.1], np.float32)
    v_t = np.array([1.2, -0.4, 0.5, 0.1, -0.7], np.float32)
    return r_t, discount_t, v_tm1, v_t


def _gae_by_hand(r_t, discount_t, lambda_t, v_tm1, v_t):
    """Sum form of GAE: ``A_t = sum_k (prod_{j=t}^{k-1} discount_j lambda_j) delta_k``."""
    r_t, discount_t, v_tm1, v_t = (np.asarray(x, np.float64) for x in (r_t, discount_t, v_tm1, v_t))
    lambda_t = np.broadcast_to(np.asarray(lambda_t, np.float64), r_t.shape)
    delta = r_t + discount_t * v_t - v_tm1
    T = len(r_t)
    out = np.zeros(T)
    for t in range(T):
        weight = 1.0
        for k in range(t, T):
            out[t] += weight * delta[k]
            weight *= discount_t[k] * lambda_t[k]
    return out


class GAETest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(0.0, 0.5, 0.9, 1.0)
    def test_matches_formula(self, lambda_):
        r_t, discount_t, v_tm1, v_t = _tiny_trajectory()
        got = self.variant(returns.gae)(r_t, discount_t, jnp.float32(lambda_), v_tm1, v_t)
        chex.assert_shape(got, r_t.shape)
        want = _gae_by_hand(r_t, discount_t, lambda_, v_tm1, v_t)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_per_step_lambda_cuts_the_trace(self):
        r_t, discount_t, v_tm1, v_t = _tiny_trajectory()
        discount_t = np.full_like(discount_t, 0.9)
        lambda_t = np.array([0.8, 0.8, 0.8, 0.0, 0.8], np.float32)
        got = self.variant(returns.gae)(r_t, discount_t, lambda_t, v_tm1, v_t)
        np.testing.assert_allclose(
            got, _gae_by_hand(r_t, discount_t, lambda_t, v_tm1, v_t), rtol=1e-5, atol=1e-6
        )
        # λ_3 = 0: A_3 is the one-step TD error, whatever follows.
        np.testing.assert_allclose(got[3], r_t[3] + 0.9 * v_t[3] - v_tm1[3], rtol=1e-6)

    def test_lambda_zero_is_td_error_and_lambda_one_is_monte_carlo(self):
        r_t, discount_t, v_tm1, v_t = _tiny_trajectory()
        td = returns.gae(r_t, discount_t, jnp.float32(0.0), v_tm1, v_t)
        np.testing.assert_allclose(td, r_t + discount_t * v_t - v_tm1, rtol=1e-6)
        # λ=1 and a consistent value sequence (v_t[k] = v_tm1[k+1]): the values telescope.
        v_tm1 = np.array([0.3, 1.2, -0.4, 0.8, 0.1], np.float32)
        v_t = np.array([1.2, -0.4, 0.8, 0.1, 0.0], np.float32)
        discount_t = np.array([0.9, 0.9, 0.9, 0.9, 0.0], np.float32)
        mc = returns.gae(r_t, discount_t, jnp.float32(1.0), v_tm1, v_t)
        g = np.cumprod(np.concatenate([[1.0], discount_t[:-1]]))
        want = np.array([np.sum(r_t[t:] * g[t:] / g[t]) for t in range(5)]) - v_tm1
        np.testing.assert_allclose(mc, want, rtol=1e-5, atol=1e-6)

    def test_shape_mismatch_raises(self):
        r_t, discount_t, v_tm1, v_t = _tiny_trajectory()
        with pytest.raises(AssertionError):
            returns.gae(r_t, discount_t, jnp.float32(0.9), v_tm1, v_t[:-1])


@pytest.mark.parametrize("lambda_", [0.0, 0.3, 0.95, 1.0])
def test_gae_equals_rlax_when_nothing_truncates(lambda_):
    key_r, key_d, key_v = jax.random.split(jax.random.key(int(lambda_ * 100)), 3)
    T = 17
    r_t = jax.random.normal(key_r, (T,))
    discount_t = 0.99 * jax.random.bernoulli(key_d, 0.85, (T,)).astype(jnp.float32)
    values = jax.random.normal(key_v, (T + 1,))
    got = jax.jit(returns.gae)(r_t, discount_t, jnp.float32(lambda_), values[:-1], values[1:])
    want = rlax.truncated_generalized_advantage_estimation(
        r_t, discount_t, lambda_, values, stop_target_gradients=False
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gae_equals_rlax_vmapped_over_envs():
    """``episode_gae`` with no truncation equals rlax vmapped over the env axis."""
    T, N = 12, 3
    keys = jax.random.split(jax.random.key(7), 3)
    reward = jax.random.normal(keys[0], (T, N))
    terminated = jax.random.bernoulli(keys[1], 0.2, (T, N))
    values = jax.random.normal(keys[2], (T + 1, N))
    adv, target = returns.episode_gae(
        reward,
        values[:-1],
        values[1:],
        terminated,
        jnp.zeros((T, N), bool),
        jnp.float32(0.97),
        jnp.float32(0.9),
    )
    discount_t = 0.97 * (1.0 - terminated.astype(jnp.float32))
    want = jax.vmap(
        lambda r, d, v: rlax.truncated_generalized_advantage_estimation(r, d, 0.9, v),
        in_axes=1,
        out_axes=1,
    )(reward, discount_t, values)
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(target, want + values[:-1], rtol=1e-5, atol=1e-5)


# A hand-built [T=6, N=2] rollout. Env 0: a time limit cuts the episode after step 2
# (truncated), a new episode ends for real at step 4 (terminated). Env 1: no episode end.
GAMMA, LAMBDA = 0.9, 0.8
REWARD = np.array(
    [[1.0, 0.5], [0.0, 0.5], [2.0, 0.5], [-1.0, 0.5], [3.0, 0.5], [0.5, 0.5]], np.float32
)
VALUE = np.array(
    [[0.2, 1.0], [0.4, 1.1], [0.6, 1.2], [0.1, 1.3], [0.3, 1.4], [0.7, 1.5]], np.float32
)
# Value of the obs each step reached, before auto-reset. At the truncation (t=2) it is the
# cut-off state's value 5.0, not VALUE[3, 0] (the fresh episode's first state).
BOOTSTRAP = np.array(
    [[0.4, 1.1], [0.6, 1.2], [5.0, 1.3], [0.3, 1.4], [9.0, 1.5], [0.8, 1.6]], np.float32
)
TERMINATED = np.zeros((6, 2), bool)
TERMINATED[4, 0] = True
TRUNCATED = np.zeros((6, 2), bool)
TRUNCATED[2, 0] = True


def _episode_gae(reward=REWARD, bootstrap=BOOTSTRAP):
    return returns.episode_gae(
        jnp.asarray(reward),
        jnp.asarray(VALUE),
        jnp.asarray(bootstrap),
        jnp.asarray(TERMINATED),
        jnp.asarray(TRUNCATED),
        jnp.float32(GAMMA),
        jnp.float32(LAMBDA),
    )


class EpisodeGAETest(chex.TestCase):
    def test_shapes_and_targets(self):
        adv, target = _episode_gae()
        chex.assert_shape([adv, target], (6, 2))
        np.testing.assert_allclose(target, adv + VALUE, rtol=1e-6)

    def test_truncated_step_bootstraps_from_pre_reset_value(self):
        adv, _ = _episode_gae()
        r, v, b = REWARD[:, 0], VALUE[:, 0], BOOTSTRAP[:, 0]
        # Cut λ-trace: only the one-step TD error, bootstrapped from the cut-off state.
        np.testing.assert_allclose(adv[2, 0], r[2] + GAMMA * b[2] - v[2], rtol=1e-6)
        # It is not the post-reset value that is used.
        assert not np.isclose(adv[2, 0], r[2] + GAMMA * v[3] - v[2])

    def test_terminated_step_does_not_bootstrap(self):
        adv, _ = _episode_gae()
        np.testing.assert_allclose(adv[4, 0], REWARD[4, 0] - VALUE[4, 0], rtol=1e-6)
        other = BOOTSTRAP.copy()
        other[4, 0] = -100.0
        np.testing.assert_allclose(_episode_gae(bootstrap=other)[0], adv, rtol=1e-6)

    def test_steps_inside_episodes_follow_the_recursion(self):
        adv, _ = _episode_gae()
        r, v, b = REWARD[:, 0], VALUE[:, 0], BOOTSTRAP[:, 0]
        delta = r + GAMMA * b - v
        # After the terminated step a new episode runs to the end of the rollout.
        np.testing.assert_allclose(adv[5, 0], delta[5], rtol=1e-6)
        np.testing.assert_allclose(adv[3, 0], delta[3] + GAMMA * LAMBDA * adv[4, 0], rtol=1e-5)
        np.testing.assert_allclose(adv[1, 0], delta[1] + GAMMA * LAMBDA * adv[2, 0], rtol=1e-5)
        np.testing.assert_allclose(adv[0, 0], delta[0] + GAMMA * LAMBDA * adv[1, 0], rtol=1e-5)
        # Env 1 never ends: the plain formula over the whole rollout.
        want = _gae_by_hand(REWARD[:, 1], np.full(6, GAMMA), LAMBDA, VALUE[:, 1], BOOTSTRAP[:, 1])
        np.testing.assert_allclose(adv[:, 1], want, rtol=1e-5)

    def test_trace_does_not_cross_either_boundary(self):
        adv, _ = _episode_gae()
        # Rewards after the truncation leave every advantage up to it unchanged ...
        reward = REWARD.copy()
        reward[3:, 0] += 10.0
        changed, _ = _episode_gae(reward=reward)
        np.testing.assert_allclose(changed[:3, 0], adv[:3, 0], rtol=1e-6)
        assert np.all(changed[3:, 0] != adv[3:, 0])
        # ... and rewards after the termination leave every advantage up to it unchanged.
        reward = REWARD.copy()
        reward[5, 0] += 10.0
        changed, _ = _episode_gae(reward=reward)
        np.testing.assert_allclose(changed[:5], adv[:5], rtol=1e-6)
        # The other env is untouched by env 0's data.
        np.testing.assert_allclose(changed[:, 1], adv[:, 1], rtol=1e-6)

    def test_jit_equals_eager(self):
        eager, _ = _episode_gae()
        jitted, _ = jax.jit(returns.episode_gae)(
            REWARD, VALUE, BOOTSTRAP, TERMINATED, TRUNCATED, jnp.float32(GAMMA), LAMBDA
        )
        np.testing.assert_allclose(jitted, eager, rtol=1e-6)


def _advantage_sum(discount, gae_lambda):
    adv, _ = returns.episode_gae(
        jnp.asarray(REWARD),
        jnp.asarray(VALUE),
        jnp.asarray(BOOTSTRAP),
        jnp.asarray(TERMINATED),
        jnp.asarray(TRUNCATED),
        discount,
        gae_lambda,
    )
    return jnp.sum(adv)


def test_advantage_gradients_wrt_discount_and_lambda():
    discount, gae_lambda = jnp.float32(GAMMA), jnp.float32(LAMBDA)
    d_discount, d_lambda = jax.grad(_advantage_sum, argnums=(0, 1))(discount, gae_lambda)
    assert abs(float(d_discount)) > 1e-3
    assert abs(float(d_lambda)) > 1e-3

    # Central finite differences in float64 arithmetic of the numpy reference.
    def reference(g, lam):
        discount_t = g * (1.0 - TERMINATED)
        lambda_t = lam * (1.0 - TRUNCATED)
        return sum(
            _gae_by_hand(
                REWARD[:, n], discount_t[:, n], lambda_t[:, n], VALUE[:, n], BOOTSTRAP[:, n]
            ).sum()
            for n in range(2)
        )

    eps = 1e-4
    fd_discount = (reference(GAMMA + eps, LAMBDA) - reference(GAMMA - eps, LAMBDA)) / (2 * eps)
    fd_lambda = (reference(GAMMA, LAMBDA + eps) - reference(GAMMA, LAMBDA - eps)) / (2 * eps)
    np.testing.assert_allclose(d_discount, fd_discount, rtol=1e-3)
    np.testing.assert_allclose(d_lambda, fd_lambda, rtol=1e-3)
    check_grads(jax.jit(_advantage_sum), (discount, gae_lambda), order=1, modes=["fwd", "rev"])


def test_gradient_flows_through_targets_and_values():
    """No stop-gradient: the targets depend on the bootstrap values and on γ."""

    def target_sum(bootstrap, discount):
        _, target = returns.episode_gae(
            jnp.asarray(REWARD),
            jnp.asarray(VALUE),
            bootstrap,
            jnp.asarray(TERMINATED),
            jnp.asarray(TRUNCATED),
            discount,
            jnp.float32(LAMBDA),
        )
        return jnp.sum(target)

    d_boot, d_discount = jax.grad(target_sum, argnums=(0, 1))(
        jnp.asarray(BOOTSTRAP), jnp.float32(GAMMA)
    )
    assert abs(float(d_discount)) > 1e-3
    # The terminated step's bootstrap value gets no gradient; the truncated one does.
    assert float(d_boot[4, 0]) == 0.0
    np.testing.assert_allclose(
        d_boot[2, 0], GAMMA * (1 + GAMMA * LAMBDA + (GAMMA * LAMBDA) ** 2), rtol=1e-5
    )
