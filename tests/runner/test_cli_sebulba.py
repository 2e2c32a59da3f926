"""``jaxrl sebulba``: bad input is one line before any env is made; a run writes its outputs
and trains on the env steps it was asked for (rounded down to whole updates)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxrl.checkpoint import io as checkpoint_io
from jaxrl.runner import cli

GYM = "gymnasium/CartPole-v1"


@pytest.fixture
def no_run(monkeypatch):
    """Fails the test if the command gets as far as making host envs or running Sebulba."""
    from jaxrl import sebulba
    from jaxrl.sebulba import host_envs, orchestrator

    def forbidden(*args, **kwargs):
        raise AssertionError("Sebulba was started: the error came too late")

    monkeypatch.setattr(sebulba, "run", forbidden)
    monkeypatch.setattr(orchestrator, "run", forbidden)
    monkeypatch.setattr(host_envs, "make", forbidden)


def _ppo(*extra: str) -> list[str]:
    return ["sebulba", "ppo", "--env", GYM, *extra]


BAD_INPUTS = {
    "unknown algorithm": (
        ["sebulba", "sac", "--env", GYM],
        ["unknown Sebulba", "ppo, impala, dqn"],
    ),
    "no env": (["sebulba", "ppo"], ["--env is required", "gymnasium/CartPole-v1"]),
    "in-JAX env id": (
        ["sebulba", "ppo", "--env", "CartPole-v1"],
        ["unknown host env", "envpool/<task>", "gymnasium/<id>"],
    ),
    "unknown gymnasium id": (
        ["sebulba", "ppo", "--env", "gymnasium/CartPol-v1"],
        ["'CartPol-v1'", "did you mean", "gymnasium/CartPole-v1"],
    ),
    "unknown preset": (_ppo("--preset", "nope"), ["unknown ppo preset", "ppo/cartpole"]),
    "another algorithm's preset": (
        _ppo("--preset", "dqn/cartpole"),
        ["unknown ppo preset", "ppo/cartpole", "ppo/pendulum"],
    ),
    "unknown --set key": (
        _ppo("--set", "learnin_rate=1e-3"),
        ["unknown --set key", "learning_rate"],
    ),
    "--set without =": (_ppo("--set", "learning_rate"), ["key=value"]),
    "wrong type": (_ppo("--set", "num_envs=4.5"), ["num_envs", "int"]),
    "negative learning rate": (_ppo("--set", "learning_rate=-1"), ["learning_rate"]),
    "no actors": (_ppo("--actors", "0"), ["--actors", "positive"]),
    "no envs per actor": (_ppo("--envs-per-actor", "0"), ["--envs-per-actor", "positive"]),
    "envs do not split over actors": (_ppo("--actors", "3"), ["num_envs = 4", "num_actors = 3"]),
    "num_envs contradicts envs per actor": (
        _ppo("--actors", "2", "--envs-per-actor", "3", "--set", "num_envs=4"),
        ["num_envs=4", "2 x --envs-per-actor 3 = 6"],
    ),
    "too few steps for one update": (_ppo("--total-timesteps", "10"), ["total_timesteps"]),
    "in-JAX normalisation": (
        ["sebulba", "ppo", "--env", "gymnasium/Pendulum-v1", "--preset", "pendulum"],
        ["normalize_obs=False"],
    ),
    "impala's simulated lag": (
        ["sebulba", "impala", "--env", GYM, "--set", "lag=2"],
        ["lag=0"],
    ),
    "data-parallel learner": (_ppo("--set", "data_shards=2"), ["data_shards=1"]),
    "exploration for ppo": (_ppo("--exploration", "apex"), ["--exploration", "dqn only"]),
    "unknown exploration": (
        ["sebulba", "dqn", "--env", GYM, "--exploration", "greedy"],
        ["'greedy'", "schedule, apex"],
    ),
    "negative checkpoint interval": (_ppo("--checkpoint-every", "-1"), ["--checkpoint-every"]),
    "negative policy lag": (_ppo("--max-policy-lag", "-1"), ["--max-policy-lag"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_before_any_env_is_made(case, no_run, cli_error_line):
    argv, must_mention = BAD_INPUTS[case]
    assert cli.main(argv) == 2
    cli_error_line(*must_mention)


def test_unknown_envpool_task_is_one_line(no_run, capsys):
    pytest.importorskip("envpool")
    assert cli.main(["sebulba", "dqn", "--env", "envpool/CartPol-v1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "envpool/CartPole-v1" in err


def test_a_run_directory_that_holds_a_run_is_refused(tmp_path, no_run, capsys):
    (tmp_path / "metrics.jsonl").write_text("")
    assert cli.main(_ppo("--run-dir", str(tmp_path))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err


def test_impala_presets_simulated_lag_becomes_the_real_one(no_run):
    from jaxrl.runner import cli_sebulba

    args = cli._parser().parse_args(
        ["sebulba", "impala", "--env", GYM, "--preset", "impala/cartpole", "--actors", "2"]
    )
    cfg, _, replaced = cli_sebulba._validate(args)
    assert replaced and cfg.lag == 0 and cfg.num_envs == 8  # the preset's, split over 2 actors


def test_sebulba_run_writes_the_run_directory_and_trains_the_requested_steps(tmp_path, capsys):
    from jaxrl import algorithms
    from jaxrl.sebulba import agents, host_envs, orchestrator

    run_dir = tmp_path / "run"
    # 2 actors x 2 envs x 16 steps = 64 env steps per update; 600 requested -> 9 updates.
    argv = _ppo(
        "--actors", "2", "--envs-per-actor", "2", "--total-timesteps", "600", "--seed", "3",
        "--set", "rollout_len=16", "--set", "num_minibatches=2", "--set", "hidden=16",
        "--checkpoint-every", "4", "--run-dir", str(run_dir),
    )  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "rounded down to 576" in out and "run directory" in out

    config = json.loads((run_dir / "config.json").read_text())
    assert config["command"] == "sebulba" and config["env"] == GYM
    assert config["num_actors"] == 2 and config["envs_per_actor"] == 2
    assert config["config"]["num_envs"] == 4 and config["config"]["rollout_len"] == 16
    assert config["env_steps_requested"] == 600 and config["env_steps_per_run"] == 576

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == list(range(1, 10))
    assert [r["env_steps"] for r in rows] == [64 * u for u in range(1, 10)]
    assert all(r["seed"] == 3 and np.isfinite(r["train/total_loss"]) for r in rows)
    assert all(r["sebulba/policy_lag_max"] >= 0 for r in rows)
    assert sum(r["episode/count"] for r in rows) > 0  # CartPole episodes ended

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_updates"] == 9 and summary["env_steps"] == 576
    assert len(summary["actor_env_steps"]) == 2
    assert all(steps >= 9 * 16 * 2 for steps in summary["actor_env_steps"])  # each fed 9 rounds
    assert summary["steps_per_second"] > 0 and summary["final_return"] > 0
    assert (run_dir / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The final checkpoint is the learner's state after the 9 updates.
    assert checkpoint_io.latest_step(run_dir) == 9
    algo = algorithms.get("ppo")
    cfg = algo.Config(**{**config["config"], "hidden": tuple(config["config"]["hidden"])})
    env = host_envs.make(GYM, 1)
    env.close()
    agent = agents.make("ppo", cfg, algo.HParams.make(**config["hparams"]), env.spec, 2)
    init = agent.init(jax.random.key(3))
    state, step, manifest = checkpoint_io.restore(run_dir, init, orchestrator.manifest(agent, GYM))
    assert step == 9 and int(state.update_count) == 9 and manifest["algo"] == "sebulba/ppo"
    pairs = zip(jax.tree.leaves(init.params), jax.tree.leaves(state.params), strict=True)
    assert any(not np.allclose(a, b) for a, b in pairs)  # it trained


@pytest.mark.slow
@pytest.mark.learning
def test_sebulba_command_reaches_450_with_the_ppo_cartpole_preset(tmp_path):
    """The threshold of ``tests/sebulba/test_sebulba_learning.py`` (and of the in-JAX PPO
    learning test): ``ppo/cartpole`` on host CartPole, 2 actors, mean final return of seeds
    0 and 1 >= 450."""
    finals = []
    for seed in (0, 1):
        run_dir = tmp_path / f"seed{seed}"
        argv = ["sebulba", "ppo", "--env", GYM, "--preset", "ppo/cartpole", "--actors", "2",
                "--seed", str(seed), "--quiet", "--run-dir", str(run_dir)]  # fmt: skip
        assert cli.main(argv) == 0
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["env_steps"] <= 500_000
        finals.append(summary["final_return"])
    assert np.mean(finals) >= 450, finals


def test_the_commands_names_are_sebulbas():
    from jaxrl.runner import cli_sebulba
    from jaxrl.sebulba import agents

    assert cli_sebulba.ALGOS == agents.ALGOS
    assert cli_sebulba.EXPLORATIONS == agents.EXPLORATIONS
