"""Rejax PPO throughput on gymnax CartPole-v1, matched to jaxrl's ``ppo.Config()`` defaults.

This file runs in the peer venv that ``experiments/benchmarks/ppo_throughput.py`` creates
(rejax 0.1.3 with gymnax 0.0.9, because rejax 0.1.3 expects gymnax's old five-value
``step``), never in jaxrl's own environment. It does not import jaxrl.

The matched configuration (PureJaxRL's CartPole defaults):

* 4 envs x 128 steps per iteration, 4 epochs, 4 minibatches, separate 64-64 tanh MLPs
  for actor and critic, gamma 0.99, GAE lambda 0.95, clip 0.2, vf 0.5, entropy 0.01;
* Adam at 2.5e-4 linearly annealed to 0, passed to rejax as an optax schedule over
  ``num_iterations * num_epochs * num_minibatches`` optimiser steps (rejax 0.1.3 has no
  annealing switch; PureJaxRL anneals in the same steps, piecewise constant per update);
* ``max_grad_norm`` 0.5; note rejax applies it with ``optax.clip`` (element-wise),
  PureJaxRL and jaxrl with ``clip_by_global_norm``. The cost is the same.

Periodic evaluation: rejax 0.1.3's on-policy ``train`` runs ``ceil(total / eval_freq)``
blocks of ``ceil(eval_freq / (num_envs * num_steps))`` iterations, each followed by an
evaluation of 128 episodes. With ``total_timesteps == eval_freq`` (a multiple of 512)
and ``skip_initial_evaluation=True`` it runs exactly ``total / 512`` iterations and one
evaluation at the end, whose mean return is our ``final_return``. That one evaluation
(at most 500 steps of 128 envs per seed) is inside the timed program; it is under 1%
of the work. (An ``eval_freq`` larger than the total would run extra iterations.)

Two ways to run it:

* ``python rejax_ppo.py --seeds 1,8 --total-steps 499712 --repeats 3`` prints one JSON
  object with every measurement;
* ``python rejax_ppo.py --serve`` answers one JSON request per stdin line with one JSON
  line on stdout, so the caller can interleave Rejax runs with its own. Requests:
  ``{"op": "versions"}``, ``{"op": "compile", "seeds": S, "total_steps": N}``,
  ``{"op": "run", "seeds": S, "total_steps": N}`` (compiles first if needed), and
  ``{"op": "quit"}``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time

import jax
import numpy as np
import optax
from rejax import PPO

STEPS_PER_ITERATION = 4 * 128  # num_envs * num_steps


def versions() -> dict[str, str]:
    """Versions of the packages that decide what is measured."""
    names = ("rejax", "gymnax", "jax", "jaxlib", "flax", "optax", "distrax")
    return {name: importlib.metadata.version(name) for name in names}


def make_algo(total_steps: int) -> PPO:
    """Rejax PPO on CartPole-v1 with the matched config; ``total_steps`` per seed."""
    if total_steps % STEPS_PER_ITERATION:
        raise ValueError(f"total_steps must be a multiple of {STEPS_PER_ITERATION}")
    num_iterations = total_steps // STEPS_PER_ITERATION
    num_epochs, num_minibatches = 4, 4
    schedule = optax.linear_schedule(2.5e-4, 0.0, num_iterations * num_epochs * num_minibatches)
    return PPO.create(
        env="CartPole-v1",
        num_envs=4,
        num_steps=128,
        num_epochs=num_epochs,
        num_minibatches=num_minibatches,
        learning_rate=schedule,
        max_grad_norm=0.5,
        gamma=0.99,
        gae_lambda=0.95,
        clip_eps=0.2,
        vf_coef=0.5,
        ent_coef=0.01,
        total_timesteps=total_steps,
        eval_freq=total_steps,  # one evaluation, after the last iteration
        skip_initial_evaluation=True,
        agent_kwargs={"activation": "tanh", "hidden_layer_sizes": (64, 64)},
    )


class Bench:
    """Compiled ``jit(vmap(algo.train))`` programs, one per (seeds, total_steps)."""

    def __init__(self, base_seed: int = 0):
        self.base_seed = base_seed
        self.programs: dict[tuple[int, int], tuple[object, jax.Array]] = {}

    def compile(self, seeds: int, total_steps: int) -> dict:
        """Traces, lowers and compiles the program; returns the seconds each took."""
        algo = make_algo(total_steps)
        keys = jax.random.split(jax.random.PRNGKey(self.base_seed), seeds)
        start = time.perf_counter()
        lowered = jax.jit(jax.vmap(algo.train)).lower(keys)
        lowered_at = time.perf_counter()
        compiled = lowered.compile()
        compiled_at = time.perf_counter()
        self.programs[(seeds, total_steps)] = (compiled, keys)
        return {
            "seeds": seeds,
            "total_steps": total_steps,
            "lower_s": lowered_at - start,
            "compile_s": compiled_at - lowered_at,
        }

    def run(self, seeds: int, total_steps: int) -> dict:
        """One timed training run of ``seeds`` vmapped agents (compiling first if needed)."""
        if (seeds, total_steps) not in self.programs:
            self.compile(seeds, total_steps)
        compiled, keys = self.programs[(seeds, total_steps)]
        start = time.perf_counter()
        train_state, (_, returns) = compiled(keys)
        jax.block_until_ready((train_state, returns))
        run_s = time.perf_counter() - start
        global_step = np.asarray(train_state.global_step)
        steps = int(global_step.sum())
        if steps != seeds * total_steps:
            raise RuntimeError(f"rejax ran {steps} env steps, expected {seeds * total_steps}")
        return {
            "seeds": seeds,
            "total_steps": total_steps,
            "env_steps": steps,
            "run_s": run_s,
            "steps_per_s": steps / run_s,
            # returns: [seeds, num_evals=1, 128 episodes]; the last evaluation's mean.
            "final_return": float(np.mean(np.asarray(returns)[:, -1])),
        }


def serve(bench: Bench, out) -> None:
    """Answers JSON requests from stdin, one per line, on ``out``."""
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "quit":
                reply = {"ok": True}
            elif op == "versions":
                reply = {"ok": True, "versions": versions()}
            elif op == "compile":
                reply = {"ok": True, **bench.compile(request["seeds"], request["total_steps"])}
            elif op == "run":
                reply = {"ok": True, **bench.run(request["seeds"], request["total_steps"])}
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as error:  # report to the caller rather than die mid-protocol
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if op == "quit":
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--serve", action="store_true", help="JSON-lines request loop")
    parser.add_argument("--seeds", default="1,8", help="comma-separated vmapped seed counts")
    parser.add_argument("--total-steps", type=int, default=976 * STEPS_PER_ITERATION)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base-seed", type=int, default=0)
    args = parser.parse_args()

    # Keep stdout for JSON: anything a library prints goes to stderr.
    out, sys.stdout = sys.stdout, sys.stderr
    bench = Bench(args.base_seed)
    if args.serve:
        serve(bench, out)
        return
    results = {"versions": versions(), "compile": [], "runs": []}
    for seeds in (int(s) for s in args.seeds.split(",")):
        results["compile"].append(bench.compile(seeds, args.total_steps))
        for _ in range(args.repeats):
            results["runs"].append(bench.run(seeds, args.total_steps))
    out.write(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
