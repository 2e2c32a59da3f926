"""An env wrapper for tests that show an algorithm never learns from the env's reward."""

from __future__ import annotations

import dataclasses

from jaxrl.envs.wrappers import Wrapper


@dataclasses.dataclass(frozen=True)
class Rescaled(Wrapper):
    """The env's reward times 1000, plus 5."""

    def step(self, key, state, action, params):
        obs, state, out = self.env.step(key, state, action, params)
        return obs, state, out.replace(reward=1000.0 * out.reward + 5.0)
