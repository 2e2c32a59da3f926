"""Tests of ``jaxrl.losses.policy``: clipped surrogate, KL estimate and penalty, β adaptation."""

from __future__ import annotations

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.losses import policy

# Hand-picked so that some ratios clip above, some below, some not at all, for both signs
# of the advantage: ratios are exp(log_prob - old_log_prob).
LOG_PROB = np.log(np.array([1.0, 1.5, 0.5, 1.1, 0.7, 1.3, 0.95, 2.0], np.float32))
OLD_LOG_PROB = np.zeros(8, np.float32)
ADVANTAGE = np.array([1.0, 2.0, 1.5, -1.0, -2.0, -0.5, 0.3, -1.2], np.float32)
CLIP_EPS = 0.2


def _surrogate_by_hand(log_prob, old_log_prob, advantage, eps):
    ratio = np.exp(np.asarray(log_prob, np.float64) - old_log_prob)
    unclipped = ratio * advantage
    clipped = np.clip(ratio, 1 - eps, 1 + eps) * advantage
    loss = -np.mean(np.minimum(unclipped, clipped))
    clip_fraction = np.mean(np.abs(ratio - 1) > eps)
    # d loss / d A_i: whichever term the min picked, divided by -B.
    d_adv = -np.where(unclipped <= clipped, ratio, np.clip(ratio, 1 - eps, 1 + eps)) / len(ratio)
    return loss, clip_fraction, d_adv


class ClippedSurrogateTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_hand_computation(self):
        loss, clip_fraction = self.variant(policy.clipped_surrogate_loss)(
            LOG_PROB, OLD_LOG_PROB, ADVANTAGE, jnp.float32(CLIP_EPS)
        )
        want_loss, want_fraction, _ = _surrogate_by_hand(
            LOG_PROB, OLD_LOG_PROB, ADVANTAGE, CLIP_EPS
        )
        chex.assert_shape([loss, clip_fraction], ())
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
        # ratios 1.5, 0.5, 0.7, 1.3, 2.0 lie outside [0.8, 1.2]: 5 of 8.
        np.testing.assert_allclose(clip_fraction, want_fraction, rtol=1e-6)
        assert want_fraction == 5 / 8

    @chex.variants(with_jit=True, without_jit=True)
    def test_no_clipping_is_the_plain_surrogate(self):
        loss, clip_fraction = self.variant(policy.clipped_surrogate_loss)(
            LOG_PROB, OLD_LOG_PROB, ADVANTAGE, jnp.float32(10.0)
        )
        np.testing.assert_allclose(loss, -np.mean(np.exp(LOG_PROB) * ADVANTAGE), rtol=1e-6)
        assert float(clip_fraction) == 0.0

    def test_gradient_wrt_advantage_is_not_stopped(self):
        grad = jax.grad(
            lambda a: policy.clipped_surrogate_loss(
                LOG_PROB, OLD_LOG_PROB, a, jnp.float32(CLIP_EPS)
            )[0]
        )(jnp.asarray(ADVANTAGE))
        _, _, want = _surrogate_by_hand(LOG_PROB, OLD_LOG_PROB, ADVANTAGE, CLIP_EPS)
        assert np.all(np.asarray(grad) != 0.0)
        np.testing.assert_allclose(grad, want, rtol=1e-5)

    def test_gradient_wrt_log_prob_vanishes_where_clipped(self):
        grad = jax.grad(
            lambda lp: policy.clipped_surrogate_loss(
                lp, OLD_LOG_PROB, ADVANTAGE, jnp.float32(CLIP_EPS)
            )[0]
        )(jnp.asarray(LOG_PROB))
        ratio = np.exp(LOG_PROB)
        # The clipped term is the min (so no gradient) where the ratio moved past the clip
        # range in the direction the advantage favours.
        pinned = ((ratio > 1 + CLIP_EPS) & (ADVANTAGE > 0)) | (
            (ratio < 1 - CLIP_EPS) & (ADVANTAGE < 0)
        )
        np.testing.assert_array_equal(np.asarray(grad) == 0.0, pinned)
        np.testing.assert_allclose(
            grad[~pinned], -(ratio * ADVANTAGE)[~pinned] / len(ratio), rtol=1e-5
        )

    def test_rank_is_checked(self):
        with pytest.raises(AssertionError):
            policy.clipped_surrogate_loss(
                LOG_PROB[None], OLD_LOG_PROB[None], ADVANTAGE[None], jnp.float32(CLIP_EPS)
            )


def _sample_log_probs(key, old_logits, new_logits, n):
    """Samples ``n`` actions from ``softmax(old_logits)``; returns their new and old log-probs."""
    actions = jax.random.categorical(key, old_logits, shape=(n,))
    return jax.nn.log_softmax(new_logits)[actions], jax.nn.log_softmax(old_logits)[actions]


class ApproxKLTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_zero_when_policies_are_equal(self):
        log_prob = jnp.asarray(LOG_PROB)
        np.testing.assert_array_equal(self.variant(policy.approx_kl)(log_prob, log_prob), 0.0)

    def test_estimates_exact_kl_of_two_categoricals(self):
        old_logits = jnp.array([0.5, -1.0, 1.2, 0.0])
        new_logits = jnp.array([-0.3, 0.4, 1.0, -0.8])
        old, new = distrax.Categorical(logits=old_logits), distrax.Categorical(logits=new_logits)
        n = 200_000
        log_prob, old_log_prob = _sample_log_probs(jax.random.key(0), old_logits, new_logits, n)
        estimate = float(jax.jit(policy.approx_kl)(log_prob, old_log_prob))
        p, q = np.exp(np.asarray(old.logits)), np.exp(np.asarray(new.logits))
        p, q = p / p.sum(), q / q.sum()
        exact = float(np.sum(p * np.log(p / q)))
        np.testing.assert_allclose(exact, float(old.kl_divergence(new)), rtol=1e-5)
        # Per-sample k3 terms; the estimate is their mean, within 5 standard errors of KL.
        log_ratio = np.asarray(log_prob - old_log_prob, np.float64)
        terms = np.expm1(log_ratio) - log_ratio
        assert np.all(terms >= 0.0)
        stderr = terms.std() / np.sqrt(n)
        assert abs(estimate - exact) < 5 * stderr, (estimate, exact, stderr)
        assert stderr < 0.02 * exact  # the test has power: a 10% bias would be caught

    def test_is_not_the_reverse_kl(self):
        """With samples from π_old it estimates KL(π_old ‖ π), not KL(π ‖ π_old)."""
        old_logits, new_logits = jnp.array([2.0, 0.0, -2.0]), jnp.array([-1.0, 0.5, 1.0])
        old, new = distrax.Categorical(logits=old_logits), distrax.Categorical(logits=new_logits)
        log_prob, old_log_prob = _sample_log_probs(
            jax.random.key(1), old_logits, new_logits, 100_000
        )
        estimate = float(policy.approx_kl(log_prob, old_log_prob))
        forward, reverse = float(old.kl_divergence(new)), float(new.kl_divergence(old))
        assert abs(estimate - forward) < abs(estimate - reverse)
        np.testing.assert_allclose(estimate, forward, rtol=0.05)


class KLPenaltyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_hand_computation(self):
        beta = 0.7
        loss, kl = self.variant(policy.kl_penalty_loss)(
            LOG_PROB, OLD_LOG_PROB, ADVANTAGE, jnp.float32(beta)
        )
        ratio = np.exp(np.asarray(LOG_PROB, np.float64))
        log_ratio = np.log(ratio)
        want_kl = np.mean(ratio - 1 - log_ratio)
        np.testing.assert_allclose(kl, want_kl, rtol=1e-5)
        np.testing.assert_allclose(loss, -np.mean(ratio * ADVANTAGE) + beta * want_kl, rtol=1e-5)

    def test_gradient_wrt_advantage_and_beta(self):
        def loss(advantage, beta):
            return policy.kl_penalty_loss(LOG_PROB, OLD_LOG_PROB, advantage, beta)[0]

        d_adv, d_beta = jax.grad(loss, argnums=(0, 1))(jnp.asarray(ADVANTAGE), jnp.float32(0.5))
        np.testing.assert_allclose(d_adv, -np.exp(LOG_PROB) / len(LOG_PROB), rtol=1e-5)
        np.testing.assert_allclose(d_beta, policy.approx_kl(LOG_PROB, OLD_LOG_PROB), rtol=1e-6)


class AdaptKLBetaTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_three_cases(self):
        adapt = self.variant(policy.adapt_kl_beta)
        beta, target = jnp.float32(0.4), jnp.float32(0.01)
        np.testing.assert_allclose(adapt(beta, jnp.float32(0.02), target), 0.8)  # kl > 1.5 t
        np.testing.assert_allclose(adapt(beta, jnp.float32(0.005), target), 0.2)  # kl < t/1.5
        np.testing.assert_allclose(adapt(beta, jnp.float32(0.01), target), 0.4)  # in between
        # Just inside either threshold nothing changes.
        np.testing.assert_allclose(adapt(beta, jnp.float32(0.0149), target), 0.4)
        np.testing.assert_allclose(adapt(beta, jnp.float32(0.0067), target), 0.4)

    def test_vmaps_over_kl(self):
        kl = jnp.array([0.0, 0.006, 0.01, 0.014, 0.016, 1.0])
        got = jax.jit(jax.vmap(policy.adapt_kl_beta, in_axes=(None, 0, None)))(
            jnp.float32(1.0), kl, jnp.float32(0.01)
        )
        np.testing.assert_allclose(got, [0.5, 0.5, 1.0, 1.0, 2.0, 2.0])
