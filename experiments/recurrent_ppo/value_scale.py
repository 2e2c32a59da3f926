"""Why recurrent PPO needs its rewards scaled on CartPole: the value head, or the value
gradient?

Without ``scale_reward`` the ``recurrent_ppo/pomdp_cartpole`` settings learn full
``CartPole-v1`` poorly (pilot in RESULTS.md: 145-223). Two explanations:

* **H-head**: the value head is linear on the GRU's output, which lies in (-1, 1), and
  cannot reach CartPole's discounted values (up to about 100) in time.
* **H-grad**: the policy and the value share the GRU; the value loss of targets near 100
  has gradients far larger than the policy's, so it takes the shared core's updates (Adam's
  per-parameter step, and the global-norm clip of 0.5, see their sum).

Arms (each the preset on ``CartPole-v1`` with one change):

* ``raw``: ``scale_reward=False``;
* ``running_std``: the preset as it is (rewards over the running std of the return);
* ``const_0.01``: ``scale_reward=False``, rewards times 0.01 by a wrapper (values <= 1);
  training returns are divided back;
* ``small_vf``: ``scale_reward=False``, ``vf_coef`` 0.5 -> 0.005: the value gradient / 100
  with the targets unchanged;
* ``no_clip``: ``scale_reward=False``, ``max_grad_norm`` 1e9 (no clipping);
* ``raw_separate``: ``scale_reward=False``, ``separate_critic=True`` (the value on its own
  GRU: no value gradient reaches the policy's core);
* ``running_std_separate``: the preset with ``separate_critic=True``.

    python experiments/recurrent_ppo/value_scale.py --seeds 8 \\
        --json experiments/recurrent_ppo/value_scale.json

RESULTS.md in this folder records the predictions and the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import jax  # noqa: E402
import numpy as np  # noqa: E402
from pomdp_cartpole import train_and_score  # noqa: E402

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import recurrent_ppo  # noqa: E402
from jaxrl.distributed import run_mesh, shard_runs  # noqa: E402
from jaxrl.envs.base import Wrapper  # noqa: E402
from jaxrl.logger.writers import atomic_write_text  # noqa: E402
from jaxrl.runner import config  # noqa: E402

RAW = {"scale_reward": "false"}
ARMS = {
    "raw": (RAW, 1.0),
    "running_std": ({}, 1.0),
    "const_0.01": (RAW, 0.01),
    "small_vf": (RAW | {"vf_coef": "0.005"}, 1.0),
    "no_clip": (RAW | {"max_grad_norm": "1e9"}, 1.0),
    "raw_separate": (RAW | {"separate_critic": "true"}, 1.0),
    "running_std_separate": ({"separate_critic": "true"}, 1.0),
}


@dataclasses.dataclass(frozen=True)
class ConstantRewardScale(Wrapper):
    """Multiplies every reward by ``scale``."""

    scale: float = 1.0

    def step(self, key, state, action, params):
        obs, state, step = self.env.step(key, state, action, params)
        return obs, state, step.replace(reward=step.reward * self.scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--json", help="write every curve here")
    args = parser.parse_args()

    keys = shard_runs(jax.random.split(jax.random.key(args.seed), args.seeds), run_mesh())
    preset = config.load_preset("recurrent_ppo/pomdp_cartpole")
    record = {"seeds": args.seeds, "seed": args.seed, "total_timesteps": args.total_timesteps,
              "env": "CartPole-v1", "runs": {}}  # fmt: skip
    print("| arm | final training return (mean ± sd) | per seed | greedy (mean) | "
          "value loss, last tenth (median over seeds) | compile + run |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for arm in args.arms:
        sets, scale = ARMS[arm]
        cfg, hp = config.resolve(recurrent_ppo, preset, sets, args.total_timesteps)
        env, env_params = envs.make("CartPole-v1")
        if scale != 1.0:
            env = ConstantRewardScale(env, scale)
        out = train_and_score(recurrent_ppo, cfg, hp, env, env_params, keys, cfg.num_updates)
        out["final_return"] = (np.asarray(out["final_return"]) / scale).tolist()
        out["greedy_return"] = (np.asarray(out["greedy_return"]) / scale).tolist()
        out["returns"] = [[None if r is None else r / scale for r in row] for row in out["returns"]]
        out["sets"], out["reward_scale"] = sets, scale
        record["runs"][arm] = out
        final = np.asarray(out["final_return"])
        tail = slice(cfg.num_updates - cfg.num_updates // 10, cfg.num_updates)
        vloss = np.median(np.asarray(out["value_loss"])[:, tail].mean(1))
        print(
            f"| {arm} | {final.mean():.0f} ± {final.std():.0f} | "
            f"{' '.join(f'{x:.0f}' for x in final)} | {np.mean(out['greedy_return']):.0f} | "
            f"{vloss:.3g} | {out['compile_s']:.0f} s + {out['run_s']:.0f} s |",
            flush=True,
        )
        if args.json:
            atomic_write_text(args.json, json.dumps(record))


if __name__ == "__main__":
    main()
