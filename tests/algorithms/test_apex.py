"""Ape-X: the epsilon ladder, stale actor parameters and their sync, initial and learner
priorities against a numpy transcription of the n-step double-Q TD error, jit == no jit,
vmapped == looped, actors sharded over two devices == one device, config errors, and
learning Andy Jones's probe 5 (two seeds)."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import apex, dqn
from jaxrl.envs import registry
from jaxrl.errors import ConfigError

TINY = dict(
    total_timesteps=400, num_actors=4, train_freq=2, buffer_size=64, batch_size=8,
    learning_starts=8, hidden=(16, 16), target_update_period=4, actor_sync_period=3,
)  # fmt: skip
ALPHA = 0.6  # the default priority_exponent


@pytest.fixture(scope="module")
def setup():
    """A tiny Ape-X on probe 5 and jitted functions shared by the tests (``hp`` traced), so
    that compiling, not running, is most of this file's time."""
    env, _ = registry.make("probe/obs_action_reward")
    cfg = apex.Config(**TINY)
    hp = apex.HParams.make(discount=0.9)
    init = jax.jit(lambda k, h: apex.init(cfg, env, k, h))
    step = jax.jit(lambda s, h: apex.update(cfg, env, s, h))
    act = jax.jit(lambda s, h: apex.act_and_store(cfg, env, s, h))
    learner = jax.jit(lambda s, k, h: apex.learner_step(cfg, env, s, h, k, jnp.array(True)))
    return types.SimpleNamespace(
        cfg=cfg, env=env, hp=hp, state=init(jax.random.key(0), hp), init=init, step=step,
        update=lambda s: step(s, hp), act=lambda s: act(s, hp),
        learner=lambda s, k: learner(s, k, hp),
    )  # fmt: skip


# The helpers compare and index on the host (numpy): each eager jax op of a new shape would
# be one more compiled program.
def _equal(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(np.array_equal, jax.device_get(a), jax.device_get(b))))


def _leaves(replay) -> np.ndarray:
    """The sum tree's leaves ``p_i^alpha`` ``[..., capacity]``."""
    tree = replay.sum_tree_state
    first = 2**tree.tree_depth - 1
    return np.asarray(tree.nodes)[..., first : first + tree.capacity]


@functools.cache
def _q_values(cfg, env):
    """The core's Q-values ``(params, obs [1, 1]) -> [1, A]``, compiled once."""
    return jax.jit(lambda p, o: dqn.q_values(apex.core_config(cfg), env, p, o, None))


def _td_by_hand(cfg, env, online, target, window, discount) -> np.ndarray:
    """n-step double-Q TD errors ``[B]`` of windows ``[B, n]``, transcribed from the paper."""
    q = lambda p, o: np.asarray(_q_values(cfg, env)(p, o))  # noqa: E731
    window = jax.device_get(window)
    r, done, term = window.reward, window.done, window.terminated
    b, n = r.shape
    td = np.zeros(b)
    for i in range(b):
        k = int(np.argmax(done[i] > 0)) if done[i].any() else n - 1
        ret = sum(discount**j * r[i, j] for j in range(k + 1))
        boot = discount ** (k + 1) * (1.0 - term[i, k])
        s_next = window.next_obs[i, k][None]
        a_star = int(np.argmax(q(online, s_next)[0]))  # double: online picks, target rates
        target_value = ret + boot * q(target, s_next)[0, a_star]
        td[i] = target_value - q(online, window.obs[i, 0][None])[0, window.action[i, 0]]
    return td


def _random_params(cfg, env, key) -> dqn.Params:
    net = dqn.network(apex.core_config(cfg), env)
    k1, k2 = jax.random.split(key)
    return dqn.Params(net.init(k1, jnp.zeros((1, 1))), net.init(k2, jnp.zeros((1, 1))))


def _hand_windows() -> dqn.Transition:
    """Four windows of n = 3: no end, terminated at step 1, truncated at step 0, terminated
    at step 2."""
    obs = jnp.array([1.0, -1.0, 1.0, -1.0])[:, None, None] * jnp.ones((4, 3, 1))
    next_obs = jnp.array([[0.3, -0.7, 0.9], [-0.2, 0.6, -1.0], [0.8, -0.4, 0.1], [0.5, 0.2, -0.9]])
    next_obs = next_obs[..., None]  # [4, 3, 1], all different: the loss must pick step k*
    return dqn.Transition(
        obs=obs,
        action=jnp.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]], jnp.int32),
        reward=jnp.array([[1.0, -1.0, 1.0], [0.5, 1.0, 3.0], [-1.0, 2.0, 2.0], [1, 1, 1.0]]),
        terminated=jnp.array([[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1.0]]),
        done=jnp.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1.0]]),
        next_obs=next_obs,
    )


def test_epsilon_ladder_by_hand():
    hp = apex.HParams.make()
    got = np.asarray(apex.epsilons(4, hp))
    expected = [0.4 ** (1 + 7 * i / 3) for i in range(4)]  # 0.4, 0.4^(10/3), 0.4^(17/3), 0.4^8
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got[[0, -1]], [0.4, 0.4**8], rtol=1e-6)
    np.testing.assert_allclose(apex.epsilons(1, hp), [0.4], rtol=1e-6)
    np.testing.assert_allclose(apex.epsilons(32, hp)[31], 0.4**8, rtol=1e-6)


def test_windows_carry_the_tail_across_chunks():
    ids = lambda *v: dqn.Transition(*(6 * [jnp.array([v], jnp.float32)]))  # noqa: E731
    windows, tail = apex.make_windows(ids(1, 2), ids(3, 4, 5))  # n = 3, T = 3, one actor
    np.testing.assert_array_equal(windows.reward[0], [[1, 2, 3], [2, 3, 4], [3, 4, 5]])
    np.testing.assert_array_equal(tail.obs[0], [4, 5])


def test_initial_priorities_are_the_actors_td_by_hand(setup):
    cfg, env, hp = setup.cfg, setup.env, setup.hp
    actor_params = _random_params(cfg, env, jax.random.key(1))
    window = _hand_windows()
    priorities = jax.jit(apex.actor_priorities, static_argnums=(0, 1))
    got = priorities(cfg, env, actor_params, window, hp, jax.random.key(2))
    td = _td_by_hand(cfg, env, actor_params.online, actor_params.target, window, 0.9)
    np.testing.assert_allclose(got, np.abs(td), rtol=1e-5, atol=1e-6)
    # The compact replay item loses nothing the loss reads.
    again = priorities(
        cfg, env, actor_params, apex.to_window(apex.from_window(window)), hp, jax.random.key(2)
    )
    np.testing.assert_allclose(again, got, rtol=1e-6)


def test_added_items_carry_the_actors_priorities(setup):
    cfg, env = setup.cfg, setup.env
    state = setup.state.replace(actor_params=_random_params(cfg, env, jax.random.key(3)))
    idx = np.asarray(apex.added_indices(cfg, state.replay, cfg.steps_per_update))
    new, metrics = setup.act(state)
    stored = jax.tree.map(lambda x: x[0, idx], jax.device_get(new.replay.experience))  # one row
    window = apex.to_window(stored)
    td = _td_by_hand(cfg, env, state.actor_params.online, state.actor_params.target, window, 0.9)
    np.testing.assert_allclose(
        _leaves(new.replay)[idx], (np.abs(td) + apex.PRIORITY_EPS) ** ALPHA, rtol=1e-4
    )
    np.testing.assert_allclose(metrics["train/initial_priority"], np.abs(td).mean(), rtol=1e-5)
    assert np.all(_leaves(new.replay)[np.setdiff1d(np.arange(64), idx)] == 0)
    # Exactly the items of this update can be sampled.
    assert int(apex.buffers.num_items(new.replay)) == cfg.steps_per_update


def test_actors_use_stale_params_until_a_sync(setup):
    cfg, env, state, update = setup.cfg, setup.env, setup.state, setup.update
    # What the actors add does not depend on the learner's networks.
    scrambled = state.replace(params=_random_params(cfg, env, jax.random.key(4)))
    (a, m_a), (b, m_b) = update(state), update(scrambled)
    assert _equal(
        (a.actors, a.replay.experience, m_a["train/initial_priority"], m_a["episode/return"]),
        (b.actors, b.replay.experience, m_b["train/initial_priority"], m_b["episode/return"]),
    )
    assert not _equal(a.params, b.params)

    synced = state.params
    for k in range(1, 7):  # sync period 3: after updates 3 and 6
        state, _ = update(state)
        assert int(state.grad_steps) == k  # the learner learns from the first update
        if k % 3 == 0:
            assert _equal(state.actor_params, state.params)
            synced = state.params
        else:
            assert _equal(state.actor_params, synced)
            assert not _equal(state.actor_params.online, state.params.online)


def test_learner_sets_the_new_td_of_the_sampled_items(setup):
    cfg, env, hp, state = setup.cfg, setup.env, setup.hp, setup.state
    for _ in range(4):
        state, _ = setup.update(state)
    key = jax.random.key(5)
    batch = apex.sample_batch(cfg, env, state.replay, key, hp)
    new, _ = setup.learner(state, key)
    idx = np.asarray(batch.indices)
    before, after = _leaves(state.replay), _leaves(new.replay)
    # Importance weights from the sampled probabilities: (min P / P)^beta.
    probs = before[idx] / before.sum()
    np.testing.assert_allclose(batch.weights, (probs.min() / probs) ** 0.4, rtol=1e-4)
    td = _td_by_hand(cfg, env, state.params.online, state.params.target, batch.window, 0.9)
    np.testing.assert_allclose(after[idx], (np.abs(td) + apex.PRIORITY_EPS) ** ALPHA, rtol=1e-4)
    assert not np.allclose(before[idx], after[idx])
    untouched = np.setdiff1d(np.arange(64), idx)
    np.testing.assert_array_equal(after[untouched], before[untouched])
    assert int(new.grad_steps) == int(state.grad_steps) + 1
    assert not _equal(new.params.online, state.params.online)


def _assert_close(a, b, rtol=1e-5):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6), a, b)


# update = act_and_store, then learn (learner steps), then sync (a select): jit == no jit for
# each of the first two, op by op under disable_jit (scans run as Python loops).
def test_acting_jit_equals_no_jit(setup):
    cfg, env, hp, state = setup.cfg, setup.env, setup.hp, setup.state
    jitted, m_jit = setup.act(state)
    with jax.disable_jit():
        eager, m_eager = apex.act_and_store(cfg, env, state, hp)
    _assert_close(
        (eager.actors, eager.replay.experience), (jitted.actors, jitted.replay.experience)
    )
    _assert_close(m_eager, m_jit)
    np.testing.assert_allclose(_leaves(eager.replay), _leaves(jitted.replay), rtol=1e-5)


def test_learner_step_jit_equals_no_jit(setup):
    cfg, env, hp = setup.cfg, setup.env, setup.hp
    state, _ = setup.update(setup.state)
    key = jax.random.key(8)
    jitted, m_jit = setup.learner(state, key)
    with jax.disable_jit():
        eager, m_eager = apex.learner_step(cfg, env, state, hp, key, jnp.array(True))
    _assert_close((eager.params, eager.opt_state), (jitted.params, jitted.opt_state))
    _assert_close(m_eager, m_jit)
    np.testing.assert_allclose(_leaves(eager.replay), _leaves(jitted.replay), rtol=1e-5)


def test_vmapped_over_two_seeds_equals_loop(setup):
    cfg, env, hp, update, init = setup.cfg, setup.env, setup.hp, setup.update, setup.init
    keys = jax.random.split(jax.random.key(6), 2)
    singles = [init(k, hp) for k in keys]
    batched = jax.jit(lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s))(*singles)
    vupdate = jax.jit(jax.vmap(lambda s: apex.update(cfg, env, s, hp)))
    for _ in range(3):
        batched, m_batched = vupdate(batched)
    nets = jax.device_get((batched.params, batched.actor_params, batched.actors.obs))
    for i, single in enumerate(singles):
        for _ in range(3):
            single, m_single = update(single)
        np.testing.assert_allclose(
            np.asarray(m_batched["train/loss"])[i], m_single["train/loss"], rtol=1e-4
        )
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6),
            nets,
            (single.params, single.actor_params, single.actors.obs),
        )
        np.testing.assert_allclose(_leaves(batched.replay)[i], _leaves(single.replay), rtol=1e-4)


def test_actors_sharded_over_two_devices_equal_one_device(setup):
    """The actor axis splits over a device mesh with no change to the algorithm."""
    cfg, env, hp, state = setup.cfg, setup.env, setup.hp, setup.state
    auto = (jax.sharding.AxisType.Auto,)  # GSPMD propagation through the unannotated code
    mesh = jax.make_mesh((2,), ("actor",), axis_types=auto, devices=jax.devices()[:2])
    where = apex.shardings(state, mesh)
    step = jax.jit(lambda s: apex.update(cfg, env, s, hp)[0], out_shardings=where)
    sharded = step(jax.device_put(state, where))
    assert sharded.actors.obs.sharding.spec == jax.sharding.PartitionSpec("actor")
    assert len(sharded.actors.obs.addressable_shards) == 2
    plain, _ = setup.update(state)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        (sharded.params, sharded.actors.obs, sharded.actors.tail.reward),
        (plain.params, plain.actors.obs, plain.actors.tail.reward),
    )
    np.testing.assert_allclose(_leaves(sharded.replay), _leaves(plain.replay), rtol=1e-5)


def test_bad_config_raises():
    with pytest.raises(ConfigError, match="num_actors"):
        apex.Config(num_actors=0)
    with pytest.raises(ConfigError, match="actor_sync_period"):
        apex.Config(actor_sync_period=0)
    with pytest.raises(ConfigError, match="batch_size"):
        apex.Config(batch_size=128, buffer_size=64)
    with pytest.raises(ConfigError, match="num_actors \\* train_freq"):
        apex.Config(num_actors=32, train_freq=4, buffer_size=100, batch_size=8)
    with pytest.raises(ConfigError, match="priority_exponent"):
        apex.Config(priority_exponent=1.5)
    with pytest.raises(ConfigError, match="torso"):
        apex.Config(torso="resnet")
    with pytest.raises(ConfigError, match="eps_base"):
        apex.check(apex.Config(), apex.HParams.make(eps_base=1.5))
    with pytest.raises(ConfigError, match="unknown"):
        apex.HParams.make(epsilon=0.1)
    env, _ = registry.make("probe/continuous_target")
    with pytest.raises(ConfigError, match="discrete"):
        apex.init(apex.Config(**TINY), env, jax.random.key(0), apex.HParams.make())


@pytest.mark.learning
@pytest.mark.parametrize("seed", [0, 1])
def test_learns_probe_five(setup, seed):
    """Probe 5 (obs +-1, reward +1 iff action == (obs > 0), else -1): Q(o, a) = +-1."""
    cfg, env, init, step = setup.cfg, setup.env, setup.init, setup.step
    hp = apex.HParams.make(discount=0.9, learning_rate=3e-3)
    state = init(jax.random.key(seed), hp)
    returns = []
    for _ in range(150):  # 1,200 env steps, 150 learner steps
        state, metrics = step(state, hp)
        returns.append(float(metrics["episode/return"]))
    q = dqn.q_values(
        apex.core_config(cfg), env, state.params.online, jnp.array([[1.0], [-1.0]]), None
    )
    np.testing.assert_allclose(q, [[-1.0, 1.0], [1.0, -1.0]], atol=0.15)
    # The 4 actors' epsilons average 0.11; a random action is wrong half the time, so the
    # expected return of a perfect learner is 1 - 0.11 = 0.89.
    assert np.nanmean(returns[-30:]) > 0.75, returns[-30:]
