"""Checkpoints and exact resume: interrupted + resumed equals uninterrupted bitwise (PPO,
Rainbow's prioritised replay, IMPALA's lagged behaviour policy, R2D2's sequence replay,
SAC's flat replay; every other algorithm, TD3 included, with --runslow); a restored state has the
template's types, so the resume runs the uninterrupted run's program; a write killed midway
leaves the previous checkpoint usable; corrupt, truncated or incompatible checkpoints are
one clear ConfigError."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import distributed, envs
from jaxrl.algorithms import ALGORITHMS, ppo, rainbow, td3
from jaxrl.checkpoint import io as checkpoint_io
from jaxrl.errors import ConfigError
from jaxrl.runner import cli, loop, sweep

# PPO: 8 updates in 8 chunks (the CLI's chunking), 3 runs padded to 4 over the 2 devices; the
# module's PPO runs (the bitwise test, saved_run and the CLI test) share one compiled program.
PPO_CFG = dict(total_timesteps=8 * 64, num_envs=4, rollout_len=16, hidden=(16, 16))
PPO_SEEDS = [0, 1, 2]
DEMOS = str(Path(__file__).resolve().parents[1] / "data" / "cartpole_demos.npz")  # make_demos.py
TD3_CFG = dict(total_timesteps=48, hidden=(8, 8), batch_size=8, buffer_size=64, learning_starts=16)
# Rainbow: a prioritised sum tree, n-step windows and noisy-net keys in the state; target
# copies every 4 gradient steps, so some happen before the interruption.
RAINBOW_CFG = dict(
    total_timesteps=96, num_envs=2, hidden=(8, 8), batch_size=8, buffer_size=64,
    learning_starts=16, num_atoms=11, target_update_period=4,
)  # fmt: skip
ON_POLICY = dict(total_timesteps=12 * 32, num_envs=4, rollout_len=8, hidden=(8, 8))
# The rest of the state each algorithm adds: IMPALA a ring of lagged behaviour parameters;
# R2D2 sequences with stored LSTM state; SAC a temperature and its optimiser; ACKTR K-FAC
# factors refreshed every 2nd update; ACER a segment replay and an averaged network; Ape-X
# actors' stale parameters; TRPO and A2C observation and reward normalisers.
MORE = {
    "impala": ("CartPole-v1", ON_POLICY | dict(lag=2)),
    "r2d2": ("CartPole-v1", dict(
        total_timesteps=12 * 16, num_envs=2, train_freq=8, hidden=(8,), lstm_features=8,
        batch_size=4, buffer_size=64, sequence_length=8, burn_in=2, period=4, n_step=2,
        learning_starts=32, target_update_period=4,
    )),
    "sac": ("Pendulum-v1", TD3_CFG),
    # the discriminator, its optimiser and the demonstrations
    "gail": ("CartPole-v1", ON_POLICY | dict(demos=DEMOS, disc_steps=2)),
    # the curiosity module and its optimiser
    "icm": ("CartPole-v1", ON_POLICY | dict(icm_steps=2, icm_hidden=(8,))),
    "acktr": ("CartPole-v1", ON_POLICY | dict(inverse_update_period=2)),
    "acer": ("CartPole-v1", ON_POLICY | dict(buffer_size=128, replay_start=64, replay_ratio=2)),
    "apex": ("CartPole-v1", dict(
        total_timesteps=12 * 8, num_actors=4, hidden=(8, 8), batch_size=8, buffer_size=64,
        learning_starts=16, target_update_period=4, actor_sync_period=3,
    )),
    "trpo": ("CartPole-v1", ON_POLICY | dict(
        num_minibatches=4, num_epochs=2, normalize_obs=True, scale_reward=True,
    )),
    "a2c": ("CartPole-v1", ON_POLICY | dict(normalize_obs=True, scale_reward=True, anneal_lr=True)),
    "dqn": ("CartPole-v1", RAINBOW_CFG | dict(num_atoms=51, prioritised=True, n_step=3)),
    "ddpg": ("Pendulum-v1", TD3_CFG),
    # the Manager's dilated cores, the goal and state history and the episode step count
    "fun": ("CartPole-v1", dict(
        total_timesteps=12 * 32, num_envs=4, rollout_len=8, horizon=3, dilation=3, state_dim=8,
        goal_embed=4, worker_hidden=8, torso_hidden=(8,),
    )),
    # the recurrent carry and the reset flags: the resumed run must continue mid-episode
    "recurrent_ppo": ("CartPole-v1", dict(
        total_timesteps=12 * 32, num_envs=4, rollout_len=8, hidden=8, num_minibatches=2,
        scale_reward=True, anneal_lr=True,
    )),
}  # fmt: skip
# their state is like another's (TD3's like SAC's)
SLOW = {"acktr", "acer", "apex", "trpo", "a2c", "dqn", "ddpg", "td3"}
# name: (algo, env, config, seeds, loop.run's chunking and checkpointing)
CASES = {
    "ppo": (ppo, "CartPole-v1", PPO_CFG, PPO_SEEDS, dict(checkpoint_every=2)),
    "rainbow": (rainbow, "CartPole-v1", RAINBOW_CFG, [0, 1], dict(target_chunks=4)),
    "td3": (td3, "Pendulum-v1", TD3_CFG, [0, 1], dict(target_chunks=4)),
} | {
    name: (ALGORITHMS[name], env, cfg, [0, 1], dict(target_chunks=4 if env == "Pendulum-v1" else 6))
    for name, (env, cfg) in MORE.items()
}


def test_every_algorithm_has_a_resume_case():
    same_state_as = {"npg": "trpo", "vpg": "a2c"}  # a Config's defaults apart, the same State
    assert set(CASES) | set(same_state_as) == set(ALGORITHMS)
    for algo, twin in same_state_as.items():
        assert ALGORITHMS[algo].State is ALGORITHMS[twin].State


def _arrays(tree):
    as_data = lambda x: (
        jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    )
    return [np.asarray(as_data(x)) for x in jax.tree.leaves(tree)]


def _interrupt_at_save(monkeypatch, n: int):
    """Makes the ``n``-th checkpoint write die before it starts (as a kill would)."""
    real, calls = checkpoint_io.save, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint_io, "save", dying)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in sorted(CASES)]
)
def test_interrupted_and_resumed_equals_uninterrupted_bitwise(name, tmp_path, monkeypatch):
    algo, env_name, cfg_kw, seeds, chunking = CASES[name]
    env, _ = envs.make(env_name)
    cfg = algo.Config(**cfg_kw)
    runs = sweep.grid(algo.HParams.make(), seeds=seeds)
    kw = dict(env_name=env_name, algo_name=name, quiet=True, **chunking)
    whole = loop.run(algo, env, cfg, runs, run_dir=tmp_path / "whole", **kw)

    with monkeypatch.context() as m:
        _interrupt_at_save(m, 3)
        with pytest.raises(KeyboardInterrupt):
            loop.run(algo, env, cfg, runs, run_dir=tmp_path / "part", **kw)
    done = checkpoint_io.latest_step(tmp_path / "part")
    assert 0 < done < cfg.num_updates  # stopped midway; metrics were written past it
    # Off-policy: learning had started (the checkpoint holds a filled replay, optimiser and
    # target state that the resume must restore).
    assert done * cfg.steps_per_update > getattr(cfg, "learning_starts", 0)
    resumed = loop.run(algo, env, cfg, runs, run_dir=tmp_path / "part", resume=True, **kw)

    for a, b in zip(_arrays(whole.state), _arrays(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    whole_rows = (tmp_path / "whole" / "metrics.jsonl").read_text()
    assert whole_rows == (tmp_path / "part" / "metrics.jsonl").read_text()
    np.testing.assert_array_equal(
        whole.summary["final_return"]["per_run"], resumed.summary["final_return"]["per_run"]
    )
    # The resumed run's speed counts only the steps it took itself.
    assert (whole.summary["resumed_at_update"], resumed.summary["resumed_at_update"]) == (0, done)
    steps_after = (cfg.num_updates - done) * cfg.steps_per_update * len(seeds)
    speed = steps_after / resumed.summary["run_seconds"]
    assert resumed.summary["steps_per_second"] == pytest.approx(speed)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A finished tiny PPO run with checkpoints, and what resuming it needs."""
    algo, env_name, cfg_kw, seeds, _ = CASES["ppo"]
    env, _ = envs.make(env_name)
    cfg = algo.Config(**cfg_kw)
    runs = sweep.grid(algo.HParams.make(), seeds=seeds)  # the bitwise test's program
    run_dir = tmp_path_factory.mktemp("run")
    kw = dict(env_name=env_name, algo_name="ppo", quiet=True, checkpoint_every=4)
    result = loop.run(algo, env, cfg, runs, run_dir=run_dir, **kw)
    return run_dir, env, cfg, runs, result


def _template(cfg, env, runs):
    """Fresh PPO states of ``runs``, made as ``loop.run`` makes its resume template (init of
    the runs padded for 2 devices, then the first ``len(runs)``): no program of its own."""
    keys, hps = distributed.pad_runs((runs.keys, runs.hps), 2)
    return loop._first(sweep.init_runs(ppo, cfg, env, keys, hps), len(runs))


def _restore(run_dir, env, cfg, runs, **manifest):
    template = _template(cfg, env, runs)
    expected = loop._manifest("ppo", "CartPole-v1", cfg, runs) | manifest
    return checkpoint_io.restore(run_dir, template, expected)


def test_resuming_a_finished_run_changes_nothing_and_reports_no_speed(saved_run, tmp_path):
    run_dir, env, cfg, runs, result = saved_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    kw = dict(env_name="CartPole-v1", algo_name="ppo", quiet=True, checkpoint_every=4)
    again = loop.run(ppo, env, cfg, runs, run_dir=copy, resume=True, **kw)
    assert again.summary["steps_per_second"] is None
    assert again.summary["resumed_at_update"] == cfg.num_updates
    assert (copy / "metrics.jsonl").read_text() == (run_dir / "metrics.jsonl").read_text()
    for a, b in zip(_arrays(result.state), _arrays(again.state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_write_killed_midway_leaves_the_previous_checkpoint(saved_run, tmp_path):
    run_dir, env, cfg, runs, result = saved_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    step = checkpoint_io.latest_step(copy)
    # What a kill during orbax's write leaves: a temporary directory, never renamed.
    partial = copy / "checkpoints" / f"{step + 8}.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\x00" * 10)
    state, restored_step, _ = _restore(copy, env, cfg, runs)
    assert restored_step == step == cfg.num_updates
    for a, b in zip(_arrays(result.state), _arrays(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_restored_state_has_the_template_types_so_a_resume_reuses_the_program(saved_run):
    """Each restored leaf has its template leaf's type (shape, dtype, weak type) and sharding,
    so the resumed run lowers to the uninterrupted run's program text (and cache key)."""
    run_dir, env, cfg, runs, _ = saved_run
    template = _template(cfg, env, runs)
    # gymnax's env parameters are weakly typed: the files alone would lose that.
    assert any(jax.typeof(x).weak_type for x in jax.tree.leaves(template))
    state, _, _ = _restore(run_dir, env, cfg, runs)
    for t, r in zip(jax.tree.leaves(template), jax.tree.leaves(state), strict=True):
        assert jax.typeof(r) == jax.typeof(t) and jax.typeof(r).weak_type == jax.typeof(t).weak_type
        assert r.sharding == t.sharding
    # Placed as loop.run places them (padded to 4 runs, split over 2 devices), one program.
    mesh = distributed.run_mesh(jax.devices()[:2])
    placed = lambda s: distributed.shard_runs(distributed.pad_runs((s, runs.hps), 2), mesh)  # noqa: E731
    chunk = loop.choose_chunk(cfg.num_updates)
    train = loop.train_fn(ppo, cfg, env, chunk)
    assert train is loop.train_fn(ppo, cfg, env, chunk)  # one program object per process
    assert train.lower(*placed(state)).as_text() == train.lower(*placed(template)).as_text()


def test_incompatible_checkpoints_are_clear_errors(saved_run, tmp_path):
    run_dir, env, cfg, runs, _ = saved_run
    with pytest.raises(ConfigError, match="no checkpoint"):
        _restore(tmp_path, env, cfg, runs)
    with pytest.raises(ConfigError, match="algo is 'ppo', this run has 'td3'"):
        _restore(run_dir, env, cfg, runs, algo="td3")
    with pytest.raises(ConfigError, match="num_runs"):
        _restore(run_dir, env, cfg, runs, num_runs=5)
    # Same manifest, other shapes (the network twice as wide): the arrays do not fit.
    template = _template(cfg, env, runs)
    wide = lambda x: jnp.zeros((*x.shape[:-1], 2 * x.shape[-1]), x.dtype)  # noqa: E731
    template = template.replace(params=jax.tree.map(wide, template.params))
    expected = loop._manifest("ppo", "CartPole-v1", cfg, runs)
    with pytest.raises(ConfigError, match="does not fit"):
        checkpoint_io.restore(run_dir, template, expected)


@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest"])
def test_corrupt_or_truncated_checkpoints_are_clear_errors(saved_run, tmp_path, damage):
    run_dir, env, cfg, runs, _ = saved_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    step_dir = copy / "checkpoints" / str(checkpoint_io.latest_step(copy))
    if damage == "manifest":
        next(p for p in (step_dir / "manifest").rglob("*") if p.is_file()).write_text("{not json")
    else:
        files = sorted(p for p in (step_dir / "state").rglob("*") if p.is_file())
        biggest = max(files, key=lambda p: p.stat().st_size)
        if damage == "truncate":
            biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])
        else:
            biggest.unlink()
    with pytest.raises(ConfigError):
        _restore(copy, env, cfg, runs)


def test_cli_resume_continues_a_killed_run(tmp_path, monkeypatch, capsys):
    # PPO_CFG and PPO_SEEDS: the program of the PPO runs above.
    base = ["train", "ppo", "--env", "CartPole-v1", "--num-seeds", "3", "--quiet"]
    base += ["--total-timesteps", "512", "--set", "num_envs=4", "--set", "rollout_len=16"]
    base += ["--set", "hidden=16,16", "--checkpoint-every", "2"]
    assert cli.main([*base, "--run-dir", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as m:
        _interrupt_at_save(m, 3)  # after the checkpoint of update 4 of 8
        assert cli.main([*base, "--run-dir", str(tmp_path / "part")]) == 130
    assert cli.main(["train", "--resume", str(tmp_path / "part"), "--quiet"]) == 0
    read = lambda d: Path(d, "metrics.jsonl").read_text()
    assert read(tmp_path / "whole") == read(tmp_path / "part")
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert cli.main(["train", "td3", "--resume", str(tmp_path / "part")]) == 2
    assert "is a ppo run, not td3" in capsys.readouterr().err
