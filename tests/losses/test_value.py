"""Tests of ``jaxrl.losses.value.value_loss``: plain and PPO2-clipped regression."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.losses.value import value_loss

VALUE = np.array([1.0, 1.0, -0.5, 0.3, 2.0], np.float32)
OLD_VALUE = np.array([0.0, 0.0, 0.0, 0.25, 2.1], np.float32)
TARGET = np.array([1.0, 0.0, 1.0, -1.0, 2.05], np.float32)
EPS = 0.2


class ValueLossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_unclipped_by_hand(self):
        got = self.variant(value_loss, static_argnames="clip")(
            VALUE, OLD_VALUE, TARGET, jnp.float32(EPS), clip=False
        )
        # (0^2 + 1^2 + 1.5^2 + 1.3^2 + 0.05^2) / 2 / 5
        want = 0.5 * (0.0 + 1.0 + 2.25 + 1.69 + 0.0025) / 5
        np.testing.assert_allclose(got, want, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_clipped_by_hand(self):
        got = self.variant(value_loss, static_argnames="clip")(
            VALUE, OLD_VALUE, TARGET, jnp.float32(EPS), clip=True
        )
        # Clipped values v_old + clip(v - v_old, ±0.2): [0.2, 0.2, -0.2, 0.3, 2.0].
        # Squared errors unclipped / clipped, then the max of each pair:
        #   0 / 0.64 -> 0.64;  1 / 0.04 -> 1;  2.25 / 1.44 -> 2.25;
        #   1.69 / 1.69 -> 1.69 (v inside the clip range);  0.0025 / 0.0025 -> 0.0025.
        want = 0.5 * (0.64 + 1.0 + 2.25 + 1.69 + 0.0025) / 5
        np.testing.assert_allclose(got, want, rtol=1e-5)

    def test_clip_off_ignores_old_value(self):
        a = value_loss(VALUE, OLD_VALUE, TARGET, jnp.float32(EPS), clip=False)
        b = value_loss(VALUE, OLD_VALUE + 5.0, TARGET, jnp.float32(EPS), clip=False)
        np.testing.assert_array_equal(a, b)
        c = value_loss(VALUE, OLD_VALUE + 5.0, TARGET, jnp.float32(EPS), clip=True)
        assert float(c) > float(a)

    def test_gradient_wrt_target_is_not_stopped(self):
        grad_fn = jax.grad(value_loss, argnums=(0, 2))
        d_value, d_target = grad_fn(VALUE, OLD_VALUE, TARGET, jnp.float32(EPS), False)
        np.testing.assert_allclose(d_target, -(VALUE - TARGET) / len(VALUE), rtol=1e-5)
        np.testing.assert_allclose(d_value, (VALUE - TARGET) / len(VALUE), rtol=1e-5)
        d_value, d_target = grad_fn(VALUE, OLD_VALUE, TARGET, jnp.float32(EPS), True)
        # Element 0: the clipped term (0.2 - 1)^2 wins, so the target gets 2·(1 - 0.2)·0.5/5
        # and the value none (its clipped copy is pinned at the bound).
        np.testing.assert_allclose(d_target[0], 0.8 / 5, rtol=1e-5)
        assert float(d_value[0]) == 0.0
        # Every target still gets a gradient (the clipped error is never exactly zero here).
        assert np.all(np.asarray(d_target) != 0.0)

    def test_gradient_wrt_clip_eps(self):
        """``ε`` is traced: where the clipped term wins, the loss depends on it."""
        d_eps = jax.grad(value_loss, argnums=3)(VALUE, OLD_VALUE, TARGET, jnp.float32(EPS), True)
        # Only element 0 uses the clipped term: d/dε of 0.5·(ε - 1)^2 / 5 = (ε - 1)/5.
        np.testing.assert_allclose(d_eps, (EPS - 1.0) / 5, rtol=1e-5)

    def test_rank_is_checked(self):
        with pytest.raises(AssertionError):
            value_loss(VALUE[None], OLD_VALUE[None], TARGET[None], jnp.float32(EPS), False)
