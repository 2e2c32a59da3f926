"""Natural policy gradient (Kakade 2001; Rajeswaran et al. 2017, arXiv:1703.02660).

NPG is TRPO without the line search: the same surrogate gradient ``g``, the same
conjugate-gradient solve ``s ≈ F⁻¹ g`` with Fisher-vector products by forward-over-reverse
autodiff, and always the full step ``√(2 max_kl / sᵀFs) · s`` (a step whose *quadratic model*
of the mean KL equals ``max_kl``; the measured KL can exceed it). The critic is fitted
separately, as in TRPO. This module only changes :class:`jaxrl.algorithms.trpo.Config`'s
default to ``line_search=False`` and re-exports TRPO's functions (as ``vpg`` does with
``a2c``), so ``jaxrl train npg`` and ``jaxrl train trpo --set line_search=false`` are the
same program.
"""

from __future__ import annotations

import dataclasses

from jaxrl.algorithms import trpo
from jaxrl.algorithms.trpo import (  # noqa: F401  (the algorithm contract, re-exported)
    HPARAM_DEFAULTS,
    HPARAM_RANGES,
    HParams,
    State,
    act,
    check,
    collect,
    init,
    loss,
    make_batch,
    network,
    policy_step,
    train,
    update,
)


@dataclasses.dataclass(frozen=True)
class Config(trpo.Config):
    """:class:`jaxrl.algorithms.trpo.Config` with ``line_search=False`` (the full step)."""

    line_search: bool = False
