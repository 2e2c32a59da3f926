"""Tests of the host-side envpool adapter on CartPole-v1.

The adapter must give jaxrl ``AutoReset`` semantics (reset obs returned on the done step,
``final_obs`` the obs the episode ended on) although envpool itself resets one step late.
"""

import numpy as np
import pytest

envpool = pytest.importorskip("envpool")

from jaxrl.envs import envpool as jaxrl_envpool  # noqa: E402
from jaxrl.envs import make, spaces  # noqa: E402

TASK, MAX_STEPS = "CartPole-v1", 500


def _balance(obs: np.ndarray) -> np.ndarray:
    """A linear controller that keeps every CartPole upright for the whole 500 steps."""
    return (obs[..., 2] + 0.5 * obs[..., 3] > 0).astype(np.int32)


def _reference_rollout(actions_fn, num_steps: int, seed: int):
    """One bare envpool env, gymnasium-style, with its next-step auto-reset undone by hand.

    Returns per-step ``(obs, reward, terminated, truncated, final_obs)`` lists with jaxrl
    semantics, built independently of the adapter.
    """
    pool = envpool.make(TASK, env_type="gymnasium", num_envs=1, seed=seed)
    obs, _ = pool.reset()
    out = []
    for _ in range(num_steps):
        next_obs, reward, term, trunc, _ = pool.step(actions_fn(obs))
        final_obs = next_obs
        if term[0] or trunc[0]:  # envpool resets on the next call, ignoring its action
            next_obs, dummy_reward, *_ = pool.step(np.zeros(1, np.int32))
            assert dummy_reward[0] == 0.0
        out.append((next_obs, reward, term, trunc & ~term, final_obs))
        obs = next_obs
    return [np.concatenate(x) for x in zip(*out, strict=True)]


def _adapter_rollout(env, actions_fn, num_steps: int):
    obs = env.reset()
    out = []
    for _ in range(num_steps):
        step = env.step(actions_fn(obs))
        out.append(step)
        obs = step.obs
    return [np.stack(x) for x in zip(*out, strict=True)]


def test_registry_make_spaces_and_shapes():
    env, params = make(f"envpool/{TASK}", num_envs=3, seed=0)
    assert params is None and env.name == f"envpool/{TASK}" and env.num_envs == 3
    assert env.action_space() == spaces.Discrete(2)
    obs_space = env.observation_space(params)
    assert isinstance(obs_space, spaces.Box) and obs_space.shape == (4,)
    assert obs_space.high[0] == pytest.approx(4.8) and obs_space.high[1] == float("inf")
    obs = env.reset()
    assert obs.shape == (3, 4) and obs.dtype == np.float32
    obs, reward, terminated, truncated, final_obs = env.step(np.zeros(3, np.int64))
    assert obs.shape == final_obs.shape == (3, 4)
    assert reward.shape == terminated.shape == truncated.shape == (3,)
    assert reward.dtype == np.float32 and terminated.dtype == truncated.dtype == np.bool_


def _mixed_policy(seed: int, explore_steps: int = 300):
    """Random actions for ``explore_steps`` (episodes fall), then balancing (they time out)."""
    rng, t = np.random.default_rng(seed), iter(range(10**9))

    def policy(obs):
        explore = next(t) < explore_steps
        return rng.integers(0, 2, size=1, dtype=np.int32) if explore else _balance(obs)

    return policy


def test_step_parity_with_bare_envpool_across_resets():
    num_steps = 1200
    expected = _reference_rollout(_mixed_policy(0), num_steps, seed=5)
    assert expected[2].sum() >= 1 and expected[3].sum() >= 1  # both kinds of episode end
    env = jaxrl_envpool.make(TASK, num_envs=1, seed=5)
    got = _adapter_rollout(env, _mixed_policy(0), num_steps)
    for name, want, have in zip(
        ("obs", "reward", "terminated", "truncated", "final_obs"), expected, got, strict=True
    ):
        np.testing.assert_array_equal(have[:, 0], want, err_msg=name)


def test_time_limit_is_truncation_not_termination():
    env = jaxrl_envpool.make(TASK, num_envs=2, seed=1)
    obs, _, terminated, truncated, final_obs = _adapter_rollout(env, _balance, MAX_STEPS + 10)
    assert not terminated.any()
    assert np.flatnonzero(truncated[:, 0]).tolist() == [MAX_STEPS - 1]
    assert truncated[MAX_STEPS - 1].all()
    # The agent sees a fresh start; final_obs is the state the time limit cut.
    assert np.abs(obs[MAX_STEPS - 1]).max() <= 0.05
    assert not np.array_equal(final_obs[MAX_STEPS - 1], obs[MAX_STEPS - 1])


def test_falling_pole_is_termination_not_truncation():
    env = jaxrl_envpool.make(TASK, num_envs=2, seed=0)
    push_right = lambda obs: np.ones(len(obs), np.int32)
    obs, reward, terminated, truncated, final_obs = _adapter_rollout(env, push_right, 40)
    assert not truncated.any()
    assert (terminated.sum(0) >= 2).all()  # each env fell, was reset and fell again
    # Falling means the pole angle left +-12 degrees; CartPole still pays for that step.
    assert (np.abs(final_obs[terminated][:, 2]) > 0.2094).all()
    assert np.abs(obs[terminated]).max() <= 0.05
    assert (reward == 1.0).all()


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="envpool/CartPole-v1"):
        make("envpool/NotATask-v0")
