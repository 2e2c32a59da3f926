"""LPG on delayed chain MDPs (spec meta_rl.md 1.11, acceptance L2/L3).

Meta-trains an LPG on a delayed chain (default: Short chain with L ~ U{5..10}), one jitted
vmapped call per meta-update, for as many meta-updates as ``--meta-updates`` and
``--time-budget-s`` allow; then trains fresh agents (new seeds, freshly drawn L and good
action) with the frozen meta-trained LPG and with the initial random LPG, for every
(lr, α_y) arm, and reports the mean terminal reward over the last 10 updates of the lifetime.

    python experiments/meta/lpg_chain.py --meta-updates 2000 --time-budget-s 900 \
        --out /tmp/lpg_chain
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.envs import delayed_chain
from jaxrl.meta import lpg


def evaluate(cfg, env, eta, hp, key, num_seeds, lifetime, arms):
    """Mean return over the last 10 updates of fresh lifetimes, per (lr, α_y) arm."""
    out = {}
    for lr, ay in arms:

        def one(k, lr=lr, ay=ay):
            _, m = lpg.train_agent(cfg, env, eta, k, lifetime, hp, agent_lr=lr, alpha_y=ay)
            r, n = m["train/episode_return"], m["train/episodes"]
            last = jnp.sum(r[-10:] * n[-10:]) / jnp.maximum(jnp.sum(n[-10:]), 1.0)
            return last, r

        last, curve = jax.jit(jax.vmap(one))(jax.random.split(key, num_seeds))
        out[f"lr={lr:g},alpha_y={ay:g}"] = {
            "final_mean": float(jnp.mean(last)),
            "final_per_seed": [round(float(x), 3) for x in last],
            "curve_every_25": [round(float(x), 3) for x in jnp.mean(curve, 0)[::25]],
        }
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variant", default="short")
    p.add_argument("--max-length", type=int, default=10)
    p.add_argument("--meta-updates", type=int, default=2000)
    p.add_argument("--time-budget-s", type=float, default=900.0)
    p.add_argument("--meta-lr", type=float, default=1e-3)
    p.add_argument("--num-lifetimes", type=int, default=32)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--lifetime", type=int, default=300)
    p.add_argument("--eval-seeds", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/lpg_chain")
    p.add_argument("--grid", default=None, help="e.g. lpg/tabular_dense (jaxrl.envs.gridworld)")
    p.add_argument("--lr-grid", default="20,40,80,160,320")
    p.add_argument("--load", default=None, help="skip meta-training; evaluate this saved LPG")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)

    if args.grid:  # smoke/partial L4: any env through the Env protocol
        from jaxrl.envs import gridworld

        env = gridworld.NAMES[args.grid]()
    else:
        env = delayed_chain.make(args.variant, max_length=args.max_length)
    cfg = lpg.Config(
        num_lifetimes=args.num_lifetimes, num_envs=args.num_envs, rollout_len=20, num_inner=5,
        lifetime_len=args.lifetime, lstm_size=32, pred_dim=8,
        lr_grid=tuple(float(x) for x in args.lr_grid.split(",")),
    )  # fmt: skip
    hp = lpg.HParams.make(learning_rate=args.meta_lr)
    key = jax.random.key(args.seed)
    state = jax.jit(lambda k: lpg.init(cfg, env, k, hp))(key)
    eta0 = jax.tree.map(jnp.copy, state.eta)  # the initial random LPG (state is donated)
    if args.load:
        eta_loaded, _ = lpg.load(args.load)
        state = state.replace(eta=eta_loaded)
    step = jax.jit(lambda s: lpg.update(cfg, env, s, hp), donate_argnums=0)

    t0 = time.time()
    log = []
    window = []
    for i in range(0 if args.load else args.meta_updates):
        state, m = step(state)
        window.append(m)
        if (i + 1) % 25 == 0:
            host = jax.device_get(window)
            m = jax.tree.map(lambda *x: float(np.mean(x)), *host)
            # mean final return of the lifetimes that ended in this window
            ended = np.array([h["meta/lifetimes_ended"] for h in host])
            fin = np.array([h["meta/final_return"] for h in host])
            m["meta/final_return"] = float((fin * ended).sum() / max(ended.sum(), 1))
            window = []
            m["meta_update"] = i + 1
            m["wall_s"] = round(time.time() - t0, 1)
            log.append(m)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}),
                  flush=True)  # fmt: skip
        if time.time() - t0 > args.time_budget_s:
            print(f"time budget reached after {i + 1} meta-updates", flush=True)
            break
    if not args.load:
        lpg.save(os.path.join(args.out, "lpg"), state.eta, cfg)
    bandit = jax.device_get(state.bandit)

    arms = [(lr, ay) for lr in cfg.lr_grid for ay in cfg.alpha_y_grid]
    key_eval = jax.random.key(args.seed + 1000)
    t1 = time.time()
    trained = evaluate(cfg, env, state.eta, hp, key_eval, args.eval_seeds, args.lifetime, arms)
    random_ = evaluate(cfg, env, eta0, hp, key_eval, args.eval_seeds, args.lifetime, arms)
    result = {
        "args": vars(args),
        "config": dataclasses.asdict(cfg),
        "meta_updates_done": int(state.step),
        "meta_train_wall_s": round(t1 - t0, 1),
        "bandit_counts": bandit.counts.tolist(),
        "eval_trained_lpg": trained,
        "eval_random_lpg": random_,
        "log": log,
    }
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("arm                      trained   random")
    for k in trained:
        print(f"{k:24s} {trained[k]['final_mean']:8.3f} {random_[k]['final_mean']:8.3f}")


if __name__ == "__main__":
    main()
