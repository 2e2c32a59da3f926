"""HIRO: the goal transition and low-level reward by hand, the off-policy correction against
a numpy reference (and its fixed points), what one collected segment holds (goals that keep
pointing at one state, the high level's summed reward, a time limit or a terminal step
cutting the segment),
the gradient-step counts, vmapped seeds against looped ones, config errors, and HIRO
learning to reach the target of an open room."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import hiro, td3
from jaxrl.envs import registry
from jaxrl.envs.point_maze import PointMaze
from jaxrl.envs.probe import ContinuousTarget
from jaxrl.errors import ConfigError

TINY = hiro.Config(
    total_timesteps=400,
    goal_interval=4,
    goal_range=(0.5, 0.5),
    buffer_size=200,
    batch_size=8,
    learning_starts=40,
    hidden=(16,),
    num_candidates=5,
)
ENV = PointMaze()


def test_goal_transition_keeps_pointing_at_one_state_and_the_low_reward_is_its_distance():
    obs = jnp.asarray([[1.0, 2.0, 9.0, 9.0]])
    goal = jnp.asarray([[0.5, -0.25]])
    nxt = jnp.asarray([[1.25, 1.5, 9.0, 9.0]])
    new_goal = hiro.goal_transition(TINY, obs, goal, nxt)
    np.testing.assert_allclose(new_goal, [[0.25, 0.25]])  # 1.0 + 0.5 - 1.25, 2.0 - 0.25 - 1.5
    np.testing.assert_allclose(nxt[:, :2] + new_goal, obs[:, :2] + goal)
    np.testing.assert_allclose(hiro.low_reward(TINY, obs, goal, nxt), [-np.sqrt(0.125)], rtol=1e-6)
    np.testing.assert_allclose(hiro.low_input(TINY, obs, goal), [[1.0, 2.0, 9.0, 9.0, 1.0, -0.5]])


def _segments(key, batch=6):
    """Random segments ``[B, ...]`` with a random low actor's params."""
    c = TINY.goal_interval
    keys = jax.random.split(key, 6)
    obs = jax.random.uniform(keys[0], (batch, 4), minval=0.0, maxval=4.0)
    states = jax.random.uniform(keys[1], (batch, c, 4), minval=0.0, maxval=4.0)
    states = states.at[:, 0].set(obs)
    tr = td3.Transition(
        obs,
        jax.random.uniform(keys[2], (batch, 2), minval=-1.0, maxval=1.0),
        jnp.zeros(batch),
        jnp.zeros(batch),
        jax.random.uniform(keys[3], (batch, 4), minval=0.0, maxval=4.0),
    )
    actions = jax.random.uniform(keys[4], (batch, c, 2), minval=-1.0, maxval=1.0)
    valid = jnp.ones((batch, c)).at[0, 2:].set(0.0)
    low = hiro.init(TINY, ENV, keys[5], hiro.HParams.make()).low.params.actor
    return hiro.Segment(tr, states, actions, valid), low


def test_relabel_picks_the_candidate_a_numpy_reference_picks():
    seg, low = _segments(jax.random.key(0))
    hp = hiro.HParams.make()
    key = jax.random.key(1)
    goal, best = hiro.relabel(TINY, ENV, low, seg, key, hp)
    # Reference: the same candidates, scored with a Python loop over segments and steps.
    actor, _ = td3.networks(hiro.level_configs(TINY)[0], ENV)
    scale = np.asarray(TINY.goal_range)
    tr = jax.tree.map(np.asarray, seg.transition)
    noise = np.asarray(jax.random.normal(key, (6, TINY.num_candidates, 2)))
    for b in range(6):
        origin, reached = tr.obs[b, :2], tr.next_obs[b, :2] - tr.obs[b, :2]
        cands = [tr.action[b] * scale, reached] + [reached + 0.5 * scale * n for n in noise[b]]
        scores = []
        for cand in np.clip(cands, -scale, scale):
            total = 0.0
            for i in range(TINY.goal_interval):
                if seg.valid[b, i] == 0:
                    continue
                s = np.asarray(seg.states[b, i])
                g = cand + origin - s[:2]
                mu = np.asarray(actor.apply(low, np.concatenate([s, g / scale])[None]))[0]
                total += -0.5 * np.sum((np.asarray(seg.actions[b, i]) - mu) ** 2)
            scores.append(total)
        assert int(best[b]) == int(np.argmax(scores))
        np.testing.assert_allclose(
            goal[b], np.clip(cands, -scale, scale)[np.argmax(scores)] / scale, rtol=1e-5, atol=1e-6
        )


def test_relabel_keeps_a_goal_whose_actions_the_low_policy_took_and_ignores_cut_steps():
    seg, low = _segments(jax.random.key(2))
    actor, _ = td3.networks(hiro.level_configs(TINY)[0], ENV)
    tr = seg.transition
    goals = (
        (tr.action * hiro.goal_scale(TINY, tr.action))[:, None]
        + tr.obs[:, None, :2]
        - seg.states[:, :, :2]
    )
    greedy = actor.apply(low, hiro.low_input(TINY, seg.states, goals))
    seg = seg.replace(actions=greedy)  # the current low policy's own actions for the original goals
    _, best = hiro.relabel(TINY, ENV, low, seg, jax.random.key(3), hiro.HParams.make())
    np.testing.assert_array_equal(np.asarray(best), 0)
    # Steps outside the segment (valid 0) do not count: changing them changes nothing.
    noisy = seg.replace(actions=seg.actions.at[0, 2:].set(-seg.actions[0, 2:]))
    _, again = hiro.relabel(TINY, ENV, low, noisy, jax.random.key(3), hiro.HParams.make())
    np.testing.assert_array_equal(np.asarray(again), 0)


def test_a_collected_segment_holds_the_low_steps_goals_and_summed_reward():
    cfg = dataclasses.replace(TINY, num_envs=3)
    hp = hiro.HParams.make(high_reward_scale=0.5)
    state = hiro.init(cfg, ENV, jax.random.key(4), hp)
    state = state.replace(env_steps=jnp.asarray(1000, jnp.int32))  # past warm-up: policy goals
    new, low, seg, info = hiro.collect(cfg, ENV, state, hp)
    c = cfg.goal_interval
    assert low.obs.shape == (c, 3, 6) and seg.states.shape == (3, c, 4)
    np.testing.assert_allclose(seg.states, jnp.swapaxes(low.obs[..., :4], 0, 1))
    np.testing.assert_allclose(seg.transition.obs, state.obs)
    np.testing.assert_allclose(seg.transition.next_obs, new.obs)  # no episode ended
    np.testing.assert_array_equal(seg.valid, 1.0)
    # The goal keeps pointing at one state: s_i + g_i is the same for every step i.
    target = low.obs[..., :2] + low.obs[..., 4:] * hiro.goal_scale(cfg, low.obs[..., 4:])
    np.testing.assert_allclose(target, jnp.broadcast_to(target[:1], target.shape), atol=1e-5)
    np.testing.assert_allclose(low.obs[0, :, 4:], seg.transition.action, atol=1e-6)
    # High reward: the scale times the env's reward summed over the segment.
    env_reward = -jnp.linalg.norm(low.next_obs[..., :2] - low.next_obs[..., 2:4], axis=-1)
    np.testing.assert_allclose(seg.transition.reward, 0.5 * env_reward.sum(0), rtol=1e-5)
    np.testing.assert_allclose(
        low.reward, hiro.low_reward(cfg, low.obs, low.obs[..., 4:] * 0.5, low.next_obs), rtol=1e-5
    )
    assert int(new.env_steps) == 1000 + 3 * c
    assert not bool(jnp.any(info["done"]))


def test_an_episode_end_cuts_the_segment_and_the_new_episode_gets_a_fresh_goal():
    env = PointMaze()
    params = env.default_params().replace(max_steps=jnp.asarray(6, jnp.int32))
    hp = hiro.HParams.make()
    state = hiro.init(TINY, env, jax.random.key(5), hp, params)  # c = 4: the end is at step 2 of 4
    state, _, first, _ = hiro.collect(TINY, env, state, hp)
    np.testing.assert_array_equal(first.valid, 1.0)
    before = state.obs
    state, low, seg, info = hiro.collect(TINY, env, state, hp)
    np.testing.assert_array_equal(np.asarray(info["done"])[:, 0], [False, True, False, False])
    np.testing.assert_array_equal(seg.valid[0], [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(seg.transition.obs[0], before[0])
    np.testing.assert_allclose(seg.transition.next_obs[0, :2], low.next_obs[1, 0, :2])
    assert float(seg.transition.terminated[0]) == 0.0  # truncated: the high level bootstraps
    # After the reset the goal is a new proposal, not the old goal's transition.
    carried = hiro.goal_transition(TINY, low.obs[1, 0], low.obs[1, 0, 4:] * 0.5, low.next_obs[1, 0])
    assert not np.allclose(low.obs[2, 0, 4:] * 0.5, carried)
    np.testing.assert_allclose(low.obs[2, 0, :2], [1.5, 1.5])  # the new episode's start


def test_a_terminal_step_ends_the_segment_without_bootstrap():
    # One-step episodes (obs o, reward -(a - o)^2, terminated): every segment is one step.
    env = ContinuousTarget()
    cfg = dataclasses.replace(TINY, goal_dims=1, goal_range=(1.0,), num_envs=2)
    hp = hiro.HParams.make()
    hiro.check(cfg, env, hp)
    state = hiro.init(cfg, env, jax.random.key(11), hp)
    _, low, seg, info = hiro.collect(cfg, env, state, hp)
    np.testing.assert_array_equal(info["done"], True)
    np.testing.assert_array_equal(low.terminated, 1.0)
    np.testing.assert_array_equal(seg.valid, [[1.0, 0.0, 0.0, 0.0]] * 2)
    np.testing.assert_array_equal(seg.transition.terminated, 1.0)
    first_reward = -jnp.square(2.0 * low.action[0, :, 0] - seg.transition.obs[:, 0])  # [-2, 2]
    np.testing.assert_allclose(seg.transition.reward, 0.1 * first_reward, rtol=1e-5)


def test_each_update_after_warm_up_takes_c_low_and_one_high_gradient_step():
    hp = hiro.HParams.make()
    state = hiro.init(TINY, ENV, jax.random.key(6), hp)
    update = jax.jit(lambda s: hiro.update(TINY, ENV, s, hp))
    counts, nan = [], []
    for _ in range(14):
        state, metrics = update(state)
        counts.append((int(state.low.grad_steps), int(state.high.grad_steps)))
        nan.append(bool(jnp.isnan(metrics["low/critic_loss"])))
    # 40 warm-up env steps = 10 updates of c = 4 (the high buffer holds its batch of 8 by then).
    assert counts[:9] == [(0, 0)] * 9 and nan[:9] == [True] * 9
    assert counts[9:] == [(4, 1), (8, 2), (12, 3), (16, 4), (20, 5)] and not any(nan[9:])
    assert 0.0 <= float(metrics["high/original_goal_kept"]) <= 1.0


def test_without_correction_the_replayed_goals_are_the_stored_ones():
    cfg = dataclasses.replace(TINY, correction=False)
    hp = hiro.HParams.make()
    state = hiro.init(cfg, ENV, jax.random.key(7), hp)
    state, metrics = jax.jit(lambda s: hiro.train(cfg, ENV, s, hp, 15))(state)
    assert float(metrics["high/original_goal_kept"][-1]) == 1.0
    assert int(state.high.grad_steps) == 6  # updates 10 to 15


def test_vmapped_seeds_equal_looped_ones():
    hp = hiro.HParams.make()
    run = lambda k: hiro.train(TINY, ENV, hiro.init(TINY, ENV, k, hp), hp, 12)
    keys = jax.random.split(jax.random.key(8), 2)
    batched = jax.jit(jax.vmap(run))(keys)
    pick = lambda out: (out[0].low, out[0].high, out[0].obs, out[1])
    looped = jax.jit(run)
    for i in range(2):
        single = pick(looped(keys[i]))
        one = jax.tree.map(lambda x, i=i: x[i], pick(batched))
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(one), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5)


def test_evaluate_reports_the_final_observation_and_return_of_each_episode():
    hp = hiro.HParams.make()
    state = hiro.init(TINY, ENV, jax.random.key(9), hp)
    out = hiro.evaluate(TINY, ENV, state, jax.random.key(10), ENV.evaluation_params(7), 3, 10)
    assert out["final_obs"].shape == (3, 4) and out["return"].shape == (3,)
    np.testing.assert_array_equal(out["length"], 7)  # cut at the time limit, not at 10 steps
    assert float(jnp.max(out["return"])) < 0.0
    np.testing.assert_allclose(out["final_obs"][:, 2:], jnp.asarray([[1.5, 3.5]] * 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(goal_range=(1.0,)),
        dict(goal_range=(1.0, 0.0)),
        dict(batch_size=60),  # > buffer_size // goal_interval = 50
        dict(goal_interval=0),
        dict(total_timesteps=3),
        dict(num_candidates=0),
    ],
)
def test_bad_configs_raise(kwargs):
    with pytest.raises(ConfigError):
        dataclasses.replace(TINY, **kwargs)


def test_check_rejects_envs_and_hyperparameters_it_cannot_use():
    hp = hiro.HParams.make()
    with pytest.raises(ConfigError, match="goal_dims"):
        hiro.check(dataclasses.replace(TINY, goal_dims=5, goal_range=(1.0,) * 5), ENV, hp)
    cartpole, _ = registry.make("CartPole-v1")
    with pytest.raises(ConfigError, match="continuous"):
        hiro.check(TINY, cartpole, hp)
    with pytest.raises(ConfigError, match="candidate_std"):
        hiro.check(TINY, ENV, hiro.HParams.make(candidate_std=-1.0))
    with pytest.raises(ConfigError, match="learning_rate"):
        hiro.check(TINY, ENV, hiro.HParams.make(low=td3.HParams.make(learning_rate=-1.0)))
    with pytest.raises(ConfigError, match="unknown"):
        hiro.HParams.make(learning_rate=1.0)


OPEN_ROOM = (
    "#####",
    "#  G#",
    "#   #",
    "#S  #",
    "#####",
)


@pytest.mark.learning
def test_hiro_learns_to_reach_the_far_corner_of_an_open_room():
    # Two seeds, 30k env steps of random training targets; then the greedy hierarchy, from
    # (1.5, 1.5), must end within 0.5 of (3.5, 3.5), 2.8 away. They end 0.24 and 0.21 away;
    # after the 2,000 warm-up steps alone, 2.43 and 0.64.
    env = PointMaze(layout=OPEN_ROOM)
    cfg = hiro.Config(total_timesteps=30_000, learning_starts=2_000, buffer_size=30_000)
    hp = hiro.HParams.make()
    hiro.check(cfg, env, hp)

    def run(key):
        state = hiro.train(cfg, env, hiro.init(cfg, env, key, hp), hp, cfg.num_updates)[0]
        out = hiro.evaluate(cfg, env, state, key, env.evaluation_params(60), 1, 60)
        return jnp.linalg.norm(out["final_obs"][0, :2] - out["final_obs"][0, 2:])

    distance = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 2))
    assert float(jnp.max(distance)) < env.success_radius, distance
