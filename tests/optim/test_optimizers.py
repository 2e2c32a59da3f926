"""jaxrl.optim's Adam and RMSProp: optax's numbers and states, and a finite derivative in
the learning rate where a gradient entry is 0 (optax's is NaN there)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrl import optim

CURVATURE = {  # the loss is sum(c * p^2) / 2, so the gradient c * p is 0 where c is
    # (at every step) and tiny where c is: nu ~ 1e-40 .. 1e-20, below and above where
    # EPS_ROOT could change a number
    "w": jnp.ones((3, 4)).at[0, 0].set(0.0).at[1, 1].set(1e-10).at[2, 2].set(1e-20),
    "b": jnp.linspace(-1.0, 1.0, 4),
}


PAIRS = {
    "adam": (lambda lr: optim.adam(lr, eps=1e-5), lambda lr: optax.adam(lr, eps=1e-5)),
    "adam_eps_1e-12": (lambda lr: optim.adam(lr, 1e-12), lambda lr: optax.adam(lr, eps=1e-12)),
    "rmsprop": (
        lambda lr: optim.rmsprop(lr, decay=0.99, eps=1e-5),
        lambda lr: optax.rmsprop(lr, decay=0.99, eps=1e-5, eps_in_sqrt=False),
    ),
}


def _run(tx, steps=3):
    """``steps`` steps of ``tx`` from ``p = 1`` on the quadratic; the final params and state."""
    params = jax.tree.map(jnp.ones_like, CURVATURE)
    state = tx.init(params)

    def step(carry, _):
        params, state = carry
        grads = jax.tree.map(jnp.multiply, CURVATURE, params)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, state), None, steps)[0]


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_same_numbers_and_state_as_optax(name):
    ours, theirs = PAIRS[name]
    got, want = jax.jit(lambda lr: (_run(ours(lr)), _run(theirs(lr))))(1e-3)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_learning_rate_derivative_is_finite_where_a_gradient_is_zero(name):
    ours, theirs = PAIRS[name]
    outer = lambda make: (
        lambda lr: sum(  # noqa: E731
            jnp.sum(jnp.square(x)) for x in jax.tree.leaves(_run(make(lr))[0])
        )
    )
    d_ours, d_theirs = jax.jit(lambda lr: (jax.grad(outer(ours))(lr), jax.grad(outer(theirs))(lr)))(
        1e-3
    )
    assert np.isfinite(d_ours) and d_ours != 0.0
    assert np.isnan(d_theirs), "optax's derivative is finite here now: EPS_ROOT may be moot"
