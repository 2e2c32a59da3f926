"""Recurrent cores: reset semantics, scan equals the step-by-step loop, carries."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.errors import ConfigError
from jaxrl.networks.recurrent import RecurrentCore, RecurrentScan, initial_carry, reset_carry

T, B, D, H = 6, 3, 4, 5


def _inputs(seed=0):
    x = jax.random.normal(jax.random.key(seed), (T, B, D))
    reset = jnp.zeros((T, B), bool).at[0].set(True).at[3, 1].set(True).at[4, 2].set(True)
    return x, reset


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_carry_shapes(cell):
    carry = initial_carry(cell, (B,), H)
    leaves = jax.tree.leaves(carry)
    assert len(leaves) == (2 if cell == "lstm" else 1)
    for leaf in leaves:
        assert leaf.shape == (B, H) and not np.any(leaf)


def test_unknown_cell_raises():
    with pytest.raises(ConfigError):
        initial_carry("rnn", (B,), H)


def test_reset_carry_zeroes_only_flagged_rows():
    carry = (jnp.ones((B, H)), 2 * jnp.ones((B, H)))
    out = reset_carry(carry, jnp.array([False, True, False]))
    np.testing.assert_array_equal(out[0][:, 0], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(out[1][:, 0], [2.0, 0.0, 2.0])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_reset_step_equals_step_from_zero_carry(cell):
    core = RecurrentCore(H, cell)
    x, _ = _inputs()
    zero = initial_carry(cell, (B,), H)
    params = core.init(jax.random.key(1), zero, x[0], jnp.zeros((B,), bool))
    junk = jax.tree.map(lambda c: c + 3.0, zero)  # a non-zero carry
    reset = jnp.ones((B,), bool)
    got_carry, got_y = core.apply(params, junk, x[0], reset)
    want_carry, want_y = core.apply(params, zero, x[0], jnp.zeros((B,), bool))
    np.testing.assert_allclose(got_y, want_y, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got_carry, want_carry)
    # Without the reset flag the junk carry does change the output.
    _, y_noreset = core.apply(params, junk, x[0], jnp.zeros((B,), bool))
    assert np.max(np.abs(y_noreset - want_y)) > 1e-3


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_scan_equals_step_loop(cell):
    x, reset = _inputs()
    scan = RecurrentScan(H, cell)
    carry0 = jax.tree.map(lambda c: c + 0.5, initial_carry(cell, (B,), H))
    params = scan.init(jax.random.key(2), carry0, x, reset)
    carry_scan, y_scan = jax.jit(scan.apply)(params, carry0, x, reset)
    core_params = {"params": params["params"]["core"]}
    core = RecurrentCore(H, cell)
    carry, ys = carry0, []
    for t in range(T):
        carry, y = core.apply(core_params, carry, x[t], reset[t])
        ys.append(y)
    np.testing.assert_allclose(y_scan, jnp.stack(ys), rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), carry_scan, carry)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_reset_cuts_dependence_on_the_past(cell):
    """Outputs from a reset onwards do not depend on inputs before it (zero gradient)."""
    x, reset = _inputs()
    scan = RecurrentScan(H, cell)
    carry0 = initial_carry(cell, (B,), H)
    params = scan.init(jax.random.key(3), carry0, x, reset)

    def out_row1_after_reset(x):  # row 1 resets at t = 3
        _, y = scan.apply(params, carry0, x, reset)
        return jnp.sum(y[3:, 1])

    g = jax.grad(out_row1_after_reset)(x)
    np.testing.assert_array_equal(g[:3, 1], 0.0)
    assert np.max(np.abs(g[3:, 1])) > 0
