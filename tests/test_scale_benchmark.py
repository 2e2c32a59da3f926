"""Smoke tests of ``experiments/benchmarks/scale.py``: argument parsing, helpers, one tiny run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "scale.py"


@pytest.fixture(scope="module")
def scale():
    name = "jaxrl_bench_scale"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_every_subcommand_parses(scale):
    p = scale.parser()
    args = p.parse_args(["devices", "--device-counts", "1,2", "--runs", "4", "--json", "x.json"])
    assert (args.sweep, args.device_counts, args.runs, args.json) == ("devices", "1,2", 4, "x.json")
    assert p.parse_args(["seeds", "--max-seeds", "64"]).max_seeds == 64
    assert p.parse_args(["actors", "--actors", "1,4"]).actors == "1,4"
    assert p.parse_args(["brax", "--brax-envs", "16"]).brax_envs == 16
    assert p.parse_args(["lpg", "--lifetimes", "1,2"]).lifetimes == "1,2"
    every = p.parse_args(["all", "--sweeps", "seeds,lpg", "--max-seeds", "8", "--runs", "2"])
    assert (every.sweeps, every.max_seeds, every.runs) == ("seeds,lpg", 8, 2)
    with pytest.raises(SystemExit):
        p.parse_args(["seeds", "--no-such-flag"])
    with pytest.raises(SystemExit):
        p.parse_args([])


def test_seed_counts_and_step_caps(scale):
    assert scale.powers_of_two(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert scale.powers_of_two(6) == [1, 2, 4, 6]
    # 256 seeds under a 2^22 cap: 16,384 steps each, a whole number of 512-step updates
    assert scale.steps_for(256, 65_536, 2**22, 512) == 16_384
    assert scale.steps_for(1, 65_536, 2**22, 512) == 65_536
    assert scale.steps_for(3, 65_536, 100_000, 512) == 33_280  # 65 updates, not 33,333 steps
    assert scale.steps_for(2048, 65_536, 0, 512) == 65_536  # 0: no cap
    assert scale.steps_for(2048, 65_536, 1000, 512) == 2048  # never under 4 updates


def test_devices_child_environment(scale, monkeypatch):
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "2")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2")
    env = scale.child_env(8, "cpu")
    assert "JAX_NUM_CPU_DEVICES" not in env
    assert env["XLA_FLAGS"].split() == [
        "--xla_cpu_foo=1",
        "--xla_force_host_platform_device_count=8",
    ]
    assert env["JAX_PLATFORMS"] == "cpu"
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    assert "JAX_PLATFORMS" not in scale.child_env(2, "auto")  # auto: the GPUs where present


@pytest.mark.slow  # compiles PPO: ~20 s of CPU, a benchmark's smoke test
def test_tiny_seeds_sweep_runs(scale, tmp_path, capsys):
    out = tmp_path / "scale.json"
    argv = ["seeds", "--seed-counts", "2", "--steps-per-seed", "1024", "--repeats", "1"]
    data = scale.main([*argv, "--json", str(out)])
    rows = data["sweeps"]["seeds"]["rows"]
    assert [r["seeds"] for r in rows] == [2]
    assert all(r["steps_per_seed"] == 2048 for r in rows)  # raised to the 4-update minimum
    assert all(r["steps_per_s"] > 0 and r["compile_s"] > 0 for r in rows)
    assert data["sweeps"]["seeds"]["machine"]["platform"] in ("cpu", "gpu", "cuda", "tpu")
    assert json.loads(out.read_text())["sweeps"]["seeds"]["rows"][0]["seeds"] == 2
    printed = capsys.readouterr().out
    assert "| seeds | steps/seed |" in printed and "\n| 2 | 2,048 |" in printed


@pytest.mark.slow
def test_devices_sweep_in_subprocesses(scale, tmp_path):
    argv = "devices --device-counts 1,2 --runs 2 --run-steps 2048 --dp-envs 8 --dp-updates 1"
    argv = [*argv.split(), "--repeats", "1", "--platform", "cpu"]
    data = scale.main([*argv, "--json", str(tmp_path / "d.json")])
    rows = data["sweeps"]["devices"]["rows"]
    assert [r["count"] for r in rows] == [1, 2]
    assert [len(r["devices"]) for r in rows] == [1, 2]
    for r in rows:
        assert r["run_axis"]["env_steps"] == 2 * 2048
        assert r["data_parallel"]["env_steps"] == 8 * 128
        assert r["run_axis"]["steps_per_s"] > 0 and r["data_parallel"]["steps_per_s"] > 0
