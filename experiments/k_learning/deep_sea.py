"""K-learning against soft Q-learning on DeepSea: does "RL as inference" explore?

O'Donoghue, Osband & Ionescu (2020) show that soft Q-learning, the Boltzmann policy of the
posterior-mean soft values, explores by dithering: on DeepSea of size ``N`` it needs about
``2^N`` episodes to find the treasure, while K-learning, whose soft Bellman operator adds
the posterior's uncertainty, needs polynomially many. The seed's figure is their "regret
scaling: soft Q-learning does not scale gracefully with N".

Arms, on ``DeepSea-bsuite`` (gymnax; deterministic, its fixed action map) of sizes
``SIZES``, ``--seeds`` seeds each (keys ``split(key(2020), seeds)``), one compiled
program per (arm, size) with the seeds vmapped:

* ``k_learning``: :mod:`jaxrl.algorithms.k_learning` defaults (``prior_variance`` 1, the
  temperature minimising the start-state value every episode), ``K_EPISODES`` episodes;
* ``soft_q_0.1``, ``soft_q_1``: the same model and planner with no uncertainty term, at a
  fixed temperature 0.1 or 1, ``SOFT_Q_EPISODES`` episodes.

Per run: the first episode that reaches the treasure (return > 0.5; ``None`` if none did)
and the fraction of the last 10 % of episodes that did; per arm and size the seconds of the
compiled program (compile included). Seeds run on one device.

    python experiments/k_learning/deep_sea.py --seeds 8 --json experiments/k_learning/results.json

RESULTS.md in this folder records the protocol, the predictions and a run.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from jaxrl import envs
from jaxrl.algorithms import k_learning
from jaxrl.logger.writers import atomic_write_text

SIZES = (4, 6, 8, 10, 12, 14, 16, 20)
K_EPISODES = 4_000
SOFT_Q_EPISODES = 20_000
ARMS = {
    "k_learning": (k_learning.Config(agent="k_learning"), K_EPISODES),
    "soft_q_0.1": (k_learning.Config(agent="soft_q", temperature=0.1), SOFT_Q_EPISODES),
    "soft_q_1": (k_learning.Config(agent="soft_q", temperature=1.0), SOFT_Q_EPISODES),
}


def run(arm: str, size: int, seeds: int) -> dict:
    """One arm at one size, all seeds in one program."""
    base_cfg, num_episodes = ARMS[arm]
    env, env_params = envs.make("DeepSea-bsuite", size=size)
    cfg = k_learning.Config(horizon=size, agent=base_cfg.agent, temperature=base_cfg.temperature)
    hp = k_learning.HParams.make()
    k_learning.check(cfg, env, hp, env_params)
    train = jax.jit(
        jax.vmap(lambda key: k_learning.train(cfg, env, hp, key, num_episodes, env_params)[1])
    )
    keys = jax.random.split(jax.random.key(2020), seeds)
    t0 = time.perf_counter()
    metrics = jax.block_until_ready(train(keys))
    seconds = time.perf_counter() - t0
    found = np.asarray(metrics["return"]) > 0.5  # [seeds, episodes]
    tail = max(num_episodes // 10, 1)
    return {
        "episodes": num_episodes,
        "first_treasure": [int(np.argmax(f)) + 1 if f.any() else None for f in found],
        "final_treasure_rate": [float(f[-tail:].mean()) for f in found],
        "final_tau": [float(t) for t in np.asarray(metrics["tau"])[:, -1]],
        "seconds": seconds,
    }


def median_first(first: list) -> float | None:
    """The median first-treasure episode, counting a run that never found it as infinite."""
    x = np.sort([np.inf if f is None else f for f in first])
    m = float(np.median(x))
    return None if not np.isfinite(m) else m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    results: dict = {}
    print("| arm | N | episodes | median first treasure | found (seeds) | final rate | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for arm in args.arms:
        for size in args.sizes:
            r = run(arm, size, args.seeds)
            results.setdefault(arm, {})[str(size)] = r
            found = sum(f is not None for f in r["first_treasure"])
            print(
                f"| {arm} | {size} | {r['episodes']} | {median_first(r['first_treasure'])} | "
                f"{found}/{args.seeds} | {np.mean(r['final_treasure_rate']):.2f} | "
                f"{r['seconds']:.0f} |",
                flush=True,
            )
            if args.json:
                atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
