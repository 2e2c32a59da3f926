"""``jaxrl sweep`` and ``jaxrl plot``: input errors before compiling, outputs, statistics.

The parser is built here from each module's ``add_parser``, so the tests do not depend on
how ``jaxrl.runner.cli`` wires the commands in.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import pytest

from jaxrl import algorithms
from jaxrl.logger import stats
from jaxrl.runner import cli_plot, cli_sweep, loop, search, sweep

TINY = ["--set", "num_envs=4", "--set", "rollout_len=16", "--set", "hidden=8,8"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxrl")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_sweep.add_parser(sub)
    cli_plot.add_parser(sub)
    return parser


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return (cli_sweep if args.command == "sweep" else cli_plot).run(args)


@pytest.fixture
def no_training(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("loop.run was reached: the error came too late")

    monkeypatch.setattr(loop, "run", forbidden)


BASE = ["sweep", "ppo", "--env", "CartPole-v1"]
BAD_INPUTS = {
    "unknown name": (["--grid", "learnin_rate=1e-3,1e-4"], ["learnin_rate", "learning_rate"]),
    "Config field": (["--grid", "num_envs=4,8"], ["num_envs", "Config", "learning_rate"]),
    "no values": (["--grid", "learning_rate="], ["NAME=V1,V2"]),
    "no equals": (["--grid", "learning_rate"], ["NAME=V1,V2"]),
    "not a number": (["--grid", "learning_rate=1e-3,fast"], ["'fast'", "not a number"]),
    "repeated name": (
        ["--grid", "learning_rate=1e-3", "--grid", "learning_rate=1e-4"],
        ["given twice"],
    ),
    "out of range": (["--grid", "learning_rate=1e-3,-1"], ["learning_rate", "[0.0, 1.0]"]),
    "swept and set": (
        ["--grid", "ent_coef=0,0.01", "--set", "ent_coef=0.1"],
        ["ent_coef", "--set"],
    ),
    "nothing to sweep": ([], ["--grid", "--random"]),
    "grid and random": (
        ["--grid", "ent_coef=0,0.01", "--random", "learning_rate=1e-4:1e-3", "--num-samples", "2"],
        ["either"],
    ),
    "random without samples": (["--random", "learning_rate=1e-4:1e-3"], ["--num-samples"]),
    "bad range syntax": (["--random", "learning_rate=1e-4", "--num-samples", "2"], ["LOW:HIGH"]),
    "log range at zero": (
        ["--random", "ent_coef=0:0.1:log", "--num-samples", "2"],
        ["log", "low > 0"],
    ),
    "reversed range": (
        ["--random", "ent_coef=0.1:0.0", "--num-samples", "2"],
        ["low <= high"],
    ),
    "unknown env": (["--env", "CartPol-v1", "--grid", "ent_coef=0,0.01"], ["unknown environment"]),
    "unknown --set key": (["--grid", "ent_coef=0", "--set", "foo=1"], ["unknown --set key"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_sweep_input_is_one_line_before_compiling(case, no_training, capsys, tmp_path):
    extra, must_mention = BAD_INPUTS[case]
    argv = [*BASE, *extra, "--run-dir", str(tmp_path / "run"), "--quiet"]
    if case == "unknown env":
        argv = ["sweep", "ppo", *extra, "--run-dir", str(tmp_path / "run"), "--quiet"]
    assert _main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jaxrl: error: ") and out == ""
    for word in must_mention:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "run").exists()


def test_random_search_draws_within_ranges_and_is_reproducible():
    hp = algorithms.get("ppo").HParams.make()
    key = jax.random.key(3)
    ranges = {"learning_rate": (1e-5, 1e-2, True), "ent_coef": (0.0, 0.1)}
    runs = search.random_search(hp, [0, 1], 5, key, **ranges)
    assert len(runs) == 10
    lr, ent = np.asarray(runs.hps.learning_rate), np.asarray(runs.hps.ent_coef)
    assert np.all((lr >= 1e-5) & (lr <= 1e-2)) and np.all((ent >= 0) & (ent <= 0.1))
    assert len(set(lr.tolist())) == 5  # five settings, each shared by both seeds
    np.testing.assert_array_equal(lr[0::2], lr[1::2])
    assert [lab["seed"] for lab in runs.labels] == [0, 1] * 5
    assert [lab["sample"] for lab in runs.labels] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert runs.labels[2]["learning_rate"] == pytest.approx(float(lr[2]))
    # untouched hyperparameters keep their value on every run
    np.testing.assert_allclose(np.asarray(runs.hps.discount), float(hp.discount))
    # seeds get the same key as in any other batch
    same = jax.random.key_data(runs.keys[1]) == jax.random.key_data(sweep.seed_key(1))
    assert bool(np.all(same))
    again = search.random_search(hp, [0, 1], 5, key, **ranges)
    np.testing.assert_array_equal(lr, np.asarray(again.hps.learning_rate))
    other = search.random_search(hp, [0, 1], 5, jax.random.key(4), **ranges)
    assert not np.array_equal(lr, np.asarray(other.hps.learning_rate))


def test_log_range_spreads_over_decades():
    values = search.sample_settings(2000, jax.random.key(0), lr=(1e-5, 1e-1, True))["lr"]
    decades = np.floor(np.log10(values)).astype(int)
    counts = np.bincount(decades - decades.min())
    assert len(counts) == 4 and counts.min() > 350  # ~500 per decade, not ~all in the last


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """One tiny grid sweep: 2 settings x 2 seeds of PPO on CartPole, 8 updates (the 4-run
    program of the random search below, so the two compile it once)."""
    run_dir = tmp_path_factory.mktemp("sweep") / "run"
    argv = [
        *BASE, "--grid", "learning_rate=1e-3,3e-3", "--num-seeds", "2",
        "--total-timesteps", "512", *TINY, "--run-dir", str(run_dir), "--quiet",
        "--checkpoint-every", "0", "--bootstrap-reps", "500",
    ]  # fmt: skip
    assert _main(argv) == 0
    return run_dir


def test_grid_sweep_writes_a_results_table_per_setting(grid_sweep):
    summary = json.loads((grid_sweep / "summary.json").read_text())
    assert summary["num_runs"] == 4
    labels = summary["runs"]
    assert [lab["learning_rate"] for lab in labels] == [1e-3] * 2 + [3e-3] * 2
    assert [lab["seed"] for lab in labels] == [0, 1] * 2
    final = np.array([np.nan if v is None else v for v in summary["final_return"]["per_run"]])
    results = json.loads((grid_sweep / "results.json").read_text())
    assert results["names"] == ["learning_rate"]
    table = (grid_sweep / "results.md").read_text()
    for row, runs in zip(results["settings"], ([0, 1], [2, 3]), strict=True):
        assert row["runs"] == runs
        values = final[runs][np.isfinite(final[runs])]
        assert row["n"] == values.size > 0
        assert row["mean"] == pytest.approx(values.mean())
        assert row["std"] == pytest.approx(values.std())
        assert row["iqm"] == pytest.approx(stats.iqm(values))
        assert row["iqm_low"] <= row["iqm"] <= row["iqm_high"]
        assert f"{row['mean']:.2f}" in table
    assert "| 0.001 |" in table and "| 0.003 |" in table
    assert (grid_sweep / "results.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (grid_sweep / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 8 and {r["learning_rate"] for r in rows} == {1e-3, 3e-3}
    config = json.loads((grid_sweep / "config.json").read_text())
    assert config["sweep"]["grid"] == {"learning_rate": [1e-3, 3e-3]}


def test_plot_of_a_sweep(grid_sweep, tmp_path, capsys):
    out = tmp_path / "plots"
    assert _main(["plot", str(grid_sweep), "--out", str(out), "--bootstrap-reps", "300"]) == 0
    for name in ("curves.png", "aggregates.png", "profiles.png", "aggregates.md"):
        assert (out / name).stat().st_size > 0, name
    agg = json.loads((out / "aggregates.json").read_text())
    summary = json.loads((grid_sweep / "summary.json").read_text())
    final = np.array([v for v in summary["final_return"]["per_run"] if v is not None])
    lo, hi = agg["bounds"]["CartPole-v1"]
    assert (lo, hi) == pytest.approx((final.min(), final.max()))  # min-max over given runs
    assert set(agg["methods"]) == {"ppo learning_rate=0.001", "ppo learning_rate=0.003"}
    for est in agg["methods"].values():
        assert 0.0 <= est["iqm"]["point"] <= 1.0
        assert est["optimality_gap"]["point"] == pytest.approx(1.0 - est["mean"]["point"])
    assert "ppo learning_rate=0.003" in capsys.readouterr().out


def _fake_run(path, algo, env, returns):
    """A run dir whose runs finish one episode per update with the given returns [R, U]."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"algo": algo, "env": env}))
    lines = []
    for r, series in enumerate(returns):
        for u, value in enumerate(series):
            row = {"run": r, "seed": r, "update": u + 1, "env_steps": 10 * (u + 1)}
            lines.append(json.dumps(row | {"episode/return": value, "episode/count": 1.0}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_plot_aggregates_across_environments_by_hand(tmp_path):
    # final return = last update's return (8 updates -> a window of 1 update)
    ones = np.ones(7)
    _fake_run(tmp_path / "a1", "a", "E1", [[*ones, 0.0], [*ones, 10.0]])
    _fake_run(tmp_path / "a2", "a", "E2", [[*ones, 100.0], [*ones, 200.0]])
    _fake_run(tmp_path / "b1", "b", "E1", [[*ones, 5.0], [*ones, 5.0]])
    _fake_run(tmp_path / "b2", "b", "E2", [[*ones, 150.0], [*ones, 150.0]])
    out = tmp_path / "out"
    dirs = [str(tmp_path / d) for d in ("a1", "a2", "b1", "b2")]
    assert _main(["plot", *dirs, "--out", str(out), "--quiet", "--bootstrap-reps", "200"]) == 0
    agg = json.loads((out / "aggregates.json").read_text())
    assert agg["bounds"] == {"E1": [0.0, 10.0], "E2": [100.0, 200.0]}
    a, b = agg["methods"]["a"], agg["methods"]["b"]
    assert a["envs"] == ["E1", "E2"] and a["runs_per_env"] == 2
    # a: normalised scores [[0, 0], [1, 1]]; b: every score 0.5
    assert a["mean"]["point"] == pytest.approx(0.5)
    assert (b["iqm"]["low"], b["iqm"]["high"]) == pytest.approx((0.5, 0.5))
    assert b["optimality_gap"]["point"] == pytest.approx(0.5)
    # fixed ends instead of min-max: E1 in [0, 20], E2 in [0, 400]
    out2 = tmp_path / "out2"
    argv = ["plot", *dirs, "--out", str(out2), "--quiet", "--min", "0", "--max", "E1=20",
            "--max", "E2=400", "--bootstrap-reps", "200"]  # fmt: skip
    assert _main(argv) == 0
    agg2 = json.loads((out2 / "aggregates.json").read_text())
    assert agg2["methods"]["b"]["mean"]["point"] == pytest.approx((5 / 20 + 150 / 400) / 2)


def test_plot_with_an_empty_score_range_is_one_line_and_writes_nothing(tmp_path, capsys):
    _fake_run(tmp_path / "a1", "a", "E1", [[1.0, 0.0], [1.0, 10.0]])
    _fake_run(tmp_path / "a2", "a", "E2", [[1.0, -300.0], [1.0, -100.0]])
    out = tmp_path / "out"
    # --min 0 for every env, --max 0 for E2: E2's range [0, 0] is empty
    argv = ["plot", str(tmp_path / "a1"), str(tmp_path / "a2"), "--out", str(out),
            "--min", "0", "--max", "E1=20", "--max", "E2=0"]  # fmt: skip
    assert _main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "E2: the score range [0, 0] is empty" in err[0]
    assert not out.exists()


def test_plot_of_a_missing_dir_is_one_line(tmp_path, capsys):
    assert _main(["plot", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.jsonl" in err[0]


def test_interrupted_sweep_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch, capsys):
    """A random search killed at its third checkpoint write, then ``--resume``d, writes the
    same metrics and results table as the sweep that was never interrupted."""
    from jaxrl.checkpoint import io as checkpoint_io
    from jaxrl.runner import cli

    argv = [
        *BASE, "--random", "learning_rate=1e-4:1e-2:log", "--num-samples", "2",
        "--num-seeds", "2", "--total-timesteps", "512", *TINY, "--quiet",
        "--bootstrap-reps", "200",
    ]  # fmt: skip
    assert cli.main([*argv, "--run-dir", str(tmp_path / "whole")]) == 0
    real_save, calls = checkpoint_io.save, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(checkpoint_io, "save", dying)
        assert cli.main([*argv, "--run-dir", str(tmp_path / "part")]) == 130
    assert not (tmp_path / "part" / "results.json").exists()
    assert cli.main(["sweep", "--resume", str(tmp_path / "part"), "--quiet"]) == 0
    for name in ("metrics.jsonl", "results.json", "results.md"):
        assert (tmp_path / "whole" / name).read_text() == (tmp_path / "part" / name).read_text()
    capsys.readouterr()
    assert cli.main(["sweep", "td3", "--resume", str(tmp_path / "part")]) == 2
    assert "is a ppo sweep, not td3" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"algo": "ppo"}')
    assert cli.main(["sweep", "--resume", str(tmp_path / "run")]) == 2
    assert "not a sweep's config.json" in capsys.readouterr().err
