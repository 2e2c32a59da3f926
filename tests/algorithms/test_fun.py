"""FeUdal Networks: d_cos and the intrinsic reward by hand, the Manager's directions
``s_{t+c} - s_t`` against a numpy loop (episode ends inside the horizon, the rollout's
edge), the dilated LSTM stepping one core per step, resets, no gradient between Worker
and Manager, the re-run network matching what ``collect`` saw, the recorded intrinsic
reward against a numpy recomputation, vmapped seeds against looped ones, config errors,
evaluation through ``jaxrl.runner.evaluate``, and FuN learning to cross four rooms from
corner to corner."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import fun
from jaxrl.envs import four_rooms as fr
from jaxrl.envs import registry
from jaxrl.errors import ConfigError
from jaxrl.runner import evaluate

TINY = fun.Config(total_timesteps=3 * 4 * 12, num_envs=4, rollout_len=12, horizon=3,
                  dilation=3, state_dim=6, goal_embed=4, worker_hidden=8,
                  torso_hidden=(8,))  # fmt: skip
ENV, PARAMS = registry.make("hrl/four_rooms", max_steps=7)  # short episodes: resets in a rollout


def _cos(a, b):
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return 0.0 if norm == 0 else float(a @ b / norm)


def test_cosine_and_intrinsic_reward_by_hand():
    a, b = np.array([3.0, 4.0]), np.array([4.0, -3.0])
    got = fun.cosine(jnp.asarray([a, a, np.zeros(2)]), jnp.asarray([a, b, b]))
    np.testing.assert_allclose(np.asarray(got), [1.0, 0.0, 0.0], atol=1e-7)
    # a zero vector (a dead ReLU state, a Manager output of 0) keeps gradients finite
    for grad in (
        jax.grad(lambda x: fun.cosine(x, jnp.ones(3)))(jnp.zeros(3)),
        jax.grad(lambda x: fun.cosine(jnp.ones(3), x))(jnp.zeros(3)),
        jax.grad(lambda x: jnp.sum(fun.norm(x)))(jnp.zeros((2, 3))),
    ):
        assert np.isfinite(np.asarray(grad)).all()
    np.testing.assert_allclose(fun.norm(jnp.asarray([[3.0, 4.0]])), [5.0])

    rng = np.random.default_rng(0)
    states, goals = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    filled = np.array([[True, True, False], [False, False, False]])
    s = rng.normal(size=(2, 4))
    carry = fun.policy_carry(fun.Config(horizon=3, state_dim=4, rollout_len=8), 2).replace(
        states=jnp.asarray(states, jnp.float32),
        goals=jnp.asarray(goals, jnp.float32),
        filled=jnp.asarray(filled),
    )
    got = fun.intrinsic_reward(jnp.asarray(s, jnp.float32), carry)
    want0 = np.mean([_cos(s[0] - states[0, i], goals[0, i]) for i in range(2)])
    np.testing.assert_allclose(np.asarray(got), [want0, 0.0], rtol=1e-5, atol=1e-7)


def test_manager_targets_against_a_numpy_loop():
    rng = np.random.default_rng(1)
    length, num_envs, d, c = 9, 5, 3, 4
    state, next_state = rng.normal(size=(2, length, num_envs, d)).astype(np.float32)
    done = rng.random((length, num_envs)) < 0.2
    delta, valid = fun.manager_targets(
        jnp.asarray(state), jnp.asarray(next_state), jnp.asarray(done), c
    )
    for t in range(length):
        for n in range(num_envs):
            j = t + c - 1
            for k in range(t, min(t + c, length)):
                if done[k, n]:
                    j = k
                    break
            assert bool(valid[t, n]) == (j < length)
            if j < length:
                np.testing.assert_allclose(delta[t, n], next_state[j, n] - state[t, n], rtol=1e-6)


def _net_and_params(cfg=TINY, batch=2):
    net = fun.network(cfg, ENV)
    carry = fun.policy_carry(cfg, batch)
    obs = jnp.full((batch, 2), 0.5)
    off = jnp.zeros((batch,), bool)
    noise = jnp.zeros((batch, cfg.state_dim))
    return net, net.init(jax.random.key(0), carry, obs, off, off, noise), carry, obs, off, noise


def test_the_dilated_lstm_steps_one_core_per_step_and_a_reset_zeroes_the_carry():
    net, params, carry, obs, off, noise = _net_and_params()
    steps = []
    for t in range(5):
        new, _ = net.apply(params, carry, obs * (t + 1), off, off, noise)
        changed = np.any(np.asarray(new.manager[1] != carry.manager[1]), axis=(0, 2))
        steps.append(np.flatnonzero(changed).tolist())
        carry = new
    assert steps == [[0], [1], [2], [0], [1]]  # core t mod r
    assert np.asarray(carry.filled).all() and np.asarray(carry.step).tolist() == [5, 5]
    # a reset makes the step equal to one from the zero carry
    on = jnp.ones_like(off)
    reset_out = net.apply(params, carry, obs, on, off, noise)
    fresh_out = net.apply(params, fun.policy_carry(TINY, 2), obs, off, off, noise)
    for a, b in zip(jax.tree.leaves(reset_out), jax.tree.leaves(fresh_out), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a plain LSTM Manager (dilation 1) steps its one core every step
    cfg = fun.Config(**{**TINY.__dict__, "dilation": 1})
    net, params, carry, obs, off, noise = _net_and_params(cfg)
    assert carry.manager[0].shape == (2, 1, cfg.state_dim)
    new, _ = net.apply(params, carry, obs, off, off, noise)
    assert np.any(np.asarray(new.manager[1] != carry.manager[1]))


def _norm(tree) -> float:
    """The global norm of a pytree's leaves."""
    return float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))))


def test_no_gradient_flows_between_worker_and_manager():
    net, params, carry, obs, off, noise = _net_and_params()
    carry, _ = net.apply(params, carry, obs, off, off, noise)  # goals in the history

    def worker(p):
        return jnp.sum(net.apply(p, carry, obs * 2, off, off, noise)[1].logits)

    def manager(p):
        out = net.apply(p, carry, obs * 2, off, off, noise)[1]
        return jnp.sum(fun.cosine(jnp.ones_like(out.goal), out.goal))

    def norms(grads, names):
        return {n: _norm(grads["params"][n]) for n in names}

    worker_grads, manager_grads = jax.grad(worker)(params), jax.grad(manager)(params)
    manager_side = ("space", "manager", "manager_value")
    worker_side = ("worker", "worker_u", "worker_value", "goal_embed")
    assert all(v == 0.0 for v in norms(worker_grads, manager_side).values())
    assert all(v > 0.0 for v in norms(worker_grads, ("worker", "worker_u", "goal_embed")).values())
    assert all(v == 0.0 for v in norms(manager_grads, worker_side).values())
    assert all(v > 0.0 for v in norms(manager_grads, ("space", "manager", "percept")).values())


def _collected(hp=None, updates=1):
    """A state after ``updates - 1`` updates and the next rollout."""
    hp = fun.HParams.make(goal_epsilon=0.3) if hp is None else hp
    state = fun.init(TINY, ENV, jax.random.key(3), hp, PARAMS)
    state, _ = jax.jit(lambda s: fun.train(TINY, ENV, s, hp, updates - 1))(state)
    return state, *jax.jit(lambda s: fun.collect(TINY, ENV, s, hp))(state), hp


def test_the_rerun_network_matches_what_collect_saw_across_resets():
    before, _, rollout, hp = _collected(updates=2)  # carry0 mid-episode, resets inside
    assert np.asarray(rollout.reset).any() and np.asarray(rollout.explore).any()
    assert not np.asarray(rollout.reset[0]).all()
    batch = fun.make_batch(TINY, rollout, hp)
    out = fun.unroll(TINY, ENV, before.params, batch)
    for name in ("worker_value", "manager_value", "state"):
        np.testing.assert_allclose(
            np.asarray(getattr(out, name)), np.asarray(getattr(rollout, name)), rtol=2e-5,
            atol=2e-6,
        )  # fmt: skip


def test_the_recorded_intrinsic_reward_against_a_numpy_recomputation():
    """With no goal exploration the Worker's goals are the Manager's: recompute
    ``r^I_{t+1}`` from the unrolled states and goals, episode by episode."""
    hp = fun.HParams.make(goal_epsilon=0.0)
    before, _, rollout, _ = _collected(hp)  # the first rollout: every env starts fresh
    out = fun.unroll(TINY, ENV, before.params, fun.make_batch(TINY, rollout, hp))
    s, g = np.asarray(out.state), np.asarray(out.goal)
    nxt, reset = np.asarray(rollout.next_state), np.asarray(rollout.reset)
    assert reset[0].all() and reset[1:].any()
    c = TINY.horizon
    for n in range(TINY.num_envs):
        start = 0
        for t in range(TINY.rollout_len):
            if reset[t, n]:
                start = t
            terms = [_cos(nxt[t, n] - s[t + 1 - i, n], g[t + 1 - i, n])
                     for i in range(1, c + 1) if t + 1 - i >= start]  # fmt: skip
            np.testing.assert_allclose(rollout.intrinsic[t, n], np.mean(terms), atol=2e-5)


def test_vmapped_seeds_equal_one_by_one():
    hp = fun.HParams.make()

    def run(key):
        state = fun.init(TINY, ENV, key, hp, PARAMS)
        return fun.train(TINY, ENV, state, hp, TINY.num_updates)

    keys = jax.random.split(jax.random.key(0), 2)
    batched = jax.jit(jax.vmap(run))(keys)

    def floats(tree):
        return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]

    for i in range(2):
        single = jax.jit(run)(keys[i])
        for a, b in zip(floats(batched), floats(single), strict=True):
            np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_config_errors():
    with pytest.raises(ConfigError, match="rollout_len = 10 must exceed horizon = 10"):
        fun.Config(rollout_len=10, horizon=10)
    hp = fun.HParams.make()
    refused = [("Pendulum-v1", "FuN needs Discrete actions"),
               ("Breakout-MinAtar", "torso='mlp' needs vector observations")]  # fmt: skip
    for env_id, match in refused:
        env, _ = registry.make(env_id)
        with pytest.raises(ConfigError, match=match):  # refused while tracing, before compiling
            jax.eval_shape(lambda key, env=env: fun.init(TINY, env, key, hp), jax.random.key(0))
    with pytest.raises(ConfigError, match="intrinsic_weight"):
        fun.check(TINY, fun.HParams.make(intrinsic_weight=-0.5))


def test_evaluates_through_the_runner_and_plays_the_images_of_minatar():
    hp = fun.HParams.make()
    state = fun.init(TINY, ENV, jax.random.key(0), hp, PARAMS)
    for deterministic in (True, False):
        returns, lengths = evaluate.evaluate_episodes(
            fun, TINY, ENV, state.params, jax.random.key(1), 3, deterministic, PARAMS, 7
        )
        assert returns.shape == (3,) and np.asarray(lengths).max() <= 7
        assert np.isin(np.nan_to_num(np.asarray(returns), nan=-1.0), [-1.0, 0.0, 1.0]).all()
    cfg = fun.Config(**{**TINY.__dict__, "torso": "minatar", "torso_hidden": (8,)})
    env, _ = registry.make("Breakout-MinAtar")
    state = fun.init(cfg, env, jax.random.key(0), hp)
    state, metrics = jax.jit(lambda s: fun.update(cfg, env, s, hp))(state)
    assert np.isfinite(float(metrics["train/total_loss"]))


def test_fun_learns_to_cross_four_rooms_from_corner_to_corner():
    """The task of experiments/fun: every episode starts in the top-left corner, the only
    reward is entering the bottom-right one, moves slip with probability 1/3 and episodes
    are cut at 200 steps. A uniformly random policy reaches the goal in 5.5 % of episodes
    (experiments/fun/RESULTS.md); FuN with its defaults, in over 60 % of its last 50,000
    steps' episodes on both seeds."""
    env, params = registry.make("hrl/four_rooms", max_steps=200, start=fr.cell_index(1, 1))
    params = params.replace(goal=jnp.int32(fr.cell_index(11, 11)))
    cfg = fun.Config(total_timesteps=500_000)
    hp = fun.HParams.make()

    def run(key):
        state = fun.init(cfg, env, key, hp, params)
        return fun.train(cfg, env, state, hp, cfg.num_updates)[1]["episode/return"]

    returns = np.asarray(jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 2)))
    final = np.nanmean(returns[:, -cfg.num_updates // 10 :], axis=1)
    assert (final > 0.6).all(), final
