"""``metagrad.meta_grad(wrt="hparams")`` through K = 2 updates of every algorithm: the
meta-gradient in the learning rate (and the discount where finite differences resolve it)
is finite, nonzero and matches a central finite difference of the outer value.

The outer objective is ``Σ ‖θ_K − θ_0‖²`` over the float leaves of ``State.params``: a
smooth function of the state after the unroll that depends on every inner step. The
tiny configs (``algo_cases.py``, shared with ``test_maml_algorithms.py``) start from one
plain update (``WARM_UP``), so the replay algorithms hold data and take gradient steps
in both meta-differentiated updates. One program per
algorithm (init, warm-up and ``meta_grad``); finite differences reuse its outer value.
Its compile is most of each test's time, so the default run keeps two representatives
(A2C: on-policy RMSProp; DQN: replay, TD, Adam through a dead unit) and the others, SAC's
continuous twin critics and temperature included, run with ``--runslow``. What the
agreement means and where it stops (stopped bootstrap values, discrete choices):
docs/design.md, "Meta-gradients through every algorithm".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from algo_cases import CASES, WARM_UP, K, jit, make

from jaxrl.algorithms import ALGORITHMS
from jaxrl.meta import metagrad as mg

EPS = 1e-2  # central-difference step in the unconstrained (log / logit) meta-parameter
RTOL = 0.05
DEFAULT = ("a2c", "dqn")


def test_every_algorithm_has_a_case():
    assert set(CASES) == set(ALGORITHMS)


def _program(name: str):
    """``meta -> (grads, outer)``: init, ``WARM_UP`` plain updates, then ``meta_grad`` of
    ``Σ ‖θ_K − θ_0‖²`` through ``K`` updates, as one jitted program."""
    algo, env, cfg, hp = make(name)

    def run(meta):
        state0 = algo.init(cfg, env, jax.random.key(0), hp)
        state0, _ = algo.train(cfg, env, state0, hp, WARM_UP)
        theta0 = [x for x in jax.tree.leaves(state0.params) if jnp.issubdtype(x.dtype, jnp.inexact)]

        def outer(state):
            theta = [
                x for x in jax.tree.leaves(state.params) if jnp.issubdtype(x.dtype, jnp.inexact)
            ]
            moved = sum(jnp.sum(jnp.square(a - b)) for a, b in zip(theta, theta0, strict=True))
            return moved, None

        grads, (value, *_) = mg.meta_grad(outer, algo, cfg, env, state0, hp, meta, K)
        return grads, value

    return jit(run), hp


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[] if n in DEFAULT else [pytest.mark.slow]) for n in CASES]
)
def test_meta_gradient_matches_finite_differences(name):
    program, hp = _program(name)
    names = CASES[name][3]
    meta = {n: np.asarray(x) for n, x in mg.to_meta(hp, names).items()}
    grads, value = program(meta)
    assert float(value) > 0.0, "the parameters did not move: no gradient step in the unroll"
    for n in names:
        up, down = dict(meta), dict(meta)
        up[n], down[n] = meta[n] + np.float32(EPS), meta[n] - np.float32(EPS)
        fd = (float(program(up)[1]) - float(program(down)[1])) / (2 * EPS)
        g = float(grads[n])
        assert np.isfinite(g) and g != 0.0, f"{n}: {g}"
        np.testing.assert_allclose(g, fd, rtol=RTOL, err_msg=f"∂outer/∂{n}")
