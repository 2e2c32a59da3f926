"""MAML-RL and Reptile on 2D navigation (Finn et al. 2017, check M1 of the meta-RL spec).

Arms, each trained per seed (one compiled program per arm, reused over seeds):

* ``maml``: one inner VPG step (α = ``--inner-lr``, ``--num-traj`` trajectories, linear
  feature baseline, γ = 0.99), outer Adam or TRPO (``--outer``) on the post-update
  surrogate, meta-batch ``--meta-batch``, ``--iters`` meta-iterations.
* ``reptile``: Reptile (Nichol et al. 2018) with the same Adam outer step: ``--reptile-steps``
  inner VPG steps per task (α then α/2, each on fresh trajectories), meta-gradient
  ``mean_i(θ − θ'_i)``, ``--iters`` meta-iterations (give it a larger ``--inner-lr``).
* ``pretrained``: the same learner with ``num_inner_steps = 0`` (one policy trained on
  all tasks jointly, same outer optimiser, ``--base-iters`` iterations).
* ``random``: the initial parameters (jaxrl's orthogonal init, 0.01-scaled mean head), untrained.
* ``random_lecun``: untrained lecun-normal init everywhere (close to rllab's Xavier init,
  which the paper's random-init baseline used: a non-zero, state-dependent mean).
* ``oracle``: ``num_inner_steps = 0`` with the goal appended to the observation.

Evaluation (the paper's protocol): 40 new tasks (the same for every arm of a seed), 0..3
adaptation steps, each on ``--num-traj`` fresh trajectories, step α then α/2; the score is
the mean return per trajectory. The oracle is evaluated without adaptation.

    python experiments/meta/maml_nav2d.py --seeds 3 --iters 300
    python experiments/meta/maml_nav2d.py --arms reptile,pretrained --inner-lr 0.5 --anneal
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from jaxrl.envs.nav2d import Nav2D
from jaxrl.meta import maml

PAPER = {
    "maml": [-40.4, -11.7, -3.3, -3.2],
    "random": [-82.7, -58.0, -53.8, -46.8],
    "random_lecun": [-82.7, -58.0, -53.8, -46.8],
    "oracle": [-2.3],
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument(
        "--base-iters", type=int, default=None, help="iterations of pretrained/oracle (--iters)"
    )
    p.add_argument("--meta-batch", type=int, default=20)
    p.add_argument("--num-traj", type=int, default=20)
    p.add_argument("--inner-lr", type=float, default=0.1)
    p.add_argument("--outer", default="adam", choices=("adam", "trpo"), help="MAML's outer step")
    p.add_argument("--reptile-steps", type=int, default=3, help="inner steps k of Reptile")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam outer step size")
    p.add_argument(
        "--anneal", action="store_true", help="Adam step size decays linearly to 0 over --iters"
    )
    p.add_argument("--max-kl", type=float, default=0.01, help="TRPO trust region")
    p.add_argument("--eval-tasks", type=int, default=40)
    p.add_argument("--eval-steps", type=int, default=3)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--arms", default="maml,pretrained,random,oracle")
    p.add_argument("--out", default=None, help="write results JSON here")
    return p.parse_args()


def train_arm(cfg, env, hp, key, iters, log_every, name):
    """Trains one arm from ``key``; returns ``(params, post-return curve [iters])``."""
    state = jax.jit(lambda k: maml.init(cfg, env, k, hp))(key)
    chunk = jax.jit(lambda s: maml.train(cfg, env, s, hp, log_every))
    curve = []
    for i in range(0, iters, log_every):
        state, metrics = chunk(state)
        post = np.asarray(metrics["train/post_return"])
        pre = np.asarray(metrics["train/pre_return"])
        curve.append(post)
        print(
            f"  {name} it {i + log_every:4d}: pre {pre.mean():7.2f}  post {post.mean():7.2f}",
            flush=True,
        )
    return state.params, np.concatenate(curve)


def main():
    args = parse_args()
    arms = args.arms.split(",")
    env = Nav2D()
    base = dict(
        meta_batch_size=args.meta_batch, num_traj=args.num_traj, horizon=100, outer=args.outer
    )
    anneal = dict(anneal_steps=args.iters if args.anneal else 0)
    cfgs = {
        "maml": maml.Config(**base, num_inner_steps=1, **anneal),
        "reptile": maml.Config(
            **(base | dict(outer="reptile")), num_inner_steps=args.reptile_steps, **anneal
        ),
        "pretrained": maml.Config(**base, num_inner_steps=0, anneal_steps=0),
        "random": maml.Config(**base, num_inner_steps=1),
        "random_lecun": maml.Config(**base, num_inner_steps=1, ortho_init=False),
        "oracle": maml.Config(**base, num_inner_steps=0, oracle=True),
    }
    hp = maml.HParams.make(inner_lr=args.inner_lr, learning_rate=args.lr, max_kl=args.max_kl)
    evals = {
        name: jax.jit(
            lambda p, k, c=cfgs[name], n=(0 if name == "oracle" else args.eval_steps): (
                maml.evaluate(c, env, p, k, hp, args.eval_tasks, n)
            )
        )
        for name in arms
    }
    results = {name: [] for name in arms}
    curves = {name: [] for name in arms}
    start = time.time()
    for seed in range(args.seeds):
        key_train, key_eval = jax.random.split(jax.random.key(seed))
        for name in arms:
            t0 = time.time()
            if name.startswith("random"):
                init = jax.jit(lambda k, c=cfgs[name]: maml.init(c, env, k, hp).params)
                params = init(key_train)
            else:
                iters = (
                    args.iters if name in ("maml", "reptile") else (args.base_iters or args.iters)
                )
                params, curve = train_arm(
                    cfgs[name], env, hp, key_train, iters, args.log_every, name
                )
                curves[name].append(curve.tolist())
            returns = np.asarray(evals[name](params, key_eval)).mean(axis=0)  # [steps + 1]
            results[name].append(returns.tolist())
            print(
                f"seed {seed} {name:10s} {np.round(returns, 2)}  ({time.time() - t0:.0f} s)",
                flush=True,
            )
    wall = time.time() - start
    print(f"\nwall time {wall:.0f} s; mean ± std over {args.seeds} seeds")
    print("| arm | " + " | ".join(f"{k} steps" for k in range(args.eval_steps + 1)) + " | paper |")
    for name in arms:
        r = np.asarray(results[name])
        cells = [f"{m:.1f} ± {s:.1f}" for m, s in zip(r.mean(0), r.std(0), strict=True)]
        paper = " / ".join(str(x) for x in PAPER.get(name, [])) or "n/a"
        print(f"| {name} | " + " | ".join(cells) + f" | {paper} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "wall_s": wall, "results": results, "curves": curves}, f)


if __name__ == "__main__":
    main()
