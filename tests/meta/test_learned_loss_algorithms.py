"""``metagrad.meta_grad(wrt="loss")`` through K = 2 updates of every algorithm: a learned
loss in the signature of ``algo.loss`` replaces it wherever the update takes its gradient.

The learned loss is ``η["scale"] · algo.loss + η["coef"] · Σ‖params‖²`` (every float leaf
of the loss's ``params``: a weight decay whose strength is meta-learned); at
``η = (1, 0)`` it is ``algo.loss``. On the tiny configs of ``algo_cases.py``, from the
state after one plain update (``WARM_UP``):

* every algorithm's ``update`` and ``train`` take ``loss_fn``, defaulting to its ``loss``;
* at ``η = (1, 0)``, ``K`` updates with the learned loss give the state of ``K`` plain
  updates (the loss is threaded to where the update differentiates it, with its batch;
  to float rounding: the DQN family computes ``loss`` itself and its priorities in one
  forward pass, another loss in two);
* at ``η = (1, 0.1)`` (Ape-X: ``(1, 0.05)``), ``∂outer/∂η`` is finite, nonzero in
  ``coef`` and matches a central finite difference of the outer value ``Σ ‖θ_K − θ_0‖²``
  (as in ``test_metagrad_algorithms.py``). Not at ``coef = 0``: there a parameter whose
  loss gradient is exactly zero (a dead ReLU unit) gets ``2 coef θ = 0`` from the decay,
  where Adam's step ``g / (|g| + ε)`` has the slope ``1 / ε``; the meta-gradient is that
  slope (``−148`` for DQN, against ``5e-4`` for the difference at ``coef = ±0.01``),
  right but of no use to a finite difference.

What the learned loss replaces where the update is more than a gradient step of
``algo.loss`` (TRPO / NPG's natural-gradient step and critic fit, the blocks of SAC, TD3
and DDPG, the replay priorities of the DQN family): docs/design.md, "Meta-gradients
through every algorithm". ``∂outer/∂scale`` is small for most of them (Adam, RMSProp and
the trust-region steps are nearly invariant to the loss's scale), so each component is
checked to a tolerance of the largest one. One program per algorithm (init, warm-up,
the two unrolls and ``meta_grad``); the default run keeps DQN (replay, target network,
``gradient_step``) and IMPALA (``learn`` on V-trace), the others run with ``--runslow``.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from algo_cases import WARM_UP, K, case_params, float_leaves, jit, make

from jaxrl.algorithms import ALGORITHMS
from jaxrl.meta import metagrad as mg

ETA0 = {"scale": np.float32(1.0), "coef": np.float32(0.0)}  # the learned loss is algo.loss
ETA1 = {"scale": np.float32(1.0), "coef": np.float32(0.1)}  # where the gradient is checked
EPS = {"scale": 1e-2, "coef": 3e-3}  # central-difference steps
# Ape-X's ∂outer/∂coef changes sign near 0.1 (2e-5 there, −1e-3 at 0.05, −3e-5 at 0.2), so
# a difference there is 5 % off at this step; checked at 0.05 (0.9 %) instead.
COEF = {"apex": np.float32(0.05)}
RTOL = 0.05  # of each component, and of the largest one as an absolute tolerance
DEFAULT = ("dqn", "impala")


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_update_and_train_take_a_loss_fn(name):
    algo = ALGORITHMS[name]
    for fn in (algo.update, algo.train):
        param = inspect.signature(fn).parameters.get("loss_fn")
        assert param is not None, f"{name}.{fn.__name__} takes no loss_fn"
        assert param.default is algo.loss, f"{name}.{fn.__name__}'s loss_fn defaults elsewhere"


def learned_loss(algo):
    """``(η, cfg, env, params, batch, hp) -> (η["scale"] · loss + η["coef"] · Σ‖params‖²,
    loss's metrics)``."""

    def fn(eta, cfg, env, params, batch, hp):
        value, metrics = algo.loss(cfg, env, params, batch, hp)
        decay = sum(jnp.sum(jnp.square(x)) for x in float_leaves(params))
        return eta["scale"] * value + eta["coef"] * decay, metrics

    return fn


@functools.cache
def _program(name: str):
    """A jitted ``η -> (grads, outer value, state_K plain, state_K learned at η)``."""
    algo, env, cfg, hp = make(name)
    loss_fn = learned_loss(algo)

    def run(eta):
        state0 = algo.init(cfg, env, jax.random.key(0), hp)
        state0, _ = algo.train(cfg, env, state0, hp, WARM_UP)
        theta0 = float_leaves(state0.params)

        def outer(state):
            pairs = zip(float_leaves(state.params), theta0, strict=True)
            return sum(jnp.sum(jnp.square(a - b)) for a, b in pairs), None

        plain, _ = mg.inner_train(algo, cfg, env, state0, hp, K)
        learned, _ = mg.inner_train(
            algo, cfg, env, state0, hp, K, loss_fn=functools.partial(loss_fn, eta)
        )
        grads, (value, *_) = mg.meta_grad(
            outer, algo, cfg, env, state0, hp, eta, K, wrt="loss", loss_fn=loss_fn
        )
        return grads, value, plain, learned

    return jit(run)


@pytest.mark.parametrize("name", case_params(DEFAULT))
def test_learned_loss_at_identity_is_the_plain_update(name):
    _, value, plain, learned = _program(name)(ETA0)
    assert float(value) > 0.0, "the parameters did not move: no gradient step in the unroll"
    for a, b in zip(float_leaves(plain), float_leaves(learned), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", case_params(DEFAULT, semi_gradient_fails=True))
def test_learned_loss_meta_gradient_matches_finite_differences(name):
    program = _program(name)
    eta = dict(ETA1, coef=COEF.get(name, ETA1["coef"]))
    grads = program(eta)[0]
    g = np.array([float(grads[k]) for k in eta])
    assert np.all(np.isfinite(g)) and g[1] != 0.0, g
    fd = []
    for k, eps in EPS.items():
        up, down = dict(eta), dict(eta)
        up[k], down[k] = eta[k] + np.float32(eps), eta[k] - np.float32(eps)
        fd.append((float(program(up)[1]) - float(program(down)[1])) / (2 * eps))
    fd = np.array(fd)
    np.testing.assert_allclose(g, fd, rtol=RTOL, atol=RTOL * np.max(np.abs(g)), err_msg="∂/∂η")
    np.testing.assert_allclose(g[1], fd[1], rtol=RTOL, err_msg="∂outer/∂coef")
