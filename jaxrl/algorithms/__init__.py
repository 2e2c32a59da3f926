"""Algorithms, each a module with Config, HParams, State, init, update, train, loss."""

from __future__ import annotations

import types

from jaxrl.algorithms import (
    a2c,
    acer,
    acktr,
    apex,
    ddpg,
    dqn,
    fun,
    gail,
    icm,
    impala,
    npg,
    ppo,
    r2d2,
    rainbow,
    recurrent_ppo,
    sac,
    td3,
    trpo,
    vpg,
)

ALGORITHMS: dict[str, types.ModuleType] = {
    "a2c": a2c,
    "acer": acer,
    "acktr": acktr,
    "apex": apex,
    "ddpg": ddpg,
    "dqn": dqn,
    "fun": fun,
    "gail": gail,
    "icm": icm,
    "impala": impala,
    "npg": npg,
    "ppo": ppo,
    "r2d2": r2d2,
    "rainbow": rainbow,
    "recurrent_ppo": recurrent_ppo,
    "sac": sac,
    "td3": td3,
    "trpo": trpo,
    "vpg": vpg,
}


def get(name: str) -> types.ModuleType:
    """Returns the algorithm module called ``name``; ValueError lists the valid names."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]
