"""Maximum-entropy IRL against behavioural cloning on coloured grid worlds.

Inverse RL recovers what the demonstrator wants rather than what it did. Seed 002 lists
inverse RL among the ways to learn from demonstrations; the classic argument for it
(Ng & Russell 2000, Abbeel & Ng 2004, Ziebart et al. 2008) is that a reward generalises
where copied actions cannot: to states the demonstrations never visited, and to a new
world with the same reward. This experiment measures both
(:mod:`jaxrl.algorithms.maxent_irl`).

Per seed (keys ``split(key(2008), seeds)``): an 8x8 grid whose cells take colours 0-3
with probabilities 0.7, 0.1, 0.1, 0.1; the true reward per step is 0, +1, -1 and +0.3 by
colour; slip 0.1; horizon 20; starts uniform. The expert is the optimal (hard) policy of
the true reward, not the soft one MaxEnt IRL assumes. For ``N`` in ``DEMOS``:

* ``irl``: MaxEnt IRL (``Config`` defaults: 300 Adam steps at learning rate 0.1) on ``N``
  expert trajectories; scored by the optimal policy of the recovered reward;
* ``bc``: the demonstrated action frequencies per state (uniform where unvisited);
* ``transfer``: the recovered reward's optimal policy on a new layout drawn the same way.

Score: ``(return - random policy's) / (expert's - random policy's)``, exact expected
returns (1 is the expert, 0 uniform random actions). Mean, min and max over seeds.

    python experiments/irl/maxent_grid.py --seeds 16 --json experiments/irl/results.json

RESULTS.md in this folder records the protocol, the predictions and a run.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.algorithms import maxent_irl as irl
from jaxrl.logger.writers import atomic_write_text

W_TRUE = jnp.array([0.0, 1.0, -1.0, 0.3])
PROBS = jnp.array([0.7, 0.1, 0.1, 0.1])
SIZE, SLIP, HORIZON = (8, 8), 0.1, 20
DEMOS = (1, 2, 8, 32)


def score(mdp: irl.TabularMDP, log_pi: jax.Array) -> jax.Array:
    """``log_pi``'s return on ``mdp`` as a fraction of the way from random to expert."""
    r = mdp.features @ W_TRUE
    expert = irl.policy_return(mdp, irl.greedy_policy(mdp, r, HORIZON), r)
    num_states, num_actions = mdp.transition.shape[:2]
    uniform = jnp.full((HORIZON, num_states, num_actions), -jnp.log(num_actions))
    rand = irl.policy_return(mdp, uniform, r)
    return (irl.policy_return(mdp, log_pi, r) - rand) / (expert - rand)


def run_seed(key: jax.Array, num_demos: int) -> dict:
    k_layout, k_demos, k_new = jax.random.split(key, 3)
    mdp = irl.grid_mdp(irl.random_colours(k_layout, SIZE, PROBS), 4, SLIP)
    new = irl.grid_mdp(irl.random_colours(k_new, SIZE, PROBS), 4, SLIP)
    expert = irl.greedy_policy(mdp, mdp.features @ W_TRUE, HORIZON)
    demos = irl.sample_demos(mdp, expert, k_demos, num_demos)
    w, metrics = irl.fit(irl.Config(horizon=HORIZON), mdp, demos, irl.HParams.make())
    num_states, num_actions = mdp.transition.shape[:2]
    return {
        "irl": score(mdp, irl.greedy_policy(mdp, mdp.features @ w, HORIZON)),
        "bc": score(mdp, irl.behavioural_cloning(num_states, num_actions, demos, HORIZON)),
        "transfer": score(new, irl.greedy_policy(new, new.features @ w, HORIZON)),
        "visited": jnp.mean(
            jnp.any(jnp.arange(num_states)[:, None, None] == demos.states[None], axis=(1, 2))
        ),
        "grad_norm": metrics["grad_norm"][-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--key", type=int, default=2008)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    keys = jax.random.split(jax.random.key(args.key), args.seeds)
    results = {}
    for n in DEMOS:
        start = time.perf_counter()
        one = functools.partial(run_seed, num_demos=n)
        out = jax.block_until_ready(jax.jit(jax.vmap(one))(keys))
        seconds = time.perf_counter() - start
        arm = {name: np.asarray(v).tolist() for name, v in out.items()}
        arm["seconds"] = seconds
        results[f"demos_{n}"] = arm
        summary = {
            name: (
                round(float(np.mean(v)), 3),
                round(float(np.min(v)), 3),
                round(float(np.max(v)), 3),
            )
            for name, v in out.items()
        }
        print(f"N={n}: (mean, min, max) {summary}; {seconds:.1f} s", flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
