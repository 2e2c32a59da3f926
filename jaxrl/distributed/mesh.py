"""The device mesh runs are spread over: one axis, ``"run"``, and CPU cores as devices.

A batch of runs (seeds x hyperparameters) is one leading run axis; splitting it over the
local devices lets each device train its share with no collectives, because runs never
talk to each other. On a CPU, XLA exposes one device unless told otherwise, and a single
device keeps about one core busy on PPO's small matrices: :func:`use_all_cpu_cores`
exposes one CPU device per core (the CLI calls it before anything starts JAX).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np

RUN_AXIS = "run"


def use_all_cpu_cores() -> bool:
    """Makes XLA's CPU backend expose one device per available core.

    Must run before JAX starts a backend (before the first computation or a gymnax
    import). Returns False and changes nothing if that has happened, if there is one
    core, or if the user chose a count (``JAX_NUM_CPU_DEVICES`` or ``XLA_FLAGS``).
    """
    if "JAX_NUM_CPU_DEVICES" in os.environ:
        return False
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not cores or cores < 2:
        return False
    try:
        jax.config.update("jax_num_cpu_devices", cores)
    except RuntimeError:  # a backend is already running
        return False
    return True


def run_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh named ``"run"`` over ``devices`` (default: every local device)."""
    devices = jax.local_devices() if devices is None else list(devices)
    return jax.sharding.Mesh(np.array(devices), (RUN_AXIS,))
