"""``jaxrl pbt``: outputs, the exploit/explore record, input errors before compiling.

One tiny PBT run (PPO on CartPole-v1, 4 members, 2 rounds of 2 updates) is shared by the
tests that read its outputs. The parser is built here from ``cli_pbt.add_parser``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from jaxrl.runner import cli_pbt, pbt

TINY = ["--set", "num_envs=4", "--set", "rollout_len=16", "--set", "hidden=8,8"]
BASE = ["pbt", "ppo", "--env", "CartPole-v1", *TINY, "--population", "4"]
RUN = [
    *BASE, "--set", "anneal_lr=False", "--perturb", "learning_rate",
    "--init", "learning_rate=1e-4:1e-2", "--init", "ent_coef=1e-3:1e-1",
    "--rounds", "2", "--updates-per-round", "2", "--quiet",
]  # fmt: skip
FACTORS = (0.8, 1.25)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="jaxrl")
    cli_pbt.add_parser(parser.add_subparsers(dest="command", required=True))
    return cli_pbt.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pbt") / "run"
    assert _main([*RUN, "--out", str(out)]) == 0
    return out


def test_writes_config_pbt_json_and_results(tiny_run, capsys):
    assert sorted(p.name for p in tiny_run.iterdir()) == ["config.json", "pbt.json", "results.md"]
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["algo"] == "ppo" and config["env"] == "CartPole-v1"
    spec = config["pbt"]
    assert spec["population"] == 4 and spec["rounds"] == 2 and spec["updates_per_round"] == 2
    assert spec["perturb"] == ["learning_rate"] and spec["fraction"] == 0.25
    # every member trains rounds x updates x num_envs x rollout_len env steps
    assert spec["env_steps_per_member"] == 2 * 2 * 4 * 16 == config["config"]["total_timesteps"]
    lrs = np.asarray(config["initial_hparams"]["learning_rate"])
    np.testing.assert_allclose(lrs, [1e-4, 10**-3.333333, 10**-2.666667, 1e-2], rtol=1e-5)
    ents = np.asarray(config["initial_hparams"]["ent_coef"])  # shuffled log grid
    np.testing.assert_allclose(np.sort(ents), np.geomspace(1e-3, 1e-1, 4), rtol=1e-6)

    record = json.loads((tiny_run / "pbt.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [0, 1]
    for row in record["rounds"]:
        assert len(row["score"]) == len(row["return"]) == len(row["source"]) == 4
        assert set(row["hparams"]) >= {"learning_rate", "ent_coef", "clip_eps"}
        assert all(len(v) == 4 for v in row["hparams"].values())
    np.testing.assert_allclose(record["rounds"][0]["hparams"]["learning_rate"], lrs)
    assert np.all(np.isfinite(record["final"]["score"]))  # CartPole episodes end quickly
    # the best member has the highest last score, and its lineage follows the sources
    best, line = record["best"]["member"], record["best"]["lineage"]
    assert record["final"]["score"][best] == max(record["final"]["score"])
    assert line[-1] == best and line[0] == record["rounds"][0]["source"][line[1]]

    text = (tiny_run / "results.md").read_text()
    member_rows = [ln for ln in text.splitlines() if ln.startswith("| ") and ln[2] in "*0123456789"]
    assert len(member_rows) == 4 + 2  # four members, then two rounds of the schedule
    assert f"| **{best}** |" in text and f"best member ({best})" in text
    assert capsys.readouterr().out == ""  # --quiet


def test_replaced_member_records_donor_hparams_perturbed(tiny_run):
    record = json.loads((tiny_run / "pbt.json").read_text())
    rounds = record["rounds"]
    after = [r["hparams"] for r in rounds[1:]] + [record["final"]["hparams"]]
    replaced = 0
    for row, nxt in zip(rounds, after, strict=True):
        for i, src in enumerate(row["source"]):
            lr_donor = np.float32(row["hparams"]["learning_rate"][src])
            lr_new = np.float32(nxt["learning_rate"][i])
            if src == i:  # not replaced: every hyperparameter unchanged
                for name, values in row["hparams"].items():
                    assert nxt[name][i] == values[i], name
                continue
            replaced += 1
            candidates = [lr_donor * np.float32(f) for f in FACTORS]
            assert lr_new in candidates, (lr_new, lr_donor)
            # not perturbed: copied from the donor exactly (ent_coef differs across members)
            assert nxt["ent_coef"][i] == row["hparams"]["ent_coef"][src]
            assert nxt["ent_coef"][i] != row["hparams"]["ent_coef"][i]
            # the donor ranked in the top quarter, the member in the bottom quarter
            assert row["score"][src] == max(row["score"])
            assert row["score"][i] == min(row["score"])
    assert replaced == 2  # one member (round(0.25 * 4)) per round
    assert sum(record["final"]["num_copies"]) == 2


BAD_INPUTS = {
    "unknown algo": (["pbt", "ppx", "--env", "CartPole-v1"], ["ppx"]),
    "unknown env": (["pbt", "ppo", "--env", "CartPol-v1"], ["unknown environment"]),
    "unknown perturb": (["--perturb", "learnin_rate"], ["learnin_rate", "learning_rate"]),
    "Config field": (["--perturb", "num_envs"], ["num_envs", "Config"]),
    "no perturb": ([], ["--perturb"]),
    "population 1": (["--population", "1"], ["--population", "at least 2"]),
    "zero rounds": (["--rounds", "0"], ["--rounds"]),
    "fraction": (["--fraction", "0.7"], ["--fraction", "(0, 0.5]"]),
    "factors": (["--factors", "0.8,-1"], ["--factors"]),
    "init syntax": (["--init", "learning_rate=1e-3"], ["NAME=LOW:HIGH"]),
    "init at zero": (["--init", "ent_coef=0:0.1"], ["0 < LOW <= HIGH"]),
    "init out of range": (
        ["--init", "learning_rate=1e-3:3"],
        ["--init learning_rate: learning_rate must lie in [0.0, 1.0], got 3 (in 1 of 4 runs)"],
    ),
    "init and set": (
        ["--init", "ent_coef=1e-3:1e-1", "--set", "ent_coef=0.1"],
        ["ent_coef", "--set"],
    ),
    "unknown --set key": (["--set", "foo=1"], ["unknown --set key"]),
    "budget below a round": (["--set", "total_timesteps=64"], ["less than one round"]),
}


@pytest.fixture
def no_training(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("train_pbt was reached: the error came too late")

    monkeypatch.setattr(pbt, "train_pbt", forbidden)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_before_compiling(case, no_training, capsys, tmp_path):
    extra, must_mention = BAD_INPUTS[case]
    argv = [*BASE, "--perturb", "learning_rate", *extra]
    if extra and extra[0] == "pbt":
        argv = [*extra, *TINY, "--perturb", "learning_rate"]
    elif case == "no perturb":
        argv = list(BASE)
    argv += ["--updates-per-round", "2", "--out", str(tmp_path / "run"), "--quiet"]
    if case != "budget below a round":
        argv += ["--rounds", "2"] if "--rounds" not in extra else []
    assert _main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jaxrl: error: ") and out == ""
    for word in must_mention:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "run").exists()


def test_refuses_non_empty_out_dir(no_training, capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    argv = [*BASE, "--perturb", "learning_rate", "--rounds", "2", "--updates-per-round", "2"]
    assert _main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not an empty directory" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_rounds_default_to_the_config_budget():
    parser = argparse.ArgumentParser(prog="jaxrl")
    cli_pbt.add_parser(parser.add_subparsers(dest="command", required=True))
    argv = [*BASE, "--perturb", "learning_rate", "--updates-per-round", "3"]
    args = parser.parse_args([*argv, "--set", "total_timesteps=1000"])
    *_, cfg, _, hps, rounds, _, requested = cli_pbt._validate(args)
    assert requested == 1000
    # 1000 // (3 updates x 64 steps) = 5 rounds; total_timesteps becomes what runs
    assert rounds == 5 and cfg.total_timesteps == 5 * 3 * 64
    assert np.asarray(hps.learning_rate).shape == (4,)


def test_lineage_follows_sources_backwards():
    # round 0: member 2 copies 0; round 1: member 1 copies 2; round 2: member 3 copies 1
    source = np.array([[0, 1, 0, 3], [0, 2, 2, 3], [0, 1, 2, 1]])
    assert cli_pbt.lineage(source, 1) == [0, 2, 1]
    assert cli_pbt.lineage(source, 3) == [3, 3, 3]
    assert cli_pbt.lineage(source[:1], 2) == [2]


def test_spread_is_a_log_grid_shuffled_after_the_first():
    values = cli_pbt.spread({"a": (1e-4, 1e-1), "b": (1.0, 1e3)}, 4, seed=0)
    np.testing.assert_allclose(values["a"], [1e-4, 1e-3, 1e-2, 1e-1], rtol=1e-6)
    np.testing.assert_allclose(np.sort(values["b"]), [1.0, 10.0, 100.0, 1000.0], rtol=1e-6)
    assert values["b"].dtype == np.float32
