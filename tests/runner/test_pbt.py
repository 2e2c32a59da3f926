"""Population-based training in one program: score, exploit, explore, one compile, no-op parity."""

from __future__ import annotations

import dataclasses
import functools
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import envs
from jaxrl.algorithms import ppo
from jaxrl.envs import wrappers
from jaxrl.errors import ConfigError
from jaxrl.runner import pbt, sweep

P = 8
LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


@pytest.fixture(scope="module")
def setup():
    """A population of 8 tiny PPO agents on CartPole, each trained 2 updates (so Adam moments,
    counters and env states differ between members), and that 2-update vmapped program."""
    env, _ = envs.make("CartPole-v1")
    cfg = ppo.Config(total_timesteps=64 * 50, num_envs=4, rollout_len=16, hidden=(8, 8))
    hps = jax.tree.map(lambda x: jnp.broadcast_to(x, (P,)), ppo.HParams.make())
    hps = hps.replace(
        learning_rate=jnp.asarray(LRS, jnp.float32),
        ent_coef=jnp.linspace(0.0, 0.07, P, dtype=jnp.float32),
    )
    keys = jnp.stack([sweep.seed_key(s) for s in range(P)])
    state = sweep.init_runs(ppo, cfg, env, keys, hps)
    train2 = jax.jit(jax.vmap(lambda s, h: ppo.train(cfg, env, s, h, 2)))
    state, _ = train2(state, hps)
    return env, cfg, keys, hps, state, train2


def _member(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _trees_differ(a, b) -> bool:
    try:
        _assert_trees_equal(a, b)
    except AssertionError:
        return True
    return False


def test_update_score_is_a_nan_safe_ema():
    score = jnp.asarray([jnp.nan, 10.0, jnp.nan], jnp.float32)
    returns = jnp.asarray(
        [[jnp.nan, 4.0, 8.0], [jnp.nan, jnp.nan, 20.0], [jnp.nan, jnp.nan, jnp.nan]], jnp.float32
    )
    got = pbt.update_score(score, returns, 0.5)
    # member 0: first finite return sets the score (4), then 0.5*4 + 0.5*8 = 6
    # member 1: NaNs leave 10; then 0.5*10 + 0.5*20 = 15; member 2: never an episode -> NaN
    np.testing.assert_allclose(got[:2], [6.0, 15.0])
    assert np.isnan(got[2])


def test_exploit_copies_the_donor_for_bottom_members_and_leaves_the_rest(setup):
    _, _, _, hps, state, _ = setup
    # ranking (NaN lowest): 5 (NaN) < 2 (-1) < 0 < 7 < 4 < 1 < 3 (8) < 6 (9)
    score = jnp.asarray([0.0, 5.0, -1.0, 8.0, 3.0, jnp.nan, 9.0, 2.0], jnp.float32)
    fn = jax.jit(functools.partial(pbt.exploit, num_exploited=2, keep=pbt.KEEP))
    donors_seen = set()
    for seed in range(12):
        new_state, new_hps, source = fn(state, hps, score, jax.random.key(seed))
        source = np.asarray(source)
        for i in range(P):
            own_i, new_i = _member(state, i), _member(new_state, i)
            if i in (5, 2):  # bottom: learner state and hps from the donor, env and key own
                donor = int(source[i])
                assert donor in (3, 6)
                donors_seen.add(donor)
                donor_state = _member(state, donor)
                _assert_trees_equal(new_i.params, donor_state.params)
                _assert_trees_equal(new_i.opt_state, donor_state.opt_state)
                _assert_trees_equal(new_i.update_count, donor_state.update_count)
                _assert_trees_equal(new_i.kl_beta, donor_state.kl_beta)
                _assert_trees_equal(_member(new_hps, i), _member(hps, donor))
                for name in ("env_state", "obs", "key", "env_params"):
                    _assert_trees_equal(getattr(new_i, name), getattr(own_i, name))
                assert _trees_differ(new_i.params, own_i.params)
            else:  # everyone else bit for bit untouched
                assert source[i] == i
                _assert_trees_equal(new_i, own_i)
                _assert_trees_equal(_member(new_hps, i), _member(hps, i))
    assert donors_seen == {3, 6}  # the donor is drawn, not always the best


def test_exploit_copies_normaliser_statistics_with_the_network():
    """A kept env_state keeps the member's envs, but its observation and reward normaliser
    statistics come from the donor: they are the input transformation of the copied net."""
    env, _ = envs.make("Pendulum-v1")
    cfg = ppo.Config(num_envs=4, rollout_len=8, hidden=(8,), normalize_obs=True, scale_reward=True)
    hps = jax.tree.map(lambda x: jnp.broadcast_to(x, (4,)), ppo.HParams.make())
    state = sweep.init_runs(ppo, cfg, env, jnp.stack([sweep.seed_key(s) for s in range(4)]), hps)
    score = jnp.asarray([0.0, 3.0, 1.0, 2.0], jnp.float32)  # member 0 copies member 1
    new, _, source = pbt.exploit(state, hps, score, jax.random.key(0), 1)
    assert int(source[0]) == 1
    stats = lambda s: [
        x
        for x in jax.tree.leaves(  # noqa: E731
            s, is_leaf=lambda x: isinstance(x, wrappers.RunningStats)
        )
        if isinstance(x, wrappers.RunningStats)
    ]
    got, donor, own = (
        stats(_member(t.env_state, i)) for t, i in ((new, 0), (state, 1), (state, 0))
    )
    assert len(got) == 2  # NormalizeObs and ScaleReward
    _assert_trees_equal(got, donor)
    assert _trees_differ(got[0], own[0])  # each member's first observations differ
    inner = lambda s: s.env_state.env_state  # noqa: E731  (under both normalisers)
    _assert_trees_equal(inner(_member(new.env_state, 0)), inner(_member(state.env_state, 0)))
    _assert_trees_equal(_member(new.obs, 0), _member(state.obs, 0))


def test_exploit_with_no_bottom_group_is_the_identity(setup):
    _, _, _, hps, state, _ = setup
    score = jnp.arange(P, dtype=jnp.float32)
    new_state, new_hps, source = pbt.exploit(state, hps, score, jax.random.key(0), 0)
    np.testing.assert_array_equal(source, np.arange(P))
    _assert_trees_equal(new_state, state)
    _assert_trees_equal(new_hps, hps)


def test_explore_multiplies_by_exactly_one_factor_within_ranges(setup):
    hps = setup[3].replace(ent_coef=jnp.full((P,), 0.01, jnp.float32))
    hps = hps.replace(learning_rate=hps.learning_rate.at[7].set(0.9))  # 0.9 * 1.25 > 1: clipped
    copied = jnp.asarray([True, False, True, True, False, True, True, True])
    names = ("learning_rate", "ent_coef")
    fn = jax.jit(lambda h, k: pbt.explore(h, copied, k, names, ppo.HPARAM_RANGES, (0.8, 1.25), 0.0))
    factors_seen = set()
    for seed in range(10):
        new = fn(hps, jax.random.key(seed))
        for name in names:
            old, got = np.asarray(getattr(hps, name)), np.asarray(getattr(new, name))
            low, high = ppo.HPARAM_RANGES[name]
            assert np.all((got >= low) & (got <= high))
            for i in range(P):
                if not copied[i]:
                    assert got[i] == old[i]
                    continue
                down = np.float32(old[i]) * np.float32(0.8)
                up = min(np.float32(old[i]) * np.float32(1.25), np.float32(high))
                assert got[i] in (down, up), (name, i, old[i], got[i])
                factors_seen.add(0.8 if got[i] == down else 1.25)
        for name in ("discount", "clip_eps", "vf_coef"):  # not explored
            np.testing.assert_array_equal(getattr(new, name), getattr(hps, name))
        assert new.learning_rate[7] in (np.float32(0.9) * np.float32(0.8), np.float32(1.0))
    assert factors_seen == {0.8, 1.25}


def test_explore_resamples_log_uniformly_from_the_given_range(setup):
    hps = setup[3]
    copied = jnp.ones((P,), bool)
    new = pbt.explore(
        hps, copied, jax.random.key(0), ("learning_rate",), ppo.HPARAM_RANGES,
        resample_prob=1.0, resample_ranges={"learning_rate": (1e-4, 1e-2)},
    )  # fmt: skip
    lr = np.asarray(new.learning_rate)
    assert np.all((lr >= 1e-4 * (1 - 1e-6)) & (lr <= 1e-2 * (1 + 1e-6)))
    assert not np.any(np.isin(lr, np.asarray(hps.learning_rate) * np.float32([0.8, 1.25])[:, None]))


def test_config_rejects_bad_settings():
    with pytest.raises(ConfigError, match="fraction"):
        pbt.PBTConfig(names=("learning_rate",), updates_per_round=1, fraction=0.7)
    with pytest.raises(ConfigError, match="resample_ranges"):
        pbt.PBTConfig(names=("learning_rate",), updates_per_round=1, resample_prob=0.2)
    cfg = pbt.PBTConfig(names=("lr",), updates_per_round=1)
    with pytest.raises(ConfigError, match="valid: .*learning_rate"):
        pbt.check(ppo, cfg, ppo.HParams.make())
    assert [cfg.num_exploited(n) for n in (2, 4, 8, 10)] == [1, 1, 2, 2]


def test_one_compile_serves_every_round(setup):
    env, cfg, keys, hps, state, _ = setup
    conf = pbt.PBTConfig(names=("learning_rate", "ent_coef"), updates_per_round=1)
    pop = pbt.from_population(state, hps, jax.random.key(1))
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(lambda p: pbt.pbt_step(ppo, cfg, env, conf, p), n=1))
    first_hps = pop.hps
    for _ in range(3):  # every round changes the hps (explore) and runs the same program
        pop, info = step(pop)
    assert int(pop.round) == 3
    assert int(pop.num_copies.sum()) == 3 * conf.num_exploited(P)
    assert _trees_differ(pop.hps, first_hps)

    # and train_pbt is one scan: the algorithm's train is traced once for any number of rounds
    traces = []

    def counting_train(*args, **kw):
        traces.append(1)
        return ppo.train(*args, **kw)

    algo = types.SimpleNamespace(
        __name__="counting_ppo", init=ppo.init, train=counting_train,
        HPARAM_RANGES=ppo.HPARAM_RANGES,
    )  # fmt: skip
    fn = lambda k, h: pbt.train_pbt(algo, cfg, env, k, h, 50, 1, ("learning_rate",))  # noqa: E731
    jax.jit(fn).lower(keys, hps)
    assert len(traces) == 1


def test_without_exploit_pbt_equals_independent_training_bitwise(setup):
    env, cfg, keys, hps, state, train2 = setup
    rounds, per_round = 3, 2
    conf = pbt.PBTConfig(names=("learning_rate",), updates_per_round=per_round, fraction=0.0)
    pop = pbt.from_population(state, hps, jax.random.key(1))
    pop, history = jax.jit(lambda p: pbt.run(ppo, cfg, env, conf, p, rounds))(pop)
    # Independent training: every member alone, its 6 updates as 3 calls of the setup's
    # 2-update program (the loop's chunks; chunking does not change the numbers).
    ref_state, chunks = state, []
    for _ in range(rounds):
        ref_state, metrics = train2(ref_state, hps)
        chunks.append(metrics)
    ref_metrics = jax.tree.map(lambda *m: jnp.concatenate(m, axis=1), *chunks)
    _assert_trees_equal(pop.state, ref_state)
    _assert_trees_equal(pop.hps, hps)
    np.testing.assert_array_equal(history["source"], np.tile(np.arange(P), (rounds, 1)))
    ref_returns = np.asarray(ref_metrics["episode/return"]).reshape(P, rounds, per_round)
    np.testing.assert_array_equal(np.swapaxes(history["episode/return"], 0, 1), ref_returns)
    # the score is the EMA of exactly those returns
    want = pbt.update_score(jnp.full((P,), jnp.nan), ref_metrics["episode/return"], 0.9)
    np.testing.assert_allclose(history["score"][-1], want, rtol=1e-6)
    assert dataclasses.fields(pop)  # a PBTState came back
