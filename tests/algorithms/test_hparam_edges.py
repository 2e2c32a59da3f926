"""Every hyperparameter at each end of its range keeps the parameters finite: a few updates
of every algorithm, one run per (hyperparameter, end) and all of them in one vmapped
program per algorithm (slow: about 100 CPU-s; ``--runslow``). The ends are what ``check``
accepts, so an end that diverges is a range to tighten (Adam's and RMSProp's eps at 0 gave
0/0 for a zero gradient in DQN, Rainbow, R2D2 and Ape-X)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import ALGORITHMS
from jaxrl.envs import registry
from jaxrl.errors import ConfigError

DEMOS = str(Path(__file__).resolve().parents[1] / "data" / "cartpole_demos.npz")  # make_demos.py
ON_POLICY = dict(num_envs=4, rollout_len=8, hidden=(16,))
REPLAY = dict(hidden=(16,), batch_size=8, buffer_size=64, learning_starts=16)
SMALL = {
    "a2c": ON_POLICY | dict(total_timesteps=6 * 32),
    "acer": ON_POLICY | dict(total_timesteps=12 * 32, buffer_size=128, replay_start=64),
    "acktr": ON_POLICY | dict(total_timesteps=6 * 32),
    "apex": REPLAY | dict(total_timesteps=96, num_actors=4, target_update_period=4),
    "ddpg": REPLAY | dict(total_timesteps=60),
    "dqn": REPLAY | dict(total_timesteps=120, num_envs=2, target_update_period=4),
    "fun": dict(total_timesteps=6 * 32, num_envs=4, rollout_len=8, horizon=3, dilation=3,
                state_dim=8, goal_embed=4, worker_hidden=8, torso_hidden=(8,)),  # fmt: skip
    "gail": ON_POLICY | dict(total_timesteps=6 * 32, demos=DEMOS),
    "icm": ON_POLICY | dict(total_timesteps=6 * 32, icm_hidden=(8,)),
    "impala": ON_POLICY | dict(total_timesteps=6 * 32, lag=1, optimizer="adam"),
    "npg": ON_POLICY | dict(total_timesteps=6 * 64, rollout_len=16, num_minibatches=2),
    "ppo": ON_POLICY | dict(total_timesteps=6 * 64, rollout_len=16, num_minibatches=2),
    "r2d2": dict(
        total_timesteps=12 * 16, num_envs=2, train_freq=8, hidden=(8,), lstm_features=8,
        batch_size=4, buffer_size=64, sequence_length=8, burn_in=2, period=4, n_step=2,
        learning_starts=32, target_update_period=4,
    ),
    "rainbow": REPLAY | dict(total_timesteps=120, num_envs=2, target_update_period=4, num_atoms=11),
    "recurrent_ppo": ON_POLICY | dict(total_timesteps=6 * 32, hidden=16, num_minibatches=2),
    "sac": REPLAY | dict(total_timesteps=60),
    "td3": REPLAY | dict(total_timesteps=60),
    "trpo": ON_POLICY | dict(total_timesteps=6 * 64, rollout_len=16, num_minibatches=2),
    "vpg": ON_POLICY | dict(total_timesteps=6 * 32),
}  # fmt: skip


def test_every_algorithm_has_a_small_config_here():
    assert set(SMALL) == set(ALGORITHMS)


@pytest.mark.parametrize("algo", ["dqn", "rainbow", "r2d2", "apex", "impala"])
def test_adam_eps_zero_is_out_of_range(algo):
    module = ALGORITHMS[algo]
    with pytest.raises(ConfigError, match=r"adam_eps must lie in \[1e-12, 1.0\], got 0"):
        module.check(module.Config(), module.HParams.make(adam_eps=0.0))


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(SMALL))
def test_every_hyperparameter_at_either_end_of_its_range_keeps_parameters_finite(algo):
    module = ALGORITHMS[algo]
    env, _ = registry.make("Pendulum-v1" if algo in ("ddpg", "sac", "td3") else "CartPole-v1")
    cfg = module.Config(**SMALL[algo])
    default = module.HParams.make()
    labels, rows = [], []
    for name, (low, high) in module.HPARAM_RANGES.items():
        for end in (low, min(high, 1e6)):
            labels.append(f"{name}={end:g}")
            rows.append(default.replace(**{name: jnp.float32(end)}))
    hps = jax.tree.map(lambda *xs: jnp.stack(xs), *rows)
    module.check(cfg, hps)  # every end is accepted

    def finite_after_training(key, hp):
        state = module.init(cfg, env, key, hp)
        state, _ = module.train(cfg, env, state, hp, cfg.num_updates)
        leaves = jax.tree.leaves(state.params)
        return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))

    keys = jax.random.split(jax.random.key(0), len(rows))
    finite = np.asarray(jax.jit(jax.vmap(finite_after_training))(keys, hps))
    assert not [label for label, ok in zip(labels, finite, strict=True) if not ok]
