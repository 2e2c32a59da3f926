"""Run axes: the ``(keys, hps)`` pairs of a batch of runs, built from seeds and grids.

A batch of ``R`` runs is one leading axis on the PRNG keys and on every HParams leaf;
the loop vmaps over it, so a grid of seeds x hyperparameters is one compiled program.
Seed ``s`` always gets the key ``fold_in(key(0), s)``, whatever else is in the batch, so
a run is reproducible alone or inside any sweep.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxrl.errors import ConfigError
from jaxrl.utils import programs


@dataclasses.dataclass(frozen=True)
class Runs:
    """A batch of ``R`` runs; ``len(runs)`` is ``R``. (A dataclass, not a NamedTuple: a
    tuple whose ``len`` is not its field count breaks ``_replace``; use
    ``dataclasses.replace``.)"""

    keys: jax.Array  # [R] PRNG keys
    hps: Any  # HParams, every leaf [R]
    labels: list[dict[str, Any]]  # per run: {"run": i, "seed": s, **grid values}

    def __len__(self) -> int:
        return len(self.labels)


def seed_key(seed: int) -> jax.Array:
    """The PRNG key of seed ``seed``: ``fold_in(key(0), seed)``."""
    return jax.random.fold_in(jax.random.key(0), seed)


def grid(hp: Any, seeds: Sequence[int], **values: Sequence[float]) -> Runs:
    """Every combination of ``values`` (hyperparameter name -> list) for every seed.

    Example: ``grid(hp, range(8), learning_rate=[1e-4, 3e-4])`` gives 16 runs. Raises
    ConfigError for no seeds, an empty value list or a name that is not a field of ``hp``.
    """
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("grid needs at least one seed")
    valid = [f.name for f in dataclasses.fields(hp)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"unknown hyperparameter(s) {unknown}; valid: {', '.join(valid)}")
    empty = [name for name, v in values.items() if not len(v)]
    if empty:
        raise ConfigError(f"no values given for {empty}")
    names = list(values)
    labels, keys, leaves = [], [], {name: [] for name in names}
    for combo in itertools.product(*(values[n] for n in names)):
        for seed in seeds:
            labels.append(
                {"run": len(labels), "seed": int(seed), **dict(zip(names, combo, strict=True))}
            )
            keys.append(seed_key(int(seed)))
            for name, v in zip(names, combo, strict=True):
                leaves[name].append(v)
    num = len(labels)
    overrides = {name: jnp.asarray(leaves[name], jnp.float32) for name in names}
    hps = jax.tree.map(lambda x: jnp.broadcast_to(x, (num, *jnp.shape(x))), hp)
    hps = hps.replace(**overrides)
    return Runs(jnp.stack(keys), hps, labels)


def check_runs(algo: Any, cfg: Any, runs: Runs) -> None:
    """Raises ConfigError unless ``runs`` is a batch ``algo`` can train: at least one run,
    the keys and every hyperparameter with one leading entry per run, and every value in
    range (``algo.check``)."""
    num = len(runs)
    if num == 0:
        raise ConfigError("no runs to train (give at least one seed)")
    leading = {"keys": jnp.shape(runs.keys)[:1]}
    leading |= {
        f.name: jnp.shape(getattr(runs.hps, f.name))[:1] for f in dataclasses.fields(runs.hps)
    }
    wrong = {name: lead for name, lead in leading.items() if lead != (num,)}
    if wrong:
        raise ConfigError(
            f"{num} runs, but these lack a leading axis of {num}: "
            + ", ".join(f"{name} {lead or '(scalar)'}" for name, lead in wrong.items())
        )
    algo.check(cfg, runs.hps)


def init_runs(algo: Any, cfg: Any, env: Any, keys: jax.Array, hps: Any) -> Any:
    """The initial State of every run: ``algo.init`` mapped over the run axis, jitted.

    ``keys``: [R] PRNG keys; ``hps``: HParams with leaves [R]. Returns State with leaves [R].
    Uses ``lax.map`` rather than ``vmap``: init runs once, and a user's network built with
    flax's orthogonal initialiser would, vmapped, become a batched QR that can stall XLA's
    CPU backend (jaxrl's own use :func:`jaxrl.networks.init.orthogonal`; docs/design.md).
    One program per ``(algo, cfg, env)`` in a process (:func:`jaxrl.utils.programs.per_arguments`).
    """
    return _init_program(algo, cfg, env)(keys, hps)


@programs.per_arguments
def _init_program(algo: Any, cfg: Any, env: Any):
    one = lambda key_hp: algo.init(cfg, env, *key_hp)  # noqa: E731
    return jax.jit(lambda k, h: jax.lax.map(one, (k, h)))
