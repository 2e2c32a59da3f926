"""Option-critic's deliberation cost ξ: longer options, and what they cost or give.

Without a deliberation cost the termination gradient only ever raises termination
probabilities, and the four-rooms options of ``four_rooms.py`` last under 2 steps. The
option-critic paper adds ``ξ`` to the termination advantage as a regulariser that favours
longer options (Harb et al. 2018 study it as the cost of deliberating). This experiment
reruns ``four_rooms.py``'s protocol for option-critic with 4 options at several ``ξ``:
the same keys, goals and settings, only ``deliberation_cost`` changes.

    python experiments/option_critic/deliberation_cost.py --seeds 64 \\
        --json experiments/option_critic/deliberation_cost.json

RESULTS.md in this folder records the protocol, the predictions and a run.
"""

from __future__ import annotations

import argparse
import json

import jax
from four_rooms import goals, run_arm, summary  # this folder (the script's sys.path[0])

from jaxrl.logger.writers import atomic_write_text

COSTS = (0.0, 0.01, 0.02, 0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--key", type=int, default=1609)
    parser.add_argument("--goal-key", type=int, default=5140)
    parser.add_argument("--episodes", type=int, default=1000, help="per goal, a multiple of 100")
    parser.add_argument("--costs", nargs="+", type=float, default=list(COSTS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    keys = jax.random.split(jax.random.key(args.key), args.seeds)
    first, second = goals(args.seeds, args.goal_key)
    results = {}
    for cost in args.costs:
        arm = run_arm("oc_4", keys, first, second, args.episodes, deliberation_cost=cost)
        arm["summary"] = summary(arm, args.episodes)
        results[f"xi_{cost}"] = arm
        shown = {k: round(float(v), 1) for k, v in arm["summary"].items()}
        print(f"xi={cost}: {shown}; {arm['seconds']:.0f} s", flush=True)
        if args.json:
            atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
