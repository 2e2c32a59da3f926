"""Clean shutdown: an actor's or the learner's error stops every thread and is re-raised in
the main thread; Ctrl-C (SIGINT to a subprocess) exits with the last checkpoint intact;
checkpoints restore and resume."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest
import sebulba_fakes as fakes

from jaxrl import sebulba
from jaxrl.algorithms import ppo
from jaxrl.checkpoint import io as checkpoint_io
from jaxrl.sebulba import orchestrator as run_lib

T, N, A = 4, 2, 2


def _sebulba_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("sebulba")]


def _wait_until_gone(seconds: float = 5.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while _sebulba_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    return _sebulba_threads()


def test_an_actor_error_stops_everything_and_is_reraised_in_the_main_thread(tmp_path):
    agent = fakes.ppo_agent(A, N, T)
    envs = [fakes.CounterEnv(0, N), fakes.CounterEnv(1, N, fail_at=7 * T + 2)]
    with pytest.raises(RuntimeError, match="boom in actor 1") as info:
        sebulba.train(agent, envs, num_updates=10**6, run_dir=tmp_path, checkpoint_every=3)
    raised = time.monotonic()
    assert raised - envs[1].failed_at < 3.0  # the learner noticed within a few polls
    assert any("sebulba-actor-1" in note for note in info.value.__notes__)
    assert _wait_until_gone(0.0) == []  # train() returned only after joining every actor
    assert all(env.closed.is_set() for env in envs)
    # The failed run wrote no checkpoint of its own; the last periodic one (after 6 of the
    # 7 updates the failing actor could feed) is intact and restores.
    assert checkpoint_io.latest_step(tmp_path) == 6
    template = agent.init(jax.random.key(0))
    state, step, manifest = checkpoint_io.restore(
        tmp_path, template, run_lib.manifest(agent, "counter")
    )
    assert step == 6 and int(state.update_count) == 6 and manifest["algo"] == "sebulba/ppo"


def test_a_learner_error_stops_the_actors_and_is_reraised():
    agent = fakes.ppo_agent(A, N, T)
    calls = []

    def actor_params(state):  # the learner calls it on the host after every update
        calls.append(1)
        if len(calls) == 4:
            raise ValueError("learner broke")
        return agent.actor_params(state)

    envs = [fakes.CounterEnv(i, N) for i in range(A)]
    broken = dataclasses.replace(agent, actor_params=actor_params)
    with pytest.raises(ValueError, match="learner broke") as info:
        sebulba.train(broken, envs, num_updates=10**6)
    assert any("learner" in note for note in info.value.__notes__)
    assert _wait_until_gone(0.0) == []
    assert all(env.closed.is_set() for env in envs)


def test_an_error_before_the_actors_start_closes_the_envs():
    agent = fakes.ppo_agent(A, N, T)

    def learn(state, traj):
        raise ValueError("cannot trace")  # raised while compiling, before any actor starts

    envs = [fakes.CounterEnv(i, N) for i in range(A)]
    with pytest.raises(ValueError, match="cannot trace"):
        sebulba.train(dataclasses.replace(agent, learn=learn), envs, num_updates=10)
    assert _sebulba_threads() == []
    assert all(env.closed.is_set() for env in envs)


def test_envs_that_do_not_fit_the_agent_are_an_error_and_are_closed():
    agent = fakes.ppo_agent(A, N, T)
    envs = [fakes.CounterEnv(0, N), fakes.CounterEnv(1, N + 1)]
    with pytest.raises(ValueError, match="each actor needs 2 envs"):
        sebulba.train(agent, envs, num_updates=1)
    assert all(env.closed.is_set() for env in envs)
    with pytest.raises(ValueError, match="2 actors but 1 envs"):
        sebulba.train(agent, envs[:1], num_updates=1)


def test_join_reports_threads_that_do_not_stop():
    stuck = threading.Thread(target=time.sleep, args=(1.0,), name="sebulba-stuck", daemon=True)
    stuck.start()
    t0 = time.monotonic()
    assert run_lib._join([stuck], 0.1) == ["sebulba-stuck"]
    assert time.monotonic() - t0 < 0.5
    stuck.join()


def test_checkpoints_restore_the_final_state_and_resume_continues(tmp_path):
    agent = fakes.ppo_agent(A, N, T)
    result = sebulba.train(agent, [fakes.CounterEnv(i, N) for i in range(A)], num_updates=5,
                           run_dir=tmp_path, checkpoint_every=2)  # fmt: skip
    assert checkpoint_io.latest_step(tmp_path) == 5
    meta = run_lib.manifest(agent, "counter")
    state, step, _ = checkpoint_io.restore(tmp_path, agent.init(jax.random.key(0)), meta)
    assert step == 5
    for a, b in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(result.state.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    resumed = sebulba.train(agent, [fakes.CounterEnv(i, N) for i in range(A)], num_updates=7,
                            run_dir=tmp_path, resume=True)  # fmt: skip
    assert resumed.num_updates == 7 and len(resumed.ledger) == 2 * A
    assert [v for _, v in resumed.ledger] == [5, 5, 6, 6]
    assert int(resumed.state.update_count) == 7
    assert checkpoint_io.latest_step(tmp_path) == 7


CHILD = textwrap.dedent(
    """
    import sys, threading
    from jaxrl import sebulba
    from jaxrl.algorithms import ppo

    cfg = ppo.Config(num_envs=2, rollout_len=16, num_epochs=1, num_minibatches=1,
                     hidden=(16,), total_timesteps=10**9)

    def log(update, metrics):
        if update == 3:
            print("READY", flush=True)

    try:
        sebulba.run("ppo", "gymnasium/CartPole-v1", cfg, ppo.HParams.make(), num_actors=2,
                    run_dir=sys.argv[1], checkpoint_every=2, log_fn=log, log_every=1)
    except KeyboardInterrupt:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("sebulba")]
        print("INTERRUPTED", alive, flush=True)
        sys.exit(130)
    """
)


def test_ctrl_c_exits_cleanly_with_the_last_checkpoint_intact(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    run_dir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # blocks until READY (or the child dies: "")
        assert line.strip() == "READY", (line, proc.stderr.read() if proc.poll() else "")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "INTERRUPTED []" in out, (out, err)
    assert "Traceback" not in err, err
    # The final checkpoint holds the learner's state at the interruption and restores.
    step = checkpoint_io.latest_step(run_dir)
    assert step is not None and step >= 3
    cfg = ppo.Config(num_envs=2, rollout_len=16, num_epochs=1, num_minibatches=1,
                     hidden=(16,), total_timesteps=10**9)  # fmt: skip
    probe = sebulba.make_env("gymnasium/CartPole-v1", 1)
    agent = sebulba.make_agent("ppo", cfg, ppo.HParams.make(), probe.spec, num_actors=2)
    probe.close()
    state, restored_step, _ = checkpoint_io.restore(
        run_dir, agent.init(jax.random.key(0)), run_lib.manifest(agent, "gymnasium/CartPole-v1")
    )
    assert restored_step == step and int(state.update_count) == step
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
