"""Every shipped preset resolves to a valid Config and HParams for its algorithm and names
an environment that exists (no compile: this catches typos and stale keys in presets)."""

from __future__ import annotations

import pytest

from jaxrl import algorithms, envs
from jaxrl.runner import config


@pytest.mark.parametrize("name", config.list_presets())
def test_every_preset_resolves_and_names_a_known_env(name):
    algo = algorithms.get(name.split("/")[0])
    preset = config.load_preset(name)
    cfg, hp = config.resolve(algo, preset, {}, None)
    algo.check(cfg, hp)
    envs.make(preset["env"])
