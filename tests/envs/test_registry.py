"""Tests of ``jaxrl.envs.registry``: names, errors listing valid names, and ``check_name``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.envs import list_envs, make, probe, registry
from jaxrl.envs.gymnax import ENV_IDS, GymnaxEnv


@pytest.mark.parametrize("name", ["CartPole-v1", "Pendulum-v1", "Catch-bsuite"])
def test_make_gymnax_returns_env_and_default_params(name):
    env, params = make(name)
    assert env == GymnaxEnv(name)
    assert env.name == name
    assert params == env.default_params()
    registry.check_name(name)  # does not raise


@pytest.mark.parametrize("name", sorted(probe.PROBES))
def test_make_probe(name):
    env, params = make(f"probe/{name}")
    assert isinstance(env, probe.PROBES[name])
    assert env == make(f"probe/{name}")[0]
    assert hash(env) == hash(make(f"probe/{name}")[0])
    registry.check_name(f"probe/{name}")


def test_list_envs_covers_gymnax_probes_and_lpg():
    names = list_envs()
    assert set(ENV_IDS) <= set(names)
    assert {f"probe/{n}" for n in probe.PROBES} <= set(names)
    assert sum(n.startswith("lpg/") for n in names) == 15  # spec 1.8: the 15 LPG environments
    assert len(names) == len(set(names))
    for name in names:
        if "<" not in name:  # placeholders like brax/<name> are prefixes, not names
            registry.check_name(name)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        make("CartPole-v0")
    message = str(err.value)
    assert "'CartPole-v0'" in message
    for name in ENV_IDS:
        assert name in message
    for prefix in registry.PREFIXES:
        assert prefix in message


def test_pomdp_envs_are_their_gymnax_env_without_velocities():
    names = [n for n in list_envs() if n.startswith("pomdp/")]
    assert names == [f"pomdp/{n}" for n in registry.POSITIONS]
    env, params = make("pomdp/CartPole-v1")
    obs, _ = env.reset(jax.random.key(0), params)
    full, _ = env.unwrapped().reset(jax.random.key(0), params)
    np.testing.assert_array_equal(obs, full[jnp.asarray([0, 2])])  # x and theta
    with pytest.raises(ValueError, match="pomdp/CartPole-v1"):
        make("pomdp/MountainCar-v0")


def test_unknown_probe_lists_probe_names():
    with pytest.raises(ValueError) as err:
        make("probe/nope")
    for name in probe.PROBES:
        assert f"probe/{name}" in str(err.value)


@pytest.mark.parametrize("name", ["CartPole-v0", "cartpole-v1", "", "gymnax/CartPole-v1"])
def test_check_name_raises_the_make_error(name):
    with pytest.raises(ValueError) as from_make:
        make(name)
    with pytest.raises(ValueError) as from_check:
        registry.check_name(name)
    assert str(from_check.value) == str(from_make.value)


@pytest.mark.parametrize("name", ["probe/nope", "lpg/nope", "meta/nope"])
def test_check_name_raises_the_make_error_for_bad_family_name(name):
    with pytest.raises(ValueError) as from_make:
        make(name)
    with pytest.raises(ValueError) as from_check:
        registry.check_name(name)
    assert str(from_check.value) == str(from_make.value)
    prefix = name.split("/")[0] + "/"
    for valid in registry.FAMILIES[prefix]:
        assert prefix + valid in str(from_make.value)


@pytest.mark.parametrize(
    "name",
    ["lpg/tabular_dense", "lpg/random_small", "lpg/chain_long_noisy", "meta/bernoulli_bandit"],
)
def test_make_lpg_environment_steps(name):
    import jax

    env, params = make(name)
    obs, state = env.reset(jax.random.key(0), params)
    assert obs.shape == env.observation_space(params).shape
    next_obs, _, step = env.step(jax.random.key(1), state, 0, params)
    assert next_obs.shape == obs.shape
    assert step.reward.shape == ()


def test_check_name_accepts_optional_backends_without_importing_them():
    registry.check_name("brax/ant")
    registry.check_name("envpool/CartPole-v1")
