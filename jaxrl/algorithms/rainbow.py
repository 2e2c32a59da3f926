"""Rainbow (Hessel et al. 2018, arXiv:1710.02298): the DQN core with every option on.

Double Q-learning, dueling heads, n-step returns (n = 3), proportional prioritised
replay, C51 distributional returns and noisy nets, composed by :mod:`jaxrl.algorithms.dqn`;
this module only changes the defaults of its :class:`Config` (every switch can still be
overridden, e.g. ``--set noisy=false`` for an ablation) and re-exports the DQN functions.
"""

from __future__ import annotations

import dataclasses

from jaxrl.algorithms import dqn
from jaxrl.algorithms.dqn import (  # noqa: F401  (the algorithm contract, re-exported)
    HPARAM_DEFAULTS,
    HPARAM_RANGES,
    Batch,
    HParams,
    Params,
    State,
    Transition,
    act,
    check,
    collect,
    gradient_step,
    init,
    learn,
    loss,
    network,
    policy,
    sample_batch,
    train,
    update,
)


@dataclasses.dataclass(frozen=True)
class Config(dqn.Config):
    """:class:`jaxrl.algorithms.dqn.Config` with Rainbow's components switched on."""

    double: bool = True
    dueling: bool = True
    n_step: int = 3
    prioritised: bool = True
    priority_exponent: float = 0.5
    distribution: str = "c51"
    noisy: bool = True
