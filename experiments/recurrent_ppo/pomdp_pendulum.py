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

import argparse
import json

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import jax  # noqa: E402
import numpy as np  # noqa: E402
from pomdp_cartpole import train_and_score  # noqa: E402

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import ppo, recurrent_ppo  # noqa: E402
from jaxrl.distributed import run_mesh, shard_runs  # noqa: E402
from jaxrl.logger.writers import atomic_write_text  # noqa: E402
from jaxrl.runner import config  # noqa: E402

ENVS = ("Pendulum-v1", "pomdp/Pendulum-v1")
AGENTS = {
    "ppo": (ppo, "ppo/pendulum"),
    "recurrent_ppo": (recurrent_ppo, "recurrent_ppo/pomdp_pendulum"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--json", help="write every curve here")
    args = parser.parse_args()

    keys = shard_runs(jax.random.split(jax.random.key(args.seed), args.seeds), run_mesh())
    record = {"seeds": args.seeds, "seed": args.seed, "total_timesteps": args.total_timesteps,
              "runs": {}}  # fmt: skip
    print("| env | agent | final training return (mean ± sd) | per seed | "
          "greedy return (mean ± sd) | per seed | compile + run |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for env_name in args.envs:
        for agent in args.agents:
            algo, preset = AGENTS[agent]
            cfg, hp = config.resolve(algo, config.load_preset(preset), {}, args.total_timesteps)
            env, env_params = envs.make(env_name)
            out = train_and_score(algo, cfg, hp, env, env_params, keys, cfg.num_updates)
            record["runs"][f"{agent}/{env_name}"] = out
            final, greedy = np.asarray(out["final_return"]), np.asarray(out["greedy_return"])
            print(
                f"| {env_name} | {agent} | {final.mean():.0f} ± {final.std():.0f} | "
                f"{' '.join(f'{x:.0f}' for x in final)} | "
                f"{greedy.mean():.0f} ± {greedy.std():.0f} | "
                f"{' '.join(f'{x:.0f}' for x in greedy)} | "
                f"{out['compile_s']:.0f} s + {out['run_s']:.0f} s |",
                flush=True,
            )
            if args.json:
                atomic_write_text(args.json, json.dumps(record))


if __name__ == "__main__":
    main()
