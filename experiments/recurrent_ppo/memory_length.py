"""Recurrent PPO on bsuite's MemoryChain as the memory grows, against the truncation of
backpropagation through time at rollout boundaries.

MemoryChain (``memory_length = L``): a context bit is shown at the first step of an
``L + 1``-step episode, and the last step pays +1 if the action matches it, else -1
(chance: 0). ``recurrent_ppo`` carries the recurrent state forward across rollouts but
takes gradients only inside one: a minibatch is a set of env columns of ``rollout_len``
steps, re-run from the carry stored at the rollout's start. Where no episode fits inside
one rollout, no gradient links the context to the decision.

Arms: ``L`` in {8, 24, 56, 120} x ``rollout_len`` in {32, 128}. The env-step budget and the
batch are the same for every arm: 200 updates of 2,048 env steps (64 envs x 32 steps or
16 envs x 128), 4 epochs x 4 minibatches of env columns, GRU(64), Adam 3e-3 annealed.
Scores per seed: the mean return of the training episodes that ended in the last tenth of
the updates, and the greedy return of the final policy over 256 episodes.

    python experiments/recurrent_ppo/memory_length.py --seeds 4 \\
        --json experiments/recurrent_ppo/memory_length.json

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
from jaxrl.algorithms import recurrent_ppo  # noqa: E402
from jaxrl.distributed import run_mesh, shard_runs  # noqa: E402
from jaxrl.logger.writers import atomic_write_text  # noqa: E402

MEMORY_LENGTHS = (8, 24, 56, 120)
ROLLOUT_LENS = (32, 128)
STEPS_PER_UPDATE = 2048
UPDATES = 200


def fraction_inside(episode_len: int, rollout_len: int) -> float:
    """Share of start offsets at which a whole episode lies inside one rollout."""
    return max(rollout_len - episode_len + 1, 0) / rollout_len


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-lengths", type=int, nargs="+", default=list(MEMORY_LENGTHS))
    parser.add_argument("--rollout-lens", type=int, nargs="+", default=list(ROLLOUT_LENS))
    parser.add_argument("--updates", type=int, default=UPDATES)
    parser.add_argument("--json", help="write every curve here")
    args = parser.parse_args()

    keys = shard_runs(jax.random.split(jax.random.key(args.seed), args.seeds), run_mesh())
    hp = recurrent_ppo.HParams.make(learning_rate=3e-3)
    record = {"seeds": args.seeds, "seed": args.seed, "updates": args.updates, "runs": {}}
    print("| memory L | rollout_len | episodes inside one rollout | final training return "
          "(mean ± sd) | per seed | greedy (mean) | compile + run |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for memory in args.memory_lengths:
        env, env_params = envs.make("MemoryChain-bsuite")
        env_params = env_params.replace(memory_length=memory)
        for rollout_len in args.rollout_lens:
            cfg = recurrent_ppo.Config(
                total_timesteps=args.updates * STEPS_PER_UPDATE,
                num_envs=STEPS_PER_UPDATE // rollout_len, rollout_len=rollout_len, hidden=64,
                num_epochs=4, num_minibatches=4, anneal_lr=True,
            )  # fmt: skip
            out = train_and_score(recurrent_ppo, cfg, hp, env, env_params, keys, cfg.num_updates)
            inside = fraction_inside(memory + 1, rollout_len)
            out |= {"memory_length": memory, "rollout_len": rollout_len, "inside": inside}
            record["runs"][f"L{memory}/T{rollout_len}"] = out
            final = np.asarray(out["final_return"])
            print(
                f"| {memory} | {rollout_len} | {inside:.0%} | {final.mean():.2f} ± "
                f"{final.std():.2f} | {' '.join(f'{x:.2f}' for x in final)} | "
                f"{np.mean(out['greedy_return']):.2f} | "
                f"{out['compile_s']:.0f} s + {out['run_s']:.0f} s |",
                flush=True,
            )
            if args.json:
                atomic_write_text(args.json, json.dumps(record))


if __name__ == "__main__":
    main()
