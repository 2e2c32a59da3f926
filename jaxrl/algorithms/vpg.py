"""Vanilla policy gradient / REINFORCE, with or without a learned baseline: A2C, VPG defaults.

REINFORCE (Williams 1992) with an optional baseline has A2C's gradient estimator (one step
of ``−mean(log π(a|s) · Â)`` per batch, plus the critic's regression when there is one);
VPG differs only in its settings, so this module changes the defaults of
:class:`jaxrl.algorithms.a2c.Config` and ``HParams`` and re-exports A2C's functions (as
``rainbow`` does with ``dqn``):

* long rollouts (128 steps of 8 envs, against A2C's 5 of 8) and one step per batch;
* Adam with its learning rate annealed linearly to 0, and advantages normalised per batch;
* ``baseline=True``: a learned value baseline; ``gae_lambda = 1`` (the default) gives
  reward-to-go minus ``V(s)``, bootstrapped from ``V`` at the rollout end, and
  ``gae_lambda < 1`` GAE (e.g. Spinning Up's 0.97);
* ``baseline=False``: REINFORCE with no critic. ``Â`` is the discounted reward-to-go within
  the rollout, with a zero bootstrap where the rollout ends (and at time limits and
  terminations), so ``rollout_len`` should be well above the horizon ``1 / (1 − γ)``.
  Keep ``gae_lambda = 1`` there: with ``V ≡ 0`` a ``λ < 1`` is only a second discount.
"""

from __future__ import annotations

import dataclasses

from jaxrl.algorithms import a2c, base
from jaxrl.algorithms.a2c import (  # noqa: F401  (the algorithm contract, re-exported)
    ActorOnly,
    Batch,
    Rollout,
    State,
    act,
    check,
    collect,
    init,
    loss,
    make_batch,
    network,
    optimizer,
    policy_gradient_loss,
    train,
    update,
)


@dataclasses.dataclass(frozen=True)
class Config(a2c.Config):
    """:class:`jaxrl.algorithms.a2c.Config` with VPG's defaults."""

    num_envs: int = 8
    rollout_len: int = 128
    optimizer: str = "adam"
    anneal_lr: bool = True
    normalize_advantages: bool = True


HPARAM_DEFAULTS = a2c.HPARAM_DEFAULTS | dict(learning_rate=3e-3)
HPARAM_RANGES = a2c.HPARAM_RANGES


class HParams(a2c.HParams):
    """:class:`jaxrl.algorithms.a2c.HParams` with VPG's defaults in :meth:`make`."""

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)
