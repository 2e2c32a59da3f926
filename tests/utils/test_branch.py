"""jaxrl.utils.branch: the predicate reduced over vmap axes, and run_if's branches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl.utils.branch import batch_mode, run_if


@struct.dataclass
class Counter:
    steps: jax.Array
    other: jax.Array


def _add_ten(state: Counter) -> tuple[Counter, dict]:
    return state.replace(steps=state.steps + 10), {"m": state.other + 0.5}


def _run(state: Counter, pred) -> tuple[Counter, dict]:
    return run_if(pred, _add_ten, state, ("steps",))


def test_batch_mode_is_unbatched_none_all_or_some():
    flags = jnp.array([[True, True, True], [True, False, True]])
    for rows, want in ((flags[:1], 1), (~flags[:1], 0), (flags, 2)):
        mode = jax.vmap(jax.vmap(batch_mode))(rows)  # nested: every axis reduced
        np.testing.assert_array_equal(mode, np.full(rows.shape, want))
    assert int(batch_mode(jnp.bool_(True))) == 1 and int(batch_mode(False)) == 0


def test_run_if_under_vmap_keeps_each_members_branch():
    states = Counter(jnp.zeros(3, jnp.int32), jnp.arange(3.0))
    new, metrics = jax.jit(jax.vmap(_run))(states, jnp.array([True, False, True]))
    np.testing.assert_array_equal(new.steps, [10, 0, 10])
    np.testing.assert_array_equal(new.other, states.other)  # not in fields: untouched
    np.testing.assert_array_equal(metrics["m"], [0.5, np.nan, 2.5])
    state = Counter(jnp.int32(0), jnp.float32(1.0))
    for p in (True, False):  # unbatched, and a Python bool decided while tracing
        one, m = jax.jit(lambda st, p=p: _run(st, jnp.bool_(p)))(state)
        assert int(one.steps) == 10 * p and np.isnan(m["m"]) != p
        assert int(_run(state, p)[0].steps) == 10 * p


def test_run_if_keeps_a_real_branch_when_every_member_agrees():
    """Under vmap the predicate stays unbatched: the program still holds a cond, and a
    batch where no member runs computes nothing (its metrics are NaN for all)."""
    states = Counter(jnp.zeros(2, jnp.int32), jnp.zeros(2))
    jaxpr = str(jax.make_jaxpr(jax.vmap(_run))(states, jnp.array([False, False])))
    assert " cond[" in jaxpr
    new, metrics = jax.vmap(_run)(states, jnp.array([False, False]))
    assert np.isnan(metrics["m"]).all() and not new.steps.any()


def test_gradient_passes_through_the_taken_branch():
    def f(x, pred):
        state, _ = run_if(pred, lambda s: (s.replace(steps=s.steps * x), {}), Counter(x, x),
                          ("steps",))  # fmt: skip
        return state.steps

    g = jax.vmap(jax.grad(f), in_axes=(0, 0))(jnp.array([3.0, 3.0]), jnp.array([True, False]))
    np.testing.assert_allclose(g, [6.0, 1.0])  # d(x*x)/dx = 2x where run; dx/dx = 1 where not
