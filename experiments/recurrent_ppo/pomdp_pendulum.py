"""Recurrent against feed-forward PPO on Pendulum with the angular velocity hidden.

``pomdp/Pendulum-v1`` observes ``(cos θ, sin θ)`` only; swinging up and balancing needs the
angular velocity, which a policy must infer from the observations so far. Agents:

* ``ppo``: the ``ppo/pendulum`` preset (MLP 64-64, observation normalisation, scaled
  rewards);
* ``recurrent_ppo``: the ``recurrent_ppo/pomdp_pendulum`` preset (GRU(64), Gaussian
  actions with a state-independent log-std, scaled rewards).

Both on ``Pendulum-v1`` (the control) and ``pomdp/Pendulum-v1``, 8 seeds each as one
vmapped program per (agent, env), scored as in ``pomdp_cartpole.py`` (the training return
of the last tenth of the updates, and the final policy's greedy return over 256 episodes).

    python experiments/recurrent_ppo/pomdp_pendulum.py --seeds 8 \\
        --json experiments/recurrent_ppo/pomdp_pendulum.json

RESULTS.md in this folder records the predictions and the run.
"""

from __future__ import annotations

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import pomdp_cartpole  # noqa: E402

from jaxrl.algorithms import ppo, recurrent_ppo  # noqa: E402
from jaxrl.runner import config  # noqa: E402

ENVS = ("Pendulum-v1", "pomdp/Pendulum-v1")
AGENTS = {
    "ppo": (ppo, "ppo/pendulum"),
    "recurrent_ppo": (recurrent_ppo, "recurrent_ppo/pomdp_pendulum"),
}


def setup(agent: str, total_timesteps: int):
    """``(module, cfg, hp, num_updates)``: the agent's preset at this env-step budget."""
    algo, preset = AGENTS[agent]
    cfg, hp = config.resolve(algo, config.load_preset(preset), {}, total_timesteps)
    return algo, cfg, hp, cfg.num_updates


if __name__ == "__main__":
    pomdp_cartpole.main(ENVS, tuple(AGENTS), setup, __doc__)
