"""Several processes (hosts) as one program: ``jax.distributed`` set up from flags or environment.

Every process runs the same command; :func:`initialize` connects them through JAX's
coordination service before anything starts a backend, after which ``jax.devices()``
lists the devices of every process and one ``jit`` spans them all. The runner then lays
the run axis over :func:`global_devices` (process 0's devices first), so each process
trains a contiguous block of runs; independent runs need no collectives while training.

Where the settings come from, per field, the first found wins:

==================  =========================  ===========================
field               flag                       environment variable
==================  =========================  ===========================
coordinator         ``--coordinator-address``  ``JAX_COORDINATOR_ADDRESS``
number of processes ``--num-processes``        ``JAX_NUM_PROCESSES``
this process's id   ``--process-id``           ``JAX_PROCESS_ID``
==================  =========================  ===========================

None of them set: one process, nothing initialised. ``--num-processes auto`` hands the
unset fields to JAX's cluster detection (what ``jax.distributed.initialize()`` does with
no arguments: SLURM, Open MPI, Cloud TPU pods, Kubernetes JobSet). Anything inconsistent
is a :class:`~jaxrl.errors.ConfigError` with a one-line message, raised before JAX starts.

Output (see :mod:`jaxrl.runner.loop`): process 0 gathers every run's metrics (an
all-gather per chunk, so all processes hold the same numbers) and alone writes the run
directory's files; checkpoints are written by orbax with every process saving its own
shards into the same directory, which must therefore be on a file system all hosts share.
``jax.distributed`` turns SIGTERM into a preemption notice: the runner then checkpoints at
the next chunk all processes agree on and stops (:class:`Preempted`); ``--resume`` continues.
On CPU the cross-process collectives are gloo's (``jax_cpu_collectives_implementation``).

Gloo gives up (a fatal error) when processes reach their *first* collective over a set of
devices more than 30 s apart, which a difference in compile time easily causes; so the
barriers and the shared clock here use the coordination service's key-value store (waits
of up to ``BARRIER_TIMEOUT_S``), and every gather passes such a barrier first. A process
that stops early (Ctrl-C, an error) calls :func:`abort`, and the others raise
:class:`Aborted` at their next barrier instead of waiting for it; steps all processes take
together run :func:`uninterrupted`, so none leaves one half-way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxrl.errors import ConfigError

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
AUTO = "auto"
INIT_TIMEOUT_S = 300  # jax.distributed.initialize's default
# How long a process waits for the others at a barrier (they may be compiling).
BARRIER_TIMEOUT_S = 3600
# Ids of barriers and of shared values: every process makes the same calls in the same order.
_BARRIER_IDS = itertools.count()
_VALUE_IDS = itertools.count()


@dataclasses.dataclass(frozen=True)
class Spec:
    """What to pass to ``jax.distributed.initialize``; ``None`` fields are auto-detected
    (only when ``num_processes`` is ``None``, i.e. ``--num-processes auto``)."""

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None

    @property
    def auto(self) -> bool:
        return self.num_processes is None


@dataclasses.dataclass(frozen=True)
class Processes:
    """The processes of this program once :func:`initialize` returned."""

    process_id: int
    num_processes: int
    coordinator_address: str | None = None

    @property
    def is_primary(self) -> bool:
        return self.process_id == 0


def _pick(flag_value: Any, flag: str, environ: Mapping[str, str], var: str):
    """``(value, where)`` of one field: the flag if given, else the environment variable."""
    if flag_value is not None and str(flag_value).strip() != "":
        return str(flag_value).strip(), flag
    if environ.get(var, "").strip():
        return environ[var].strip(), var
    return None, None


def _int(text: str, where: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{where} must be {what}, got {text!r}") from None


def _check_address(address: str, where: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{where} must be HOST:PORT (process 0's address and a free port), got {address!r}"
        )


def resolve(
    coordinator_address: str | None = None,
    num_processes: int | str | None = None,
    process_id: int | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Spec | None:
    """Validates the distributed settings (flags first, then environment variables).

    Returns ``None`` for a single process (nothing set, or one process), else the
    :class:`Spec` to initialise. Raises :class:`ConfigError` (one line, naming the flag or
    variable each value came from) when they are inconsistent. Starts nothing.
    """
    environ = os.environ if environ is None else environ
    coord, coord_src = _pick(coordinator_address, "--coordinator-address", environ, ENV_COORDINATOR)
    nproc, nproc_src = _pick(num_processes, "--num-processes", environ, ENV_NUM_PROCESSES)
    pid, pid_src = _pick(process_id, "--process-id", environ, ENV_PROCESS_ID)
    if coord is not None:
        _check_address(coord, coord_src)
    pid_int = None
    if pid is not None:
        pid_int = _int(pid, pid_src, "a process index 0, 1, ...")
        if pid_int < 0:
            raise ConfigError(f"{pid_src} must be >= 0, got {pid_int}")
    if nproc is None:
        if coord is None and pid is None:
            return None
        given = coord_src if coord is not None else pid_src
        raise ConfigError(
            f"{given} is set but the number of processes is not: give --num-processes N "
            f"(or {ENV_NUM_PROCESSES}), or --num-processes auto on a SLURM/Open MPI/TPU cluster"
        )
    if nproc.lower() == AUTO:
        return Spec(coord, None, pid_int)
    n = _int(nproc, nproc_src, f"a positive integer or {AUTO!r}")
    if n < 1:
        raise ConfigError(f"{nproc_src} must be >= 1, got {n}")
    if pid_int is not None and pid_int >= n:
        raise ConfigError(
            f"{pid_src} {pid_int} is out of range for {nproc_src} {n} (ids are 0..{n - 1})"
        )
    if n == 1:
        return None
    if coord is None:
        raise ConfigError(
            f"{nproc_src} {n} needs --coordinator-address HOST:PORT (or {ENV_COORDINATOR}): "
            "process 0's address, the same on every process"
        )
    if pid_int is None:
        raise ConfigError(
            f"{nproc_src} {n} needs --process-id (or {ENV_PROCESS_ID}): this process's "
            f"index, 0..{n - 1}, a different one on each process"
        )
    return Spec(coord, n, pid_int)


def gloo_available() -> bool:
    """Whether this jaxlib has gloo's TCP collectives (cross-process collectives on CPU)."""
    try:
        from jax._src.lib import _jax
    except ImportError:  # pragma: no cover - older layouts
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | str | None = None,
    process_id: int | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    timeout_s: int = INIT_TIMEOUT_S,
) -> Processes:
    """Joins this process to the others (``jax.distributed.initialize``) if settings say so.

    Must run before anything starts a JAX backend. Settings are resolved by
    :func:`resolve`; with none, returns ``Processes(0, 1)`` and initialises nothing.
    Sets the CPU collectives to gloo unless the user chose an implementation. A second
    call after a successful one returns the same answer.

    Raises:
        ConfigError: inconsistent settings, a backend already running, or no cluster
            detected for ``auto``. (An unreachable coordinator is not an exception: JAX
            retries for ``timeout_s``, then ends the process from C++.)
    """
    spec = resolve(coordinator_address, num_processes, process_id, environ)
    if jax.distributed.is_initialized():
        return _current()
    if spec is None:
        return Processes(0, 1)
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise ConfigError(
            "jax.distributed must be initialised before JAX starts (before any computation "
            "or jax.devices()); call jaxrl.distributed.initialize first"
        )
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            spec.coordinator_address,
            spec.num_processes,
            spec.process_id,
            initialization_timeout=timeout_s,
        )
    except (ValueError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        hint = " (no SLURM/Open MPI/TPU cluster detected?)" if spec.auto else ""
        raise ConfigError(f"jax.distributed.initialize failed{hint}: {first}") from None
    return _current()


def _current() -> Processes:
    """The initialised processes, read without starting a backend."""
    from jax._src import distributed as jax_distributed

    state = jax_distributed.global_state
    return Processes(state.process_id, state.num_processes, state.coordinator_address)


class Preempted(KeyboardInterrupt):
    """Raised by the runner after it checkpointed at a preemption sync point (SIGTERM)."""


def preempted(step: int) -> bool:
    """Whether every process has reached the step at which to checkpoint and stop, because
    one of them got a preemption notice (SIGTERM, which ``jax.distributed`` intercepts).

    Call it after every chunk on every process with ``step`` counting the calls (1, 2,
    3, ...: JAX's ``reached_preemption_sync_point`` picks the largest step any process has
    reached plus one, so steps must not skip); always False for one process.
    """
    if jax.process_count() == 1:
        return False
    from jax.experimental import multihost_utils

    try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError:  # the preemption service is switched off
        return False


_HOLDING: list[bool] = []  # non-empty inside uninterrupted()


@contextlib.contextmanager
def uninterrupted():
    """Holds back Ctrl-C (SIGINT) until the block is done, when several processes run.

    For steps every process must take together (a checkpoint, a gather): one process
    leaving half-way would hang the others inside it. The interrupt is raised when the
    outermost block ends; one process, or outside the main thread: no change.
    """
    if (
        _HOLDING
        or jax.process_count() == 1
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    _HOLDING.append(True)
    try:
        yield
    finally:
        _HOLDING.pop()
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def global_devices() -> list[jax.Device]:
    """Every process's devices, process 0's first (so a 1-D mesh gives each process a
    contiguous block of the run axis)."""
    return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


def _client():
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


class Aborted(RuntimeError):
    """Another process stopped (an error, Ctrl-C): this one stops at its next barrier."""


ABORT_DIR = "jaxrl/abort"


def abort(message: str) -> None:
    """Tells the other processes to stop (they raise :class:`Aborted` at their next
    :func:`barrier`) instead of waiting for this one; a no-op without ``jax.distributed``."""
    client = _client()
    if client is None:
        return
    from jax._src import distributed as jax_distributed

    try:
        client.key_value_set(f"{ABORT_DIR}/{jax_distributed.global_state.process_id}", message)
    except Exception:  # noqa: BLE001 - the service may be gone already
        pass


def _abort_messages(client) -> list[str]:
    return sorted(message for _, message in client.key_value_dir_get(ABORT_DIR))


def barrier(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
    """Waits until every process reaches ``barrier(name)``; a no-op for one process.

    Uses the coordination service's key-value store, not a device collective, so processes
    may arrive up to ``timeout_s`` apart; raises :class:`Aborted` as soon as another
    process called :func:`abort`. Every process must make the same calls in the same order.
    """
    if jax.process_count() == 1:
        return
    client, num = _client(), jax.process_count()
    index = next(_BARRIER_IDS)
    key = f"jaxrl/barrier/{index}"
    arrived = client.key_value_increment(key, 1)
    if jax.process_index() == 0 and index >= 2:  # every process is past barrier index - 2
        try:
            client.key_value_delete(f"jaxrl/barrier/{index - 2}")
        except Exception:  # noqa: BLE001 - gone already
            pass
    deadline, pause = time.monotonic() + timeout_s, 0.001
    while arrived < num:
        time.sleep(pause)
        pause = min(2 * pause, 0.05)
        # Aborts first, then the count: a process that aborted after passing this barrier
        # had arrived before, so the count read next sees it, and the abort counts at the
        # next barrier. (The other order races: it could read the count just before that
        # process arrives, then its abort.)
        stopped = _abort_messages(client)
        arrived = int(client.key_value_try_get(key))
        if arrived >= num:
            break
        if stopped:
            raise Aborted("; ".join(stopped))
        if time.monotonic() > deadline:
            raise Aborted(f"barrier {name!r}: {arrived} of {num} processes after {timeout_s} s")


def spans_processes(x: Any) -> bool:
    """Whether ``x`` is a global array with shards on other processes' devices."""
    return isinstance(x, jax.Array) and not x.is_fully_addressable


def _replicated(x: jax.Array) -> jax.sharding.Sharding:
    mesh = getattr(x.sharding, "mesh", None)
    if not isinstance(mesh, jax.sharding.Mesh):
        mesh = jax.sharding.Mesh(np.array(global_devices()), ("all",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _gather(tree: Any, fn=lambda t: t) -> Any:
    """``fn(tree)`` computed as ONE program whose outputs are replicated on every device,
    waited for before returning. Collective programs are kept single and blocking: several
    in flight at once (e.g. eager ops leaf by leaf) can deadlock CPU collectives."""
    leaves = jax.tree.leaves(tree)
    out_shape = jax.eval_shape(fn, tree)
    sharding = _replicated(next(x for x in leaves if spans_processes(x)))
    out = jax.jit(fn, out_shardings=jax.tree.map(lambda _: sharding, out_shape))(tree)
    return jax.block_until_ready(out)


def to_host(tree: Any) -> Any:
    """Every leaf as a numpy array of its global value, on every process.

    One process: ``jax.device_get``. Several: one all-gather program for every leaf that
    spans other processes' devices (after a :func:`barrier`: see the module docstring), so
    the result has the global shape everywhere.
    """
    if jax.process_count() == 1 or not any(map(spans_processes, jax.tree.leaves(tree))):
        return jax.device_get(tree)
    flat, treedef = jax.tree.flatten(tree)
    spanning = [i for i, x in enumerate(flat) if spans_processes(x)]
    with uninterrupted():  # past the barrier, the others count on this process's part
        barrier("to_host")
        gathered = _gather([flat[i] for i in spanning])
    for i, x in zip(spanning, gathered, strict=True):
        flat[i] = x.addressable_data(0)
    return jax.device_get(jax.tree.unflatten(treedef, flat))


def take(tree: Any, num: int) -> Any:
    """Leading axis of every leaf cut to ``num`` (e.g. padded runs dropped).

    Unchanged when nothing is cut. Global arrays are cut by one program whose results are
    replicated (the cut run axis no longer divides over the devices); local ones eagerly.
    """
    leaves = jax.tree.leaves(tree)
    if all(x.shape[0] == num for x in leaves):
        return tree
    cut = lambda t: jax.tree.map(lambda x: x[:num], t)  # noqa: E731
    if any(map(spans_processes, leaves)):
        with uninterrupted():
            barrier("take")
            return _gather(tree, cut)
    return cut(tree)


def shard_global(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Places a tree every process holds in full (the same values everywhere) on ``mesh``,
    leading (run) axis split over its ``"run"`` axis, each process filling its own shards.

    The multi-process counterpart of :func:`jaxrl.distributed.shard_runs`: ``device_put``
    accepts only uncommitted inputs there and compares them across processes (an
    all-gather of everything); this trusts the caller, as the runner computes the values
    identically on every process. Typed PRNG keys go through their key data.
    """
    from jaxrl.distributed.mesh import RUN_AXIS

    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(RUN_AXIS))
    return jax.tree.map(lambda x: _place(x, sharding), tree)


def _place(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """``x`` (the full value, on this process) as a global array; this process fills the
    shards on its devices. Typed PRNG keys go through their key data."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _place(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place_like(x: Any, like: jax.Array) -> Any:
    """``x`` (the same full value on every process) placed as ``like`` is (same sharding).

    Lets a host-computed value (e.g. evaluation keys ``[R]``) enter a ``jit`` together with
    global arrays of the same leading size; ``x`` unchanged when ``like`` is local.
    """
    if not spans_processes(like):
        return x
    return jax.tree.map(lambda leaf: _place(leaf, like.sharding), x)


def agreed_time() -> int:
    """Process 0's ``int(time.time())``, the same on every process (e.g. for a default run
    directory name every process must agree on)."""
    now = int(time.time())
    if jax.process_count() == 1:
        return now
    key = f"jaxrl/agreed_time/{next(_VALUE_IDS)}"
    if jax.process_index() == 0:
        _client().key_value_set(key, str(now))
    return int(_client().blocking_key_value_get(key, BARRIER_TIMEOUT_S * 1000))
