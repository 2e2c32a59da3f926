"""Every shipped preset resolves to a valid Config and HParams for its algorithm and names
an environment that exists (no compile: this catches typos and stale keys in presets)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from jaxrl import algorithms, envs
from jaxrl.algorithms import demos
from jaxrl.runner import config


class Still:
    """Action 0 (or all zeros) in every state."""

    __name__ = "still"

    @staticmethod
    def policy(cfg, env, params, obs, key, deterministic, hp=None):
        shape = env.action_space(env.default_params()).shape
        return jnp.zeros(obs.shape[:1] + tuple(shape), jnp.int32 if not shape else jnp.float32)


@pytest.mark.parametrize("name", config.list_presets())
def test_every_preset_resolves_and_names_a_known_env(name, tmp_path):
    algo = algorithms.get(name.split("/")[0])
    preset = config.load_preset(name)
    env, _ = envs.make(preset["env"])
    sets = {}
    if "demos" in {f.name for f in dataclasses.fields(algo.Config)}:  # imitation: any pairs
        data, _ = demos.record(Still, None, env, None, jax.random.key(0), 1)
        demos.save(tmp_path / "demos.npz", data)
        sets["demos"] = str(tmp_path / "demos.npz")
    cfg, hp = config.resolve(algo, preset, sets, None)
    algo.check(cfg, hp)
