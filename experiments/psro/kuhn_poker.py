"""PSRO on Kuhn poker: Nash, uniform and alpha-Rank meta-solvers, exact and PPO oracles.

Lanctot et al. (2017) introduce PSRO: grow a population of policies per player, each new
one a best response to a meta-strategy over the other's population. With a Nash
meta-solver it approaches a Nash equilibrium of the full game; with a uniform one it is
fictitious self-play. Muller et al. (2020) replace Nash by alpha-Rank (alpha-PSRO), which
is defined for general-sum, many-player games. This experiment measures how close each
meta-solver gets in two-player Kuhn poker, with exact best responses and with PPO
learning them (:mod:`jaxrl.algorithms.psro`).

Arms: ``solver`` in (nash, uniform, alpharank) x ``oracle`` in (exact, ppo), ``ITERATIONS``
iterations each, ``psro.Config`` defaults otherwise. The exact oracle is deterministic: one
run. The PPO oracle runs ``--seeds`` seeds (keys ``split(key(--key), seeds)``) vmapped in
one program on one device. Per arm: the exploitability of the meta-mixture after every
iteration (per seed), PPO's shortfall from exact best responses (``oracle_gap``), and the
seconds of the compiled program (compile included).

    python experiments/psro/kuhn_poker.py --seeds 8 --json experiments/psro/results.json

RESULTS.md in this folder records the protocol, the predictions and a run.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from jaxrl.algorithms import psro
from jaxrl.logger.writers import atomic_write_text

ITERATIONS = 30
SOLVERS = ("nash", "uniform", "alpharank")


def run(solver: str, oracle: str, seeds: int, key: int) -> dict:
    cfg = psro.Config(iterations=ITERATIONS, solver=solver, oracle=oracle)
    hp = psro.HParams.make()
    psro.check(cfg, hp)
    count = 1 if oracle == "exact" else seeds
    # One device: sharding the seeds over this CPU's cores hangs on jax 0.10.2, as with
    # CMA-ES (experiments/classical).
    keys = jax.random.split(jax.random.key(key), count)
    start = time.perf_counter()
    _, metrics = jax.block_until_ready(
        jax.jit(jax.vmap(lambda k: psro.train(cfg, psro.init(cfg, k), hp)))(keys)
    )
    seconds = time.perf_counter() - start
    exploitability = np.asarray(metrics["exploitability"])  # [runs, iterations + 1]
    gap = np.asarray(metrics["oracle_gap"])[:, :-1]
    return {
        "exploitability": exploitability.tolist(),
        "final": exploitability[:, -1].tolist(),
        "final_mean": float(exploitability[:, -1].mean()),
        "oracle_gap_mean": float(gap.mean()),
        "oracle_gap_max": float(gap.max()),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--key", type=int, default=1950)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    for oracle in ("exact", "ppo"):
        for solver in SOLVERS:
            arm = run(solver, oracle, args.seeds, args.key)
            results[f"{solver}_{oracle}"] = arm
            curve = np.asarray(arm["exploitability"]).mean(axis=0)
            print(
                f"{solver}_{oracle}: final {np.round(arm['final'], 4).tolist()} "
                f"mean {arm['final_mean']:.4f}; mean curve at 0/5/10/20/30 "
                f"{np.round(curve[[0, 5, 10, 20, 30]], 4).tolist()}; gap mean "
                f"{arm['oracle_gap_mean']:.4f} max {arm['oracle_gap_max']:.4f}; "
                f"{arm['seconds']:.0f} s",
                flush=True,
            )
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
