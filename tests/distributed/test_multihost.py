"""Several processes as one program: settings from flags or environment, one-line errors,
and two processes on localhost (gloo collectives on CPU) reproducing one process bitwise.

The two-process runs use one CPU device per process, the one-process reference two devices
in one process: both give every device two runs, so each device runs the same program on
the same inputs and the numbers match bit for bit (a different number of runs per device
changes XLA's vectorisation and the last bits; ``tests/runner/test_loop.py`` compares those
within float tolerance).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxrl.distributed import multihost
from jaxrl.errors import ConfigError
from jaxrl.runner import cli, loop

ENV_VARS = (multihost.ENV_COORDINATOR, multihost.ENV_NUM_PROCESSES, multihost.ENV_PROCESS_ID)
NO_GLOO = not multihost.gloo_available()
TRAIN = [
    "train", "ppo", "--env", "CartPole-v1", "--num-seeds", "4", "--total-timesteps", "2048",
    "--set", "num_envs=4", "--set", "rollout_len=32", "--set", "hidden=16,16", "--quiet",
    "--checkpoint-every", "8",
]  # fmt: skip
SWEEP = [
    "sweep", "ppo", "--env", "CartPole-v1", "--num-seeds", "2", "--grid", "clip_eps=0.1,0.3",
    "--total-timesteps", "2048", "--set", "num_envs=4", "--set", "rollout_len=32",
    "--set", "hidden=16,16", "--quiet", "--bootstrap-reps", "50",
]  # fmt: skip
# A worker: the CLI, optionally killed (KeyboardInterrupt) as its N-th checkpoint starts.
# Ctrl-C handling is switched on even if pytest runs as a background job of a
# non-interactive shell, whose children inherit an ignored SIGINT.
WORKER = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from jaxrl.checkpoint import io
from jaxrl.runner import cli
stop_at, argv, calls = int(sys.argv[1]), sys.argv[2:], []
real = io.save
def save(*args, **kwargs):
    calls.append(1)
    if len(calls) == stop_at:
        raise KeyboardInterrupt
    return real(*args, **kwargs)
io.save = save
sys.exit(cli.main(argv))
"""


# Two bare processes: barriers, then process 1 stops and process 0 must not wait for it.
BARRIERS = """
import sys, time
from jaxrl.distributed import multihost
procs = multihost.initialize(sys.argv[1], 2, sys.argv[2])
start = multihost.agreed_time()
for i in range(3):
    multihost.barrier(f"step{i}")
if procs.process_id == 1:
    multihost.abort("process 1 was interrupted")
    print("aborted", start, flush=True)
    sys.exit(130)
t = time.monotonic()
try:
    multihost.barrier("never complete")
except multihost.Aborted as err:
    print(f"stopped after {time.monotonic() - t:.2f} s: {err}", start, flush=True)
    sys.exit(1)
"""


@pytest.fixture
def clean_env(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JAXRL_COMPILE_CACHE", "off")


# --- settings: flags first, then environment; inconsistent ones are one-line errors ---------


def test_nothing_set_is_one_process():
    assert multihost.resolve(environ={}) is None
    assert multihost.resolve(num_processes=1, environ={}) is None
    assert multihost.initialize(environ={}) == multihost.Processes(0, 1)


def test_flags_win_over_environment_field_by_field():
    environ = {
        "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
        "JAX_PROCESS_ID": "3",
    }  # fmt: skip
    assert multihost.resolve(environ=environ) == multihost.Spec("10.0.0.1:1234", 4, 3)
    spec = multihost.resolve(process_id="1", environ=environ)
    assert spec == multihost.Spec("10.0.0.1:1234", 4, 1)
    spec = multihost.resolve("localhost:99", "2", "0", environ=environ)
    assert spec == multihost.Spec("localhost:99", 2, 0)


def test_auto_leaves_unset_fields_to_cluster_detection():
    spec = multihost.resolve(num_processes="auto", environ={})
    assert spec == multihost.Spec(None, None, None) and spec.auto
    spec = multihost.resolve(num_processes="auto", environ={"JAX_PROCESS_ID": "2"})
    assert spec == multihost.Spec(None, None, 2)


BAD_SETTINGS = {
    "id without count": (dict(process_id="1"), {}, ["--process-id", "--num-processes"]),
    "address without count": (
        dict(coordinator_address="h:1"), {}, ["--coordinator-address", "--num-processes auto"],
    ),
    "env address without count": (
        {}, {"JAX_COORDINATOR_ADDRESS": "h:1"}, ["JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES"],
    ),
    "count without address": (dict(num_processes="2", process_id="0"), {}, ["HOST:PORT"]),
    "count without id": (
        dict(coordinator_address="h:1", num_processes="2"), {}, ["--process-id", "0..1"],
    ),
    "id out of range": (dict(coordinator_address="h:1", num_processes="2", process_id="2"), {},
                        ["--process-id 2", "--num-processes 2", "0..1"]),
    "env id out of range": (dict(coordinator_address="h:1", num_processes="2"),
                            {"JAX_PROCESS_ID": "5"}, ["JAX_PROCESS_ID 5"]),
    "one process, id 1": (dict(num_processes="1", process_id="1"), {}, ["0..0"]),
    "negative id": (dict(num_processes="2", process_id="-1"), {}, [">= 0"]),
    "zero processes": (dict(num_processes="0"), {}, [">= 1"]),
    "count not a number": (dict(num_processes="two"), {}, ["positive integer or 'auto'"]),
    "id not a number": (dict(num_processes="2", process_id="x"), {}, ["--process-id"]),
    "address without port": (
        dict(coordinator_address="10.0.0.1", num_processes="2", process_id="0"), {},
        ["HOST:PORT", "10.0.0.1"],
    ),
    "port out of range": (
        dict(coordinator_address="h:70000", num_processes="2", process_id="0"), {}, ["HOST:PORT"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_inconsistent_settings_are_one_line_errors(case):
    flags, environ, must_mention = BAD_SETTINGS[case]
    with pytest.raises(ConfigError) as err:
        multihost.resolve(**flags, environ=environ)
    message = str(err.value)
    assert "\n" not in message
    for word in must_mention:
        assert word in message, (word, message)


@pytest.fixture
def no_training(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("loop.run was reached: the error came too late")

    monkeypatch.setattr(loop, "run", forbidden)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_cli_reports_inconsistent_flags_before_compiling(command, clean_env, no_training, capsys):
    argv = TRAIN if command == "train" else SWEEP
    assert cli.main([*argv, "--num-processes", "2", "--process-id", "3"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxrl: error: "), err
    assert "--process-id 3" in lines[0] and "Traceback" not in err and out == ""


def test_cli_reports_inconsistent_environment_before_compiling(
    clean_env, no_training, monkeypatch, capsys
):
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert cli.main(TRAIN) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "JAX_PROCESS_ID" in err


def test_auto_without_a_cluster_is_a_one_line_error():
    env = {
        k: v for k, v in os.environ.items()
        if k not in ENV_VARS and not k.startswith(("SLURM_", "OMPI_", "TPU_"))
    }  # fmt: skip
    env |= {"JAX_PLATFORMS": "cpu", "JAXRL_COMPILE_CACHE": "off"}
    code = "import sys; from jaxrl.runner import cli; sys.exit(cli.main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, *TRAIN, "--num-processes", "auto"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.count("\n") == 1 and "no SLURM/Open MPI/TPU cluster" in proc.stderr


def test_initialize_after_jax_started_is_an_error():
    jax.numpy.zeros(1).block_until_ready()  # this process's backend runs
    with pytest.raises(ConfigError, match="before JAX starts"):
        multihost.initialize("localhost:1", 2, 0, environ={})


# --- two processes on localhost -------------------------------------------------------------


@pytest.mark.skipif(NO_GLOO, reason="this jaxlib has no gloo CPU collectives")
def test_a_stopped_process_stops_the_others_at_their_next_barrier():
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env |= {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
    address = f"localhost:{_free_port()}"
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BARRIERS, address, str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [1, 130], outs
    assert "stopped after" in outs[0] and "process 1 was interrupted" in outs[0], outs[0]
    assert float(outs[0].split("stopped after ")[1].split()[0]) < 5.0
    assert outs[0].split()[-1] == outs[1].split()[-1]  # agreed_time: process 0's clock
    assert time.monotonic() - t0 < 60  # no process waited out a timeout


class _ScriptedClient:
    """A coordination-service client for process 0 of 2 at a barrier: after its
    ``arrive_after``-th call, process 1 arrives at the barrier and then aborts."""

    def __init__(self, arrive_after: int):
        self.calls, self.arrive_after, self.count, self.aborts = 0, arrive_after, 0, []

    def _tick(self, result):
        self.calls += 1
        if self.calls == self.arrive_after:
            self.count += 1
            self.aborts.append(("1", "process 1 was interrupted"))
        return result

    def key_value_increment(self, key, by):
        self.count += by
        return self._tick(self.count)

    def key_value_try_get(self, key):
        return self._tick(str(self.count))

    def key_value_dir_get(self, directory):
        return self._tick(list(self.aborts))


@pytest.mark.parametrize("arrive_after", [1, 2, 3, 4])
def test_an_abort_by_a_process_that_passed_the_barrier_counts_at_the_next(
    arrive_after, monkeypatch
):
    """Whenever process 1 arrives (after any of process 0's reads) and then aborts, process
    0 passes this barrier: it reads the aborts before the count."""
    client = _ScriptedClient(arrive_after)
    monkeypatch.setattr(multihost, "_client", lambda: client)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    multihost.barrier("race")
    assert client.count == 2 and client.aborts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(argv: list[str], num_processes: int = 2, stop_at: int = 0) -> list[subprocess.Popen]:
    """Starts ``jaxrl ARGV`` as ``num_processes`` processes with one CPU device each.
    ``stop_at``: each is interrupted as its ``stop_at``-th checkpoint starts."""
    env = {k: v for k, v in os.environ.items() if k not in (*ENV_VARS, "XLA_FLAGS")}
    env |= {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1", "JAXRL_COMPILE_CACHE": "off"}
    address = f"localhost:{_free_port()}"
    procs = []
    for i in range(num_processes):
        flags = ["--coordinator-address", address, "--num-processes", str(num_processes)]
        cmd = [sys.executable, "-c", WORKER, str(stop_at), *argv, *flags, "--process-id", str(i)]
        procs.append(
            subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def _wait(procs: list[subprocess.Popen], expected: int | list[int] = 0) -> list[str]:
    """Waits for every process (killing all on a timeout); checks exit codes (one for all,
    or one per process); returns their outputs."""
    outputs, deadline = [], time.monotonic() + 600
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outputs.append(out.decode(errors="replace"))
    expected = expected if isinstance(expected, list) else [expected] * len(procs)
    for i, (p, out, code) in enumerate(zip(procs, outputs, expected, strict=True)):
        assert p.returncode == code, f"process {i} exited {p.returncode}:\n{out[-3000:]}"
    return outputs


def _checkpoint(run_dir: Path, step: int) -> list[np.ndarray]:
    """Every array of checkpoint ``step`` as numpy, read without a template (any topology)."""
    import orbax.checkpoint as ocp

    path = run_dir.absolute() / "checkpoints" / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return jax.tree.leaves(checkpointer.restore(path, args=ocp.args.PyTreeRestore(args)))


def _same_run(one: Path, two: Path, step: int) -> None:
    """Same metric rows (bytes), same final returns, same final checkpoint (bitwise)."""
    assert (one / "metrics.jsonl").read_bytes() == (two / "metrics.jsonl").read_bytes()
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s1["final_return"] == s2["final_return"]
    assert (s1["num_processes"], s2["num_processes"]) == (1, 2)
    a, b = _checkpoint(one, step), _checkpoint(two, step)
    assert len(a) == len(b) > 10
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # three processes compile PPO: 19 s quiet, up to 100 s loaded
@pytest.mark.skipif(NO_GLOO, reason="this jaxlib has no gloo CPU collectives")
def test_two_processes_reproduce_one_process_bitwise(tmp_path, clean_env):
    """``jaxrl train`` on 2 processes x 1 CPU device == 1 process x 2 devices, bit for bit."""
    assert len(jax.devices()) == 2, "conftest exposes two CPU devices"
    two = tmp_path / "two"
    procs = _start([*TRAIN, "--run-dir", str(two)])
    try:  # the reference in this process while the two others run
        assert cli.main([*TRAIN, "--run-dir", str(tmp_path / "one")]) == 0
    finally:
        outputs = _wait(procs)
    _same_run(tmp_path / "one", two, step=16)  # 2048 steps / (4 envs x 32) = 16 updates
    summary = json.loads((two / "summary.json").read_text())
    assert summary["devices"] == ["cpu:0", "cpu:2048"]  # one device of each process
    assert "ppo on CartPole-v1" not in "".join(outputs)  # --quiet on both


@pytest.mark.slow
@pytest.mark.skipif(NO_GLOO, reason="this jaxlib has no gloo CPU collectives")
def test_interrupted_two_process_sweep_resumes_to_the_same_numbers(tmp_path, clean_env):
    """``jaxrl sweep`` on 2 processes, killed as its 3rd checkpoint starts, then resumed on
    2 processes: the same files as one uninterrupted process."""
    two = tmp_path / "two"
    _wait(_start([*SWEEP, "--run-dir", str(two)], stop_at=3), expected=130)
    assert not (two / "summary.json").exists()
    steps = sorted(int(p.name) for p in (two / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and max(steps) < 16, steps  # interrupted part way
    procs = _start(["sweep", "--resume", str(two), "--quiet", "--bootstrap-reps", "50"])
    try:
        assert cli.main([*SWEEP, "--run-dir", str(tmp_path / "one")]) == 0
    finally:
        _wait(procs)
    _same_run(tmp_path / "one", two, step=16)
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "one", two))
    assert r1 == r2


@pytest.mark.slow
@pytest.mark.skipif(NO_GLOO, reason="this jaxlib has no gloo CPU collectives")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_to_one_process_stops_both_and_resume_matches(sig, tmp_path, clean_env):
    """SIGTERM to one of two processes (a preemption notice): both checkpoint at the next
    chunk they agree on and exit 130. SIGINT (Ctrl-C): that one stops (130), the other
    stops at its next barrier (1) instead of waiting out a timeout, and the last checkpoint
    is intact. Either way ``--resume`` on two processes ends with the numbers of one
    uninterrupted process."""
    long = [*TRAIN[:7], "32768", *TRAIN[8:-2]]  # 256 updates in 16 chunks, every one saved
    assert long[6:8] == ["--total-timesteps", "32768"] and "--checkpoint-every" not in long
    two = tmp_path / "two"
    procs = _start([*long, "--run-dir", str(two)])
    deadline = time.monotonic() + 600
    while not any(p.name.isdigit() for p in (two / "checkpoints").glob("*")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.1)
    procs[1].send_signal(getattr(signal, sig))
    t = time.monotonic()
    outputs = _wait(procs, expected=130 if sig == "SIGTERM" else [1, 130])
    assert time.monotonic() - t < 60  # nobody waited out a barrier or shutdown timeout
    steps = sorted(int(p.name) for p in (two / "checkpoints").iterdir() if p.name.isdigit())
    rows = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    last_row = max(r["update"] for r in rows)
    if sig == "SIGTERM":
        assert "preempted (SIGTERM): checkpoint at update" in outputs[0]
        assert last_row == max(steps) < 256  # stopped at its checkpoint
    else:
        assert "stopping: process 1 was interrupted" in outputs[0]
        assert max(steps) <= last_row < 256
    procs = _start(["train", "--resume", str(two), "--quiet"])
    try:
        assert cli.main([*long, "--run-dir", str(tmp_path / "one")]) == 0
    finally:
        _wait(procs)
    _same_run(tmp_path / "one", two, step=256)
