"""Host envs give jaxrl auto-reset semantics: same-step reset, final_obs, terminated vs
truncated, finished-episode statistics; gymnasium step-for-step against bare gymnasium."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from jaxrl.envs import spaces
from jaxrl.sebulba import host_envs

BACKENDS = ["gymnasium/CartPole-v1", "envpool/CartPole-v1"]


def _make(env_id: str, num_envs: int, seed: int = 0):
    if env_id.startswith("envpool/"):
        pytest.importorskip("envpool")
    return host_envs.make(env_id, num_envs, seed)


def _balance(obs: np.ndarray) -> np.ndarray:
    """A linear controller that keeps CartPole upright until the 500-step time limit."""
    return (obs[..., 2] + 0.5 * obs[..., 3] > 0).astype(np.int32)


@pytest.mark.parametrize("env_id", BACKENDS)
def test_spaces_shapes_and_dtypes(env_id):
    env = _make(env_id, 3)
    try:
        assert env.num_envs == 3 and env.name == env_id
        assert env.spec.action_space() == spaces.Discrete(2)
        assert env.spec.observation_space().shape == (4,)
        assert env.spec.default_params() is None
        obs = env.reset()
        assert obs.shape == (3, 4) and obs.dtype == np.float32
        step = env.step(np.zeros(3, np.int32))
        assert step.obs.shape == step.final_obs.shape == (3, 4)
        for x, dtype in ((step.reward, np.float32), (step.terminated, np.bool_),
                         (step.truncated, np.bool_), (step.episode_return, np.float32),
                         (step.episode_length, np.int32)):  # fmt: skip
            assert x.shape == (3,) and x.dtype == dtype
    finally:
        env.close()


@pytest.mark.parametrize("env_id", BACKENDS)
def test_termination_resets_in_the_same_step(env_id):
    """Pushing left always: the pole falls; the done step returns the reset obs as ``obs``,
    the fallen state as ``final_obs``, and the finished episode's return and length."""
    env = _make(env_id, 2, seed=1)
    try:
        obs, ends, lengths = env.reset(), 0, np.zeros(2, int)
        for _ in range(60):
            step = env.step(np.zeros(2, np.int32))
            lengths += 1
            done = step.terminated | step.truncated
            assert not step.truncated.any()  # far below the time limit
            np.testing.assert_array_equal(step.final_obs[~done], step.obs[~done])
            for i in np.flatnonzero(done):
                ends += 1
                fell = abs(step.final_obs[i, 2]) > 0.2094 or abs(step.final_obs[i, 0]) > 2.4
                assert fell, step.final_obs[i]
                assert np.all(np.abs(step.obs[i]) <= 0.05)  # CartPole resets in [-0.05, 0.05]
                assert step.episode_length[i] == lengths[i] == step.episode_return[i]
                lengths[i] = 0
            assert np.all(step.episode_return[~done] == 0)
            assert np.all(step.episode_length[~done] == 0)
            obs = step.obs
        assert ends >= 4, ends
        del obs
    finally:
        env.close()


@pytest.mark.parametrize("env_id", BACKENDS)
def test_time_limit_is_a_truncation_with_the_cut_state_as_final_obs(env_id):
    env = _make(env_id, 2, seed=2)
    try:
        obs = env.reset()
        for t in range(500):
            step = env.step(_balance(obs))
            if t < 499:
                assert not (step.terminated | step.truncated).any(), t
                obs = step.obs
        assert step.truncated.all() and not step.terminated.any()
        np.testing.assert_array_equal(step.episode_length, [500, 500])
        np.testing.assert_array_equal(step.episode_return, [500.0, 500.0])
        # final_obs continues the trajectory (positions move little in one step of 0.02 s);
        # obs is a fresh reset.
        assert np.all(np.abs(step.final_obs - obs)[:, [0, 2]] < 0.02)
        assert not np.allclose(step.final_obs, step.obs)
        assert np.all(np.abs(step.obs) <= 0.05)
        step = env.step(_balance(step.obs))  # the next episode starts counting afresh
        assert not step.truncated.any()
    finally:
        env.close()


def test_gymnasium_stream_equals_bare_gymnasium_envs_reset_by_hand():
    """Env ``i`` of the host env is ``gymnasium.make(id)`` seeded ``seed + i`` and reset
    (without a seed) whenever its episode ends."""
    seed, num_envs, steps = 7, 3, 300
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, size=(steps, num_envs)).astype(np.int32)
    env = host_envs.make("gymnasium/CartPole-v1", num_envs, seed)
    refs = [gymnasium.make("CartPole-v1") for _ in range(num_envs)]
    try:
        obs = env.reset()
        ref_obs = np.stack([r.reset(seed=seed + i)[0] for i, r in enumerate(refs)])
        np.testing.assert_array_equal(obs, ref_obs)
        for t in range(steps):
            step = env.step(actions[t])
            for i, ref in enumerate(refs):
                o, r, term, trunc, _ = ref.step(int(actions[t, i]))
                np.testing.assert_array_equal(step.final_obs[i], o)
                assert (step.reward[i], step.terminated[i], step.truncated[i]) == (r, term, trunc)
                if term or trunc:
                    o, _ = ref.reset()
                np.testing.assert_array_equal(step.obs[i], o)
    finally:
        env.close()
        for ref in refs:
            ref.close()


def test_continuous_actions_are_clipped_to_the_bounds():
    env = host_envs.make("gymnasium/Pendulum-v1", 2, 0)
    try:
        assert env.spec.action_space() == spaces.Box(-2.0, 2.0, (1,), "float32")
        np.testing.assert_array_equal(env._clip(np.array([[5.0], [-0.5]])), [[2.0], [-0.5]])
        env.reset()
        assert env.step(np.array([[100.0], [-100.0]], np.float32)).reward.shape == (2,)
    finally:
        env.close()


@pytest.mark.parametrize(
    "env_id, match",
    [("CartPole-v1", "prefixes"), ("gymnasium/NoSuchEnv-v0", "unknown gymnasium id")],
)
def test_bad_ids_are_clear_errors(env_id, match):
    with pytest.raises(ValueError, match=match):
        host_envs.make(env_id, 1)
