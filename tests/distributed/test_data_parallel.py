"""Data-parallel training of one agent (``Config.data_shards``): shard_map over 8 devices
equals the vmapped shards on one device, ``data_shards = 1`` adds no collective and no shard
axis, parameters stay replicated, and the collectives average what they should.

The 8-device checks run this file as a script in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the pytest process already has
its two CPU devices, see ``conftest.py``); the rest runs in-process on those two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import dqn, ppo, sac
from jaxrl.distributed import data_parallel as dp
from jaxrl.envs import registry, wrappers
from jaxrl.errors import ConfigError

ALGOS = {"ppo": ppo, "dqn": dqn, "sac": sac}
# name -> (algorithm, env id, Config fields, updates). Small, but every update learns:
# PPO with both normalisers (synced statistics) and advantage normalisation; DQN with
# double Q, 3-step returns and prioritised replay; SAC past its warm-up.
SETUPS = {
    "ppo": (
        "ppo", "CartPole-v1",
        dict(total_timesteps=100_000, num_envs=8, rollout_len=16, num_epochs=2,
             num_minibatches=4, hidden=(16, 16), normalize_obs=True, scale_reward=True),
        3,
    ),
    "dqn": (
        "dqn", "CartPole-v1",
        dict(total_timesteps=10_000, num_envs=8, batch_size=16, buffer_size=512,
             learning_starts=32, target_update_period=4, hidden=(16, 16), double=True,
             n_step=3, prioritised=True, gradient_steps=2),
        24,
    ),
    "sac": (
        "sac", "probe/continuous_target",
        dict(total_timesteps=10_000, num_envs=8, batch_size=16, buffer_size=512,
             learning_starts=16, hidden=(16, 16)),
        6,
    ),
}  # fmt: skip


def _numeric(tree):
    """PRNG keys as their raw bits, so whole states compare as arrays."""
    is_key = lambda x: isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def _setup(name: str, data_shards: int):
    algo_name, env_id, fields, num_updates = SETUPS[name]
    algo = ALGOS[algo_name]
    env, _ = registry.make(env_id)
    cfg = algo.Config(**fields, data_shards=data_shards)
    return algo, env, cfg, algo.HParams.make(), num_updates


# ---------------------------------------------------------------- the 8-device script


def _max_rel_diff(a, b) -> float:
    """``max |a - b| / (1 + |a|)`` over the float leaves; inf if an int leaf differs."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(_numeric(a)), jax.tree.leaves(_numeric(b)), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if not np.issubdtype(x.dtype, np.floating):
            worst = worst if np.array_equal(x, y) else float("inf")
            continue
        both_nan = np.isnan(x) & np.isnan(y)
        diff = np.where(both_nan, 0.0, np.abs(x - y) / (1.0 + np.abs(x)))
        worst = max(worst, float(np.max(diff, initial=0.0)))
    return worst


def _replicated(tree) -> bool:
    """Every leaf fully replicated (spec ``P()``) with bitwise-equal copies on its devices."""
    for leaf in jax.tree.leaves(_numeric(tree)):
        if any(axis is not None for axis in leaf.sharding.spec):
            return False
        copies = [np.asarray(s.data) for s in leaf.addressable_shards]
        if not all(np.array_equal(copies[0], c, equal_nan=True) for c in copies):
            return False
    return True


def _split_over_devices(tree, num_devices: int) -> bool:
    """Every leaf's leading axis split over ``num_devices`` distinct devices."""
    for leaf in jax.tree.leaves(_numeric(tree)):
        if {s.device for s in leaf.addressable_shards} != set(jax.devices()[:num_devices]):
            return False
        if any(s.data.shape[0] != 1 for s in leaf.addressable_shards):
            return False
    return True


def _compare_on_8_devices(name: str) -> dict:
    """Inits and trains ``name`` with 8 shards: vmapped on one device, then (the same
    program traced under the 8-device data mesh) with shard_map, one shard per device."""
    algo, env, cfg, hp, num_updates = _setup(name, data_shards=8)

    def run(key, hp):
        state = algo.init(cfg, env, key, hp)
        return state.params, algo.train(cfg, env, state, hp, num_updates)

    params, (ref_state, ref_metrics) = jax.jit(run)(jax.random.key(0), hp)
    with jax.set_mesh(dp.data_mesh(8)):
        _, (got_state, got_metrics) = jax.jit(run)(jax.random.key(0), hp)
    sharded = {f: getattr(got_state, f) for f in algo.DATA_SHARDED}
    replicated = got_state.replace(**dict.fromkeys(algo.DATA_SHARDED))
    last = {k: np.asarray(v[-1]) for k, v in ref_metrics.items() if k.startswith("train/")}
    return {
        "state": _max_rel_diff(ref_state, got_state),
        "metrics": _max_rel_diff(ref_metrics, got_metrics),
        "replicated": _replicated(replicated),
        "split": _split_over_devices(sharded, 8),
        "obs_shape": list(got_state.obs.shape),
        "episodes": float(np.sum(ref_metrics["episode/count"])),
        "finite": bool(all(np.all(np.isfinite(v)) for v in last.values())),
        "params_moved": _max_rel_diff(params, ref_state.params),
    }


def _sweep_on_2_by_4_devices(name: str) -> dict:
    """Two runs (different learning rates) of 4 shards each: vmapped over runs on one
    device, then on a ``("run", "data")`` mesh of 2 x 4 devices, as the runner would."""
    algo, env, cfg, hp, num_updates = _setup(name, data_shards=4)
    keys = jax.random.split(jax.random.key(0), 2)
    hps = jax.tree.map(lambda x: jnp.stack([x, 0.5 * x]), hp)
    state = jax.jit(jax.vmap(lambda k, h: algo.init(cfg, env, k, h)))(keys, hps)
    train = jax.jit(jax.vmap(lambda s, h: algo.train(cfg, env, s, h, num_updates)))
    ref = train(state, hps)
    mesh = dp.run_data_mesh(4, jax.devices(), num_runs=2)
    placed = dp.place(state, algo.DATA_SHARDED, mesh, run_axis=True)
    with jax.set_mesh(mesh):
        got = train(placed, dp.place(hps, (), mesh, run_axis=True))
    devices = {s.device for s in got[0].obs.addressable_shards}
    return {
        "diff": _max_rel_diff(ref, got),
        "devices": len(devices),
        "mesh": list(mesh.shape.values()),
    }


def _run_script(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    # LLVM at -O0: compiling the two programs takes a third of the time (both compiled
    # alike; what is compared is what the programs compute, not how fast).
    flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    env |= {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    proc = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# PPO runs by default; DQN and SAC (13-27 s of compiling each) are opt-in with --runslow.
_EIGHT_DEVICE_CASES = [
    n if n == "ppo" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(SETUPS)
]


@pytest.mark.parametrize("name", _EIGHT_DEVICE_CASES)
def test_shard_map_over_8_devices_equals_vmapped_shards(name):
    out = _run_script(name)
    assert out["obs_shape"][0] == 8  # [data_shards, num_envs / data_shards, ...]
    assert out["split"], "env state, obs and replay must be split over the 8 devices"
    assert out["replicated"], "params, optimiser state, key and counters must be replicated"
    assert out["params_moved"] > 1e-3, "the updates must have learned something"
    assert out["finite"]
    assert out["episodes"] > 0
    # Reductions are reordered between the two programs; nothing else differs.
    assert out["state"] < 1e-4, out
    assert out["metrics"] < 1e-4, out


@pytest.mark.slow
def test_sweep_of_data_parallel_runs_on_a_run_by_data_mesh():
    out = _run_script("sweep", "sac")
    assert out["mesh"] == [2, 4] and out["devices"] == 8
    assert out["diff"] < 1e-4, out


@pytest.mark.slow
def test_runs_placed_on_a_data_mesh_equal_vmapped_runs():
    """The runner's path on this process's 2 devices: runs vmapped, each run's 2 shards on
    the ``"data"`` axis (placed by ``data_parallel.place``), equal to vmapped shards."""
    algo, env, cfg, hp, _ = _setup("sac", data_shards=2)
    keys = jax.random.split(jax.random.key(0), 2)
    hps = jax.tree.map(lambda x: jnp.stack([x, 0.5 * x]), hp)
    state = jax.jit(jax.vmap(lambda k, h: algo.init(cfg, env, k, h)))(keys, hps)
    train = jax.jit(jax.vmap(lambda s, h: algo.train(cfg, env, s, h, 4)))
    ref_state, ref_metrics = train(state, hps)
    mesh = dp.run_data_mesh(2, jax.devices()[:2], num_runs=2)
    assert dict(mesh.shape) == {"run": 1, "data": 2}
    with jax.set_mesh(mesh):
        placed = dp.place(state, algo.DATA_SHARDED, mesh, run_axis=True)
        got_state, got_metrics = train(placed, dp.place(hps, (), mesh, run_axis=True))
    assert got_state.obs.sharding.spec[1] == "data"  # [runs, shards, envs per shard, ...]
    assert _max_rel_diff(ref_state, got_state) < 1e-4
    assert _max_rel_diff(ref_metrics, got_metrics) < 1e-4
    assert _max_rel_diff(state.params, ref_state.params) > 1e-4  # it learned


# ---------------------------------------------------------------- in-process checks


def _update_jaxpr(name: str, data_shards: int) -> tuple[str, object]:
    algo, env, cfg, hp, _ = _setup(name, data_shards)
    state = jax.eval_shape(lambda k, h: algo.init(cfg, env, k, h), jax.random.key(0), hp)
    return str(jax.make_jaxpr(lambda s, h: algo.update(cfg, env, s, h))(state, hp)), state


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_data_shards_one_runs_no_collective_and_no_shard_axis(name):
    jaxpr, state = _update_jaxpr(name, 1)
    assert state.obs.shape[0] == SETUPS[name][2]["num_envs"]
    for primitive in ("psum", "pmax", "pmin", "axis_index", "shard_map", "pcast"):
        assert primitive not in jaxpr, primitive
    sharded, _ = _update_jaxpr(name, 2)  # the same check sees the collectives of 2 shards
    assert "psum" in sharded and "axis_index" in sharded


@pytest.mark.parametrize(
    ("algo", "fields", "match"),
    [
        (ppo, dict(num_envs=4, data_shards=3), "num_envs = 4 is not divisible"),
        (ppo, dict(num_envs=4, rollout_len=8, num_minibatches=16, data_shards=4), "minibatch"),
        (ppo, dict(data_shards=0), "positive integer"),
        (dqn, dict(num_envs=8, batch_size=12, data_shards=8), "batch_size = 12"),
        (dqn, dict(num_envs=4, buffer_size=1002, data_shards=4), "buffer_size = 1002"),
        (sac, dict(num_envs=2, batch_size=256, data_shards=4), "num_envs = 2"),
        (sac, dict(num_envs=4, batch_size=250, data_shards=4), "batch_size = 250"),
        (sac, dict(data_shards=2.0), "data_shards must be an integer"),
    ],
)
def test_data_shards_that_do_not_divide_are_a_config_error(algo, fields, match):
    with pytest.raises(ConfigError, match=match):
        algo.Config(**fields)


def test_mesh_with_the_wrong_number_of_devices_is_a_config_error():
    algo, env, cfg, hp, _ = _setup("ppo", data_shards=8)
    state = jax.eval_shape(lambda k, h: algo.init(cfg, env, k, h), jax.random.key(0), hp)
    with jax.set_mesh(dp.data_mesh(2)), pytest.raises(ConfigError, match="2 devices"):
        jax.eval_shape(lambda s, h: algo.update(cfg, env, s, h), state, hp)


def _on_two_shards(fn, *sharded):
    """``fn`` over 2 shards of ``sharded`` (leading axis split in two), vmapped and under
    shard_map over this process's 2 devices; returns both results."""
    halves = jax.tree.map(lambda x: x.reshape(2, x.shape[0] // 2, *x.shape[1:]), sharded)
    run = jax.jit(dp.map_shards(fn, 2, (0,) * len(sharded), None))
    vmapped = run(*halves)
    with jax.set_mesh(dp.data_mesh(2)):
        mapped = jax.jit(dp.map_shards(fn, 2, (0,) * len(sharded), None))(*halves)
    return vmapped, mapped


def test_sharded_gradient_equals_the_full_batch_gradient():
    w = jnp.array([0.3, -1.0, 2.0])
    x = jax.random.normal(jax.random.key(0), (8, 3))
    loss = lambda w, x: jnp.mean(jnp.square(x @ w - 1.0))

    def fn(x):
        g = jax.grad(loss)(dp.local_grad_params(w, 2), x)
        return dp.pmean(g, 2)

    want = jax.grad(loss)(w, x)
    for got in _on_two_shards(fn, x):
        # Without local_grad_params, shard_map would sum the two halves' gradients.
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_ppo_loss_gradient_over_shards_equals_one_device():
    """Advantage normalisation uses the whole minibatch's statistics and the gradients are
    averaged, so the 2-shard gradient of PPO's loss is the 1-device one."""
    algo, env, cfg1, hp, _ = _setup("ppo", data_shards=1)
    cfg2 = ppo.Config(**{**SETUPS["ppo"][2], "data_shards": 2})
    params = jax.jit(lambda k: ppo.init(cfg1, env, k, hp).params)(jax.random.key(1))
    k = jax.random.split(jax.random.key(2), 6)
    batch = ppo.Batch(
        obs=jax.random.normal(k[0], (16, 4)),
        action=jax.random.randint(k[1], (16,), 0, 2),
        log_prob=jnp.log(jax.random.uniform(k[2], (16,), minval=0.2, maxval=0.8)),
        value=jax.random.normal(k[3], (16,)),
        advantage=3.0 + 2.0 * jax.random.normal(k[4], (16,)),  # far from normalised
        target=jax.random.normal(k[5], (16,)),
    )
    grad = lambda cfg, p, b: jax.grad(lambda p: ppo.loss(cfg, env, p, b, hp)[0])(p)
    want = jax.jit(grad, static_argnums=0)(cfg1, params, batch)

    def fn(b):
        return dp.pmean(grad(cfg2, dp.local_grad_params(params, 2), b), 2)

    for got in _on_two_shards(fn, batch):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-7)


def test_synced_running_stats_equal_the_stats_of_all_rows():
    x = 3.0 + jax.random.normal(jax.random.key(0), (8, 5))
    prior = wrappers.RunningStats.zeros((5,)).update(jax.random.normal(jax.random.key(1), (6, 5)))
    want = prior.update(x)
    fn = lambda x: dp.update_stats(prior, x, 2)
    mean_std = lambda x: dp.mean_std(x, 2)
    for got in _on_two_shards(fn, x):
        np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6)
        np.testing.assert_allclose(got.var, want.var, rtol=1e-5)
        np.testing.assert_allclose(got.count, want.count)
    for mu, sd in _on_two_shards(mean_std, x[:, 0]):
        np.testing.assert_allclose([mu, sd], [x[:, 0].mean(), x[:, 0].std()], rtol=1e-5)


def test_episode_metrics_weigh_every_shards_episodes():
    info = {"episode_return": jnp.array([0.0, 10.0, 0.0, 0.0, 4.0, 6.0, 0.0, 0.0])}
    info["episode_length"] = info["episode_return"] * 2
    done = info["episode_return"] > 0  # shard 0 ended one episode, shard 1 two
    fn = lambda i, d: dp.episode_metrics(i, d, 2)
    for got in _on_two_shards(fn, info, done):
        assert float(got["episode/count"]) == 3.0
        np.testing.assert_allclose(got["episode/return"], 20.0 / 3.0, rtol=1e-6)
        np.testing.assert_allclose(got["episode/length"], 40.0 / 3.0, rtol=1e-6)


def test_vmapped_shards_replicate_params_and_split_envs():
    """One update with 2 vmapped shards: replicated fields keep their unsharded shapes."""
    algo, env, cfg1, hp, _ = _setup("sac", data_shards=1)
    _, _, cfg2, _, _ = _setup("sac", data_shards=2)
    one = jax.eval_shape(lambda k, h: algo.init(cfg1, env, k, h), jax.random.key(0), hp)
    two = jax.eval_shape(lambda k, h: algo.init(cfg2, env, k, h), jax.random.key(0), hp)
    after, _ = jax.eval_shape(lambda s, h: algo.update(cfg2, env, s, h), two, hp)
    shapes = lambda t: [x.shape for x in jax.tree.leaves(_numeric(t))]
    assert shapes(after.params) == shapes(one.params)
    assert shapes(after.actor_opt_state) == shapes(one.actor_opt_state)
    assert two.obs.shape == (2, 4, *one.obs.shape[1:])
    stored = after.buffer.experience.reward  # [shards, 1, capacity per shard]
    assert stored.shape == (2, 1, cfg1.buffer_size // 2)
    assert all(x.shape[0] == 2 for x in jax.tree.leaves(after.buffer))


if __name__ == "__main__":  # the 8-device half, run by the tests above in a subprocess
    jax.config.update("jax_numpy_rank_promotion", "raise")
    assert len(jax.devices()) == 8, jax.devices()
    if sys.argv[1] == "sweep":
        print(json.dumps(_sweep_on_2_by_4_devices(sys.argv[2])))
    else:
        print(json.dumps(_compare_on_8_devices(sys.argv[1])))
