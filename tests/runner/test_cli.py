"""The command line: bad input is one clear line before anything compiles; a run's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxrl.runner import cli, loop


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if the CLI ever gets as far as compiling or training."""

    def forbidden(*args, **kwargs):
        raise AssertionError("loop.run was reached: the error came too late")

    monkeypatch.setattr(loop, "run", forbidden)


BAD_INPUTS = {
    "unknown algorithm": (["train", "nope", "--env", "CartPole-v1"], ["unknown algorithm", "ppo"]),
    "unknown environment": (
        ["train", "ppo", "--env", "CartPol-v1"],
        ["unknown environment", "CartPole-v1", "brax/<name>", "envpool/<name>"],
    ),
    "batch not divisible": (
        [
            "train",
            "ppo",
            "--env",
            "CartPole-v1",
            "--set",
            "num_envs=3",
            "--set",
            "num_minibatches=5",
        ],
        ["num_minibatches"],
    ),
    "negative learning rate": (
        ["train", "ppo", "--env", "CartPole-v1", "--set", "learning_rate=-1e-3"],
        ["learning_rate must lie in [0.0, 1.0], got -0.001"],  # as the README shows it
    ),
    "non-numeric learning rate": (
        ["train", "ppo", "--env", "CartPole-v1", "--set", "learning_rate=fast"],
        ["learning_rate=fast", "float"],
    ),
    "unknown --set key": (
        ["train", "ppo", "--env", "CartPole-v1", "--set", "learnin_rate=1e-3"],
        ["unknown --set key", "learning_rate"],
    ),
    "wrong type for a Config field": (
        ["train", "ppo", "--env", "CartPole-v1", "--set", "num_envs=4.5"],
        ["num_envs", "int"],
    ),
    "unknown activation": (
        ["train", "dqn", "--env", "CartPole-v1", "--set", "activation=swishy"],
        ["activation", "swishy", "relu"],
    ),
    "unknown preset": (
        ["train", "ppo", "--preset", "ppo/nope"],
        ["unknown preset", "ppo/cartpole"],
    ),
    "non-positive seeds": (["train", "ppo", "--env", "CartPole-v1", "--num-seeds", "0"], ["seeds"]),
    "too few steps for one update": (
        ["train", "ppo", "--env", "CartPole-v1", "--total-timesteps", "10"],
        ["total_timesteps"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_before_compiling(case, no_training, cli_error_line):
    argv, must_mention = BAD_INPUTS[case]
    assert cli.main(argv) == 2
    cli_error_line(*must_mention)


def test_list_names_algorithms_environments_and_presets(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["ppo", "td3", "CartPole-v1", "brax/<name>", "ppo/cartpole", "td3/pendulum"]:
        assert name in out


def test_train_writes_the_run_directory(tmp_path, capsys):
    # The PPO of test_evaluate.py's trained run (3 updates of 4 envs x 8 steps, 2 seeds on
    # the 10-step chain): the two share their compiled programs.
    run_dir = tmp_path / "run"
    argv = [
        "train", "ppo", "--env", "probe/time_limit_chain", "--num-seeds", "2", "--seed", "3",
        "--total-timesteps", "100", "--set", "num_envs=4", "--set", "rollout_len=8",
        "--set", "num_minibatches=2", "--run-dir", str(run_dir),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    # 100 is not a multiple of 4 x 8 = 32: the CLI says what it ran
    assert "rounded down to 96" in out
    assert "mean" in out and "final return" in out

    config = json.loads((run_dir / "config.json").read_text())
    assert config["env_steps_per_run"] == 96 and config["env_steps_requested"] == 100
    assert config["config"]["num_envs"] == 4

    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["seed"] for r in summary["runs"]] == [3, 4]
    per_run = summary["final_return"]["per_run"]
    assert len(per_run) == 2
    assert summary["final_return"]["mean"] == pytest.approx(np.mean(per_run))
    assert summary["env_steps_per_run"] == 96
    assert np.isfinite(per_run).all()  # every run finished episodes (of 10 steps)
    for key in ["steps_per_second", "compile_seconds"]:
        assert summary[key] > 0

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    updates = 96 // 32
    assert len(rows) == 2 * updates  # one row per run per update
    assert {row["seed"] for row in rows} == {3, 4}
    assert max(row["env_steps"] for row in rows) == 96
    assert (run_dir / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_python_dash_m_entry_point_runs_the_cli():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "jaxrl", "train", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unknown algorithm" in proc.stderr


def test_cli_keeps_compiled_programs_in_the_cache_directory(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    # LLVM at -O0 compiles this run's programs in a third of the time; they are cached alike.
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    # The smallest PPO there is (one update of 2 envs x 8 steps): any program will do.
    argv = [
        sys.executable, "-m", "jaxrl", "train", "ppo", "--env", "probe/reward_from_obs",
        "--total-timesteps", "16", "--set", "num_envs=2", "--set", "rollout_len=8",
        "--set", "num_epochs=1", "--set", "num_minibatches=1", "--set", "hidden=8",
        "--quiet", "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert any((tmp_path / "cache" / "jaxrl" / "xla").iterdir())
