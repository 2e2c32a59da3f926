"""Expert demonstrations: recording whole episodes, the committed test file, save/load and
their errors, the fit to an env."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import demos
from jaxrl.envs import registry
from jaxrl.errors import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data"


def _make_demos_module():
    spec = importlib.util.spec_from_file_location("make_demos", DATA / "make_demos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Random:
    """Uniform random CartPole actions (short episodes of varied length)."""

    __name__ = "random"

    @staticmethod
    def policy(cfg, env, params, obs, key, deterministic, hp=None):
        return jax.random.randint(key, obs.shape[:1], 0, 2)


def test_the_committed_demos_are_the_scripted_experts_recording():
    make = _make_demos_module()
    fresh, returns = make.record()
    stored = demos.load(make.PATH)
    np.testing.assert_array_equal(returns, [500.0, 500.0])
    np.testing.assert_array_equal(np.asarray(stored.action), np.asarray(fresh.action))
    np.testing.assert_allclose(np.asarray(stored.obs), np.asarray(fresh.obs), atol=1e-5)
    # both episodes end at CartPole's 500-step limit: truncated, so last but not terminated
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(fresh.last)), [499, 999])
    assert not np.any(np.asarray(fresh.terminated))


def test_record_keeps_every_step_of_each_episode_and_nothing_after_it():
    env, _ = registry.make("CartPole-v1")
    data, returns = demos.record(Random, None, env, None, jax.random.key(3), 6, deterministic=False)
    # CartPole pays 1 per step, so the pairs are the episodes' summed lengths
    assert data.size == int(returns.sum())
    assert len(set(returns.tolist())) > 1  # episodes of different lengths were cut right
    assert data.obs.shape == (data.size, 4) and data.action.dtype == jnp.int32
    # each episode starts from a reset state: |obs| <= 0.05 in every component
    starts = np.concatenate([[0], np.cumsum(returns)[:-1]]).astype(int)
    assert np.all(np.abs(np.asarray(data.obs)[starts]) <= 0.05)
    assert np.any(np.abs(np.asarray(data.obs)[starts + 5]) > 0.05)


def test_record_stores_box_actions_clipped_as_the_env_ran_them():
    class Loud:
        __name__ = "loud"

        @staticmethod
        def policy(cfg, env, params, obs, key, deterministic, hp=None):
            return jnp.full((obs.shape[0], 1), 7.0)  # Pendulum's bounds are [-2, 2]

    env, _ = registry.make("Pendulum-v1")
    data, _ = demos.record(Loud, None, env, None, jax.random.key(0), 2, max_steps=200)
    assert data.size == 400
    np.testing.assert_array_equal(np.asarray(data.action), 2.0)


def test_an_episode_longer_than_max_steps_is_a_config_error():
    env, _ = registry.make("CartPole-v1")
    make = _make_demos_module()
    with pytest.raises(ConfigError, match="ran past max_steps=100"):
        demos.record(make.ScriptedExpert, None, env, None, jax.random.key(0), 2, max_steps=100)


def test_save_then_load_is_exact(tmp_path):
    env, _ = registry.make("CartPole-v1")
    data, _ = demos.record(Random, None, env, None, jax.random.key(1), 3, deterministic=False)
    demos.save(tmp_path / "d.npz", data)
    back = demos.load(tmp_path / "d.npz")
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(data), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.dtype == b.dtype
    assert back.terminated.dtype == jnp.bool_


def test_record_stores_each_steps_transition():
    env, _ = registry.make("CartPole-v1")
    data, returns = demos.record(Random, None, env, None, jax.random.key(5), 4, deterministic=False)
    ends = np.cumsum(returns).astype(int) - 1  # the last step of each episode
    reward, terminated = np.asarray(data.reward), np.asarray(data.terminated)
    np.testing.assert_array_equal(reward, 1.0)  # CartPole pays 1 per step
    np.testing.assert_array_equal(np.flatnonzero(terminated), ends)  # random play falls
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(data.last)), ends)
    # within an episode the next observation is the next step's observation ...
    inside = np.setdiff1d(np.arange(data.size), ends)
    obs, next_obs = np.asarray(data.obs), np.asarray(data.next_obs)
    np.testing.assert_array_equal(next_obs[inside], obs[inside + 1])
    # ... and at an episode's end it is the terminal observation: the pole or cart out of
    # CartPole's bounds (|x| > 2.4 or |theta| > 12 degrees)
    last = next_obs[ends]
    assert np.all((np.abs(last[:, 0]) > 2.4) | (np.abs(last[:, 2]) > 12 * 2 * np.pi / 360))
    assert data.transitions("CQL") is data and data.episodes("DT") is data
    assert demos.Demos(data.obs, data.action) == data.pairs()


def test_pairs_only_files_load_and_lack_transitions(tmp_path):
    stored = demos.load(DATA / "cartpole_demos.npz")  # obs and action only
    assert stored.reward is None and stored.next_obs is None and stored.terminated is None
    with pytest.raises(ConfigError, match=r"CQL needs transitions \(reward, next_obs"):
        stored.transitions("CQL")
    with pytest.raises(ConfigError, match=r"DT needs whole episodes \(reward, last\)"):
        stored.episodes("DT")
    np.savez(tmp_path / "short.npz", obs=np.zeros((3, 4)), action=np.zeros(3), reward=np.zeros(2))
    with pytest.raises(ConfigError, match=r"reward \(2,\) must hold one entry per pair \(3\)"):
        demos.load(tmp_path / "short.npz")
    np.savez(tmp_path / "next.npz", obs=np.zeros((3, 4)), action=np.zeros(3),
             next_obs=np.zeros((3, 2)))  # fmt: skip
    with pytest.raises(ConfigError, match="must have obs's shape"):
        demos.load(tmp_path / "next.npz")


def test_bad_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        demos.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive")
    with pytest.raises(ConfigError, match="not a readable .npz"):
        demos.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "no_action.npz", obs=np.zeros((3, 4)))
    with pytest.raises(ConfigError, match=r"lacks \['action'\]"):
        demos.load(tmp_path / "no_action.npz")
    np.savez(tmp_path / "uneven.npz", obs=np.zeros((3, 4)), action=np.zeros(2))
    with pytest.raises(ConfigError, match="same number"):
        demos.load(tmp_path / "uneven.npz")


def test_pairs_that_do_not_fit_the_env_are_config_errors():
    cartpole = demos.load(DATA / "cartpole_demos.npz")
    pendulum, _ = registry.make("Pendulum-v1")
    match = r"observations have shape \(4,\); Pendulum-v1's have \(3,\)"
    with pytest.raises(ConfigError, match=match):
        demos.check_fits(cartpole, pendulum)
    env, _ = registry.make("CartPole-v1")
    wide = cartpole.replace(action=jnp.zeros((cartpole.size, 2)))
    with pytest.raises(ConfigError, match=r"actions have shape \(2,\); CartPole-v1's have \(\)"):
        demos.check_fits(wide, env)
    assert demos.check_fits(cartpole.replace(action=cartpole.action * 1.0), env).action.dtype == (
        jnp.int32
    )


def test_best_episodes_keeps_the_highest_returns_whole_and_in_order():
    env, _ = registry.make("CartPole-v1")
    data, returns = demos.record(
        Random, None, env, None, jax.random.key(8), 10, deterministic=False
    )
    best = demos.best_episodes(data, 0.3)  # ceil(3.0) = 3 of 10 episodes
    kept = np.sort(np.argsort(-returns, kind="stable")[:3])
    starts = np.concatenate([[0], np.cumsum(returns)[:-1]]).astype(int)
    rows = np.concatenate([np.arange(starts[i], starts[i] + int(returns[i])) for i in kept])
    for a, b in zip(jax.tree.leaves(best), jax.tree.leaves(data), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[rows])
    assert int(np.asarray(best.last).sum()) == 3
    assert demos.best_episodes(data, 1.0).size == data.size
    with pytest.raises(ConfigError, match=r"fraction must be in \(0, 1\]"):
        demos.best_episodes(data, 0.0)
    with pytest.raises(ConfigError, match="needs whole episodes"):
        demos.best_episodes(data.pairs(), 0.5)
