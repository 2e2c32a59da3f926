"""The training loop: compile once, run in chunks, stream metrics, summarise.

``lax.scan`` runs ``chunk`` updates inside one jitted, vmapped call; between chunks the
host pulls that chunk's metrics (so device memory does not grow with the run), writes
them, and updates the progress bar. State (including PRNG keys) is carried across
chunks unchanged, so chunking never changes the numbers.

Several processes (:func:`jaxrl.distributed.initialize`): every process runs this same
loop; the run axis is laid over the devices of all of them, each process training its
block of runs. After each chunk the metrics are all-gathered, so every process holds every
run's numbers and returns the same :class:`Result`; process 0 alone writes
``metrics.jsonl``, ``summary.json``, ``curve.png`` and the extra writers, and prints the
progress bar. Every process takes part in each orbax checkpoint (each saves its own
shards), so the run directory must be on a file system all hosts share. A SIGTERM
(preemption notice) to any process makes all of them checkpoint at the next chunk they
agree on and raise :class:`jaxrl.distributed.multihost.Preempted`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import numpy as np

from jaxrl import __version__, distributed
from jaxrl.checkpoint import io as checkpoint_io
from jaxrl.distributed import data_parallel, multihost
from jaxrl.envs.base import Env
from jaxrl.errors import ConfigError
from jaxrl.logger import metrics as metric_utils
from jaxrl.logger import plots, writers
from jaxrl.runner import sweep
from jaxrl.runner.sweep import Runs
from jaxrl.utils import programs

TARGET_CHUNKS = 20


def choose_chunk(num_updates: int, target_chunks: int = TARGET_CHUNKS) -> int:
    """Updates per chunk: a divisor of ``num_updates`` giving close to ``target_chunks`` chunks.

    A divisor keeps one compiled program; when none gives between ``target/4`` and
    ``4 * target`` chunks, the last chunk is shorter (and compiled separately).
    """
    if num_updates < 4:
        return num_updates
    divisors = [d for d in range(1, num_updates + 1) if num_updates % d == 0]
    fitting = [d for d in divisors if target_chunks / 4 <= num_updates / d <= 4 * target_chunks]
    if fitting:
        return min(fitting, key=lambda d: abs(num_updates / d - target_chunks))
    return max(1, num_updates // target_chunks)


@dataclasses.dataclass
class Result:
    """What a finished batch of runs leaves behind."""

    state: Any  # final State, leading run axis [R]
    metrics: dict[str, np.ndarray]  # every metric [R, num_updates]
    summary: dict[str, Any]
    run_dir: Path | None


def train_fn(algo: ModuleType, cfg: Any, env: Env, num_updates: int):
    """``(state[R], hps[R]) -> (state[R], metrics[R, num_updates])``, jitted and vmapped.

    The same function object for equal (hashable) arguments, so that the runs of one
    process (a run, its interrupted twin and its resume; the settings of a sweep) trace,
    lower and compile the program once, in JAX's in-memory caches.
    """
    donate = () if jax.default_backend() == "cpu" else (0,)
    return _train_program(algo, cfg, env, num_updates, donate)


@programs.per_arguments
def _train_program(algo, cfg, env, num_updates: int, donate: tuple[int, ...]):
    fn = jax.vmap(lambda s, h: algo.train(cfg, env, s, h, num_updates))
    return jax.jit(fn, donate_argnums=donate)


def run(
    algo: ModuleType,
    env: Env,
    cfg: Any,
    runs: Runs,
    *,
    env_name: str,
    algo_name: str,
    run_dir: str | Path | None = None,
    quiet: bool = False,
    target_chunks: int = TARGET_CHUNKS,
    devices: Sequence[jax.Device] | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    extra_writers: Sequence[Any] = (),
    evaluator: Any = None,
) -> Result:
    """Trains every run in ``runs`` for ``cfg.num_updates`` updates; returns a :class:`Result`.

    The runs are split over ``devices`` (default: every local device, at most one per
    run; with several processes, every device of every process); a run count that does
    not divide is padded with copies of run 0, whose results are dropped. A data-parallel
    ``cfg`` (``data_shards = D > 1``) on one process with at least ``D`` devices runs on a
    ``("run", "data")`` mesh (:func:`data_parallel.run_data_mesh`): each run's shards on
    ``D`` devices, the runs split over ``len(devices) // D`` such groups; with fewer
    devices (or several processes) the shards are vmapped on each run's device.

    Writes ``metrics.jsonl``, ``summary.json`` and ``curve.png`` into ``run_dir`` if given
    (``config.json`` is the caller's, written before compiling), and a checkpoint of the
    whole batched state every ``checkpoint_every`` chunks (0: never) and at the end
    (:mod:`jaxrl.checkpoint.io`). With ``resume=True`` the run continues from the newest
    checkpoint in ``run_dir``: metric rows written after it are dropped and rewritten, and
    the numbers equal those of an uninterrupted run (same program, same carried state).

    ``extra_writers`` (e.g. :class:`writers.CsvWriter`, ``TensorBoardWriter``,
    ``WandbWriter``) get the same ``write_chunk`` calls as ``metrics.jsonl`` and are closed
    at the end. ``evaluator`` (:class:`jaxrl.runner.evaluate.PeriodicEval`) evaluates every
    run when ``evaluator.due(chunks_done, last)``.
    """
    sweep.check_runs(algo, cfg, runs)  # a clear ConfigError before anything compiles
    num_updates = cfg.num_updates
    chunk = choose_chunk(num_updates, target_chunks)
    steps_per_update = cfg.steps_per_update
    num_runs = len(runs)

    t0 = time.perf_counter()
    multi = jax.process_count() > 1
    primary = jax.process_index() == 0
    if devices is None:
        devices = multihost.global_devices() if multi else jax.local_devices()
    # One process drops devices beyond one per run; several keep them all, as every
    # process must own a part of the mesh it runs.
    data_shards = data_parallel.shards(cfg)
    on_data_mesh = data_shards > 1 and not multi and len(devices) >= data_shards
    if on_data_mesh:  # each run's shards on devices of their own
        mesh = data_parallel.run_data_mesh(data_shards, devices, num_runs)
        devices = list(mesh.devices.reshape(-1))
        groups = mesh.shape[distributed.RUN_AXIS]
    else:  # shards, if any, vmapped on each run's device
        devices = list(devices) if multi else list(devices)[:num_runs]
        mesh = distributed.run_mesh(devices)
        groups = len(devices)
    quiet = quiet or not primary
    keys, hps = distributed.pad_runs((runs.keys, runs.hps), groups)
    state = sweep.init_runs(algo, cfg, env, keys, hps)
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume and run_dir is None:
        raise ConfigError("resume needs the run directory to resume from")
    if run_dir is not None:
        if not resume:
            for name in ("metrics.jsonl", "checkpoints"):
                if (run_dir / name).exists():
                    raise ConfigError(
                        f"run directory {run_dir} already holds a run ({name}); "
                        "resume it or choose another directory"
                    )
        multihost.barrier("jaxrl-run-dir-checked")  # every process checked before any writes
        if primary:
            run_dir.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(algo_name, env_name, cfg, runs)
    done_updates, history = 0, {}
    if resume:
        template = _first(state, num_runs)
        with multihost.uninterrupted():  # every process restores (orbax syncs them)
            multihost.barrier("restore")
            restored, done_updates, _ = checkpoint_io.restore(run_dir, template, manifest)
        state = distributed.pad_runs(restored, groups)
        rows = _read_metrics(run_dir / "metrics.jsonl", done_updates)
        history = _history(rows, done_updates, runs)
        eval_path = getattr(evaluator, "path", None)
        eval_rows = None
        if eval_path is not None and Path(eval_path).exists():  # drop evaluations past it too
            eval_rows = [r for r in writers.read_jsonl(eval_path) if r["update"] <= done_updates]
        multihost.barrier("jaxrl-resume-read")  # every process read before process 0 rewrites
        if primary:
            _write_rows(run_dir / "metrics.jsonl", rows)
            if eval_rows is not None:
                _write_rows(Path(eval_path), eval_rows)
    if on_data_mesh:
        state = data_parallel.place(state, algo.DATA_SHARDED, mesh, run_axis=True)
        hps = data_parallel.place(hps, (), mesh, run_axis=True)
    elif multi:  # every process computed the same full state: each places its own shards
        state, hps = multihost.shard_global((state, hps), mesh)
    else:
        state, hps = distributed.shard_runs((state, hps), mesh)
    sizes = {chunk} | ({num_updates % chunk} if num_updates % chunk else set())
    # Traced under the mesh: with data shards on devices, shard_map splits them over "data".
    with jax.set_mesh(mesh) if on_data_mesh else contextlib.nullcontext():
        compiled = {n: train_fn(algo, cfg, env, n).lower(state, hps).compile() for n in sizes}
    jax.block_until_ready(state)
    compile_seconds = time.perf_counter() - t0

    writer = writers.JsonlWriter(run_dir / "metrics.jsonl") if run_dir and primary else None
    all_writers = ([writer] if writer else []) + (list(extra_writers) if primary else [])
    bar = _progress(num_updates * steps_per_update * num_runs, quiet, f"{algo_name} {env_name}")
    if bar is not None and done_updates:
        bar.update(done_updates * steps_per_update * num_runs)
    chunks_done, first_update = 0, done_updates  # first_update > 0: resumed there
    t1 = time.perf_counter()
    while done_updates < num_updates:
        size = min(chunk, num_updates - done_updates)
        state, metrics = compiled[size](state, hps)
        metrics = multihost.to_host(metrics)  # the host sync (all-gather): one per chunk
        metrics = {name: value[:num_runs] for name, value in metrics.items()}
        for w in all_writers:
            w.write_chunk(
                metrics,
                first_update=done_updates,
                steps_per_update=steps_per_update,
                run_labels=runs.labels,
            )
        for name, value in metrics.items():
            history.setdefault(name, []).append(np.asarray(value))
        done_updates += size
        chunks_done += 1
        last = done_updates == num_updates
        if evaluator is not None and evaluator.due(chunks_done, last):
            evaluator(
                state, hps, update=done_updates, steps_per_update=steps_per_update,
                run_labels=runs.labels,
            )  # fmt: skip
        preempted = multi and multihost.preempted(chunks_done)  # SIGTERM on some process
        due = checkpoint_every and (last or chunks_done % checkpoint_every == 0)
        if run_dir and (due or preempted):
            with multihost.uninterrupted():  # all processes save, or none
                multihost.barrier("checkpoint")  # a process stopped before: the others stop
                checkpoint_io.save(run_dir, done_updates, multihost.take(state, num_runs), manifest)
        if preempted and not last:
            if bar is not None:
                bar.close()
            saved = f"checkpoint at update {done_updates} saved; " if run_dir else ""
            raise multihost.Preempted(f"preempted (SIGTERM): {saved}continue with --resume")
        if bar is not None:
            latest = metric_utils.forward_fill(np.concatenate(history["episode/return"], 1))
            with np.errstate(all="ignore"):
                ret = float(np.nanmean(latest[:, -1])) if np.isfinite(latest[:, -1]).any() else None
            bar.set_postfix_str(f"return={ret:.1f}" if ret is not None else "return=n/a")
            bar.update(size * steps_per_update * num_runs)
    jax.block_until_ready(state)
    run_seconds = time.perf_counter() - t1
    if bar is not None:
        bar.close()
    if primary:
        for w in extra_writers:
            w.close()

    history_arr = {name: np.concatenate(parts, axis=1) for name, parts in history.items()}
    final = metric_utils.final_return(history_arr["episode/return"], history_arr["episode/count"])
    env_steps = num_updates * steps_per_update
    # The speed of this process's own work: a resumed run's steps before the checkpoint were
    # timed by the run that took them (and a resume of a finished run takes none: None).
    steps_here = (num_updates - first_update) * steps_per_update * num_runs
    summary = {
        "algo": algo_name,
        "env": env_name,
        "num_runs": num_runs,
        "devices": [str(d) for d in devices],
        "num_processes": jax.process_count(),
        "runs": runs.labels,
        "env_steps_per_run": env_steps,
        "env_steps_total": env_steps * num_runs,
        "steps_per_second": steps_here / run_seconds if steps_here else None,
        "compile_seconds": compile_seconds,
        "run_seconds": run_seconds,
        "resumed_at_update": first_update,
        "final_return": {
            "per_run": final,
            "mean": float(np.nanmean(final)) if np.isfinite(final).any() else None,
            "std": float(np.nanstd(final)) if np.isfinite(final).any() else None,
        },
    }
    if run_dir and primary:
        writers.write_json(run_dir / "summary.json", summary)
        steps = np.arange(1, num_updates + 1) * steps_per_update
        returns = metric_utils.forward_fill(history_arr["episode/return"])
        plots.learning_curve(run_dir / "curve.png", steps, returns, f"{algo_name} on {env_name}")
    state = multihost.take(state, num_runs)
    return Result(state, history_arr, summary, run_dir)


@functools.partial(jax.jit, static_argnums=1)
def _first(tree: Any, num: int) -> Any:
    """The first ``num`` runs of every leaf (one program, not one per leaf shape)."""
    return jax.tree.map(lambda x: x[:num], tree)


def check_fresh_run_dir(run_dir: str | Path) -> None:
    """Raises ``ConfigError`` if ``run_dir`` already holds a run (its metrics would mix)."""
    run_dir = Path(run_dir)
    taken = [n for n in ("config.json", "metrics.jsonl", "checkpoints") if (run_dir / n).exists()]
    if taken:
        raise ConfigError(
            f"run directory {run_dir} already holds a run ({', '.join(taken)}); "
            "continue it with --resume, or choose another --run-dir"
        )


def _manifest(algo_name: str, env_name: str, cfg: Any, runs: Runs) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that resumes it (JSON-normalised)."""
    hparams = {k: np.asarray(v).tolist() for k, v in vars(runs.hps).items()}
    manifest = {
        "jaxrl_version": __version__,
        "algo": algo_name,
        "env": env_name,
        "config": dataclasses.asdict(cfg),
        "hparams": hparams,
        "num_runs": len(runs),
    }
    return json.loads(json.dumps(writers.to_jsonable(manifest)))


def _read_metrics(path: Path, done_updates: int) -> list[dict[str, Any]]:
    """The metric rows of updates ``<= done_updates`` in ``path`` (none if it is missing)."""
    rows = writers.read_jsonl(path) if path.exists() else []
    return [r for r in rows if r["update"] <= done_updates]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrites a JSONL file with ``rows``, atomically."""
    writers.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _history(rows: list[dict[str, Any]], done_updates: int, runs: Runs) -> dict[str, list]:
    """Metric rows as the loop's history: ``{name: [array [R, done_updates]]}``."""
    if not rows:
        return {}
    skip = {"update", "env_steps", *runs.labels[0]}
    names = [n for n in rows[0] if n not in skip]
    arrays = {n: np.full((len(runs), done_updates), np.nan, np.float32) for n in names}
    for r in rows:
        for n in names:
            value = r[n]
            arrays[n][r["run"], r["update"] - 1] = np.nan if value is None else value
    return {n: [a] for n, a in arrays.items()}


def _progress(total: int, quiet: bool, desc: str):
    if quiet:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", unit_scale=True, desc=desc, dynamic_ncols=True)
