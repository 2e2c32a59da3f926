"""Checkpoints of a batch of runs: the full train state with orbax, plus a JSON manifest.

A checkpoint is ``RUN_DIR/checkpoints/<update>/`` written by an orbax
``CheckpointManager``: ``state`` holds every array of the batched ``State`` (parameters,
optimiser state, PRNG keys as raw key data, env state, normaliser statistics, replay
buffers, counters; leading run axis ``[R]``) and ``manifest`` is a JSON object (format
tag, jaxrl version, algorithm, env, config, hyperparameters, update count). orbax writes
into a temporary directory and renames it when complete, so a process killed while
writing leaves the previous checkpoint intact; the two newest are kept.

:func:`restore` checks the manifest against what the caller is about to run, then the
arrays against a template ``State`` of the right shapes; every mismatch, a missing
directory or a corrupt file is a :class:`~jaxrl.errors.ConfigError` naming the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxrl.errors import ConfigError

FORMAT = "jaxrl.checkpoint/1"
SUBDIR = "checkpoints"
KEEP = 2
# Manifest fields that must agree between a checkpoint and the run that resumes it.
MUST_MATCH = ("format", "algo", "env", "config", "hparams", "num_runs")


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_arrays(tree: Any) -> Any:
    """Typed PRNG keys become their raw ``uint32`` key data (orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _from_arrays(tree: Any, template: Any) -> Any:
    """Inverse of :func:`_to_arrays`, taking the key type from ``template``."""

    def back(x, t):
        return jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x

    return jax.tree.map(back, tree, template)


def _with_weak_types(tree: Any, template: Any) -> Any:
    """``tree`` given the weak types of ``template``'s leaves (values and shardings kept).

    The files keep each array's dtype but not JAX's weak-type flag, which leaves made from
    Python scalars carry (e.g. gymnax's env parameters). A leaf that lost it is an input of
    another type: the resumed run's program, and so its compilation-cache key, would differ
    from the uninterrupted run's, and it would compile again. ``.at[...].set`` writes the
    restored values into zeros of the template's type: a scatter keeps its operand's type.
    """
    leaves, treedef = jax.tree.flatten(tree)
    template_leaves = jax.tree.leaves(template)
    weak = [i for i, t in enumerate(template_leaves) if getattr(t, "weak_type", False)]
    if not weak:
        return tree
    like = jax.jit(
        lambda ts, xs: [jnp.zeros_like(t).at[...].set(x) for t, x in zip(ts, xs, strict=True)],
        out_shardings=[leaves[i].sharding for i in weak],
    )
    fixed = like([template_leaves[i] for i in weak], [leaves[i] for i in weak])
    for i, x in zip(weak, fixed, strict=True):
        leaves[i] = x
    return jax.tree.unflatten(treedef, leaves)


class _Manager(ocp.CheckpointManager):
    """orbax's manager, minus its own queries of JAX's preemption sync point.

    orbax asks ``reached_preemption_sync_point(step)`` at every save (to log), with update
    counts as step ids; JAX's protocol needs one caller with consecutive ids, and that is
    the runner (:func:`jaxrl.distributed.multihost.preempted`), which decides when to save.
    """

    def reached_preemption(self, step: int) -> bool:
        return False


def _manager(run_dir: str | Path) -> ocp.CheckpointManager:
    """The run's manager. With several processes every one of them saves its own shards,
    and orbax's barriers go through the coordination service (``active_processes`` set to
    all of them), not through device collectives that a stopped process would hang."""
    path = Path(run_dir).absolute() / SUBDIR
    if jax.process_count() == 1:
        options = ocp.CheckpointManagerOptions(max_to_keep=KEEP, create=True)
    else:
        path.mkdir(parents=True, exist_ok=True)  # orbax's create= needs a device barrier
        every = ocp.options.MultiprocessingOptions(active_processes=set(range(jax.process_count())))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=KEEP, create=False, multiprocessing_options=every
        )
    return _Manager(path, options=options, item_names=("state", "manifest"))


def save(run_dir: str | Path, step: int, state: Any, manifest: dict[str, Any]) -> None:
    """Writes checkpoint ``step`` (updates done) of ``state`` and ``manifest``; blocks until
    it is complete on disk."""
    manifest = {"format": FORMAT, **manifest, "step": int(step)}
    with _manager(run_dir) as mgr:
        mgr.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_arrays(state)),
                manifest=ocp.args.JsonSave(manifest),
            ),
        )
        mgr.wait_until_finished()


def latest_step(run_dir: str | Path) -> int | None:
    """The newest complete checkpoint's update count, or ``None`` if there is none."""
    if not (Path(run_dir) / SUBDIR).is_dir():
        return None
    with _manager(run_dir) as mgr:
        return mgr.latest_step()


def _check_manifest(saved: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ConfigError(f"{where} is not a jaxrl checkpoint of format {FORMAT}")
    for name in MUST_MATCH:
        if name in expected and saved.get(name) != expected[name]:
            raise ConfigError(
                f"{where} was written for a different run: {name} is {saved.get(name)!r}, "
                f"this run has {expected[name]!r}"
            )


def restore(
    run_dir: str | Path, template: Any, expected: dict[str, Any]
) -> tuple[Any, int, dict[str, Any]]:
    """Loads the newest checkpoint of ``run_dir``.

    Args:
        run_dir: the run directory (its ``checkpoints/`` subdirectory is read).
        template: a ``State`` with the shapes and dtypes of the runs (e.g. a fresh init).
        expected: manifest fields of the run about to continue; those in ``MUST_MATCH``
            must equal the checkpoint's.

    Returns:
        ``(state, step, manifest)``; ``state``'s leaves have the template's shapes, dtypes,
        weak types and shardings (committed to them), so placed as the template would be,
        they lower to the template's program.

    Raises:
        ConfigError: no checkpoint, a manifest for another run, arrays of other shapes or
            structure, or unreadable files.
    """
    step = latest_step(run_dir)
    where = f"checkpoint {Path(run_dir) / SUBDIR}/{step}"
    if step is None:
        raise ConfigError(
            f"no checkpoint in {Path(run_dir) / SUBDIR} (the run saved none: it stopped "
            "before its first, or ran with --checkpoint-every 0)"
        )
    with _manager(run_dir) as mgr:
        try:
            manifest = mgr.restore(step, args=ocp.args.Composite(manifest=ocp.args.JsonRestore()))[
                "manifest"
            ]
        except Exception as err:  # orbax raises many types for unreadable files
            raise ConfigError(f"{where} has an unreadable manifest: {err}") from None
        _check_manifest(manifest, {"format": FORMAT, **expected}, where)
        target = _to_arrays(template)
        try:
            arrays = mgr.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )["state"]
        except Exception as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise ConfigError(f"{where} does not fit this run (corrupt or incompatible): "
                              f"{first_line}") from None  # fmt: skip
    return _with_weak_types(_from_arrays(arrays, template), template), step, manifest
