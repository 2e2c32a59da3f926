"""NGU on the disco room: directed exploration against epsilon-greedy, and embeddings
learned from actions against raw-observation novelty under noise (Badia et al. 2020).

Four arms on ``DiscoRoom()`` (15 x 15, 60 steps, the decoy at 0.1), each ``--seeds`` runs
of ``ngu.Config()``'s defaults (16 envs, 16,000 vector steps):

* ``ngu``: the family of 8 policies;
* ``dqn``: ``num_policies=1``, policy 0 alone: epsilon-greedy double DQN with Ape-X
  epsilons and the same value rescaling, n-step returns and networks;
* ``ngu_noise``: NGU with 16 noise values in every observation;
* ``ngu_noise_raw``: the same, with the embedding network frozen at its random
  initialisation (``embedding_learning_rate=0``): novelty measured on random features of
  the raw observation, noise included.

Per run it keeps the mean return of the episodes policy 0's actors and the most
exploratory policy's actors finished in each 2,000-step window, and each window's
evaluation of policy 0 (32 episodes, epsilon 0.05).

    python experiments/ngu/disco_room.py --seeds 8 --json experiments/ngu/results.json

RESULTS.md in this folder records the protocol, the predictions and a run.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from jaxrl.algorithms import ngu
from jaxrl.envs.disco_room import DiscoRoom
from jaxrl.logger.writers import atomic_write_text

ARMS = {
    "ngu": (dict(), dict(), 0),
    "dqn": (dict(num_policies=1), dict(), 0),
    "ngu_noise": (dict(), dict(), 16),
    "ngu_noise_raw": (dict(), dict(embedding_learning_rate=0.0), 16),
}


def run_arm(name: str, keys: jax.Array) -> dict:
    """One arm's runs: per-window returns of policy 0's and policy N-1's actors and the
    evaluations, ``[seeds, windows]`` lists."""
    cfg_overrides, hp_overrides, noise = ARMS[name]
    env = DiscoRoom(noise_dims=noise)
    cfg, hp = ngu.Config(**cfg_overrides), ngu.HParams.make(**hp_overrides)
    ngu.check(cfg, env, hp)

    def run(key):
        return ngu.train(cfg, env, ngu.init(cfg, env, key, hp), hp)[1]

    start = time.perf_counter()
    metrics = jax.block_until_ready(jax.jit(jax.vmap(run))(keys))
    by_policy = np.asarray(metrics["train/return_by_policy"])  # [seeds, windows, N]
    return {
        "exploiter": by_policy[:, :, 0].round(4).tolist(),
        "explorer": by_policy[:, :, -1].round(4).tolist(),
        "eval": np.asarray(metrics["eval/return"]).round(4).tolist(),
        "seconds": time.perf_counter() - start,
    }


def summary(arm: dict) -> dict:
    """Last-window means over seeds, and how many seeds' policy-0 actors beat 0.5."""
    exploiter, explorer = np.asarray(arm["exploiter"]), np.asarray(arm["explorer"])
    evals = np.asarray(arm["eval"])
    return {
        "exploiter_last": float(np.nanmean(exploiter[:, -1])),
        "explorer_last": float(np.nanmean(explorer[:, -1])),
        "seeds_exploiter_over_0.5": int(np.sum(exploiter[:, -1] > 0.5)),
        "eval_last_two": float(np.mean(evals[:, -2:])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--key", type=int, default=2020)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    keys = jax.random.split(jax.random.key(args.key), args.seeds)
    results = {}
    for name in args.arms:
        arm = run_arm(name, keys)
        arm["summary"] = summary(arm)
        results[name] = arm
        shown = {k: round(v, 3) for k, v in arm["summary"].items()}
        print(f"{name}: {shown}; {arm['seconds']:.0f} s", flush=True)
        if args.json:
            atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
