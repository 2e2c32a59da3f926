"""Evaluation counts whole episodes exactly, uses the right policy, and ``jaxrl eval`` works."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import ddpg, demos, ppo, sac, td3
from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Step
from jaxrl.envs.probe import (
    ActionReward,
    ContinuousTarget,
    ProbeParams,
    ProbeState,
    RewardFromObs,
    TimeLimitChain,
    TwoStepReward,
)
from jaxrl.errors import ConfigError
from jaxrl.runner import cli_eval, loop, sweep
from jaxrl.runner.evaluate import (
    PeriodicEval,
    discounted_return,
    eval_key,
    evaluate,
    evaluate_episodes,
    policy_fn,
)


@dataclasses.dataclass(frozen=True)
class VariableLength(Env):
    """Episodes of a random length ``L`` in 1..6 (shown in the obs); reward ``t`` at step ``t``.

    The return of an episode is ``1 + 2 + ... + L = L (L + 1) / 2``, known from the reset obs.
    """

    def default_params(self):
        return ProbeParams()

    def reset(self, key, params):
        length = jax.random.randint(key, (), 1, 7)
        obs = length.astype(jnp.float32)[None]
        return obs, ProbeState(obs, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        time = state.time + 1
        terminated = time >= state.obs[0].astype(jnp.int32)
        step = Step(time.astype(jnp.float32), terminated, jnp.zeros((), bool), state.obs)
        return state.obs, ProbeState(state.obs, time), step

    def observation_space(self, params):
        return spaces.Box(0.0, 7.0, (1,))

    def action_space(self, params):
        return spaces.Discrete(2)


def _ppo_cfg_hp():
    """A small PPO: 3 updates of 4 envs x 8 steps (test_cli.py trains it through the CLI)."""
    return ppo.Config(num_envs=4, rollout_len=8, num_minibatches=2, total_timesteps=96), (
        ppo.HParams.make()
    )


@functools.cache
def _ppo(env):
    """``_ppo_cfg_hp`` and its initial parameters on ``env`` (one per env class, shared)."""
    cfg, hp = _ppo_cfg_hp()
    return cfg, hp, _init_params(ppo, cfg, env, 0)[1]


def _init_params(algo, cfg, env, seed: int):
    """``algo.init(...).params`` with the default HParams, jitted (one compile, instead of
    one per eager op)."""
    hp = algo.HParams.make()
    return hp, jax.jit(lambda k: algo.init(cfg, env, k, hp).params)(jax.random.key(seed))


def test_variable_length_episodes_are_counted_exactly_once_each():
    env = VariableLength()
    cfg, _, params = _ppo(env)
    key = jax.random.key(3)
    got = jax.jit(lambda p, k: evaluate(ppo, cfg, env, p, k, 50, False))(params, key)
    # The episode lengths evaluate() drew: the same reset keys, reproduced here.
    key_reset, _ = jax.random.split(key)
    lengths = jax.vmap(lambda k: jax.random.randint(k, (), 1, 7))(jax.random.split(key_reset, 50))
    lengths = np.asarray(lengths)
    assert len(set(lengths.tolist())) > 3  # lengths really vary
    np.testing.assert_array_equal(np.asarray(got), lengths * (lengths + 1) / 2)
    # evaluate_episodes gives the same returns and each episode's own length
    both = jax.jit(lambda p, k: evaluate_episodes(ppo, cfg, env, p, k, 50, False))(params, key)
    np.testing.assert_array_equal(both[0], got)
    np.testing.assert_array_equal(both[1], lengths)


def test_time_limit_truncation_ends_an_episode_and_the_loop_bound_gives_nan():
    env = TimeLimitChain()
    cfg, _, params = _ppo(env)
    params7 = ProbeParams(jnp.asarray(7, jnp.int32))
    full = evaluate(ppo, cfg, env, params, jax.random.key(0), 5, True, params7)
    np.testing.assert_array_equal(np.asarray(full), np.full(5, 7.0))
    # An episode still running when the loop bound hits is an error (NaN), not a return of 6.
    cut = evaluate(ppo, cfg, env, params, jax.random.key(0), 5, True, params7, max_steps=6)
    assert np.all(np.isnan(np.asarray(cut)))


def test_jit_and_no_jit_agree_and_eval_keys_differ_from_training_keys():
    env = VariableLength()
    cfg, _, params = _ppo(env)
    key = eval_key(0, 1, 5)
    fn = lambda p, k: evaluate(ppo, cfg, env, p, k, 16, False)  # noqa: E731
    np.testing.assert_array_equal(np.asarray(fn(params, key)), jax.jit(fn)(params, key))
    assert not np.array_equal(
        jax.random.key_data(key), jax.random.key_data(sweep.seed_key(1))
    )  # evaluation has its own key root
    other_update = eval_key(0, 1, 6)
    assert not np.array_equal(jax.random.key_data(key), jax.random.key_data(other_update))


def test_deterministic_ppo_is_the_categorical_argmax():
    env = RewardFromObs()
    cfg, _, params = _ppo(env)
    obs = jnp.asarray([[1.0], [-1.0], [0.5]])
    dist, _ = ppo.network(cfg, env).apply(params, obs)
    act = policy_fn(ppo, cfg, env, deterministic=True)
    carry, got = act(params, (), obs, jax.random.key(0))
    assert carry == ()
    np.testing.assert_array_equal(got, np.argmax(np.asarray(dist.logits), -1))


def test_deterministic_ppo_gaussian_is_the_mean_and_clipped():
    env = ContinuousTarget()
    cfg, _, params = _ppo(env)
    obs = jnp.asarray([[0.3], [-0.7]])
    dist, _ = ppo.network(cfg, env).apply(params, obs)
    _, got = policy_fn(ppo, cfg, env, deterministic=True)(params, (), obs, jax.random.key(0))
    np.testing.assert_allclose(got, dist.mean(), rtol=1e-6)
    # The return uses the mean action clipped to [-2, 2]: reward -(a - o)^2 per one-step episode.
    key = jax.random.key(4)
    rets = evaluate(ppo, cfg, env, params, key, 8, True)
    key_reset, _ = jax.random.split(key)
    o = jax.vmap(lambda k: env.reset(k, env.default_params())[0])(jax.random.split(key_reset, 8))
    a = jnp.clip(ppo.network(cfg, env).apply(params, o)[0].mean(), -2.0, 2.0)
    np.testing.assert_allclose(rets, -jnp.sum(jnp.square(a - o), -1), rtol=1e-5)


def test_td3_greedy_returns_match_the_actor():
    env = ContinuousTarget()
    cfg = td3.Config(num_envs=2, total_timesteps=64, buffer_size=64, batch_size=8)
    hp, params = _init_params(td3, cfg, env, 1)
    key = jax.random.key(2)
    rets = evaluate(td3, cfg, env, params, key, 6, True)
    key_reset, _ = jax.random.split(key)
    o = jax.vmap(lambda k: env.reset(k, env.default_params())[0])(jax.random.split(key_reset, 6))
    a = td3.act(cfg, env, params, o)
    np.testing.assert_allclose(rets, -jnp.sum(jnp.square(a - o), -1), rtol=1e-5)
    noisy = evaluate(td3, cfg, env, params, key, 6, False, hp=hp)
    assert not np.allclose(noisy, rets)  # the behaviour policy adds exploration noise
    with pytest.raises(ConfigError):
        evaluate(td3, cfg, env, params, key, 6, False)  # no hp: no noise scale


def _reset_obs(env, key, n):
    """The reset observations ``[n, 1]`` ``evaluate`` sees for ``key`` (one-step probes)."""
    key_reset, _ = jax.random.split(key)
    return jax.vmap(lambda k: env.reset(k, env.default_params())[0])(jax.random.split(key_reset, n))


@pytest.mark.parametrize("algo", [ddpg, sac])
def test_ddpg_and_sac_greedy_returns_match_act_and_samples_differ(algo):
    env = ContinuousTarget()
    cfg = algo.Config(num_envs=2, total_timesteps=64, buffer_size=64, batch_size=8)
    hp, params = _init_params(algo, cfg, env, 1)
    key = jax.random.key(2)
    rets = evaluate(algo, cfg, env, params, key, 6, True)
    o = _reset_obs(env, key, 6)
    a = algo.act(cfg, env, params, o)
    assert bool(jnp.all(jnp.abs(a) <= 2.0))  # scaled into the action bounds
    np.testing.assert_allclose(rets, -jnp.sum(jnp.square(a - o), -1), rtol=1e-5)
    sampled = evaluate(algo, cfg, env, params, key, 6, False, hp=hp)
    assert np.isfinite(sampled).all() and not np.allclose(sampled, rets)


def test_discrete_sac_greedy_is_the_argmax_of_the_actor():
    env = RewardFromObs()
    cfg = sac.Config(num_envs=2, total_timesteps=64, buffer_size=64, batch_size=8)
    _, params = _init_params(sac, cfg, env, 3)
    obs = jnp.asarray([[1.0], [-1.0]])
    logits = sac.network(cfg, env).apply(params.actor, obs).logits
    _, got = policy_fn(sac, cfg, env, deterministic=True)(params, (), obs, jax.random.key(0))
    np.testing.assert_array_equal(got, np.argmax(np.asarray(logits), -1))
    key = jax.random.key(5)
    rets = evaluate(sac, cfg, env, params, key, 8, True)
    o = _reset_obs(env, key, 8)
    best = (o[:, 0] > 0).astype(jnp.int32)
    reward = (sac.act(cfg, env, params, o) == best).astype(jnp.float32)
    np.testing.assert_allclose(rets, reward)


def test_trained_ppo_deterministic_policy_is_optimal_on_reward_from_obs():
    env = RewardFromObs()
    cfg = ppo.Config(num_envs=8, rollout_len=16, num_minibatches=2, total_timesteps=8 * 16 * 30)
    hp = ppo.HParams.make(learning_rate=1e-2)
    init_and_train = lambda k: ppo.train(cfg, env, ppo.init(cfg, env, k, hp), hp, cfg.num_updates)  # noqa: E731
    state, _ = jax.jit(init_and_train)(jax.random.key(0))
    run = jax.jit(lambda p, k, d: evaluate(ppo, cfg, env, p, k, 200, d), static_argnums=2)
    det = np.asarray(run(state.params, jax.random.key(9), True))
    sto = np.asarray(run(state.params, jax.random.key(9), False))
    assert det.shape == (200,) and np.all(det == 1.0)  # every episode right: exactly 1 each
    assert 0.5 < sto.mean() <= 1.0


def _args(parser_argv):
    parser = argparse.ArgumentParser(prog="jaxrl")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_eval.add_parser(sub)
    return parser.parse_args(parser_argv)


@pytest.fixture(scope="module")
def trained_run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg, hp = _ppo_cfg_hp()
    runs = sweep.grid(hp, [3, 4])
    config = {
        "algo": "ppo", "env": "probe/time_limit_chain", "num_seeds": 2, "seed": 3,
        "config": dataclasses.asdict(cfg), "hparams": {k: float(v) for k, v in vars(hp).items()},
    }  # fmt: skip
    (run_dir / "config.json").write_text(json.dumps(config))
    loop.run(
        ppo, TimeLimitChain(), cfg, runs, env_name="probe/time_limit_chain", algo_name="ppo",
        run_dir=run_dir, quiet=True,
    )  # fmt: skip
    return run_dir


def test_cli_eval_writes_exact_returns_per_seed(trained_run_dir, capsys):
    args = _args(["eval", str(trained_run_dir), "--episodes", "7", "--deterministic"])
    assert cli_eval.run(args) == 0
    out = json.loads((trained_run_dir / "eval.json").read_text())
    assert [r["seed"] for r in out["runs"]] == [3, 4]
    for r in out["runs"]:
        assert r["returns"] == [10.0] * 7  # TimeLimitChain: 10 steps of reward 1
        assert r["mean"] == 10.0
    assert out["deterministic"] is True and out["episodes"] == 7
    printed = capsys.readouterr().out
    assert "seed" in printed and "10.0" in printed


def test_cli_eval_records_demonstrations_of_the_first_run(trained_run_dir, tmp_path):
    path = tmp_path / "demos.npz"
    args = _args(["eval", str(trained_run_dir), "--episodes", "7", "--deterministic", "--quiet",
                  "--record", str(path)])  # fmt: skip
    assert cli_eval.run(args) == 0
    data = demos.load(path)
    assert data.size == 70  # 7 whole episodes of TimeLimitChain's 10 steps
    env = TimeLimitChain()
    assert data.obs.shape[1:] == env.observation_space(env.default_params()).shape
    with pytest.raises(ConfigError, match="--record: directory"):
        missing = str(tmp_path / "x" / "d.npz")
        cli_eval.run(_args(["eval", str(trained_run_dir), "--record", missing]))


def test_cli_eval_errors_are_one_line(tmp_path, trained_run_dir):
    with pytest.raises(ConfigError, match="config.json"):
        cli_eval.run(_args(["eval", str(tmp_path)]))
    (tmp_path / "config.json").write_text((trained_run_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match="no checkpoint"):
        cli_eval.run(_args(["eval", str(tmp_path)]))
    with pytest.raises(ConfigError, match="episodes"):
        cli_eval.run(_args(["eval", str(trained_run_dir), "--episodes", "0"]))


def test_periodic_eval_writes_rows(tmp_path):
    env = TimeLimitChain()
    cfg, hp = _ppo_cfg_hp()
    runs = sweep.grid(hp, [0, 1])
    state = sweep.init_runs(ppo, cfg, env, runs.keys, runs.hps)
    ev = PeriodicEval(ppo, cfg, env, num_episodes=3, path=tmp_path / "eval.jsonl")
    out = ev(state, runs.hps, update=4, steps_per_update=32, run_labels=runs.labels)
    np.testing.assert_array_equal(out["eval/return_deterministic"], [10.0, 10.0])
    rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [(r["run"], r["update"], r["env_steps"]) for r in rows] == [(0, 4, 128), (1, 4, 128)]
    assert rows[0]["eval/return_stochastic"] == 10.0


def test_recurrent_r2d2_evaluation_carries_the_lstm_state_through_each_episode():
    """``evaluate`` on R2D2 equals a hand-played loop that threads the LSTM state from a zero
    start; a policy that forgot its state between steps would act differently."""
    from jaxrl.algorithms import r2d2
    from jaxrl.envs import registry

    env, env_params = registry.make("CartPole-v1")
    cfg = r2d2.Config(
        total_timesteps=2_000, num_envs=4, buffer_size=512, batch_size=8, sequence_length=8,
        burn_in=2, period=4, n_step=3, learning_starts=64, hidden=(16,), lstm_features=16,
    )  # fmt: skip
    # Init key 4: a network whose greedy action depends on its LSTM state on CartPole (some
    # random networks push right whatever they remember, which would make the check empty).
    _, params = _init_params(r2d2, cfg, env, 4)
    key, episodes, steps = jax.random.key(5), 3, 500
    rets = evaluate(r2d2, cfg, env, params, key, episodes, True, env_params, steps)

    act = jax.jit(lambda c, o, r: r2d2.act(cfg, env, params, c, o, r))
    env_step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    key_reset, key = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(key_reset, episodes), env_params
    )
    carry = r2d2.policy_carry(cfg, episodes)
    no_reset, every_step = jnp.zeros((episodes,), bool), jnp.ones((episodes,), bool)
    expected, done, forgetful_differs = np.zeros(episodes), np.zeros(episodes, bool), False
    for _ in range(steps):
        key, _, key_env = jax.random.split(key, 3)
        _, forgetful = act(r2d2.policy_carry(cfg, episodes), obs, every_step)
        carry, action = act(carry, obs, no_reset)
        forgetful_differs |= bool(np.any(np.asarray(forgetful != action) & ~done))
        obs, state, step = env_step(jax.random.split(key_env, episodes), state, action, env_params)
        expected += np.where(done, 0.0, np.asarray(step.reward))
        done |= np.asarray(step.done)
        if done.all():
            break
    assert done.all()
    np.testing.assert_allclose(rets, expected)
    assert forgetful_differs
    with pytest.raises(ConfigError, match="eps_end"):
        evaluate(r2d2, cfg, env, params, key, episodes, False, env_params, steps)


def test_eval_table_says_how_many_episodes_were_unfinished_instead_of_a_std():
    runs = [
        dict(run=0, seed=0, mean=None, std=None, unfinished=2),
        dict(run=1, seed=1, mean=12.5, std=0.5, unfinished=0),
    ]
    result = dict(algo="ppo", env="E", checkpoint_update=8, episodes=5, deterministic=True,
                  mean_over_runs=None, std_over_runs=None, runs=runs)  # fmt: skip
    lines = cli_eval.format_table(result).splitlines()
    assert lines[2].split() == ["0", "0", "-", "-", "(2", "of", "5", "episodes", "unfinished)"]
    assert lines[3].split() == ["1", "1", "12.50", "0.50"]


# ---------------------------------------------------------------- discounted_return


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _discounted(env, action, horizon, discount):
    params = env.default_params()
    obs, state = env.reset(jax.random.key(0), params)
    act = lambda o: jnp.asarray(action, env.action_space(params).dtype)
    return discounted_return(act, env, params, state, obs, discount, horizon)


def test_discounted_return_stops_at_termination_and_not_at_a_time_limit():
    # reward 0 then 1 and termination at step 2; the env keeps paying 1 after that
    np.testing.assert_allclose(_discounted(TwoStepReward(), 0, 6, 0.9), 0.9, rtol=1e-6)
    np.testing.assert_allclose(_discounted(TwoStepReward(), 0, 1, 0.9), 0.0)
    # the action's reward, once (one-step episodes)
    np.testing.assert_allclose(_discounted(ActionReward(), 1, 4, 0.5), 1.0)
    np.testing.assert_allclose(_discounted(ActionReward(), 0, 4, 0.5), -1.0)
    # reward 1 every step, truncated at 10 steps: the sum runs on past the limit
    want = (1 - 0.9**30) / (1 - 0.9)
    np.testing.assert_allclose(_discounted(TimeLimitChain(), 0, 30, 0.9), want, rtol=1e-5)
