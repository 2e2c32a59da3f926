"""Data-parallel training of one agent: its envs (and replay) split into ``data_shards``.

An algorithm whose ``Config.data_shards = D > 1`` writes its update once, for one shard:
the shard steps ``num_envs / D`` envs (and keeps its own ``1 / D`` of the replay), computes
gradients on its local minibatch, and averages everything that must be global across the
shards with a collective over the mesh axis :data:`DATA_AXIS` (``"data"``):

* gradients, before the optimiser (:func:`pmean` after :func:`local_grad_params`);
* metrics, observation-normaliser and reward-scale statistics (:func:`update_stats`),
  advantage-normalisation statistics (:func:`mean_std`), KL early-stop / adaptive-KL tests;
* flags that gate learning (:func:`all_shards`), so every shard takes the same branch.

Shard-dependent randomness comes from ``fold_in(key, axis_index("data"))``
(:func:`shard_key`); the key carried in the state stays the same on every shard.

The same shard function runs two ways (:func:`map_shards`):

* ``jax.vmap(..., axis_name="data")`` over a leading shard axis on one device: the
  reference numbers;
* ``jax.shard_map`` over the ``"data"`` axis of the current mesh (``with jax.set_mesh(
  data_mesh(D)):`` around tracing), one shard per device. It equals the vmapped numbers
  within float tolerance (reductions are reordered).

State layout with ``D > 1``: parameters, optimiser states, counters and the key are
replicated (identical on every shard, no shard axis); the fields an algorithm lists in
``DATA_SHARDED`` (env state, observations, replay) carry a leading shard axis ``[D, ...]``,
each shard's slice being exactly what a ``num_envs / D``-env run would carry. With
``D = 1`` none of this code runs: no shard axis, no collective, the single-device numbers
bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxrl.distributed.mesh import RUN_AXIS
from jaxrl.envs import wrappers
from jaxrl.errors import ConfigError

DATA_AXIS = "data"


# ---------------------------------------------------------------- configuration


def shards(cfg: Any) -> int:
    """``cfg.data_shards``, or 1 for configs without the field (single-device algorithms)."""
    return getattr(cfg, "data_shards", 1)


def check_divides(data_shards: int, sizes: dict[str, int]) -> None:
    """Raises :class:`ConfigError` unless ``data_shards`` is a positive int dividing each size.

    ``sizes`` maps a description (e.g. ``"num_envs"``) to its value.
    """
    if not isinstance(data_shards, int) or isinstance(data_shards, bool) or data_shards < 1:
        raise ConfigError(f"data_shards must be a positive integer, got {data_shards!r}")
    for name, value in sizes.items():
        if value % data_shards:
            raise ConfigError(
                f"{name} = {value} is not divisible by data_shards = {data_shards} "
                "(every shard must get an equal share)"
            )


# ---------------------------------------------------------------- inside a shard


def _manual() -> bool:
    """Whether the caller runs inside ``shard_map`` over :data:`DATA_AXIS`."""
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and DATA_AXIS in mesh.manual_axes


def shard_index(data_shards: int) -> jax.Array:
    """This shard's index in ``[0, data_shards)`` (int32 scalar; 0 when ``data_shards == 1``)."""
    if data_shards == 1:
        return jnp.zeros((), jnp.int32)
    return jax.lax.axis_index(DATA_AXIS)


def shard_key(key: jax.Array, data_shards: int) -> jax.Array:
    """``fold_in(key, shard index)``: a different stream per shard; ``key`` when unsharded."""
    if data_shards == 1:
        return key
    return jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS))


def pmean(tree: Any, data_shards: int) -> Any:
    """Mean over shards of every leaf (identity when ``data_shards == 1``)."""
    if data_shards == 1:
        return tree
    return jax.lax.pmean(tree, DATA_AXIS)


def psum(tree: Any, data_shards: int) -> Any:
    """Sum over shards of every leaf (identity when ``data_shards == 1``)."""
    if data_shards == 1:
        return tree
    return jax.lax.psum(tree, DATA_AXIS)


def pmax(tree: Any, data_shards: int) -> Any:
    """Maximum over shards of every leaf (identity when ``data_shards == 1``)."""
    if data_shards == 1:
        return tree
    return jax.lax.pmax(tree, DATA_AXIS)


def all_shards(flag: jax.Array, data_shards: int) -> jax.Array:
    """Logical AND of a boolean over shards: the same value on every shard."""
    if data_shards == 1:
        return flag
    return jax.lax.pmin(flag.astype(jnp.int32), DATA_AXIS) > 0


def local_grad_params(params: Any, data_shards: int) -> Any:
    """Marks replicated ``params`` as per-shard before differentiating in them.

    Inside ``shard_map``, JAX sums the gradient of a replicated input over devices on its
    own (the transpose of the implicit broadcast); under ``vmap`` it does not. Taking
    gradients in the returned copy gives every shard its *local* gradient in both modes,
    which :func:`pmean` then averages: ``g = (1/D) sum_d grad L_d``.
    """
    if data_shards == 1 or not _manual():
        return params
    return jax.lax.pcast(params, DATA_AXIS, to="varying")


def mean_std(x: jax.Array, data_shards: int) -> tuple[jax.Array, jax.Array]:
    """Mean and population std of all shards' ``x`` together (every shard's ``x`` the same
    shape): two passes, ``mu = pmean(mean x)``, ``var = pmean(mean (x - mu)^2)``."""
    if data_shards == 1:
        return x.mean(), x.std()
    mu = jax.lax.pmean(jnp.mean(x), DATA_AXIS)
    var = jax.lax.pmean(jnp.mean(jnp.square(x - mu)), DATA_AXIS)
    return mu, jnp.sqrt(var)


def nan_mean(values: jax.Array, weights: jax.Array, data_shards: int) -> jax.Array:
    """Weighted mean over all shards, NaN when the weights sum to zero everywhere.

    ``sum_d sum(values_d * weights_d) / sum_d sum(weights_d)`` (as ``base.nan_mean``).
    """
    num, total = psum((jnp.sum(values * weights), jnp.sum(weights)), data_shards)
    return jnp.where(total > 0, num / jnp.maximum(total, 1), jnp.nan)


def episode_metrics(info: dict, done: jax.Array, data_shards: int) -> dict[str, jax.Array]:
    """``episode/return``, ``episode/length`` (means over every shard's finished episodes,
    NaN if none) and ``episode/count`` (their number) from an env ``info`` and ``done``."""
    done = done.astype(jnp.float32)
    return {
        "episode/return": nan_mean(info["episode_return"], done, data_shards),
        "episode/length": nan_mean(info["episode_length"], done, data_shards),
        "episode/count": psum(jnp.sum(done), data_shards),
    }


# ---------------------------------------------------------------- synced env statistics


def update_stats(
    stats: wrappers.RunningStats, batch: jax.Array, data_shards: int
) -> wrappers.RunningStats:
    """:meth:`RunningStats.update` with the batch ``[B, *shape]`` of every shard at once.

    Each shard passes its own ``B`` rows; the merge (Chan et al. 1979) uses the mean and
    variance of all ``D * B`` rows, so every shard ends with the same statistics.
    """
    if data_shards == 1:
        return stats.update(batch)
    batch_mean = jax.lax.pmean(jnp.mean(batch, axis=0), DATA_AXIS)
    centred = batch - jnp.expand_dims(batch_mean, 0)
    batch_var = jax.lax.pmean(jnp.mean(jnp.square(centred), axis=0), DATA_AXIS)
    batch_count = batch.shape[0] * data_shards
    delta = batch_mean - stats.mean
    total = stats.count + batch_count
    mean = stats.mean + delta * batch_count / total
    m2 = stats.var * stats.count + batch_var * batch_count
    m2 = m2 + jnp.square(delta) * stats.count * batch_count / total
    return wrappers.RunningStats(mean, m2 / total, total)


@dataclasses.dataclass(frozen=True)
class SyncedNormalizeObs(wrappers.NormalizeObs):
    """:class:`~jaxrl.envs.wrappers.NormalizeObs` whose statistics span every shard's envs."""

    data_shards: int = 1

    def reset(self, key, params):
        obs, env_state = self.env.reset(key, params)
        stats = update_stats(wrappers.RunningStats.zeros(obs.shape[1:]), obs, self.data_shards)
        return self._normalize(obs, stats), wrappers.NormalizeObsState(env_state, stats)

    def step(self, key, state, action, params):
        obs, env_state, step = self.env.step(key, state.env_state, action, params)
        stats = update_stats(state.stats, obs, self.data_shards)
        step = step.replace(final_obs=self._normalize(step.final_obs, stats))
        return self._normalize(obs, stats), wrappers.NormalizeObsState(env_state, stats), step


@dataclasses.dataclass(frozen=True)
class SyncedScaleReward(wrappers.ScaleReward):
    """:class:`~jaxrl.envs.wrappers.ScaleReward` whose return statistics span every shard."""

    data_shards: int = 1

    def step(self, key, state, action, params):
        obs, env_state, step = self.env.step(key, state.env_state, action, params)
        ret = state.discounted_return * self.discount + step.reward
        stats = update_stats(state.stats, ret, self.data_shards)
        reward = step.reward / jnp.sqrt(stats.var + self.epsilon)
        ret = jnp.where(step.done, 0.0, ret)
        info = dict(step.info) | {"raw_reward": step.reward}
        step = step.replace(reward=reward, info=info)
        return obs, wrappers.ScaleRewardState(env_state, ret, stats), step


def make_vec_env(
    env,
    num_envs: int,
    data_shards: int = 1,
    *,
    normalize_obs: bool = False,
    scale_reward: bool = False,
    reward_discount: float = 0.99,
):
    """One shard's training stack: :func:`jaxrl.envs.wrappers.make_vec_env` over
    ``num_envs / data_shards`` envs, with normalisation statistics synced over shards."""
    if data_shards == 1:
        return wrappers.make_vec_env(
            env,
            num_envs,
            normalize_obs=normalize_obs,
            scale_reward=scale_reward,
            reward_discount=reward_discount,
        )
    venv = wrappers.make_vec_env(env, num_envs // data_shards)
    if normalize_obs:
        venv = SyncedNormalizeObs(venv, data_shards=data_shards)
    if scale_reward:
        venv = SyncedScaleReward(venv, discount=reward_discount, data_shards=data_shards)
    return venv


# ---------------------------------------------------------------- running the shards


def data_mesh(data_shards: int, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh named ``"data"`` over the first ``data_shards`` of ``devices`` (default:
    the local devices); its axis type is ``Auto`` so inputs are resharded as needed."""
    devices = list(jax.local_devices() if devices is None else devices)
    if len(devices) < data_shards:
        raise ConfigError(f"data_shards = {data_shards} needs as many devices, got {len(devices)}")
    return jax.sharding.Mesh(
        np.array(devices[:data_shards]), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )


def _is_axis(x) -> bool:
    return x is None or isinstance(x, int)


def _spec(axis: int | None) -> PartitionSpec:
    return PartitionSpec() if axis is None else PartitionSpec(DATA_AXIS)


def map_shards(fn: Callable, data_shards: int, in_axes: Any, out_axes: Any) -> Callable:
    """Runs ``fn`` once per shard, with the shard axis bound to :data:`DATA_AXIS`.

    ``in_axes``/``out_axes`` are pytree prefixes (as for ``jax.vmap``) of ``0`` (a leading
    shard axis ``[D, ...]``) or ``None`` (replicated: the same value on every shard; for an
    output, JAX checks that it is). ``fn`` sees one shard's slice, without the shard axis.

    Under a mesh with a ``"data"`` axis (``jax.set_mesh(data_mesh(D))``) this is
    ``jax.shard_map`` with one shard per device (the axis must have ``D`` devices);
    otherwise ``jax.vmap(fn, axis_name="data")`` on the current device.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or DATA_AXIS not in mesh.axis_names:
        return jax.vmap(
            fn, in_axes=in_axes, out_axes=out_axes, axis_name=DATA_AXIS, axis_size=data_shards
        )
    if mesh.shape[DATA_AXIS] != data_shards:
        raise ConfigError(
            f"data_shards = {data_shards} but the mesh's {DATA_AXIS!r} axis has "
            f"{mesh.shape[DATA_AXIS]} devices; use data_mesh({data_shards})"
        )

    def squeeze(axes, tree):
        return jax.tree.map(
            lambda a, sub: sub if a is None else jax.tree.map(lambda x: x[0], sub),
            axes, tree, is_leaf=_is_axis,
        )  # fmt: skip

    def expand(axes, tree):
        return jax.tree.map(
            lambda a, sub: sub if a is None else jax.tree.map(lambda x: x[None], sub),
            axes, tree, is_leaf=_is_axis,
        )  # fmt: skip

    def local(*args):
        return expand(out_axes, fn(*squeeze(tuple(in_axes), args)))

    in_specs = jax.tree.map(_spec, tuple(in_axes), is_leaf=_is_axis)
    out_specs = jax.tree.map(_spec, out_axes, is_leaf=_is_axis)
    return jax.shard_map(local, in_specs=in_specs, out_specs=out_specs, axis_names={DATA_AXIS})


def state_axes(state: Any, sharded: Sequence[str]) -> Any:
    """A prefix of ``state`` (a flax struct) for :func:`map_shards`: ``0`` for the fields in
    ``sharded`` (leading shard axis), ``None`` (replicated) for the rest."""
    return state.replace(**{f.name: None for f in dataclasses.fields(state)}).replace(
        **dict.fromkeys(sharded, 0)
    )


def _with_shard_key(step: Callable, data_shards: int) -> Callable:
    """``step(state, hp) -> (state, metrics)`` run with this shard's key in ``state.key``.

    ``state.key`` splits into the next replicated key and one for the shards, folded with
    the shard index; every random draw inside ``step`` is per shard.
    """

    def fn(state, hp):
        key, key_shards = jax.random.split(state.key)
        state, metrics = step(state.replace(key=shard_key(key_shards, data_shards)), hp)
        return state.replace(key=key), metrics

    return fn


def run_update(step: Callable, state: Any, hp: Any, data_shards: int, sharded: Sequence[str]):
    """One update ``step(state, hp) -> (state, metrics)`` of a possibly sharded ``state``.

    ``data_shards == 1``: ``step(state, hp)`` itself. Otherwise ``step`` (written for one
    shard, collectives over ``"data"``) runs under :func:`map_shards` with the fields in
    ``sharded`` split and the rest replicated; metrics must come out replicated.
    """
    if data_shards == 1:
        return step(state, hp)
    axes = state_axes(state, sharded)
    fn = map_shards(_with_shard_key(step, data_shards), data_shards, (axes, None), (axes, None))
    return fn(state, hp)


def run_train(
    step: Callable, state: Any, hp: Any, num_updates: int, data_shards: int, sharded: Sequence[str]
):
    """``num_updates`` of :func:`run_update` as one ``lax.scan``; metrics ``[num_updates]``.

    With ``data_shards > 1`` the scan runs inside one :func:`map_shards` (one manual region
    for the whole chunk); each iteration draws its shard keys as :func:`run_update` does,
    so ``run_train(k)`` equals ``k`` calls of :func:`run_update`.
    """
    if data_shards == 1:
        return jax.lax.scan(lambda s, _: step(s, hp), state, None, num_updates)
    one = _with_shard_key(step, data_shards)

    def scanned(state, hp):
        return jax.lax.scan(lambda s, _: one(s, hp), state, None, num_updates)

    axes = state_axes(state, sharded)
    return map_shards(scanned, data_shards, (axes, None), (axes, None))(state, hp)


def stack_shards(tree: Any, data_shards: int) -> Any:
    """``tree`` repeated along a new leading shard axis ``[D, ...]`` (e.g. empty replay)."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (data_shards, *x.shape)), tree)


def reset(venv, key: jax.Array, env_params: Any, data_shards: int):
    """``venv.reset`` for every shard: ``(obs [D, N/D, ...], env_state [D, ...])``, each shard
    from ``fold_in(key, shard)``; plain ``venv.reset(key, env_params)`` when unsharded."""
    if data_shards == 1:
        return venv.reset(key, env_params)

    def one(key, env_params):
        return venv.reset(shard_key(key, data_shards), env_params)

    return map_shards(one, data_shards, (None, None), 0)(key, env_params)


def place(tree: Any, sharded: Sequence[str], mesh: jax.sharding.Mesh, run_axis: bool = False):
    """Puts a state (or any flax struct) on ``mesh``: the fields named in ``sharded`` split
    their shard axis over ``"data"``, the rest are replicated.

    ``run_axis``: every leaf starts with a run axis ``[R, ...]`` (a sweep; the shard axis
    comes second), split over the mesh's ``"run"`` axis if it has one, else kept whole.
    """
    lead = ()
    if run_axis:
        lead = (RUN_AXIS if RUN_AXIS in mesh.axis_names else None,)

    def put(axis, sub):
        spec = PartitionSpec(*lead, DATA_AXIS) if axis == 0 else PartitionSpec(*lead)
        return jax.device_put(sub, jax.sharding.NamedSharding(mesh, spec))

    return jax.tree.map(put, state_axes(tree, sharded), tree, is_leaf=_is_axis)


def run_data_mesh(
    data_shards: int, devices: Sequence[jax.Device] | None = None, num_runs: int | None = None
) -> jax.sharding.Mesh:
    """A 2-D ``("run", "data")`` mesh for a sweep of data-parallel runs.

    Each run's ``data_shards`` shards sit on ``data_shards`` devices; the ``"run"`` axis
    takes ``len(devices) // data_shards`` such groups (at most ``num_runs``). Runs are
    vmapped and split over ``"run"`` (pad them to a multiple of its size), shards go
    through ``shard_map`` over ``"data"``. Trace the training function under
    ``jax.set_mesh`` of it, with inputs placed by :func:`place` (``run_axis=True``).
    """
    devices = list(jax.local_devices() if devices is None else devices)
    if len(devices) < data_shards:
        raise ConfigError(f"data_shards = {data_shards} needs as many devices, got {len(devices)}")
    groups = len(devices) // data_shards
    groups = groups if num_runs is None else max(1, min(groups, num_runs))
    grid = np.array(devices[: groups * data_shards]).reshape(groups, data_shards)
    auto = jax.sharding.AxisType.Auto
    return jax.sharding.Mesh(grid, (RUN_AXIS, DATA_AXIS), axis_types=(auto, auto))


def first_shard(tree: Any, data_shards: int) -> Any:
    """Shard 0's slice of leaves with a leading shard axis (identity when unsharded)."""
    if data_shards == 1:
        return tree
    return jax.tree.map(lambda x: x[0], tree)


__all__ = [
    "DATA_AXIS",
    "SyncedNormalizeObs",
    "SyncedScaleReward",
    "all_shards",
    "check_divides",
    "data_mesh",
    "episode_metrics",
    "first_shard",
    "local_grad_params",
    "make_vec_env",
    "map_shards",
    "mean_std",
    "nan_mean",
    "place",
    "pmax",
    "pmean",
    "psum",
    "reset",
    "run_data_mesh",
    "run_train",
    "run_update",
    "shard_index",
    "shard_key",
    "shards",
    "stack_shards",
    "state_axes",
    "update_stats",
]
