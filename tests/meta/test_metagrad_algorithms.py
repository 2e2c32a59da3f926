"""``metagrad.meta_grad(wrt="hparams")`` through K = 2 updates of every algorithm: the
meta-gradient in the learning rate (and the discount where finite differences resolve it)
is finite, nonzero and matches a central finite difference of the outer value.

The outer objective is ``Σ ‖θ_K − θ_0‖²`` over the float leaves of ``State.params``: a
smooth function of the state after the unroll that depends on every inner step. Each
config is tiny and starts from one plain update (``WARM_UP``), so the replay algorithms
hold data and take gradient steps in both meta-differentiated updates. One program per
algorithm (init, warm-up and ``meta_grad``); finite differences reuse its outer value.
Its compile is most of each test's time, so the default run keeps three representatives
(A2C: on-policy RMSProp; DQN: replay, Huber TD; SAC: continuous, twin critics,
temperature) and the others run with ``--runslow``. What the agreement means and where it
stops (stopped bootstrap values, discrete choices): docs/design.md, "Meta-gradients
through every algorithm".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import envs
from jaxrl.algorithms import ALGORITHMS, recurrent_ppo
from jaxrl.meta import metagrad as mg

K = 2
WARM_UP = 1  # plain updates before the unroll
EPS = 1e-2  # central-difference step in the unconstrained (log / logit) meta-parameter
RTOL = 0.05
ON = dict(num_envs=4, rollout_len=8, hidden=(16,))
REPLAY = dict(hidden=(16,), batch_size=8, buffer_size=64, learning_starts=0, train_freq=4)
LR, GAMMA = ("learning_rate",), ("learning_rate", "discount")

# name: (env, Config overrides, HParams overrides, meta-parameters checked). The discount
# is checked where its finite difference is well above float32 noise with this objective;
# elsewhere (DQN, SAC, DDPG, TD3: |∂/∂γ| ~ 1e-9 .. 2e-8 here, as is the FD noise) it cannot
# be resolved, or the meta-gradient is a semi-gradient by design (ACER, IMPALA, R2D2:
# bootstrap values are stopped network outputs) or sampling is discrete in it (Ape-X's
# actor-side priorities).
CASES = {
    "a2c": ("CartPole-v1", ON | dict(activation="relu"), {}, GAMMA),  # RMSProp, dead ReLUs
    "acer": ("CartPole-v1", ON | dict(buffer_size=128, replay_start=32, replay_ratio=1), {}, LR),
    # lr = η_max: below the KL trust-region step, which sets the step (∂/∂lr = 0) at 0.25
    "acktr": ("CartPole-v1", ON, dict(learning_rate=1e-3), LR),
    "apex": (
        "CartPole-v1",
        REPLAY | dict(num_actors=4, target_update_period=4, train_freq=2),
        {},
        LR,
    ),
    "ddpg": ("Pendulum-v1", REPLAY | dict(num_envs=2), {}, LR),
    "dqn": ("CartPole-v1", REPLAY | dict(num_envs=2, target_update_period=4), {}, LR),
    "impala": ("CartPole-v1", ON | dict(lag=1, optimizer="adam"), {}, LR),
    "npg": ("CartPole-v1", ON | dict(rollout_len=16, num_minibatches=2), {}, LR),
    "ppo": ("CartPole-v1", ON | dict(rollout_len=16, num_minibatches=2), {}, LR),
    "r2d2": (
        "CartPole-v1",
        dict(
            num_envs=2,
            train_freq=8,
            hidden=(8,),
            lstm_features=8,
            batch_size=4,
            buffer_size=64,
            sequence_length=8,
            burn_in=2,
            period=4,
            n_step=2,
            learning_starts=16,
            target_update_period=4,
        ),
        {},
        LR,
    ),  # fmt: skip
    "rainbow": (
        "CartPole-v1",
        REPLAY | dict(num_envs=2, target_update_period=4, num_atoms=11),
        {},
        GAMMA,
    ),  # fmt: skip
    "recurrent_ppo": (
        "CartPole-v1",
        dict(num_envs=4, rollout_len=8, hidden=16, num_minibatches=2, num_epochs=1),
        {},
        GAMMA,
    ),  # fmt: skip
    "sac": ("Pendulum-v1", REPLAY | dict(num_envs=2), {}, LR),
    "td3": ("Pendulum-v1", REPLAY | dict(num_envs=2, policy_delay=1), {}, LR),
    "trpo": ("CartPole-v1", ON | dict(rollout_len=16, num_minibatches=2), {}, LR),
    "vpg": ("CartPole-v1", ON, {}, GAMMA),
}
DEFAULT = ("a2c", "dqn", "sac")
MODULES = ALGORITHMS | {"recurrent_ppo": recurrent_ppo}  # RL^2's learner, not in the registry

# Compile time dominates: XLA's cheaper CPU backend settings, as in test_metagrad.py.
jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


def test_every_algorithm_has_a_case():
    assert set(ALGORITHMS) <= set(CASES) and set(CASES) <= set(MODULES)


def _program(name: str):
    """``meta -> (grads, outer)``: init, ``WARM_UP`` plain updates, then ``meta_grad`` of
    ``Σ ‖θ_K − θ_0‖²`` through ``K`` updates, as one jitted program."""
    algo = MODULES[name]
    env_id, overrides, hp_overrides, _ = CASES[name]
    env, _ = envs.make(env_id)
    cfg = algo.Config(**overrides)
    hp = algo.HParams.make(**hp_overrides)

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
