"""Memorisation in MAML-RL and MR-MAML(W) (Yin et al. 2020) on cued 2D navigation.

Meta-training tasks are ``CuedNav2D(num_tasks=20)``: 20 fixed goals, each shown to the
policy as an 8-dim cue next to the position, so one policy can solve all of them without
adapting. Evaluation is on *novel* tasks (fresh goals and fresh cues, ``env.novel()``) and on
the meta-training tasks, 0..3 adaptation steps (the MAML protocol of ``maml_nav2d.py``).

Arms (one per process, so two can share the machine's two cores):

* ``maml``: MAML (one VPG inner step, α = 0.1, Adam 1e-2 annealed to 0) on the cued tasks.
* ``mr<β>`` (e.g. ``mr1e-4``): MR-MAML(W) with KL weight β: the first torso layer (which reads
  position and cue) stochastic and frozen in the inner step, the rest adapted.
* ``frozen``: MAML with the first torso layer frozen in the inner step (MR-MAML's structure
  without the regulariser and the noise).
* ``uncued``: MAML on plain ``Nav2D`` (random goals, no cue: mutually-exclusive tasks),
  evaluated on its own kind of novel tasks; the reference for what adaptation reaches.

    python experiments/meta/mr_maml_nav2d.py --arm maml --seeds 0,1,2 --out maml.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from jaxrl.envs.nav2d import CuedNav2D, Nav2D
from jaxrl.meta import maml, mr_maml


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arm", required=True, help="maml, frozen, uncued, or mr<beta> (mr1e-4)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--num-tasks", type=int, default=20, help="fixed meta-training tasks")
    p.add_argument("--cue-dim", type=int, default=8)
    p.add_argument("--init-std", type=float, default=1e-2, help="MR-MAML's initial weight σ")
    p.add_argument("--eval-tasks", type=int, default=40)
    p.add_argument("--eval-steps", type=int, default=3)
    p.add_argument("--out", default=None, help="write results JSON here")
    return p.parse_args()


def arm_setup(arm: str, iters: int, init_std: float = 1e-2):
    """``(module, cfg, hp)`` of an arm (MAML's paper config, Adam 1e-2 annealed over iters)."""
    base = dict(meta_batch_size=20, num_traj=20, horizon=100, hidden=(100, 100),
                anneal_steps=iters)  # fmt: skip
    hp = dict(inner_lr=0.1, learning_rate=1e-2)
    if arm.startswith("mr"):
        cfg = mr_maml.Config(**base, init_std=init_std)
        return mr_maml, cfg, mr_maml.HParams.make(**hp, beta=float(arm[2:]))
    frozen = 1 if arm == "frozen" else 0
    return maml, maml.Config(**base, frozen_layers=frozen), maml.HParams.make(**hp)


def main():
    args = parse_args()
    module, cfg, hp = arm_setup(args.arm, args.iters, args.init_std)
    results = {"novel": [], "train": []}
    curves = []
    start = time.time()
    for seed in (int(s) for s in args.seeds.split(",")):
        if args.arm == "uncued":
            env = Nav2D()
            test_envs = {"novel": env, "train": env}
        else:
            env = CuedNav2D(cue_dim=args.cue_dim, num_tasks=args.num_tasks, task_seed=seed)
            test_envs = {"novel": env.novel(), "train": env}
        key_train, key_eval = jax.random.split(jax.random.key(seed))
        t0 = time.time()
        state = jax.jit(lambda k, e=env: module.init(cfg, e, k, hp))(key_train)
        state, metrics = jax.jit(lambda s, e=env: module.train(cfg, e, s, hp, args.iters))(state)
        curves.append(np.asarray(metrics["train/post_return"]).round(2).tolist())
        row = {}
        for name, test_env in test_envs.items():
            evaluate = jax.jit(
                lambda p, k, e=test_env: maml.evaluate(
                    cfg, e, p, k, hp, args.eval_tasks, args.eval_steps
                )
            )
            returns = np.asarray(evaluate(state.params, key_eval)).mean(axis=0)
            results[name].append(returns.round(3).tolist())
            row[name] = returns.round(1)
        extra = ""
        if module is mr_maml:
            extra = f" kl {float(metrics['train/kl'][-1]):.0f}"
            extra += f" mean std {float(metrics['train/mean_std'][-1]):.3f}"
        print(f"seed {seed} {args.arm}: novel {row['novel']} train {row['train']}{extra}"
              f" ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    wall = time.time() - start
    for name in ("novel", "train"):
        r = np.asarray(results[name])
        cells = " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in zip(r.mean(0), r.std(0), strict=True))
        print(f"| {args.arm} | {name} | {cells} |")
    print(f"wall time {wall:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "wall_s": wall, "results": results,
                       "post_return_curves": curves}, f)  # fmt: skip


if __name__ == "__main__":
    main()
