"""Tests of the LPG grid worlds: layouts from the spec, hand-scripted dynamics, encodings."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs import gridworld as gw
from jaxrl.envs import spaces
from jaxrl.envs.wrappers import AutoReset, make_vec_env
from jaxrl.errors import ConfigError

N, NE, E, SE, S, SW, W, NW, STAY = range(9)

# Public map files (GROOVE / jinPrelude), interior only: '#' is a wall.
LONGER_HORIZON_MAP = """
    #
.
    #
   ###
    #
.
    #
"""
LONG_DENSE_MAP = """
.
     #
     #
     #
## ##### ##
     #
     #
.
     #
     #
     #
"""


def _parse(text: str, height: int, width: int) -> np.ndarray:
    rows = text.strip("\n").split("\n")
    assert len(rows) == height
    mask = np.zeros((height, width), bool)
    for r, row in enumerate(rows):
        for c, ch in enumerate(row):
            mask[r, c] = ch == "#"
    return mask


def _state(pos, obj_pos, present, time=0) -> gw.GridState:
    return gw.GridState(
        jnp.asarray(pos, jnp.int32),
        jnp.asarray(obj_pos, jnp.int32).reshape(-1, 2),
        jnp.asarray(present, bool),
        jnp.asarray(time, jnp.int32),
    )


# ----- layouts -----

TABULAR_TABLE = {  # name: (H, W, objects, max steps, number of wall cells)
    "lpg/tabular_dense": (11, 11, [(1, 0, 0.05)] * 2 + [(-1, 0.5, 0.1), (-1, 0, 0.5)], 500, 0),
    "lpg/tabular_sparse": (13, 13, [(1, 1, 0), (-1, 1, 0)], 50, 0),
    "lpg/tabular_long_horizon": (11, 11, [(1, 0, 0.01)] * 2 + [(-1, 0.5, 1)] * 2, 1000, 0),
    "lpg/tabular_longer_horizon": (7, 9, [(1, 0.1, 0.01)] * 2 + [(-1, 0.8, 1)] * 5, 2000, 7),
    "lpg/tabular_long_dense": (11, 11, [(1, 0, 0.005)] * 4, 2000, 17),
    "lpg/random_dense": (11, 11, [(1, 0, 0.05)] * 2 + [(-1, 0.5, 0.1), (-1, 0, 0.5)], 500, 0),
    "lpg/random_long_horizon": (11, 11, [(1, 0, 0.01)] * 2 + [(-1, 0.5, 1)] * 2, 1000, 0),
    "lpg/random_small": (5, 7, [(1, 0, 0.05)] * 2 + [(-1, 0.5, 0.1)] * 2, 500, 2),
    "lpg/random_small_sparse": (5, 7, [(1, 1, 1)] + [(-1, 1, 1)] * 2, 50, 0),
    "lpg/random_very_dense": (11, 11, [(1, 0, 1)], 2000, 0),
}


@pytest.mark.parametrize("name", sorted(TABULAR_TABLE))
def test_layout_matches_spec(name):
    height, width, objects, max_steps, num_walls = TABULAR_TABLE[name]
    env = gw.NAMES[name]()
    params = env.default_params()
    assert (env.height, env.width) == (height, width)
    assert len(env.walls) == num_walls and env.wall_mask().sum() == num_walls
    np.testing.assert_allclose(np.asarray(env.objects), np.asarray(objects, np.float32))
    np.testing.assert_allclose(params.reward, [o[0] for o in objects])
    np.testing.assert_allclose(params.p_term, [o[1] for o in objects])
    np.testing.assert_allclose(params.p_respawn, [o[2] for o in objects])
    assert int(params.max_steps) == max_steps
    assert env.action_space(params) == spaces.Discrete(9)
    tabular = name.startswith("lpg/tabular")
    assert isinstance(env, gw.TabularGridWorld if tabular else gw.RandomGridWorld)
    assert hash(env) == hash(gw.NAMES[name]())  # static: usable as a jit closure / static arg
    if tabular:  # the default layout: distinct free cells
        cells = {tuple(c) for c in np.asarray(params.obj_pos)}
        assert len(cells) == len(objects) and not cells & set(env.walls)


def test_wall_maps():
    lh = gw.tabular_longer_horizon()
    np.testing.assert_array_equal(lh.wall_mask(), _parse(LONGER_HORIZON_MAP, 7, 9))
    ld = gw.tabular_long_dense()
    np.testing.assert_array_equal(ld.wall_mask(), _parse(LONG_DENSE_MAP, 11, 11))
    assert set(gw.random_small().walls) == {(1, 2), (3, 4)}


def test_random_channels_per_type():
    assert gw.random_dense().object_types == (0, 0, 1, 2)
    assert gw.random_dense().num_channels == 4
    assert gw.random_small_sparse().object_types == (0, 1, 1)
    assert gw.random_very_dense().observation_space(None) == spaces.Box(0.0, 1.0, (11, 11, 2))


def test_bad_config_raises():
    with pytest.raises(ConfigError, match="wall"):
        gw.TabularGridWorld(3, 3, walls=((3, 0),))
    with pytest.raises(ConfigError, match="free cells"):
        gw.RandomGridWorld(1, 2, objects=((1.0, 0.0, 0.0),) * 2)
    with pytest.raises(ConfigError, match="p_term"):
        gw.TabularGridWorld(3, 3, objects=((1.0, 1.5, 0.0),))
    with pytest.raises(ConfigError, match="height"):
        gw.tabular_dense(height=0)


# ----- hand-scripted dynamics -----
# A few small envs whose object properties vary through the traced params, so each compiles once.

TAB = gw.TabularGridWorld(3, 3, ((1.0, 0.0, 0.0),))  # 3x3, one object
WALLED = gw.TabularGridWorld(3, 3, ((1.0, 0.0, 0.0),), walls=((1, 1),))
RND = gw.RandomGridWorld(3, 3, ((1.0, 0.0, 1.0), (-1.0, 0.0, 0.0)), walls=((1, 1),))


def _params(env, objects, obj_pos=None, max_steps=100):
    """``env``'s params with ``objects`` ``[(reward, p_term, p_respawn)]`` and a layout."""
    arr = jnp.asarray(objects, jnp.float32)
    p = env.default_params().replace(
        reward=arr[:, 0], p_term=arr[:, 1], p_respawn=arr[:, 2], max_steps=jnp.int32(max_steps)
    )
    return p if obj_pos is None else p.replace(obj_pos=jnp.asarray(obj_pos, jnp.int32))


@functools.cache
def _step(env):
    return jax.jit(env.step)


@functools.cache
def _vstep(env):
    """Steps one state with a batch of keys: ``[B]`` outcomes of the same transition."""
    return jax.jit(jax.vmap(env.step, in_axes=(0, None, None, None)))


def test_moves_and_walls():
    # 3x3 grid, wall in the centre; object far away in the corner.
    params = _params(WALLED, [(1.0, 0.0, 0.0)], [[2, 2]])
    key = jax.random.key(0)
    state = _state([0, 0], [[2, 2]], [True])
    for action, want in [(SE, [0, 0]), (N, [0, 0]), (W, [0, 0]), (NW, [0, 0]), (E, [0, 1])]:
        _, out_state, out = _step(WALLED)(key, state, jnp.int32(action), params)
        np.testing.assert_array_equal(out_state.pos, want)
        assert float(out.reward) == 0.0 and not out.terminated
    state = _state([0, 1], [[2, 2]], [True])
    for action, want in [(S, [0, 1]), (SW, [1, 0]), (SE, [1, 2]), (STAY, [0, 1]), (NE, [0, 1])]:
        _, out_state, _ = _step(WALLED)(key, state, jnp.int32(action), params)
        np.testing.assert_array_equal(out_state.pos, want)
    # Free cells are ranked row-major skipping the wall: (2, 0) is free cell 5 of 8.
    assert WALLED.num_states == 8 * 2
    assert int(WALLED.state_index(jnp.asarray([2, 0]), jnp.asarray([True]))) == 5 * 2 + 1


def test_collect_with_p_term_one_terminates():
    params = _params(TAB, [(2.5, 1.0, 0.0)], [[0, 1]])
    state = _state([0, 0], [[0, 1]], [True])
    obs, state, out = _step(TAB)(jax.random.key(3), state, jnp.int32(E), params)
    assert float(out.reward) == 2.5 and bool(out.terminated) and not out.truncated
    np.testing.assert_array_equal(state.present, [False])
    assert int(obs) == 1 * 2 + 0 and int(out.final_obs) == int(obs)  # cell 1, mask 0


def test_p_term_zero_never_terminates_and_respawn_zero_never_returns():
    params = _params(TAB, [(-1.0, 0.0, 0.0)], [[0, 1]])
    keys = jax.random.split(jax.random.key(1), 256)
    state = _state([0, 0], [[0, 1]], [True])
    _, _, out = _vstep(TAB)(keys, state, jnp.int32(E), params)
    np.testing.assert_array_equal(out.reward, -1.0)
    assert not out.terminated.any()
    state = _state([0, 1], [[0, 1]], [False])  # collected, agent stays on the cell
    out_state, out = _vstep(TAB)(keys, state, jnp.int32(STAY), params)[1:]
    assert not out_state.present.any() and not out.reward.any()
    for t in range(30):  # one long trajectory
        _, state, out = _step(TAB)(keys[t], state, jnp.int32(STAY), params)
        assert not state.present[0] and float(out.reward) == 0.0


def test_tabular_respawn_one_reappears_next_step_in_place():
    # [1, 0, 1]: collected at t, back (in place, under the agent) at t + 1, collected at t + 2.
    params = _params(TAB, [(1.0, 0.0, 1.0)], [[0, 1]])
    state = _state([0, 0], [[0, 1]], [True])
    rewards, presents = [], []
    for t, action in enumerate([E, STAY, STAY, STAY, W, E]):
        _, state, out = _step(TAB)(jax.random.key(t), state, jnp.int32(action), params)
        rewards.append(float(out.reward))
        presents.append(bool(state.present[0]))
    assert rewards == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert presents == [False, True, False, True, True, False]
    np.testing.assert_array_equal(state.obj_pos, [[0, 1]])


def test_random_respawn_one_reappears_at_free_cell():
    params = RND.default_params()
    keys = jax.random.split(jax.random.key(4), 128)
    state = _state([0, 0], [[0, 1], [2, 2]], [True, True])
    _, state1, out = _step(RND)(keys[0], state, jnp.int32(E), params)
    assert float(out.reward) == 1.0
    np.testing.assert_array_equal(state1.present, [False, True])
    _, state2, out = _vstep(RND)(keys, state1, jnp.int32(STAY), params)
    assert state2.present[:, 0].all() and not out.reward.any()
    cells = {tuple(c) for c in np.asarray(state2.obj_pos[:, 0])}
    # Anywhere free except the wall (1,1), the agent (0,1) and the other object (2,2).
    assert cells == {(0, 0), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)}
    # With p_respawn 0 it stays away.
    params0 = params.replace(p_respawn=jnp.zeros(2))
    _, state2, _ = _vstep(RND)(keys, state1, jnp.int32(STAY), params0)
    assert not state2.present[:, 0].any()


def test_truncation_at_max_steps():
    params = _params(TAB, [(1.0, 1.0, 0.0)], [[2, 2]], max_steps=3)
    state = _state([0, 0], [[2, 2]], [True])
    flags = []
    for t in range(3):
        _, state, out = _step(TAB)(jax.random.key(t), state, jnp.int32(STAY), params)
        flags.append((bool(out.terminated), bool(out.truncated)))
    assert flags == [(False, False), (False, False), (False, True)]
    # Termination on the last step wins: the two flags are exclusive.
    state = _state([2, 1], [[2, 2]], [True], time=2)
    _, _, out = _step(TAB)(jax.random.key(0), state, jnp.int32(E), params)
    assert bool(out.terminated) and not out.truncated


# ----- encodings and placement -----


@pytest.mark.parametrize("name", [n for n in sorted(gw.NAMES) if "tabular" in n])
def test_tabular_state_index_is_bijection(name):
    env = gw.NAMES[name]()
    k = env.num_objects
    free = np.argwhere(~env.wall_mask())
    masks = np.array(list(itertools.product([False, True], repeat=k)), bool)
    pos = np.repeat(free, len(masks), axis=0)
    present = np.tile(masks, (len(free), 1))
    index = np.asarray(env.state_index(jnp.asarray(pos, jnp.int32), jnp.asarray(present)))
    assert len(index) == env.num_states == len(free) * 2**k
    assert index.min() == 0 and index.max() == env.num_states - 1
    assert len(np.unique(index)) == env.num_states
    assert env.observation_space(None) == spaces.Discrete(env.num_states)


@pytest.mark.parametrize("name", ["lpg/tabular_longer_horizon", "lpg/tabular_long_dense"])
def test_sample_params_and_reset_place_on_free_cells(name):
    env = gw.NAMES[name]()
    keys = jax.random.split(jax.random.key(5), 64)
    params = jax.vmap(env.sample_params)(keys)
    obs, state = jax.vmap(env.reset)(keys, params)
    walls = env.wall_mask()
    obj = np.asarray(params.obj_pos)  # [64, K, 2]
    assert not walls[obj[..., 0], obj[..., 1]].any()
    for layout in obj:
        assert len({tuple(c) for c in layout}) == env.num_objects
    pos = np.asarray(state.pos)
    assert not walls[pos[:, 0], pos[:, 1]].any()
    assert not np.all(obj == pos[:, None, :], axis=-1).any()  # never starts on an object
    assert len({tuple(layout.ravel()) for layout in obj}) > 60  # layouts differ across keys
    np.testing.assert_array_equal(obs, env.state_index(state.pos, state.present))
    assert np.all(np.asarray(state.present))


def _random_rollout(env, key, num_steps):
    params = env.default_params()
    key_reset, key_run = jax.random.split(key)
    obs, state = env.reset(key_reset, params)

    def body(carry, key):
        obs, state = carry
        key_act, key_step = jax.random.split(key)
        action = jax.random.randint(key_act, (), 0, 9)
        next_obs, next_state, out = env.step(key_step, state, action, params)
        return (next_obs, next_state), (next_obs, next_state, out)

    _, traj = jax.lax.scan(body, (obs, state), jax.random.split(key_run, num_steps))
    return obs, state, traj


def test_random_obs_channels_match_state():
    # Very frequent respawns, so placement is exercised many times.
    env = gw.random_small(objects=2 * ((1.0, 0.0, 0.5),) + 2 * ((-1.0, 0.0, 0.5),))
    _, _, (obs, state, out) = jax.jit(_random_rollout, static_argnums=(0, 2))(
        env, jax.random.key(6), 300
    )
    obs, pos = np.asarray(obs), np.asarray(state.pos)
    obj_pos, present = np.asarray(state.obj_pos), np.asarray(state.present)
    assert obs.shape == (300, 5, 7, 3) and set(np.unique(obs)) <= {0.0, 1.0}
    walls = env.wall_mask()
    for t in range(300):
        want = np.zeros((5, 7, 3), np.float32)
        want[pos[t, 0], pos[t, 1], 2] = 1.0
        cells = [tuple(c) for c, p in zip(obj_pos[t], present[t], strict=True) if p]
        for c, p, typ in zip(obj_pos[t], present[t], env.object_types, strict=True):
            if p:
                want[c[0], c[1], typ] = 1.0
        np.testing.assert_array_equal(obs[t], want)
        assert len(set(cells)) == len(cells)  # present objects on distinct cells
        assert tuple(pos[t]) not in cells  # never under the agent
        assert not any(walls[c] for c in cells) and not walls[tuple(pos[t])]
    assert np.asarray(out.reward).sum() != 0 and (~present).any()  # collections happened


def test_jit_equals_no_jit():
    for env in (gw.tabular_longer_horizon(), gw.random_small()):
        params = env.default_params()
        keys = jax.random.split(jax.random.key(7), 9)
        want = env.reset(keys[0], params)
        got = jax.jit(env.reset)(keys[0], params)
        jax.tree.map(np.testing.assert_array_equal, got, want)
        step = jax.jit(env.step)
        state = want[1]
        for t, action in enumerate([0, 3, 6, 8]):
            want = env.step(keys[t + 1], state, jnp.int32(action), params)
            got = step(keys[t + 1], state, jnp.int32(action), params)
            jax.tree.map(np.testing.assert_array_equal, got, want)
            state = want[1]


def test_vmap_over_keys_and_params_equals_loop():
    env = gw.tabular_dense()
    keys = jax.random.split(jax.random.key(8), 4)
    actions = jnp.asarray([0, 3, 8, 5], jnp.int32)

    def run(key, a):
        p = env.sample_params(key)
        _, state = env.reset(key, p)
        return p, env.step(key, state, a, p)

    batched = jax.jit(jax.vmap(run))(keys, actions)
    single_fn = jax.jit(run)
    for i in range(4):
        single = single_fn(keys[i], actions[i])
        row = jax.tree.map(lambda b, i=i: b[i], batched)
        jax.tree.map(np.testing.assert_array_equal, row, single)
    assert len({np.asarray(p).tobytes() for p in batched[0].obj_pos}) == 4
    # Random grids: vmap over keys with shared params; different keys, different episodes.
    env = gw.random_dense()
    obs, _ = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, env.default_params())
    assert obs.shape == (4, 11, 11, 4)
    assert len({np.asarray(o).tobytes() for o in obs}) == 4


@pytest.mark.parametrize("kind", ["tabular", "random"])
@pytest.mark.parametrize("prob", [0.05, 0.5])
def test_respawn_probability(kind, prob):
    n = 4000
    keys = jax.random.split(jax.random.key(9), n)
    if kind == "tabular":
        env, params = TAB, _params(TAB, [(1.0, 0.0, prob)], [[0, 1]])
        state = _state([2, 2], [[0, 1]], [False])
    else:
        env, params = RND, _params(RND, [(1.0, 0.0, prob), (-1.0, 0.0, 0.0)])
        state = _state([2, 2], [[0, 1], [2, 0]], [False, True])
    _, out_state, _ = _vstep(env)(keys, state, jnp.int32(STAY), params)
    rate = float(np.mean(out_state.present[:, 0]))
    tol = 5 * np.sqrt(prob * (1 - prob) / n)
    assert abs(rate - prob) < tol, (rate, prob, tol)


def test_termination_probability():
    n, p = 4000, 0.5
    params = _params(TAB, [(1.0, p, 0.0)], [[0, 1]])
    state = _state([0, 0], [[0, 1]], [True])
    keys = jax.random.split(jax.random.key(10), n)
    _, _, out = _vstep(TAB)(keys, state, jnp.int32(E), params)
    assert abs(float(np.mean(out.terminated)) - p) < 5 * np.sqrt(p * (1 - p) / n)


# ----- wrappers -----


@pytest.mark.parametrize("name", ["lpg/tabular_sparse", "lpg/random_small_sparse"])
def test_make_vec_env_runs_episodes(name):
    env = gw.NAMES[name](max_steps=20)
    params = env.default_params()
    vec = make_vec_env(env, 8)

    def run(key):
        key_reset, key_run = jax.random.split(key)
        obs, state = vec.reset(key_reset, params)

        def body(carry, key):
            obs, state = carry
            key_act, key_step = jax.random.split(key)
            action = jax.random.randint(key_act, (8,), 0, 9)
            obs, state, out = vec.step(key_step, state, action, params)
            return (obs, state), (obs, out)

        return jax.lax.scan(body, (obs, state), jax.random.split(key_run, 100))[1]

    obs, out = jax.jit(run)(jax.random.key(11))
    assert obs.shape[:2] == (100, 8)
    done = np.asarray(out.done)
    lengths = np.asarray(out.info["episode_length"])[done]
    assert done.sum() >= 8 * 5 and lengths.max() <= 20 and lengths.min() >= 1
    # Truncated episodes are exactly those that last 20 steps without terminating.
    trunc, term = np.asarray(out.truncated)[done], np.asarray(out.terminated)[done]
    np.testing.assert_array_equal(trunc, (lengths == 20) & ~term)
    # Sparse objects end the episode when collected: terminal returns are ±1.
    returns = np.asarray(out.info["episode_return"])[done & np.asarray(out.terminated)]
    assert len(returns) > 0 and set(np.unique(returns)) <= {-1.0, 1.0}


def test_auto_reset_restarts_with_all_objects():
    params = _params(TAB, [(1.0, 1.0, 0.0)], [[0, 1]])
    wrapped = AutoReset(TAB)
    state = _state([0, 0], [[0, 1]], [True], time=5)
    obs, state, out = jax.jit(wrapped.step)(jax.random.key(1), state, jnp.int32(E), params)
    assert bool(out.terminated) and float(out.reward) == 1.0
    assert int(out.final_obs) == 1 * 2 + 0  # at (0, 1), object gone
    assert bool(state.present[0]) and int(state.time) == 0
    assert int(obs) == int(TAB.state_index(state.pos, state.present))


def test_transition_model_matches_sampled_steps():
    """The exact model of tabular Dense against 4000 sampled steps from a few (s, a) pairs,
    including ones that collect an object (terminate w.p. p_term, respawn w.p. p_respawn)."""
    env = gw.tabular_dense()
    params = env.default_params()
    model = jax.jit(env.transition_model)(params)
    k = env.num_objects
    cells = np.flatnonzero(env.free_index() >= 0)
    obj = np.asarray(params.obj_pos)
    # a state next to object 2 (p_term 0.5) with objects 0 and 2 present, and a random one
    r, c = obj[2]
    near = next(
        (r + dr, c + dc) for dr, dc in gw.MOVES
        if (dr or dc) and 0 <= r + dr < env.height and 0 <= c + dc < env.width
        and env.free_index()[(r + dr) * env.width + c + dc] >= 0
        and not any((obj == (r + dr, c + dc)).all(-1))
    )  # fmt: skip
    move = next(
        i for i, m in enumerate(gw.MOVES) if (near[0] + m[0], near[1] + m[1]) == (r, c)
    )
    present = np.array([True, False, True, False])
    s_near = int(env.state_index(jnp.asarray(near), jnp.asarray(present)))
    cases = [(s_near, move), (s_near, 0), (777, 5)]
    n = 4000
    sample = jax.jit(
        jax.vmap(lambda key, state, a: env.step(key, state, a, params), in_axes=(0, None, None))
    )
    for s, a in cases:
        pos = env._pos(jnp.asarray(cells[s // 2**k]))
        present = (s % 2**k) & (2 ** np.arange(k)) > 0
        state = gw.GridState(pos, params.obj_pos, jnp.asarray(present), jnp.int32(0))
        keys = jax.random.split(jax.random.key(s), n)
        obs, _, step = sample(keys, state, jnp.int32(a))
        np.testing.assert_allclose(step.reward.mean(), model.reward[s, a], atol=1e-6)
        cont = ~np.asarray(step.terminated)
        np.testing.assert_allclose(cont.mean(), model.p_continue[s, a], atol=0.03)
        nexts, probs = np.asarray(model.next_state[s, a]), np.asarray(model.prob[s, a])
        for nxt, p in zip(nexts, probs, strict=True):
            np.testing.assert_allclose((np.asarray(obs) == nxt).mean(), p, atol=0.03)
        np.testing.assert_allclose(model.prob[s, a].sum(), 1.0, rtol=1e-6)


def test_policy_evaluation_satisfies_bellman_equation():
    env = gw.tabular_sparse()
    model = jax.jit(env.transition_model)(env.default_params())
    logits = jax.random.normal(jax.random.key(0), (env.num_states, gw.NUM_ACTIONS))
    pi = jax.nn.softmax(logits)
    v = jax.jit(gw.policy_evaluation, static_argnums=2)(model, pi, 0.9)
    q = model.reward + 0.9 * model.p_continue * jnp.sum(model.prob * v[model.next_state], -1)
    np.testing.assert_allclose(v, jnp.sum(pi * q, -1), atol=1e-4)
    assert float(jnp.max(v)) > 0.0 > float(jnp.min(v))  # +1 and -1 objects are reachable
