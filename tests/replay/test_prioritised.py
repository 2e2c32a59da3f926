"""Prioritised replay: sampling law (chi-square), priorities, IS weights, sequences, vmap/jit."""

import functools

import chex
import flashbax as fbx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxrl.errors import ConfigError
from jaxrl.replay import buffers


@functools.partial(jax.jit, static_argnums=0)
def _vsample(sample, state, keys):
    """Compiled once per buffer's ``sample`` (a static argument) and shapes."""
    return jax.vmap(sample, in_axes=(None, 0))(state, keys)


def _draws(buf, state, num_batches: int, seed: int = 0):
    """``num_batches`` independent calls of ``sample``: indices, probabilities, experience."""
    out = _vsample(buf.sample, state, jax.random.split(jax.random.key(seed), num_batches))
    return jax.tree.map(lambda x: np.asarray(x).reshape(-1, *x.shape[2:]), out)


def _flat_with_priorities(priorities, alpha, capacity=None):
    """A flat buffer holding ``x = 0..K-1`` (slot ``i`` holds ``x = i``); ``K`` per ``sample``."""
    k = len(priorities)
    buf = buffers.prioritised_flat_buffer(
        capacity=capacity or k, batch_size=k, min_size=1, priority_exponent=alpha
    )
    state = buf.init({"x": jnp.zeros((), jnp.int32)})
    state = buf.add(state, {"x": jnp.arange(k, dtype=jnp.int32)})
    state = buf.set_priorities(state, jnp.arange(k), jnp.asarray(priorities, jnp.float32))
    return buf, state


def _probability_of_each_index(draws) -> dict[int, float]:
    return {int(i): float(p) for i, p in zip(draws.indices, draws.probabilities, strict=True)}


def test_flat_sampling_frequencies_follow_priorities_to_the_alpha():
    p = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 3.0, 0.25])
    alpha = 0.6
    buf, state = _flat_with_priorities(p, alpha)
    draws = _draws(buf, state, num_batches=1250)  # 10_000 draws
    expected = p**alpha / np.sum(p**alpha)
    np.testing.assert_array_equal(draws.experience["x"], draws.indices)
    np.testing.assert_allclose(draws.probabilities, expected[draws.indices], rtol=1e-5)
    counts = np.bincount(draws.indices, minlength=len(p))
    # Stratified draws vary less than multinomial ones, so the test is conservative.
    assert stats.chisquare(counts, expected * counts.sum()).pvalue > 1e-3
    # ... and sharp enough to reject uniform sampling, and the wrong exponent (α = 1).
    uniform = np.full(len(p), counts.sum() / len(p))
    assert stats.chisquare(counts, uniform).pvalue < 1e-10
    linear = p / p.sum() * counts.sum()
    assert stats.chisquare(counts, linear).pvalue < 1e-10


def test_exponent_zero_samples_uniformly():
    buf, state = _flat_with_priorities([0.1, 1.0, 10.0, 100.0], alpha=0.0)
    draws = _draws(buf, state, num_batches=200)
    np.testing.assert_allclose(draws.probabilities, 0.25)
    counts = np.bincount(draws.indices, minlength=4)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_set_priorities_changes_the_distribution_and_new_items_get_the_max():
    alpha = 0.5
    buf, state = _flat_with_priorities([1.0, 4.0, 9.0, 0.25], alpha, capacity=8)
    # p^α = [1, 2, 3, 0.5]; two new items get the largest p^α ever set, 3.
    state = buf.add(state, {"x": jnp.array([4, 5], jnp.int32)})
    draws = _draws(buf, state, num_batches=800)
    leaves = np.array([1.0, 2.0, 3.0, 0.5, 3.0, 3.0])
    expected = leaves / leaves.sum()
    got = _probability_of_each_index(draws)
    assert set(got) == set(range(6))  # empty slots 6, 7 are never drawn
    np.testing.assert_allclose([got[i] for i in range(6)], expected, rtol=1e-5)
    counts = np.bincount(draws.indices, minlength=6)
    assert stats.chisquare(counts, expected * counts.sum()).pvalue > 1e-3
    assert buffers.num_items(state) == 6

    # Now make item 3 dominant and item 0 unsampleable.
    state = buf.set_priorities(state, jnp.array([0, 3]), jnp.array([0.0, 100.0]))
    draws = _draws(buf, state, num_batches=800, seed=1)
    leaves = np.array([0.0, 2.0, 3.0, 10.0, 3.0, 3.0])
    expected = leaves / leaves.sum()
    counts = np.bincount(draws.indices, minlength=6)
    assert counts[0] == 0
    assert stats.chisquare(counts[1:], expected[1:] * counts.sum()).pvalue > 1e-3
    assert buffers.num_items(state) == 5


def test_new_items_get_at_least_priority_one():
    buf, state = _flat_with_priorities([0.01, 0.01], alpha=1.0, capacity=4)
    state = buf.add(state, {"x": jnp.array([2], jnp.int32)})
    got = _probability_of_each_index(_draws(buf, state, num_batches=40))
    np.testing.assert_allclose(got[2], 1.0 / 1.02, rtol=1e-5)


def test_new_items_get_the_unrounded_max():
    # flashbax 0.1.3 gives them floor(2.7) = 2 (fixed here).
    buf, state = _flat_with_priorities([2.7, 0.5], alpha=1.0, capacity=4)
    state = buf.add(state, {"x": jnp.array([2, 3], jnp.int32)})
    got = _probability_of_each_index(_draws(buf, state, num_batches=100))
    np.testing.assert_allclose([got[i] for i in range(4)], np.array([2.7, 0.5, 2.7, 2.7]) / 8.6)

    seq = buffers.prioritised_sequence_buffer(2, 20, 8, sequence_length=3, priority_exponent=1.0)
    state = seq.init({"t": jnp.zeros((), jnp.int32)})
    state = seq.add(state, {"t": jnp.zeros((2, 5), jnp.int32)})  # 3 windows per env
    state = seq.set_priorities(state, jnp.array([0, 1, 2, 10, 11, 12]), jnp.full(6, 2.5))
    state = seq.add(state, {"t": jnp.zeros((2, 2), jnp.int32)})  # 2 more per env
    draws = _draws(seq, state, num_batches=100)
    assert buffers.num_items(state) == 10
    np.testing.assert_allclose(draws.probabilities, 0.1, rtol=1e-5)  # all 2.5, none 2


def _doctored(nodes, **changes):
    for i, v in changes.items():
        nodes = nodes.at[int(i[1:])].set(v)
    return nodes


@pytest.mark.parametrize(
    "leaves, changes",
    [
        # The node over slots 4, 5 rounded down to 1.9: a descent can overshoot into 6, 7
        # (padding past the capacity 6) and flashbax returns slot 7 with probability 0.
        ([1.0] * 6, {"n5": 1.9}),
        # Slots 4, 5 emptied, but their parents kept 0.5 of rounding error: the descent
        # ends on a zero leaf and the draw is replaced by the batch's first good one.
        ([1.0, 1.0, 1.0, 1.0, 0.0, 0.0], {"n5": 0.5, "n2": 0.5, "n0": 4.5}),
    ],
    ids=["overshoot", "residual"],
)
def test_never_samples_a_zero_priority_slot_when_the_tree_has_drifted(leaves, changes):
    buf, state = _flat_with_priorities(leaves, alpha=1.0)
    tree = state.sum_tree_state
    assert tree.tree_depth == 3  # nodes 0 | 1 2 | 3 4 5 6 | leaves 7 .. 14 (slots 0 .. 7)
    state = state.replace(sum_tree_state=tree.replace(nodes=_doctored(tree.nodes, **changes)))
    draws = _draws(buf, state, num_batches=300)
    assert np.all(np.asarray(leaves)[draws.indices] > 0)
    assert np.all(draws.probabilities > 0)
    np.testing.assert_array_equal(draws.experience["x"], draws.indices)
    # The same state fools flashbax's own sampler, so the test can fail.
    fbx_buf = fbx.make_prioritised_item_buffer(6, 1, 6, add_batches=True, priority_exponent=1.0)
    with jax.numpy_rank_promotion("allow"):
        theirs = _draws(fbx_buf, state, num_batches=300)
    assert np.any(theirs.probabilities == 0)


def _assert_exact_tree(state):
    """Every internal node is the float32 sum of its two children (so the root is a sum of
    the leaves, not of a history of added deltas), and the root is the leaves' float64 sum
    to float32 precision."""
    tree = state.sum_tree_state
    nodes = np.asarray(tree.nodes)
    inner = np.arange(2**tree.tree_depth - 1)
    np.testing.assert_array_equal(nodes[inner], nodes[2 * inner + 1] + nodes[2 * inner + 2])
    leaves = nodes[2**tree.tree_depth - 1 :].astype(np.float64)
    np.testing.assert_allclose(nodes[0], leaves.sum(), rtol=1e-6)


@functools.partial(jax.jit, static_argnums=0)
def _shrink_every_priority(buf, state, key):
    """Sets every slot's priority from 1 to ~1e-3 in shuffled batches of 64, as a learner
    whose TD errors shrink does (each ``set_priorities`` moves the total by about -64)."""
    capacity = state.sum_tree_state.nodes.shape[0] // 2 + 1
    order = jax.random.permutation(key, capacity).reshape(-1, 64)
    small = jax.random.uniform(key, order.shape, minval=1e-4, maxval=2e-3)

    def step(state, batch):
        indices, priorities = batch
        return buf.set_priorities(state, indices, priorities), None

    return jax.lax.scan(step, state, (order, small))[0]


def test_the_sum_tree_does_not_drift_when_priorities_shrink():
    """Found by experiments/per/blind_cliffwalk.py: flashbax propagates each change as a
    delta added to the ancestors, and the rounding of adding -1 to a total near 8,192
    accumulated until the root was 0.42 below the sum of the leaves (about 33), so the
    last slots of the tree could no longer be drawn and learning stalled."""
    capacity = 8192
    buf = buffers.prioritised_flat_buffer(capacity, batch_size=64, priority_exponent=1.0)
    state = buf.init({"x": jnp.zeros((), jnp.int32)})
    state = buf.add(state, {"x": jnp.arange(capacity, dtype=jnp.int32)})
    for round_ in range(3):  # each round shrinks every priority, then the ring is refilled
        state = _shrink_every_priority(buf, state, jax.random.key(round_))
        _assert_exact_tree(state)
        state = buf.add(state, {"x": jnp.arange(capacity, dtype=jnp.int32)})
        _assert_exact_tree(state)
    # The last slot can be drawn again: with all of them at 1 it has its share.
    state = buf.set_priorities(state, jnp.arange(capacity - 64, capacity), jnp.full(64, 1e-6))
    state = buf.set_priorities(state, jnp.array([capacity - 1]), jnp.array([1e3]))
    assert np.mean(_draws(buf, state, num_batches=4).indices == capacity - 1) > 0.05


@pytest.mark.parametrize("period", [1, 2, 3])
def test_the_sequence_sum_tree_stays_exact_as_windows_are_written_and_broken(period):
    seq = buffers.prioritised_sequence_buffer(2, 66, 16, sequence_length=5, period=period)
    state = seq.init({"t": jnp.zeros((), jnp.int32)})

    @jax.jit
    def step(state, key):
        state = seq.add(state, {"t": jnp.zeros((2, 7), jnp.int32)})
        draws = seq.sample(state, key)
        return seq.set_priorities(state, draws.indices, jax.random.uniform(key, (16,)) * 1e-3)

    for key in jax.random.split(jax.random.key(0), 40):  # wraps the 66-step rows 4 times
        state = step(state, key)
        _assert_exact_tree(state)


def test_set_priorities_cannot_revive_empty_or_broken_slots():
    buf, state = _flat_with_priorities([1.0, 1.0, 1.0], alpha=1.0, capacity=6)
    # slot 4 is empty, 7 is padding of the 8-leaf tree, 9 is past it; 1 is set to 0.
    state = buf.set_priorities(state, jnp.array([4, 7, 9, 1]), jnp.array([5.0, 5.0, 5.0, 0.0]))
    state = buf.set_priorities(state, jnp.array([1]), jnp.array([5.0]))
    assert buffers.num_items(state) == 2
    assert set(_draws(buf, state, num_batches=100).indices.tolist()) == {0, 2}

    seq = buffers.prioritised_sequence_buffer(1, 10, 4, sequence_length=4)
    state = seq.init({"t": jnp.zeros((), jnp.int32)})
    for start, stop in ((0, 10), (10, 14)):
        state = seq.add(state, {"t": jnp.arange(start, stop, dtype=jnp.int32)[None, :]})
    # Steps 4 .. 13 are stored in slots 4 .. 9, 0 .. 3: windows from slots 1, 2, 3 would
    # run into step 14, which does not exist yet.
    assert buffers.num_items(state) == 7
    state = seq.set_priorities(state, jnp.array([1, 2, 3]), jnp.full(3, 100.0))
    assert buffers.num_items(state) == 7
    t = _draws(seq, state, num_batches=100).experience["t"]
    np.testing.assert_array_equal(np.diff(t, axis=1), 1)


def test_duplicate_indices_keep_the_last_priority():
    buf, state = _flat_with_priorities([1.0, 1.0], alpha=1.0)
    state = buf.set_priorities(state, jnp.array([0, 0, 1]), jnp.array([5.0, 3.0, 1.0]))
    got = _probability_of_each_index(_draws(buf, state, num_batches=40))
    np.testing.assert_allclose([got[0], got[1]], [0.75, 0.25], rtol=1e-5)


def _leaves(state) -> np.ndarray:
    tree = state.sum_tree_state
    return np.asarray(tree.nodes)[2**tree.tree_depth - 1 :][: tree.capacity]


def test_set_priorities_where_applies_only_the_chosen_draws():
    alpha = 0.6
    buf, state = _flat_with_priorities([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], alpha)
    indices = jnp.array([0, 2, 2, 4, 5])
    new = jnp.array([7.0, 8.0, 8.0, 9.0, 10.0], jnp.float32)
    everything = buffers.set_priorities_where(state, indices, new, jnp.ones(5, bool), alpha)
    reference = buf.set_priorities(state, indices, new)
    np.testing.assert_array_equal(_leaves(everything), _leaves(reference))
    top = everything.sum_tree_state.max_recorded_priority
    np.testing.assert_allclose(top, reference.sum_tree_state.max_recorded_priority)
    np.testing.assert_allclose(top, 10.0**alpha, rtol=1e-6)
    nothing = buffers.set_priorities_where(state, indices, new, jnp.zeros(5, bool), alpha)
    np.testing.assert_array_equal(_leaves(nothing), _leaves(state))
    # draws 1 and 4 applied; draw 2 (slot 2 again, not applied) takes draw 1's priority
    some = buffers.set_priorities_where(
        state, indices, new, jnp.array([False, True, False, False, True]), alpha
    )
    want = np.array([1.0, 2.0, 8.0, 4.0, 5.0, 10.0]) ** alpha
    np.testing.assert_allclose(_leaves(some), want, rtol=1e-6)
    _assert_exact_tree(some)


def test_set_priorities_where_cannot_revive_an_empty_slot():
    buf, state = _flat_with_priorities([1.0, 0.0, 2.0], alpha=1.0, capacity=4)
    state = buffers.set_priorities_where(
        state, jnp.array([1, 3]), jnp.array([5.0, 5.0]), jnp.array([True, True]), 1.0
    )
    np.testing.assert_array_equal(_leaves(state), [1.0, 0.0, 2.0, 0.0])


class ImportanceWeightsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed(self):
        probs = jnp.array([0.1, 0.2, 0.4])
        # (N P)^-β with N = 5, β = 0.5: 0.5^-.5, 1^-.5, 2^-.5; divided by the first.
        got = self.variant(buffers.importance_weights)(probs, 5, jnp.float32(0.5))
        np.testing.assert_allclose(got, [1.0, 2**-0.5, 0.5], rtol=1e-6)
        got = self.variant(buffers.importance_weights)(probs, jnp.int32(5), 1.0)
        np.testing.assert_allclose(got, [1.0, 0.5, 0.25], rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_paper_formula_and_beta_zero_gives_ones(self):
        probs = jax.random.uniform(jax.random.key(0), (16,), minval=1e-4, maxval=0.1)
        n, beta = 1000, 0.4
        w = (n * np.asarray(probs, np.float64)) ** -beta
        got = self.variant(buffers.importance_weights)(probs, n, beta)
        np.testing.assert_allclose(got, w / w.max(), rtol=1e-5)
        ones = self.variant(buffers.importance_weights)(probs, n, 0.0)
        np.testing.assert_array_equal(ones, np.ones(16))


def test_importance_weights_are_differentiable_in_beta():
    probs = jnp.array([0.1, 0.2, 0.4])
    grad = jax.grad(lambda b: buffers.importance_weights(probs, 5, b).sum())(0.5)
    # d/dβ (P_min / P_i)^β = (P_min / P_i)^β log(P_min / P_i)
    r = np.array([1.0, 0.5, 0.25])
    np.testing.assert_allclose(grad, np.sum(r**0.5 * np.log(r)), rtol=1e-5)


def test_sequence_items_and_lstm_state_round_trip():
    seq_len, hidden, n = 6, 4, 5
    keys = jax.random.split(jax.random.key(3), 4)
    items = {
        "obs": jax.random.normal(keys[0], (n, seq_len, 3)),
        "action": jax.random.randint(keys[1], (n, seq_len), 0, 7),
        "done": jnp.zeros((n, seq_len), bool).at[2, 4].set(True),
        "lstm": (
            jax.random.normal(keys[2], (n, hidden)),  # c at the sequence start
            jax.random.normal(keys[3], (n, hidden)),  # h
        ),
    }
    buf = buffers.prioritised_flat_buffer(capacity=8, batch_size=8, min_size=1)
    state = buf.init(jax.tree.map(lambda x: x[0], items))
    state = buf.add(state, items)
    draws = _draws(buf, state, num_batches=8)
    chex.assert_shape(draws.experience["obs"], (64, seq_len, 3))
    chex.assert_shape(draws.experience["lstm"], [(64, hidden), (64, hidden)])
    assert set(draws.indices.tolist()) == set(range(n))
    expected = jax.tree.map(lambda x: np.asarray(x)[draws.indices], items)
    jax.tree.map(np.testing.assert_array_equal, draws.experience, expected)


@pytest.mark.parametrize("period", [1, 2])
def test_sequence_buffer_windows_are_consecutive_steps_of_one_env(period):
    num_envs, steps_per_env, seq_len, num_steps = 3, 10, 4, 14
    buf = buffers.prioritised_sequence_buffer(
        num_envs, num_envs * steps_per_env, batch_size=32, sequence_length=seq_len, period=period
    )
    state = buf.init({"t": jnp.zeros((), jnp.int32), "env": jnp.zeros((), jnp.int32)})
    add = jax.jit(buf.add)
    for t in range(num_steps):
        assert bool(buf.can_sample(state)) == (t >= seq_len)
        step = {"t": jnp.full((num_envs, 1), t, jnp.int32), "env": jnp.arange(num_envs)[:, None]}
        state = add(state, step)
    draws = _draws(buf, state, num_batches=8)
    t, env = draws.experience["t"], draws.experience["env"]
    assert t.shape == (256, seq_len)
    np.testing.assert_array_equal(np.diff(t, axis=1), 1)
    assert np.all(env == env[:, :1])
    assert set(env[:, 0]) == set(range(num_envs))
    # Only steps still stored (the last 10 of 14), and windows start at multiples of period.
    assert t.min() >= num_steps - steps_per_env and t.max() == num_steps - 1
    assert np.all(t[:, 0] % period == 0)
    # An index names (env, start slot): index = env * steps_per_env / period + slot / period.
    windows_per_env = steps_per_env // period
    np.testing.assert_array_equal(env[:, 0], draws.indices // windows_per_env)
    np.testing.assert_array_equal(t[:, 0] % steps_per_env, draws.indices % windows_per_env * period)
    # All windows equally likely (new ones all get priority 1).
    n = num_envs * ((steps_per_env - seq_len) // period + 1)
    assert buffers.num_items(state) == n
    np.testing.assert_allclose(draws.probabilities, 1.0 / n, rtol=1e-5)


def test_sequence_buffer_priorities_set_per_window():
    buf = buffers.prioritised_sequence_buffer(2, 20, batch_size=50, sequence_length=3)
    state = buf.init({"t": jnp.zeros((), jnp.int32)})
    state = buf.add(state, {"t": jnp.tile(jnp.arange(10, dtype=jnp.int32), (2, 1))})
    n = int(buffers.num_items(state))
    assert n == 2 * 8
    hot = 12  # env 1, window starting at t = 2
    state = buf.set_priorities(state, jnp.array([hot]), jnp.array([100.0]))
    alpha = 0.6
    draws = _draws(buf, state, num_batches=100)
    p_hot = 100.0**alpha / (n - 1 + 100.0**alpha)
    np.testing.assert_allclose(_probability_of_each_index(draws)[hot], p_hot, rtol=1e-5)
    is_hot = draws.indices == hot
    np.testing.assert_array_equal(
        draws.experience["t"][is_hot], np.tile([2, 3, 4], (is_hot.sum(), 1))
    )
    counts = np.array([is_hot.sum(), (~is_hot).sum()])
    assert stats.chisquare(counts, np.array([p_hot, 1 - p_hot]) * counts.sum()).pvalue > 1e-3


def test_num_items_counts_stored_items_and_complete_windows():
    flat = buffers.prioritised_flat_buffer(capacity=10, batch_size=2)
    state = flat.init({"x": jnp.zeros((), jnp.int32)})
    got, add = [], jax.jit(flat.add)
    for _ in range(5):
        state = add(state, {"x": jnp.zeros((3,), jnp.int32)})
        got.append(int(buffers.num_items(state)))
    assert got == [3, 6, 9, 10, 10]

    seq = buffers.prioritised_sequence_buffer(2, 16, 2, sequence_length=3, period=2)
    state = seq.init({"x": jnp.zeros((), jnp.int32)})
    got, add = [], jax.jit(seq.add)
    for _ in range(12):
        state = add(state, {"x": jnp.zeros((2, 1), jnp.int32)})
        got.append(int(buffers.num_items(state)))
    # windows per env: starts 0, 2, 4, 6 (mod 8) whose 3 steps are stored and not overwritten
    per_env = [0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 3, 3]
    assert got == [2 * w for w in per_env]


def _run(buf, item_fn, example, key, num_iters=6):
    """A DQN-like loop: add, sample, set priorities from fake TD errors; jitted or not."""
    state = buf.init(example)

    def body(state, key):
        key_add, key_sample, key_td = jax.random.split(key, 3)
        state = buf.add(state, item_fn(key_add))
        sample = buf.sample(state, key_sample)
        td = jax.random.normal(key_td, sample.indices.shape)
        state = buf.set_priorities(state, sample.indices, jnp.abs(td) + 1e-3)
        w = buffers.importance_weights(sample.probabilities, buffers.num_items(state), 0.4)
        return state, (sample, w)

    return jax.lax.scan(body, state, jax.random.split(key, num_iters))


_FLAT = (
    lambda: buffers.prioritised_flat_buffer(capacity=16, batch_size=8, min_size=1),
    lambda key: {
        "obs": jax.random.normal(key, (4, 2, 3)),  # 4 items, each a [2, 3] sequence
        "lstm": (jax.random.normal(key, (4, 5)), jnp.zeros((4, 5))),
    },
    {"obs": jnp.zeros((2, 3)), "lstm": (jnp.zeros(5), jnp.zeros(5))},
)
_SEQ = (
    lambda: buffers.prioritised_sequence_buffer(2, 16, batch_size=8, sequence_length=3),
    lambda key: {"obs": jax.random.normal(key, (2, 3, 2))},  # 3 steps of 2 envs
    {"obs": jnp.zeros(2)},
)


@pytest.mark.parametrize("make, item_fn, example", [_FLAT, _SEQ], ids=["flat", "sequence"])
def test_jit_equals_no_jit(make, item_fn, example):
    buf = make()
    run = lambda key: _run(buf, item_fn, example, key)  # noqa: E731
    key = jax.random.key(7)
    chex.assert_trees_all_close(run(key), jax.jit(run)(key), rtol=1e-6)


@pytest.mark.parametrize("make, item_fn, example", [_FLAT, _SEQ], ids=["flat", "sequence"])
def test_vmapped_over_seeds_equals_looped(make, item_fn, example):
    buf = make()
    run = jax.jit(lambda key: _run(buf, item_fn, example, key))
    keys = jax.random.split(jax.random.key(7), 3)
    vmapped = jax.jit(jax.vmap(run))(keys)
    looped = jax.tree.map(lambda *xs: jnp.stack(xs), *[run(k) for k in keys])
    chex.assert_trees_all_close(vmapped, looped, rtol=1e-6)
    np.testing.assert_array_equal(
        buffers.num_items(vmapped[0]), [buffers.num_items(run(k)[0]) for k in keys]
    )
    indices = np.asarray(vmapped[1][0].indices)
    assert not np.array_equal(indices[0], indices[1])  # the seeds differ


@pytest.mark.parametrize(
    "make",
    [
        lambda: buffers.prioritised_flat_buffer(0, 4),
        lambda: buffers.prioritised_flat_buffer(8, 9),
        lambda: buffers.prioritised_flat_buffer(8, 4, min_size=9),
        lambda: buffers.prioritised_flat_buffer(8, 4, priority_exponent=-0.1),
        lambda: buffers.prioritised_flat_buffer(8, 4, priority_exponent=1.5),
        lambda: buffers.prioritised_flat_buffer(8, 4, priority_exponent=float("nan")),
        lambda: buffers.prioritised_flat_buffer(8, 4, priority_exponent="0.6"),
        lambda: buffers.prioritised_sequence_buffer(4, 12, 2, sequence_length=5),
        lambda: buffers.prioritised_sequence_buffer(1, 5, 2, sequence_length=5, period=2),
        lambda: buffers.prioritised_sequence_buffer(2, 40, 2.5, 5),
        lambda: buffers.prioritised_sequence_buffer(2, 40, 2, 5, period=0),
        lambda: buffers.prioritised_sequence_buffer(2, 40, 2, 5, priority_exponent=-1),
    ],
)
def test_bad_settings_raise_config_error(make):
    with pytest.raises(ConfigError):
        make()


@pytest.mark.parametrize("make, item_fn, example", [_FLAT, _SEQ], ids=["flat", "sequence"])
def test_a_fresh_state_has_the_types_of_an_updated_one(make, item_fn, example):
    """Dtypes and weak types equal before and after add / set_priorities, so one compiled
    program serves a state fresh from ``init`` and every later one."""
    buf = make()
    fresh = buf.init(example)
    state = buf.add(fresh, item_fn(jax.random.key(0)))
    state = buf.set_priorities(state, jnp.arange(2), jnp.array([0.5, 2.0]))
    types = lambda s: jax.tree.map(lambda x: (x.dtype, x.weak_type), s)  # noqa: E731
    assert types(fresh) == types(state)
