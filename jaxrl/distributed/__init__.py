"""Runs spread over devices with XLA's own sharding: a ``"run"`` mesh axis, no pmap.

Several processes (hosts) join through :func:`initialize` (``jax.distributed``); see
:mod:`jaxrl.distributed.multihost`.
"""

from jaxrl.distributed.mesh import RUN_AXIS, run_mesh, use_all_cpu_cores
from jaxrl.distributed.multihost import Processes, global_devices, initialize
from jaxrl.distributed.sharding import pad_runs, shard_runs

__all__ = [
    "RUN_AXIS",
    "Processes",
    "global_devices",
    "initialize",
    "pad_runs",
    "run_mesh",
    "shard_runs",
    "use_all_cpu_cores",
]
