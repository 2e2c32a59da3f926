"""Tests of ``jaxrl.envs.wrappers`` against plain Python / numpy re-implementations."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs import make, make_vec_env
from jaxrl.envs.wrappers import (
    AutoReset,
    ClipAction,
    EpisodeStats,
    NormalizeObs,
    RunningStats,
    ScaleReward,
    VecEnv,
    is_discrete,
)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("with_states",))
def _scan(env, params, key, actions, with_states=False):
    key_reset, key_steps = jax.random.split(key)
    keys = jax.random.split(key_steps, actions.shape[0])
    obs0, state0 = env.reset(key_reset, params)

    def body(state, inputs):
        obs, state, step = env.step(inputs[0], state, inputs[1], params)
        return state, (obs, step, state if with_states else None)

    return obs0, state0, keys, jax.lax.scan(body, state0, (keys, actions))[1]


def _rollout(env, params, key, actions, with_states=False):
    """Resets then steps ``env`` through ``actions [T, ...]`` in one jitted scan.

    Returns ``(obs0, state0, obs [T, ...], steps, keys [T])``, plus the states ``[T, ...]``
    after each step if ``with_states``. One compile per (env, shapes).
    """
    obs0, state0, keys, (obs, steps, states) = _scan(
        env, params, key, actions, with_states=with_states
    )
    if with_states:
        return obs0, state0, obs, steps, keys, states
    return obs0, state0, obs, steps, keys


_reset = jax.jit(lambda env, key, params: env.reset(key, params), static_argnums=0)
_step = jax.jit(lambda env, *args: env.step(*args), static_argnums=0)


def _cartpole_actions(key, shape):
    return jax.random.randint(key, shape, 0, 2)


# ----------------------------------------------------------------------------- AutoReset


def test_auto_reset_resets_exactly_where_done():
    raw, params = make("CartPole-v1")
    params = params.replace(max_steps_in_episode=25)  # both terminations and truncations
    env = AutoReset(raw)
    T = 120
    actions = _cartpole_actions(jax.random.key(1), (T,))
    _, state0, obs, steps, keys, states = _rollout(
        env, params, jax.random.key(0), actions, with_states=True
    )
    done = np.asarray(steps.done)
    assert steps.terminated.any() and steps.truncated.any()
    # Replay each step with the raw env (CartPole's step ignores its key): final_obs is the
    # obs the raw env reached from the previous state, before any reset.
    raw_step = functools.partial(_step, raw)
    prev = state0
    for t in range(T):
        raw_obs, raw_state, raw_out = raw_step(keys[t], prev, actions[t], params)
        state_t = jax.tree.map(lambda x, t=t: x[t], states)
        np.testing.assert_allclose(steps.final_obs[t], raw_obs, rtol=1e-6, atol=1e-7)
        assert bool(raw_out.done) == done[t]
        assert bool(raw_out.terminated) == bool(steps.terminated[t])
        if done[t]:  # a fresh episode: time 0, CartPole's reset range
            assert int(state_t.time) == 0
            assert np.all(np.abs(np.asarray(obs[t])) <= 0.05)
            assert not np.array_equal(obs[t], raw_obs)
        else:
            chex.assert_trees_all_close(state_t, raw_state, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(obs[t], raw_obs, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(obs[t], raw.gymnax_env.get_obs(state_t))
        prev = state_t
    # Successive resets draw different start states.
    starts = np.asarray(obs)[done]
    assert len(np.unique(starts[:, 0])) == len(starts)


def test_auto_reset_on_time_limit_chain():
    raw, params = make("probe/time_limit_chain")
    params = params.replace(max_steps=jnp.asarray(3))
    actions = jnp.zeros((9,), jnp.int32)
    _, _, obs, steps, _ = _rollout(AutoReset(raw), params, jax.random.key(0), actions)
    done = np.arange(1, 10) % 3 == 0
    np.testing.assert_array_equal(steps.truncated, done)
    # Returned obs restart at 0 after each cut; final_obs holds the pre-reset obs t/3.
    np.testing.assert_allclose(obs[:, 0], np.where(done, 0.0, (np.arange(1, 10) % 3) / 3))
    np.testing.assert_allclose(steps.final_obs[:, 0], np.tile([1 / 3, 2 / 3, 1.0], 3), rtol=1e-6)


# ----------------------------------------------------------------------------- EpisodeStats


def _episode_stats_by_loop(rewards, dones):
    """Python loop over ``[T, N]`` rewards and dones -> per-step finished return and length."""
    T, N = rewards.shape
    returns, lengths = np.zeros((T, N)), np.zeros((T, N), np.int64)
    for n in range(N):
        ret, length = 0.0, 0
        for t in range(T):
            ret += float(rewards[t, n])
            length += 1
            if dones[t, n]:
                returns[t, n], lengths[t, n] = ret, length
                ret, length = 0.0, 0
    return returns, lengths


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_episode_stats_match_python_loop(env_id):
    raw, params = make(env_id)
    params = params.replace(max_steps_in_episode=15)
    env = make_vec_env(raw, 3)
    T = 60
    if env_id == "CartPole-v1":
        actions = _cartpole_actions(jax.random.key(1), (T, 3))
    else:
        actions = jax.random.uniform(jax.random.key(1), (T, 3, 1), minval=-2, maxval=2)
    _, _, _, steps, _ = _rollout(env, params, jax.random.key(0), actions)
    done = np.asarray(steps.done)
    want_return, want_length = _episode_stats_by_loop(np.asarray(steps.reward), done)
    assert done.sum() >= 6
    np.testing.assert_allclose(steps.info["episode_return"], want_return, rtol=1e-5)
    np.testing.assert_array_equal(steps.info["episode_length"], want_length)
    assert np.all(np.asarray(steps.info["episode_length"])[done] <= 15)


def test_episode_stats_on_its_own():
    raw, params = make("probe/time_limit_chain")
    env = EpisodeStats(AutoReset(raw))
    params = params.replace(max_steps=jnp.asarray(4))
    _, _, _, steps, _ = _rollout(env, params, jax.random.key(0), jnp.zeros((8,), jnp.int32))
    np.testing.assert_array_equal(steps.info["episode_return"], [0, 0, 0, 4, 0, 0, 0, 4])
    np.testing.assert_array_equal(steps.info["episode_length"], [0, 0, 0, 4, 0, 0, 0, 4])


# ----------------------------------------------------------------------------- VecEnv


def test_vec_env_equals_looping_the_single_env():
    raw, params = make("CartPole-v1")
    single = AutoReset(raw)
    N = 4
    vec = VecEnv(single, num_envs=N)
    key_reset, key_step = jax.random.key(0), jax.random.key(1)
    actions = _cartpole_actions(jax.random.key(2), (N,))
    obs, state = vec.reset(key_reset, params)
    next_obs, next_state, step = vec.step(key_step, state, actions, params)
    assert obs.shape == (N, 4) and step.reward.shape == (N,)
    reset_keys, step_keys = jax.random.split(key_reset, N), jax.random.split(key_step, N)
    for i in range(N):
        obs_i, state_i = single.reset(reset_keys[i], params)
        np.testing.assert_array_equal(obs[i], obs_i)
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], state), state_i)
        next_obs_i, next_state_i, step_i = single.step(step_keys[i], state_i, actions[i], params)
        np.testing.assert_allclose(next_obs[i], next_obs_i, rtol=1e-6)
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], step), step_i)
    # The copies are independent: different reset keys give different starts.
    assert len(np.unique(np.asarray(obs[:, 0]))) == N


# ----------------------------------------------------------------------------- RunningStats


@pytest.mark.parametrize("shape", [(), (3,)])
def test_running_stats_equal_numpy_over_the_concatenation(shape):
    rng = np.random.default_rng(0)
    batches = [rng.normal(5.0, 3.0, (n, *shape)).astype(np.float32) for n in (1, 7, 32, 3, 100)]
    stats = RunningStats.zeros(shape)
    update = jax.jit(lambda s, b: s.update(b))
    seen = []
    for batch in batches:
        stats = update(stats, batch)
        seen.append(batch)
        everything = np.concatenate(seen).astype(np.float64)
        np.testing.assert_allclose(stats.mean, everything.mean(0), rtol=1e-5)
        np.testing.assert_allclose(stats.var, everything.var(0), rtol=1e-4)
        assert float(stats.count) == len(everything)


# ----------------------------------------------------------------------------- NormalizeObs


def _normalize_by_hand(obs, seen, clip, eps):
    obs, seen = np.asarray(obs, np.float64), np.concatenate(seen).astype(np.float64)
    return np.clip((obs - seen.mean(0)) / np.sqrt(seen.var(0) + eps), -clip, clip)


def test_normalize_obs_equals_numpy_over_every_obs_seen():
    raw, params = make("CartPole-v1")
    inner = VecEnv(AutoReset(raw), num_envs=4)
    clip = 1.0  # small, so that some observations are clipped and others are not
    env = NormalizeObs(inner, clip=clip)
    actions = _cartpole_actions(jax.random.key(1), (30, 4))
    obs0, _, obs, steps, _ = _rollout(env, params, jax.random.key(0), actions)
    # The raw observations: NormalizeObs hands the same keys to the inner env.
    raw_obs0, _, raw_obs, raw_steps, _ = _rollout(inner, params, jax.random.key(0), actions)
    assert raw_steps.done.any()
    eps = env.epsilon
    np.testing.assert_allclose(
        obs0, _normalize_by_hand(raw_obs0, [raw_obs0], clip, eps), rtol=1e-4, atol=1e-4
    )
    seen = [np.asarray(raw_obs0)]
    clipped = 0
    for t in range(len(actions)):
        seen.append(np.asarray(raw_obs[t]))
        want = _normalize_by_hand(raw_obs[t], seen, clip, eps)
        np.testing.assert_allclose(obs[t], want, rtol=1e-4, atol=1e-4)
        want_final = _normalize_by_hand(raw_steps.final_obs[t], seen, clip, eps)
        np.testing.assert_allclose(steps.final_obs[t], want_final, rtol=1e-4, atol=1e-4)
        clipped += int(np.sum(np.abs(want) >= clip))
    assert 0 < clipped < np.asarray(obs).size  # the clip really was exercised, not always
    assert np.all(np.abs(np.asarray(obs)) <= clip)


def test_normalize_obs_without_rank_promotion():
    """Regression: NormalizeObs once broadcast [N, D] against [D] by rank promotion."""
    raw, params = make("CartPole-v1")
    env = make_vec_env(raw, 4, normalize_obs=True)
    obs, state = env.reset(jax.random.key(0), params)
    obs, _, step = env.step(jax.random.key(1), state, jnp.zeros(4, jnp.int32), params)
    assert obs.shape == step.final_obs.shape == (4, 4)


# ----------------------------------------------------------------------------- ScaleReward


def test_scale_reward_equals_numpy_reimplementation():
    raw, params = make("Pendulum-v1")
    params = params.replace(max_steps_in_episode=8)  # episode ends reset the return
    N, T, discount = 3, 30, 0.9
    inner = VecEnv(EpisodeStats(AutoReset(raw)), num_envs=N)
    env = ScaleReward(inner, discount=discount)
    actions = jax.random.uniform(jax.random.key(1), (T, N, 1), minval=-2, maxval=2)
    _, _, _, steps, keys = _rollout(env, params, jax.random.key(0), actions)
    # Unscaled rewards and dones from the inner env on the same keys.
    _, _, _, raw_steps, _ = _rollout(inner, params, jax.random.key(0), actions)
    rewards, dones = np.asarray(raw_steps.reward, np.float64), np.asarray(raw_steps.done)
    assert dones.any() and np.unique(rewards).size > N
    G, history, want = np.zeros(N), [], []
    for t in range(T):
        G = discount * G + rewards[t]
        history.append(G.copy())
        var = np.concatenate(history).var()
        want.append(rewards[t] / np.sqrt(var + env.epsilon))
        G = np.where(dones[t], 0.0, G)
    np.testing.assert_allclose(steps.reward, np.stack(want), rtol=1e-4)
    # Episode statistics inside the scaling still report true (unscaled) returns.
    np.testing.assert_allclose(steps.info["episode_return"], raw_steps.info["episode_return"])


# ----------------------------------------------------------------------------- ClipAction


def test_clip_action_clips_to_bounds():
    raw, params = make("probe/continuous_target")  # action space Box(-2, 2, (1,))
    env = ClipAction(raw)
    obs, state = raw.reset(jax.random.key(0), params)
    for action, effective in ((5.0, 2.0), (-7.0, -2.0), (0.3, 0.3), (2.0, 2.0)):
        _, _, step = env.step(jax.random.key(1), state, jnp.array([action]), params)
        np.testing.assert_allclose(step.reward, -((effective - obs[0]) ** 2), rtol=1e-6)
    # Unwrapped, the env sees the raw action.
    _, _, step = raw.step(jax.random.key(1), state, jnp.array([5.0]), params)
    np.testing.assert_allclose(step.reward, -((5.0 - obs[0]) ** 2), rtol=1e-6)


def test_clip_action_leaves_discrete_actions_alone():
    raw, params = make("probe/reward_from_obs")
    env = ClipAction(raw)
    obs, state = env.reset(jax.random.key(0), params)
    right = jnp.int32(1) if float(obs[0]) > 0 else jnp.int32(0)
    _, _, step = env.step(jax.random.key(1), state, right, params)
    assert float(step.reward) == 1.0
    assert is_discrete(env, params)
    assert not is_discrete(*make("Pendulum-v1"))


# ----------------------------------------------------------------------------- the stack


def _stepwise_rollout(env, params, key, actions):
    """Steps in a Python loop, each step jitted, to compare with the scan."""
    key_reset, key_steps = jax.random.split(key)
    obs0, state = _reset(env, key_reset, params)
    keys = jax.random.split(key_steps, actions.shape[0])
    out = []
    for t in range(actions.shape[0]):
        obs, state, step = _step(env, keys[t], state, actions[t], params)
        out.append((obs, step))
    return obs0, jax.tree.map(lambda *x: jnp.stack(x), *out)


def _obs_and_steps(env, params, key, actions):
    obs0, _, obs, steps, _ = _rollout(env, params, key, actions)
    return obs0, obs, steps


@pytest.mark.parametrize("normalize_obs", [False, True])
def test_stack_under_jit_scan_and_vmap(normalize_obs):
    """The full stack gives the same numbers per-step jitted, scanned, and vmapped over seeds."""
    raw, params = make("Pendulum-v1")
    params = params.replace(max_steps_in_episode=3)  # resets inside the rollout
    env = make_vec_env(raw, 4, normalize_obs=normalize_obs, scale_reward=True)
    assert env == make_vec_env(raw, 4, normalize_obs=normalize_obs, scale_reward=True)
    assert hash(env) == hash(make_vec_env(raw, 4, normalize_obs=normalize_obs, scale_reward=True))
    assert env.unwrapped() == raw
    actions = jax.random.uniform(jax.random.key(1), (5, 4, 1), minval=-3.0, maxval=3.0)
    seeds = jax.random.split(jax.random.key(0), 2)
    stepwise = [_stepwise_rollout(env, params, k, actions) for k in seeds]
    scanned = [_obs_and_steps(env, params, k, actions) for k in seeds]
    vmapped = jax.jit(jax.vmap(lambda k: _obs_and_steps(env, params, k, actions)))(seeds)
    assert stepwise[0][1][1].done.any()
    for i in range(2):
        obs0, (obs, step) = stepwise[i]
        for got in (scanned[i], jax.tree.map(lambda x, i=i: x[i], vmapped)):
            np.testing.assert_allclose(got[0], obs0, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got[1], obs, rtol=1e-4, atol=1e-4)
            chex.assert_trees_all_close(got[2], step, rtol=1e-4, atol=1e-4)
    # Different seeds give different rollouts.
    assert not np.allclose(stepwise[0][0], stepwise[1][0])


def test_history_rows_and_reset_at_episode_end():
    """Rows are the last transitions (o, a, r) oldest first; AutoReset clears them."""
    from jaxrl.envs import probe
    from jaxrl.envs.wrappers import AutoReset, History

    env = AutoReset(History(probe.TimeLimitChain(), length=2))
    params = probe.TimeLimitChain().default_params().replace(max_steps=jnp.asarray(3))
    obs, state = env.reset(jax.random.key(0), params)
    np.testing.assert_array_equal(obs, np.zeros(1 + 2 * (1 + 2 + 1)))
    observed = []
    for t, action in enumerate([1, 0, 1, 0]):
        obs, state, step = env.step(jax.random.key(t), state, jnp.asarray(action), params)
        observed.append((np.asarray(obs), np.asarray(step.final_obs), bool(step.done)))
    # Step 2 (t=1): o_2 = 2/3, rows (o_0=0, onehot(1), r=1) then (o_1=1/3, onehot(0), r=1).
    np.testing.assert_allclose(observed[1][0], [2 / 3, 0, 0, 1, 1, 1 / 3, 1, 0, 1], rtol=1e-6)
    # Step 3 ends the episode: final_obs keeps the history, the new obs starts empty.
    assert observed[2][2]
    np.testing.assert_allclose(observed[2][1], [1, 1 / 3, 1, 0, 1, 2 / 3, 0, 1, 1], rtol=1e-6)
    np.testing.assert_array_equal(observed[2][0], np.zeros(9))
    assert History(probe.TimeLimitChain(), 2).observation_space(params).shape == (9,)


# ----------------------------------------------------------------------------- SelectObs


def test_select_obs_hides_entries_and_changes_nothing_else():
    """Under AutoReset, every obs and final obs is the full env's at ``indices``; rewards
    and episode ends are the full env's (same keys)."""
    from jaxrl.envs.gymnax import GymnaxEnv
    from jaxrl.envs.wrappers import SelectObs

    inner = GymnaxEnv("CartPole-v1")
    params = inner.default_params()
    actions = _cartpole_actions(jax.random.key(1), (300,))
    full = _rollout(AutoReset(inner), params, jax.random.key(2), actions)
    part = _rollout(AutoReset(SelectObs(inner, (0, 2))), params, jax.random.key(2), actions)
    assert int(full[3].done.sum()) >= 3  # several auto-resets inside the rollout
    np.testing.assert_array_equal(part[0], full[0][jnp.asarray([0, 2])])
    np.testing.assert_array_equal(part[2], full[2][:, jnp.asarray([0, 2])])
    np.testing.assert_array_equal(part[3].final_obs, full[3].final_obs[:, jnp.asarray([0, 2])])
    np.testing.assert_array_equal(part[3].reward, full[3].reward)
    np.testing.assert_array_equal(part[3].done, full[3].done)
    space = SelectObs(inner, (0, 2)).observation_space(params)
    low, high = (np.asarray(b) for b in inner.observation_space(params).bounds())
    assert space.shape == (2,)
    np.testing.assert_allclose(space.bounds()[1], high[[0, 2]])
    np.testing.assert_allclose(space.bounds()[0], low[[0, 2]])
    traced = jax.jit(lambda: SelectObs(inner, (0, 2)).observation_space(params).bounds())()
    np.testing.assert_allclose(traced[1], high[[0, 2]])  # the agents build it inside jit


def test_select_obs_rejects_bad_indices():
    from jaxrl.envs.gymnax import GymnaxEnv
    from jaxrl.envs.wrappers import SelectObs
    from jaxrl.errors import ConfigError

    inner = GymnaxEnv("CartPole-v1")
    for bad in [(), (0, 0)]:
        with pytest.raises(ConfigError, match="distinct"):
            SelectObs(inner, bad)
    with pytest.raises(ConfigError, match="out of range"):
        SelectObs(inner, (0, 4)).observation_space(inner.default_params())


# ----------------------------------------------------------------------------- Conditioned


def test_conditioned_appends_the_traced_condition_to_every_observation():
    from jaxrl.envs.wrappers import Conditioned

    env, params = make("CartPole-v1")
    cond = Conditioned(env, size=2)
    conditions = jnp.asarray([[0.99, 0.95], [0.5, -3.0]])
    vparams = jax.vmap(lambda c: cond.with_params(params, c))(conditions)
    venv, cvenv = make_vec_env(env, 3), make_vec_env(cond, 3)
    actions = _cartpole_actions(jax.random.key(1), (40, 3))  # episodes end inside 40 steps
    key = jax.random.key(0)
    obs0, _, obs, steps, _ = _rollout(venv, params, key, actions)
    # the condition is a traced param: one program for both conditions
    run = jax.vmap(lambda p: _scan(cvenv, p, key, actions))
    cobs0, _, _, (cobs, csteps, _) = run(vparams)
    assert bool(jnp.any(steps.done)), "no episode ended: final_obs untested"
    # the inner env's numbers match to float rounding (vmap fuses differently); c exactly
    close = functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-6)
    for i, c in enumerate(conditions):
        close(cobs0[i], jnp.concatenate([obs0, jnp.tile(c, (3, 1))], -1))
        close(cobs[i][..., :4], obs)
        np.testing.assert_array_equal(cobs[i][..., 4:], jnp.broadcast_to(c, (40, 3, 2)))
        close(csteps.final_obs[i][..., :4], steps.final_obs)
        np.testing.assert_array_equal(csteps.final_obs[i][..., 4:], jnp.broadcast_to(c, (40, 3, 2)))
        np.testing.assert_array_equal(csteps.reward[i], steps.reward)
    swapped = cond.replace_condition(cobs[0], conditions[1])
    np.testing.assert_array_equal(swapped, cobs[1])
    assert cond.observation_space(cond.default_params()).shape == (6,)
    assert cond.action_space(cond.default_params()) == env.action_space(params)


def test_conditioned_rejects_bad_sizes_and_conditions():
    from jaxrl.envs.wrappers import Conditioned
    from jaxrl.errors import ConfigError

    env, params = make("CartPole-v1")
    with pytest.raises(ConfigError, match="size must be an int >= 1"):
        Conditioned(env, size=0)
    with pytest.raises(ConfigError, match=r"takes \(2,\)"):
        Conditioned(env, size=2).with_params(params, jnp.zeros(3))
