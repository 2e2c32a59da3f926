"""Ape-X (32 actors) against DQN on CartPole-v1: learner updates to reach DQN's return.

Issue 5 part 5: "Ape-X with 32 actors reaches DQN's CartPole return in fewer learner
updates". A learner update is one gradient step (``State.grad_steps`` in both modules).

* ``dqn``: the ``dqn/cartpole`` preset as it stands (10 envs, 5 gradient steps per 10 env
  steps, batch 100, 1e5 env steps; the results JSON records the config and hparams used).
* ``apex``: the ``apex/cartpole`` preset (32 actors with the epsilon ladder 0.4 .. 0.4^8,
  1 gradient step per 32 env steps, batch 100, n-step 3, double, dueling, prioritised
  replay with actor priorities, actor sync every 10 updates, L2 loss, Polyak target
  ``tau = 0.05`` after every gradient step).

Every ``--eval-every`` gradient steps (here, between compiled chunks of training) each seed's
learner network plays ``--eval-episodes`` greedy episodes (``jaxrl.runner.evaluate``, its own
keys). The threshold is DQN's final greedy return (mean over seeds of the last evaluation),
capped at ``--cap`` (475, CartPole-v1's "solved"), and also ``--cap`` itself; for each seed
we report the first evaluated gradient step at which the greedy return reaches it, the first
from which it stays there, and the final greedy return. Seeds are vmapped: one program per
algorithm.

    python experiments/apex/apex_cartpole.py --seeds 4 --json experiments/apex/results.json

RESULTS.md in this folder records a run.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from jaxrl.algorithms import apex, dqn
from jaxrl.envs import registry
from jaxrl.runner import config as run_config
from jaxrl.runner import evaluate

ALGOS = {"dqn": dqn, "apex": apex}


def load(name: str, overrides: dict, hp_overrides: dict):
    """``(module, cfg, hp, env)`` from the ``<name>/cartpole`` preset plus overrides."""
    algo = ALGOS[name]
    preset = run_config.load_preset(f"{name}/cartpole")
    values = preset["config"] | overrides
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    cfg = algo.Config(**values)
    hp = algo.HParams.make(**(preset["hparams"] | hp_overrides))
    algo.check(cfg, hp)
    env, _ = registry.make(preset["env"])
    return algo, cfg, hp, env


def run(
    name: str, seeds: int, eval_every: int, eval_episodes: int, overrides: dict,
    hp_overrides: dict,
) -> dict:  # fmt: skip
    """Trains ``seeds`` vmapped runs; evaluates every ``eval_every`` gradient steps."""
    algo, cfg, hp, env = load(name, overrides, hp_overrides)
    grads_per_update = cfg.gradient_steps
    chunk = max(1, eval_every // grads_per_update)
    num_chunks = cfg.num_updates // chunk
    keys = jax.random.split(jax.random.key(0), seeds)
    init = jax.jit(jax.vmap(lambda k: algo.init(cfg, env, k, hp)))
    train = jax.jit(jax.vmap(lambda s: algo.train(cfg, env, s, hp, chunk)), donate_argnums=0)
    hps = jax.tree.map(lambda x: np.broadcast_to(x, (seeds,)), hp)
    evaluate_fn = jax.jit(
        lambda s, k: evaluate.evaluate_runs(algo, cfg, env, s, hps, k, eval_episodes, True)
    )
    start = time.perf_counter()
    state = init(keys)
    steps, returns, train_returns = [], [], []
    for i in range(num_chunks):
        state, metrics = train(state)
        eval_keys = jax.vmap(lambda s, i=i: evaluate.eval_key(0, s, i))(np.arange(seeds))
        ret = np.asarray(evaluate_fn(state, eval_keys)).mean(axis=1)  # [S]
        steps.append(np.asarray(state.grad_steps).tolist())
        returns.append(ret.tolist())
        train_returns.append(np.nanmean(np.asarray(metrics["episode/return"]), axis=1).tolist())
        print(
            f"{name} chunk {i + 1}/{num_chunks}: grad steps {int(np.mean(steps[-1]))}, "
            f"env steps {int(np.asarray(state.env_steps)[0])}, greedy return "
            f"{ret.mean():.1f} (min {ret.min():.1f})",
            flush=True,
        )
    return {
        "algo": name,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "hparams": {k: float(v) for k, v in hp.__dict__.items()},
        "grad_steps": steps,  # [chunks][S]
        "env_steps": int(np.asarray(state.env_steps)[0]),
        "greedy_return": returns,  # [chunks][S]
        "train_return": train_returns,  # [chunks][S], all actors' episodes (epsilon-greedy)
        "wall_s": time.perf_counter() - start,
    }


def first_reach(result: dict, threshold: float, stay: bool = False) -> list[float]:
    """Per seed, the first evaluated gradient step whose greedy return >= threshold (NaN if
    never); with ``stay``, the first from which every later evaluation is >= threshold."""
    steps = np.asarray(result["grad_steps"], float)  # [C, S]
    ret = np.asarray(result["greedy_return"])
    out = []
    for s in range(ret.shape[1]):
        ok = ret[:, s] >= threshold
        if stay:
            ok = np.flip(np.logical_and.accumulate(np.flip(ok)))
        hit = np.nonzero(ok)[0]
        out.append(float(steps[hit[0], s]) if hit.size else float("nan"))
    return out


def report(results: dict, cap: float) -> str:
    """Markdown tables, one per threshold (DQN's final mean return capped at ``cap``, and
    ``cap``): learner updates to reach it, and the final returns."""
    dqn_final = float(np.mean(np.asarray(results["dqn"]["greedy_return"])[-1]))
    fmt = lambda xs: ", ".join("never" if np.isnan(x) else f"{x:,.0f}" for x in xs)  # noqa: E731
    med = lambda xs: "n/a" if np.isnan(xs).any() else f"{np.median(xs):,.0f}"  # noqa: E731
    lines = []
    for threshold in sorted({min(dqn_final, cap), cap}):
        lines += [
            f"Threshold: greedy return >= {threshold:.1f} (DQN's final mean {dqn_final:.1f}; "
            f"cap {cap:g}).",
            "",
            "| algo | grad steps to first reach (per seed) | median | grad steps to reach and "
            "stay (per seed) | median | final greedy return (per seed) | mean | grad steps | "
            "env steps | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, res in results.items():
            first, stay = first_reach(res, threshold), first_reach(res, threshold, stay=True)
            final = np.asarray(res["greedy_return"])[-1]
            lines.append(
                f"| {name} | {fmt(first)} | {med(first)} | {fmt(stay)} | {med(stay)} | "
                f"{', '.join(f'{f:.1f}' for f in final)} | {final.mean():.1f} | "
                f"{int(np.mean(res['grad_steps'][-1])):,} | {res['env_steps']:,} | "
                f"{res['wall_s']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=500, help="gradient steps")
    parser.add_argument("--eval-episodes", type=int, default=16)
    parser.add_argument("--cap", type=float, default=475.0)
    parser.add_argument("--algos", nargs="+", default=["dqn", "apex"], choices=list(ALGOS))
    parser.add_argument("--apex-total-timesteps", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--report", default=None, help="only print the table of this JSON")
    args = parser.parse_args()
    if args.report:
        with open(args.report) as f:
            print(report(json.load(f), args.cap))
        return
    results = {}
    for name in args.algos:
        overrides, hp_overrides = {}, {}
        if name == "apex" and args.apex_total_timesteps:
            overrides["total_timesteps"] = args.apex_total_timesteps
        results[name] = run(
            name, args.seeds, args.eval_every, args.eval_episodes, overrides, hp_overrides
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if "dqn" in results:
        print(report(results, args.cap))


if __name__ == "__main__":
    main()
