"""Runs spread over devices with XLA's own sharding: a ``"run"`` mesh axis, no pmap."""

from jaxrl.distributed.mesh import RUN_AXIS, run_mesh, use_all_cpu_cores
from jaxrl.distributed.sharding import pad_runs, shard_runs

__all__ = ["RUN_AXIS", "pad_runs", "run_mesh", "shard_runs", "use_all_cpu_cores"]
