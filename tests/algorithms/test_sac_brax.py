"""SAC and TD3 learn brax's inverted_pendulum from their presets (4 seeds in one program).

The learning checks take minutes on a CPU (about 3 min of CPU time each on 2 cores), so
they are marked slow; ``experiments/sac/RESULTS.md`` records their curves and timings.
"""

import time

import numpy as np
import pytest

pytest.importorskip("brax.envs")

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import sac, td3  # noqa: E402
from jaxrl.envs import spaces  # noqa: E402
from jaxrl.runner import config, loop, sweep  # noqa: E402

ALGOS = {"sac": sac, "td3": td3}
BUDGET = 50_000  # env steps per run


def _resolve(algo_name: str):
    preset = config.load_preset(f"{algo_name}/inverted_pendulum")
    cfg, hp = config.resolve(ALGOS[algo_name], preset, {}, None)
    env, params = envs.make(preset["env"])
    return preset, cfg, hp, env, params


@pytest.mark.parametrize("algo_name", sorted(ALGOS))
def test_preset_resolves_to_brax_inverted_pendulum_within_budget(algo_name):
    preset, cfg, hp, env, params = _resolve(algo_name)
    assert preset["env"] == "brax/inverted_pendulum"
    assert env.episode_length == 1000 and env.backend == "generalized"
    assert env.action_space(params) == spaces.Box(-1.0, 1.0, (1,))
    assert cfg.num_updates * cfg.steps_per_update <= BUDGET
    assert cfg.learning_starts < cfg.total_timesteps and cfg.buffer_size >= cfg.batch_size
    assert 0 < float(hp.learning_rate) < 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("algo_name", sorted(ALGOS))
def test_preset_reaches_900_over_4_seeds(algo_name):
    _, cfg, hp, env, _ = _resolve(algo_name)
    runs = sweep.grid(hp, seeds=range(4))
    t0 = time.perf_counter()
    result = loop.run(
        ALGOS[algo_name], env, cfg, runs, env_name="brax/inverted_pendulum",
        algo_name=algo_name, quiet=True,
    )  # fmt: skip
    final = np.asarray(result.summary["final_return"]["per_run"])
    print(f"{algo_name}: final {final}, wall {time.perf_counter() - t0:.1f} s")
    assert final.shape == (4,) and np.isfinite(final).all(), final
    assert final.mean() >= 900, final
