"""Shared type aliases.

Conventions: rollouts are time-major ``[T, N, ...]`` (T steps, N parallel envs); each
algorithm defines the rollout or transition struct its loss reads (``ppo.Rollout``,
``recurrent_ppo.Rollout``, ``td3.Transition``).
"""

from __future__ import annotations

from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a flax params pytree
Obs = Any  # an array or a pytree of arrays
Metrics = dict[str, jax.Array]
