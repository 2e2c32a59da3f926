"""The run axis over devices: padding, placement, and one CPU device per core."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl import distributed


def test_pad_runs_repeats_run_zero_up_to_a_multiple():
    tree = {"a": jnp.arange(3.0), "b": jnp.arange(6).reshape(3, 2)}
    padded = distributed.pad_runs(tree, 2)
    np.testing.assert_array_equal(padded["a"], [0.0, 1.0, 2.0, 0.0])
    np.testing.assert_array_equal(padded["b"], [[0, 1], [2, 3], [4, 5], [0, 1]])
    assert distributed.pad_runs(tree, 3) is tree  # already a multiple: untouched


def test_shard_runs_splits_the_leading_axis_over_the_mesh():
    mesh = distributed.run_mesh(jax.devices()[:2])
    x = distributed.shard_runs(jnp.arange(8.0).reshape(4, 2), mesh)
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
    assert [s.data.shape for s in shards] == [(2, 2), (2, 2)]
    assert {s.device for s in shards} == set(jax.devices()[:2])


def _python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_cli_import_starts_no_backend_so_cores_become_devices():
    out = _python(
        "import jaxrl, jaxrl.runner.cli\n"
        "from jaxrl.distributed import use_all_cpu_cores\n"
        "changed = use_all_cpu_cores()\n"
        "import jax, os\n"
        "print(changed, len(jax.devices()), len(os.sched_getaffinity(0)))\n"
    )
    changed, devices, cores = out.split()
    assert changed == str(int(cores) >= 2)
    assert int(devices) == int(cores)


def test_use_all_cpu_cores_is_refused_once_a_backend_runs():
    out = _python(
        "import jax, os\n"
        "jax.numpy.zeros(1).block_until_ready()\n"
        "from jaxrl.distributed import use_all_cpu_cores\n"
        "cores = len(os.sched_getaffinity(0))\n"
        "print(use_all_cpu_cores() if cores > 1 else False, len(jax.devices()))\n"
    )
    assert out.split() == ["False", "1"]
