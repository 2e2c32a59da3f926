"""Shared type aliases and the transition struct used by on-policy rollouts.

Conventions: rollouts are time-major ``[T, N, ...]`` (T steps, N parallel envs).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import struct

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a flax params pytree
Obs = Any  # an array or a pytree of arrays
Metrics = dict[str, jax.Array]


class Transition(struct.PyTreeNode):
    """One vectorised environment step as seen by an on-policy learner.

    Every leaf is ``[N, ...]`` for one step, ``[T, N, ...]`` after a scan.

    Attributes:
        obs: observation the action was chosen from.
        action: action taken.
        log_prob: log-probability of ``action`` under the behaviour policy.
        value: critic value of ``obs``.
        reward: reward received.
        terminated: episode ended for real (no bootstrap).
        truncated: episode was cut by a time limit (bootstrap from ``final_value``).
        final_value: critic value of the observation *before* auto-reset; only
            meaningful where ``truncated`` is true.
    """

    obs: Obs
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_value: jax.Array
