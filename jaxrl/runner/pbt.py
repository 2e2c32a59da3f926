"""Population-based training (Jaderberg et al. 2017, arXiv:1711.09846) inside one program.

A population of ``P`` members is one leading axis ``[P]`` on every leaf of the algorithm's
``State`` and ``HParams`` (the run axis of :mod:`jaxrl.runner.sweep`). One PBT round is

1. **train**: ``updates_per_round`` updates of every member (``vmap`` of ``algo.train``);
2. **score**: each member's score is an exponential moving average of its ``"episode/return"``
   metric over updates (updates in which no episode finished leave it unchanged);
3. **exploit**: the bottom ``fraction`` of members by score each copy the learner state and the
   hyperparameters of a member drawn uniformly from the top ``fraction``;
4. **explore**: the copied hyperparameters named in ``names`` are multiplied by a factor drawn
   uniformly from ``factors`` (default 0.8 or 1.25), or, with probability ``resample_prob``,
   resampled log-uniformly from ``resample_ranges``; then clipped to ``algo.HPARAM_RANGES``.

The rounds are one ``lax.scan``, so a whole PBT run (every round, every member, the exploit
gather and the explore noise) is one compiled program: no scheduler, no checkpoints on disk,
no host round-trips. Hyperparameters are traced (``HParams`` leaves), so changing them never
recompiles.

**What a replaced member copies.** Every ``State`` field except those named in
``PBTConfig.keep`` (default :data:`KEEP`: ``env_state``, ``obs``, ``env_params``, ``key`` and,
for recurrent agents, ``carry`` and ``reset``; names the ``State`` lacks are ignored). So the
network parameters, the optimiser state (Adam moments and step count), counters, adaptive
coefficients and replay buffers come from the donor, as in the paper and in Ray Tune, which
restore the donor's whole checkpoint. The member keeps its own environments and its own PRNG
key: copying the key would make recipient and donor draw the same actions and minibatches
forever (two copies of one run, until the perturbed hyperparameters pull them apart), and
copying the environments would make them replay the same episodes; keeping both keeps the
population's experience diverse at no cost. Normaliser statistics (every
:class:`~jaxrl.envs.wrappers.RunningStats` inside a kept field, e.g. ``normalize_obs`` and
``scale_reward`` statistics in ``env_state``) are the exception: they are part of the
policy's input, so they are copied with the network. Keeping them made copied networks see
differently normalised observations (PPO on Pendulum-v1: members collapsed to about -1000;
``experiments/pbt/RESULTS.md``).

Modules never call ``jit``: wrap :func:`pbt_step` or :func:`train_pbt` in ``jax.jit`` with
``algo``, ``cfg``, ``env`` and ``pbt`` closed over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.algorithms import base
from jaxrl.envs.wrappers import RunningStats
from jaxrl.errors import ConfigError

KEEP = ("env_state", "obs", "env_params", "key", "carry", "reset")


@dataclasses.dataclass(frozen=True)
class PBTConfig:
    """Static PBT settings (hashable; decide the program's structure).

    Attributes:
      names: hyperparameters that explore perturbs (``HParams`` field names).
      updates_per_round: algorithm updates of every member between two exploit steps.
      fraction: share of the population in the bottom (replaced) and the top (donor) group;
        ``round(fraction * P)`` members each, at least one if ``fraction > 0``. ``0`` turns
        exploit (and so explore) off: the population then trains independently.
      factors: explore multiplies a copied hyperparameter by one of these, drawn uniformly.
      resample_prob: probability that explore instead resamples a hyperparameter
        log-uniformly from ``resample_ranges``.
      resample_ranges: ``((name, low, high), ...)`` with ``0 < low <= high``; needed for every
        name in ``names`` when ``resample_prob > 0``.
      score_decay: EMA coefficient ``d`` of the score: ``s <- d s + (1 - d) r`` per update.
      keep: ``State`` fields a replaced member keeps from itself (see the module docstring).
    """

    names: tuple[str, ...]
    updates_per_round: int
    fraction: float = 0.25
    factors: tuple[float, ...] = (0.8, 1.25)
    resample_prob: float = 0.0
    resample_ranges: tuple[tuple[str, float, float], ...] = ()
    score_decay: float = 0.9
    keep: tuple[str, ...] = KEEP

    def __post_init__(self):
        base.check_positive_ints(self, ("updates_per_round",))
        if not 0.0 <= self.fraction <= 0.5:
            raise ConfigError(f"fraction must lie in [0, 0.5], got {self.fraction}")
        if not self.factors or any(f <= 0 for f in self.factors):
            raise ConfigError(f"factors must be positive numbers, got {self.factors}")
        if not 0.0 <= self.resample_prob <= 1.0:
            raise ConfigError(f"resample_prob must lie in [0, 1], got {self.resample_prob}")
        if not 0.0 <= self.score_decay < 1.0:
            raise ConfigError(f"score_decay must lie in [0, 1), got {self.score_decay}")
        ranges = {name: (low, high) for name, low, high in self.resample_ranges}
        for name, (low, high) in ranges.items():
            if not 0 < low <= high:
                raise ConfigError(f"resample range of {name} must satisfy 0 < low <= high")
        if self.resample_prob > 0 and set(self.names) - set(ranges):
            missing = sorted(set(self.names) - set(ranges))
            raise ConfigError(f"resample_prob > 0 needs resample_ranges for {missing}")

    def num_exploited(self, population: int) -> int:
        """Size of the bottom (and of the top) group for a population of ``population``."""
        if self.fraction == 0:
            return 0
        return max(1, min(population // 2, round(self.fraction * population)))


class PBTState(struct.PyTreeNode):
    """The whole population between rounds.

    Attributes:
      state: the algorithm's ``State``, every leaf ``[P, ...]``.
      hps: the algorithm's ``HParams``, every leaf ``[P]``.
      score: ``[P]`` float32 EMA of ``"episode/return"``; NaN until a member finishes an episode.
      key: PBT's own PRNG key (exploit and explore draws), separate from the members' keys.
      round: int32 scalar, rounds done.
      num_copies: ``[P]`` int32, how many times each member was replaced by a donor.
    """

    state: Any
    hps: Any
    score: jax.Array
    key: jax.Array
    round: jax.Array
    num_copies: jax.Array


def check(algo: ModuleType, pbt: PBTConfig, hps: Any) -> None:
    """Raises ``ConfigError`` for names the algorithm's ``HParams`` lacks (before tracing)."""
    fields = {f.name for f in dataclasses.fields(hps)}
    unknown = set(pbt.names) - fields
    if unknown:
        raise ConfigError(
            f"unknown hyperparameter(s) {sorted(unknown)} to explore; valid: "
            f"{', '.join(sorted(fields))}"
        )
    ranges = getattr(algo, "HPARAM_RANGES", {})
    if missing := sorted(set(pbt.names) - set(ranges)):
        raise ConfigError(f"{algo.__name__}.HPARAM_RANGES has no range for {missing}")


def init(
    algo: ModuleType, cfg: Any, env: Any, keys: jax.Array, hps: Any, key: jax.Array
) -> PBTState:
    """The initial population: ``algo.init`` for every ``(keys[i], hps[i])``.

    Args:
      keys: ``[P]`` PRNG keys, one per member.
      hps: ``HParams`` with leaves ``[P]`` (scalar leaves are broadcast to ``[P]``).
      key: PBT's own PRNG key.

    Returns:
      A :class:`PBTState` with scores NaN and counters zero. Members are initialised with
      ``lax.map``, not ``vmap``: a user's network built with flax's orthogonal initialiser
      would become a batched QR that can stall XLA's CPU backend (jaxrl's own networks use
      :func:`jaxrl.networks.init.orthogonal`, safe either way; ``docs/design.md``).
    """
    num = keys.shape[0]
    hps = jax.tree.map(lambda x: jnp.broadcast_to(x, (num,)), hps)
    state = jax.lax.map(lambda kh: algo.init(cfg, env, *kh), (keys, hps))
    return from_population(state, hps, key)


def from_population(state: Any, hps: Any, key: jax.Array) -> PBTState:
    """Wraps an existing population (``State`` and ``HParams``, leaves ``[P, ...]``) for PBT.

    Scores start NaN and counters at zero, as after :func:`init`.
    """
    num = jax.tree.leaves(hps)[0].shape[0]
    return PBTState(
        state=state,
        hps=hps,
        score=jnp.full((num,), jnp.nan, jnp.float32),
        key=key,
        round=jnp.zeros((), jnp.int32),
        num_copies=jnp.zeros((num,), jnp.int32),
    )


def update_score(score: jax.Array, returns: jax.Array, decay: float | jax.Array) -> jax.Array:
    """NaN-safe EMA of per-update returns.

    Args:
      score: ``[P]`` current scores (NaN: no episode seen yet).
      returns: ``[P, N]`` per-update mean episode return, NaN where no episode finished.
      decay: EMA coefficient ``d``; per update ``s <- d s + (1 - d) r``; the first finite ``r``
        sets ``s = r``; a NaN ``r`` leaves ``s`` unchanged.

    Returns:
      ``[P]`` scores after the ``N`` updates.
    """

    def step(s, r):
        ema = jnp.where(jnp.isnan(s), r, decay * s + (1 - decay) * r)
        return jnp.where(jnp.isnan(r), s, ema), None

    score, _ = jax.lax.scan(step, score, jnp.swapaxes(returns, 0, 1))
    return score


def exploit(
    state: Any,
    hps: Any,
    score: jax.Array,
    key: jax.Array,
    num_exploited: int,
    keep: Sequence[str] = KEEP,
) -> tuple[Any, Any, jax.Array]:
    """Bottom members copy the state (less ``keep``) and hyperparameters of top members.

    Members are ranked by ``score`` (NaN ranks lowest; ties keep index order). Each of the
    ``num_exploited`` lowest members copies a donor drawn uniformly, with replacement, from the
    ``num_exploited`` highest.

    Args:
      state: algorithm ``State``, leaves ``[P, ...]``.
      hps: ``HParams``, leaves ``[P]``.
      score: ``[P]``.
      key: PRNG key for the donor draw.
      num_exploited: static size of each group, ``0 <= num_exploited <= P // 2``.
      keep: ``State`` fields every member keeps from itself.

    Returns:
      ``(state, hps, source)``: ``source[i]`` (``[P]`` int32) is the member ``i`` copied from,
      ``i`` itself if it was not replaced. Members not replaced are returned bit for bit.
    """
    num = score.shape[0]
    own = jnp.arange(num, dtype=jnp.int32)
    if num_exploited == 0:
        return state, hps, own
    order = jnp.argsort(jnp.where(jnp.isnan(score), -jnp.inf, score), stable=True)
    bottom, top = order[:num_exploited], order[num - num_exploited :]
    donors = top[jax.random.randint(key, (num_exploited,), 0, num_exploited)]
    source = own.at[bottom].set(donors.astype(jnp.int32))
    copied = source != own

    def take(x):
        mask = copied.reshape((num,) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x[source], x)

    def take_stats(tree):  # a kept field's normaliser statistics still follow the network
        is_stats = lambda x: isinstance(x, RunningStats)  # noqa: E731
        return jax.tree.map(
            lambda x: jax.tree.map(take, x) if is_stats(x) else x, tree, is_leaf=is_stats
        )

    kept = {f.name for f in dataclasses.fields(state)} & set(keep)
    changes = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        changes[f.name] = take_stats(value) if f.name in kept else jax.tree.map(take, value)
    return state.replace(**changes), jax.tree.map(take, hps), source


def explore(
    hps: Any,
    copied: jax.Array,
    key: jax.Array,
    names: Sequence[str],
    ranges: Mapping[str, tuple[float, float]],
    factors: Sequence[float] = (0.8, 1.25),
    resample_prob: float = 0.0,
    resample_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> Any:
    """Perturbs the named hyperparameters of the copied members.

    For each copied member and each name independently: ``h <- h · f`` with ``f`` drawn
    uniformly from ``factors``, or with probability ``resample_prob``
    ``h <- exp(U(log low, log high))`` from ``resample_ranges``; then ``h`` is clipped to
    ``ranges[name]``. Members with ``copied`` false and names not listed are unchanged.

    Args:
      hps: ``HParams``, leaves ``[P]``.
      copied: ``[P]`` bool, members replaced by :func:`exploit` this round.
      key: PRNG key.
      names: hyperparameters to perturb.
      ranges: valid closed range per name (the algorithm's ``HPARAM_RANGES``).

    Returns:
      ``HParams`` with leaves ``[P]``.
    """
    num = copied.shape[0]
    table = jnp.asarray(factors, jnp.float32)
    changes = {}
    for name, key_name in zip(names, jax.random.split(key, len(names)), strict=True):
        key_factor, key_coin, key_sample = jax.random.split(key_name, 3)
        value = getattr(hps, name)
        new = value * table[jax.random.randint(key_factor, (num,), 0, len(factors))]
        if resample_prob > 0:
            low, high = resample_ranges[name]
            log_u = jax.random.uniform(
                key_sample, (num,), minval=jnp.log(low), maxval=jnp.log(high)
            )
            coin = jax.random.bernoulli(key_coin, resample_prob, (num,))
            new = jnp.where(coin, jnp.exp(log_u), new)
        low, high = ranges[name]
        new = jnp.clip(new, low, high).astype(value.dtype)
        changes[name] = jnp.where(copied, new, value)
    return hps.replace(**changes)


def pbt_step(
    algo: ModuleType, cfg: Any, env: Any, pbt: PBTConfig, pop: PBTState
) -> tuple[PBTState, dict[str, Any]]:
    """One PBT round: train every member, score, exploit, explore.

    Args:
      algo: an algorithm module following the contract of :mod:`jaxrl.algorithms.base`.
      pop: the population, leaves ``[P, ...]``.

    Returns:
      ``(pop, info)``. ``info`` describes the round (leading axis ``[P]``):
      ``"score"`` the EMA score after training (the ranking used), ``"return"`` the mean
      episode return of the round (NaN if no episode finished), ``"hps"`` the ``HParams`` the
      round trained with, ``"source"`` the member each copied from (itself if not replaced),
      and ``"episode/return"``, ``"episode/count"`` per update ``[P, updates_per_round]``.
    """
    train = jax.vmap(lambda s, h: algo.train(cfg, env, s, h, pbt.updates_per_round))
    state, metrics = train(pop.state, pop.hps)
    returns, counts = metrics["episode/return"], metrics["episode/count"]
    score = update_score(pop.score, returns, pbt.score_decay)
    round_return = jax.vmap(base.nan_mean)(jnp.nan_to_num(returns), counts)

    key, key_exploit, key_explore = jax.random.split(pop.key, 3)
    num_exploited = pbt.num_exploited(score.shape[0])
    new_state, new_hps, source = exploit(
        state, pop.hps, score, key_exploit, num_exploited, pbt.keep
    )
    copied = source != jnp.arange(score.shape[0], dtype=source.dtype)
    if num_exploited:
        new_hps = explore(
            new_hps,
            copied,
            key_explore,
            pbt.names,
            algo.HPARAM_RANGES,
            pbt.factors,
            pbt.resample_prob,
            {name: (low, high) for name, low, high in pbt.resample_ranges},
        )
    info = {
        "score": score,
        "return": round_return,
        "hps": pop.hps,
        "source": source,
        "episode/return": returns,
        "episode/count": counts,
    }
    pop = PBTState(
        state=new_state,
        hps=new_hps,
        score=score[source],  # a replaced member inherits its donor's score
        key=key,
        round=pop.round + 1,
        num_copies=pop.num_copies + copied.astype(jnp.int32),
    )
    return pop, info


def run(
    algo: ModuleType, cfg: Any, env: Any, pbt: PBTConfig, pop: PBTState, num_rounds: int
) -> tuple[PBTState, dict[str, Any]]:
    """``num_rounds`` PBT rounds as one ``lax.scan``; ``info`` stacked ``[num_rounds, P, ...]``."""
    return jax.lax.scan(lambda p, _: pbt_step(algo, cfg, env, pbt, p), pop, None, num_rounds)


def train_pbt(
    algo: ModuleType,
    cfg: Any,
    env: Any,
    keys: jax.Array,
    hps: Any,
    num_rounds: int,
    updates_per_round: int,
    names: Sequence[str],
    *,
    key: jax.Array | None = None,
    **options: Any,
) -> tuple[PBTState, dict[str, Any]]:
    """Initialises a population and runs ``num_rounds`` PBT rounds: one program under ``jit``.

    Args:
      algo: an algorithm module (``init``, ``train``, ``HParams``, ``HPARAM_RANGES``).
      keys: ``[P]`` member PRNG keys (e.g. ``sweep.grid(...).keys``).
      hps: ``HParams`` with leaves ``[P]``: the starting hyperparameters.
      num_rounds: rounds; each member trains ``num_rounds * updates_per_round`` updates.
      updates_per_round: updates between two exploit/explore steps.
      names: hyperparameters explore perturbs.
      key: PBT's own PRNG key (default ``jax.random.key(0)``).
      options: other :class:`PBTConfig` fields (``fraction``, ``factors``, ``resample_prob``,
        ``resample_ranges``, ``score_decay``, ``keep``).

    Returns:
      ``(pop, history)``: the final :class:`PBTState` and the per-round ``info`` of
      :func:`pbt_step`, stacked: ``history["score"]`` ``[num_rounds, P]``,
      ``history["hps"]`` ``HParams`` with leaves ``[num_rounds, P]`` (the values each round
      trained with), ``history["source"]`` ``[num_rounds, P]``, ...

    Example::

        runs = sweep.grid(ppo.HParams.make(), seeds=range(8))
        fn = jax.jit(lambda k, h: pbt.train_pbt(ppo, cfg, env, k, h, 50, 10, ("learning_rate",)))
        pop, history = fn(runs.keys, runs.hps)
    """
    pbt = PBTConfig(names=tuple(names), updates_per_round=updates_per_round, **options)
    check(algo, pbt, hps)
    key = jax.random.key(0) if key is None else key
    pop = init(algo, cfg, env, keys, hps, key)
    return run(algo, cfg, env, pbt, pop, num_rounds)
