"""envpool inside ``jit`` (``jaxrl.envs.envpool_xla``) on CartPole-v1.

The jitted stream must equal the host adapter's (``jaxrl.envs.envpool``, itself checked
step for step against a bare envpool in ``test_envpool.py``) for the same seed and actions,
across terminations and time-limit truncations; PPO compiled around the pool must learn.
Skipped where envpool or its XLA interface is unavailable (the reason is shown).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("envpool")

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import ppo  # noqa: E402
from jaxrl.envs import envpool as host_envpool  # noqa: E402
from jaxrl.envs import envpool_xla  # noqa: E402
from jaxrl.errors import ConfigError  # noqa: E402
from jaxrl.logger import metrics as metric_utils  # noqa: E402

_REASON = envpool_xla.unavailable_reason()
if _REASON is not None:
    pytest.skip(f"envpool's XLA interface is unavailable: {_REASON}", allow_module_level=True)

TASK = "CartPole-v1"
EXPLORE = 300  # random actions first (episodes fall), then balancing (they hit 500 steps)


def _balance(obs):
    """A linear controller that keeps CartPole upright for the whole 500 steps (np or jnp)."""
    return (obs[..., 2] + 0.5 * obs[..., 3] > 0).astype(np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _jitted_stream(env, random_actions):
    """Resets and steps ``env`` inside one jit: random actions, then ``_balance``."""
    obs, state = env.reset(jax.random.key(0))

    def body(carry, x):
        obs, state = carry
        t, rand = x
        action = jnp.where(t < EXPLORE, rand, _balance(obs))
        next_obs, state, step = env.step(jax.random.key(0), state, action)
        out = (next_obs, step.reward, step.terminated, step.truncated, step.final_obs, step.info)
        return (next_obs, state), out

    steps = (jnp.arange(random_actions.shape[0]), random_actions)
    _, out = jax.lax.scan(body, (obs, state), steps)
    return obs, out


def test_jitted_stream_equals_host_adapter_across_resets():
    num_envs, seed, num_steps = 4, 3, 1200
    rand = np.random.default_rng(0).integers(0, 2, (num_steps, num_envs), dtype=np.int32)
    env = envpool_xla.make(TASK, num_envs=num_envs, seed=seed)
    obs0, (obs, reward, term, trunc, final_obs, info) = _jitted_stream(env, rand)

    host = host_envpool.make(TASK, num_envs=num_envs, seed=seed)
    ref_obs = host.reset()
    np.testing.assert_array_equal(obs0, ref_obs)
    ref = []
    for t in range(num_steps):
        step = host.step(rand[t] if t < EXPLORE else _balance(ref_obs))
        ref.append(step)
        ref_obs = step.obs
    ref = [np.stack(x) for x in zip(*ref, strict=True)]
    for name, got, want in zip(
        ("obs", "reward", "terminated", "truncated", "final_obs"),
        (obs, reward, term, trunc, final_obs),
        ref,
        strict=True,
    ):
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    # Both reset paths ran: falls while exploring, 500-step time limits while balancing.
    assert ref[2].sum() >= 4 * num_envs and ref[3].sum() >= num_envs
    # Episode statistics against the rewards summed by hand per env.
    done = ref[2] | ref[3]
    for i in range(num_envs):
        ends = np.flatnonzero(done[:, i])
        starts = np.concatenate([[0], ends[:-1] + 1])
        want_ret = [ref[1][s : e + 1, i].sum() for s, e in zip(starts, ends, strict=True)]
        np.testing.assert_array_equal(np.asarray(info["episode_return"])[ends, i], want_ret)
        np.testing.assert_array_equal(
            np.asarray(info["episode_length"])[ends, i], ends - starts + 1
        )
        assert not np.asarray(info["episode_return"])[~done[:, i], i].any()


def test_envs_hash_by_identity_so_each_pool_gets_its_own_program():
    rand = np.zeros((3, 2), np.int32)
    env_a = envpool_xla.make(TASK, num_envs=2, seed=5)
    env_b = envpool_xla.make(TASK, num_envs=2, seed=5)
    assert env_a != env_b and env_a == env_a
    _, first_a = _jitted_stream(env_a, rand)
    _jitted_stream(env_a, rand)  # moves pool a on; pool b must not notice
    _, first_b = _jitted_stream(env_b, rand)
    for got, want in zip(jax.tree.leaves(first_b), jax.tree.leaves(first_a), strict=True):
        np.testing.assert_array_equal(got, want)


def test_spaces_and_config_checks():
    env = envpool_xla.make(TASK, num_envs=4, seed=0)
    gymnax_env, gymnax_params = envs.make(TASK)
    assert env.action_space() == gymnax_env.action_space(gymnax_params)
    assert env.observation_space().shape == (4,) and env.name == f"envpool_xla/{TASK}"
    hp = ppo.HParams.make()
    with pytest.raises(ConfigError, match="num_envs = 8 but envpool_xla/CartPole-v1 is a batch"):
        ppo.init(ppo.Config(num_envs=8), env, jax.random.key(0), hp)
    with pytest.raises(ValueError, match="batch_size"):
        envpool_xla.make(TASK, num_envs=4, batch_size=2)


def test_vmap_over_runs_raises_a_clear_error():
    env = envpool_xla.make(TASK, num_envs=2, seed=0)
    cfg = ppo.Config(num_envs=2, rollout_len=8, num_minibatches=1)
    hp, seeds = ppo.HParams.make(), jax.random.split(jax.random.key(0), 2)
    with pytest.raises(envpool_xla.EnvpoolVmapError, match="num_seeds > 1"):
        # what the runner does: the seeds' policies give a run axis of actions
        run = jax.vmap(lambda k: ppo.update(cfg, env, ppo.init(cfg, env, k, hp), hp))
        jax.eval_shape(run, seeds)
    obs, state = jax.jit(env.reset)(jax.random.key(0))
    actions = jnp.zeros((3, 2), jnp.int32)  # a run axis of 3 over one pool
    with pytest.raises(envpool_xla.EnvpoolVmapError, match="cannot be vmapped"):
        jax.vmap(lambda a: env.step(jax.random.key(0), state, a))(actions)


def test_ppo_init_on_the_pool_gives_the_params_it_gives_on_gymnax():
    # Without the orthogonal init (its QR decompositions are slow to compile): the point is
    # that the pool's spaces build the same network from the same key.
    cfg = ppo.Config(num_envs=4, ortho_init=False)
    hp, key = ppo.HParams.make(), jax.random.key(7)
    env = envpool_xla.make(TASK, num_envs=4, seed=0)
    state = jax.jit(lambda k: ppo.init(cfg, env, k, hp))(key)
    gymnax_env, _ = envs.make(TASK)
    want = jax.jit(lambda k: ppo.init(cfg, gymnax_env, k, hp))(key)
    for got, ref in zip(jax.tree.leaves(state.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(want.key))


@pytest.mark.slow  # two PPO programs to compile: ~13 s CPU, 40-55 s wall on the loaded 2 cores
def test_train_two_updates_equals_two_update_calls_on_equal_pools():
    cfg = ppo.Config(num_envs=4, rollout_len=32, num_epochs=2, num_minibatches=2, ortho_init=False)
    hp, key = ppo.HParams.make(), jax.random.key(1)
    env_a = envpool_xla.make(TASK, num_envs=4, seed=11)
    env_b = envpool_xla.make(TASK, num_envs=4, seed=11)

    def init_and_train(key):
        state = ppo.init(cfg, env_a, key, hp)
        return state, ppo.train(cfg, env_a, state, hp, 2)

    init_a, (state_a, metrics_a) = jax.jit(init_and_train)(key)
    state_b = jax.jit(lambda k: ppo.init(cfg, env_b, k, hp))(key)
    update_b = jax.jit(lambda s: ppo.update(cfg, env_b, s, hp))
    for _ in range(2):
        state_b, metrics_b = update_b(state_b)
    assert int(state_a.update_count) == 2
    np.testing.assert_array_equal(state_a.obs, state_b.obs)  # the pools followed one stream
    for got, want in zip(
        jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics_a["train/total_loss"][-1], metrics_b["train/total_loss"])
    assert np.isfinite(np.asarray(metrics_a["train/total_loss"])).all()
    # The params moved: updates happened.
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state_a.params, init_a.params)
    assert max(jax.tree.leaves(moved)) > 1e-4


def _train(total_timesteps: int, seed: int = 0):
    """``ppo/cartpole``'s settings (4 envs x 128, 4 epochs x 4 minibatches, lr 2.5e-4)."""
    cfg = ppo.Config(num_envs=4, rollout_len=128, total_timesteps=total_timesteps)
    hp = ppo.HParams.make(learning_rate=2.5e-4)
    env = envpool_xla.make(TASK, num_envs=cfg.num_envs, seed=seed)
    state = jax.jit(lambda k: ppo.init(cfg, env, k, hp))(jax.random.key(seed))
    train = jax.jit(lambda s: ppo.train(cfg, env, s, hp, cfg.num_updates))
    _, metrics = train(state)
    returns = np.asarray(metrics["episode/return"])[None]
    counts = np.asarray(metrics["episode/count"])[None]
    return float(metric_utils.final_return(returns, counts)[0])


@pytest.mark.learning
def test_ppo_learns_cartpole_in_100k_steps():
    """Final return (episodes of the last 5% of updates) >= 150, seed 0, 100k steps."""
    assert _train(100_000) >= 150


@pytest.mark.slow
def test_ppo_reaches_450_on_cartpole_in_500k_steps():
    """The in-JAX PPO learning test's threshold (final >= 450) on the pool, seed 0."""
    assert _train(500_000) >= 450
