"""LPG on the delayed chains and grid worlds (spec meta_rl.md 1.11, acceptance L2, L3, L4).

Meta-trains an LPG on one or more training environments (default: Short chain with
L ~ U{5..10}), one jitted vmapped call per meta-update, for as many meta-updates as
``--meta-updates`` and ``--time-budget-s`` allow; then, per environment, trains fresh agents
(new seeds, freshly drawn tasks) with the frozen meta-trained LPG and with the initial random
LPG for every (lr, α_y) arm, and a tuned A2C reference (same agent, rollouts and critic, best
of ``--a2c-lrs``), and reports the mean return over the last 10 updates of the lifetime.

    python experiments/meta/lpg_chain.py --meta-updates 2000 --time-budget-s 900 \
        --out /tmp/lpg_chain                                             # L2
    python experiments/meta/lpg_chain.py --envs lpg/tabular_dense,lpg/tabular_sparse \
        --lifetime 500 --meta-updates 1000 --out /tmp/lpg_grids            # L4
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

from jaxrl import envs as jaxrl_envs
from jaxrl.meta import lpg


def _last10(m):
    r, n = m["train/episode_return"], m["train/episodes"]
    return jnp.sum(r[-10:] * n[-10:]) / jnp.maximum(jnp.sum(n[-10:]), 1.0), r


def _summary(last, curve):
    return {
        "final_mean": float(jnp.mean(last)),
        "final_std": float(jnp.std(last)),
        "final_per_seed": [round(float(x), 3) for x in last],
        "curve_every_25": [round(float(x), 3) for x in jnp.mean(curve, 0)[::25]],
    }


def _per_arm(run, key, num_seeds, arms, labels):
    """``run(k, *arm) -> (last, curve)`` vmapped over seeds and arms in one program."""
    cols = [jnp.asarray(c, jnp.float32) for c in zip(*arms, strict=True)]
    over_seeds = jax.vmap(run, in_axes=(0, *([None] * len(cols))))
    last, curve = jax.jit(jax.vmap(over_seeds, in_axes=(None, *([0] * len(cols)))))(
        jax.random.split(key, num_seeds), *cols
    )
    return {label: _summary(last[i], curve[i]) for i, label in enumerate(labels)}


def evaluate(cfg, env, eta, hp, key, num_seeds, lifetime, arms):
    """Mean return over the last 10 updates of fresh lifetimes, per (lr, α_y) arm."""

    def one(k, lr, ay):
        _, m = lpg.train_agent(cfg, env, eta, k, lifetime, hp, agent_lr=lr, alpha_y=ay)
        return _last10(m)

    labels = [f"lr={lr:g},alpha_y={ay:g}" for lr, ay in arms]
    return _per_arm(one, key, num_seeds, arms, labels)


def evaluate_a2c(cfg, env, hp, key, num_seeds, lifetime, lrs, ent_coefs):
    """The A2C reference per (lr, entropy coefficient), same seeds as :func:`evaluate`."""

    def one(k, lr, ent):
        _, m = lpg.train_a2c_agent(cfg, env, k, lifetime, hp, agent_lr=lr, ent_coef=ent)
        return _last10(m)

    arms = [(lr, ent) for lr in lrs for ent in ent_coefs]
    labels = [f"lr={lr:g},ent={ent:g}" for lr, ent in arms]
    return _per_arm(one, key, num_seeds, arms, labels)


def make_env(name: str, max_length: int):
    kwargs = {"max_length": max_length} if name.startswith("lpg/chain") else {}
    return jaxrl_envs.make(name, **kwargs)[0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--envs", default="lpg/chain_short", help="comma-separated lpg/ names")
    p.add_argument("--max-length", type=int, default=10, help="chain length bound (chains)")
    p.add_argument("--a2c-lrs", default="5,20,80,320")
    p.add_argument("--a2c-ents", default="0,0.01")
    p.add_argument("--meta-updates", type=int, default=2000)
    p.add_argument("--time-budget-s", type=float, default=900.0)
    p.add_argument("--meta-lr", type=float, default=1e-3)
    p.add_argument("--num-lifetimes", type=int, default=32)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--lifetime", type=int, default=300)
    p.add_argument("--eval-seeds", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/lpg_chain")
    p.add_argument("--lr-grid", default="20,40,80,160,320")
    p.add_argument("--no-next-y", action="store_true", help="L6: φ(y(s_t+1)) forced to 0")
    p.add_argument("--load", default=None, help="skip meta-training; evaluate this saved LPG")
    p.add_argument("--pred-ent-coef", type=float, default=None, help="β1 (default: the library's)")
    p.add_argument("--y-hat-l2", type=float, default=None, help="β3 (default: the library's)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)

    names = args.envs.split(",")
    env = tuple(make_env(n, args.max_length) for n in names)
    cfg = lpg.Config(
        num_lifetimes=args.num_lifetimes, num_envs=args.num_envs, rollout_len=20, num_inner=5,
        lifetime_len=args.lifetime, lstm_size=32, pred_dim=8,
        lr_grid=tuple(float(x) for x in args.lr_grid.split(",")), use_next_y=not args.no_next_y,
    )  # fmt: skip
    betas = {"pred_ent_coef": args.pred_ent_coef, "y_hat_l2": args.y_hat_l2}
    hp = lpg.HParams.make(
        learning_rate=args.meta_lr, **{k: v for k, v in betas.items() if v is not None}
    )
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
            # mean final return of the lifetimes that ended in this window (per env too)
            for suffix in ["", *(f"/{j}" for j in range(len(names)) if len(names) > 1)]:
                ended = np.array([h["meta/lifetimes_ended" + suffix] for h in host])
                fin = np.array([h["meta/final_return" + suffix] for h in host])
                m["meta/final_return" + suffix] = float((fin * ended).sum() / max(ended.sum(), 1))
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
    bandits = jax.device_get(state.bandits)

    arms = [(lr, ay) for lr in cfg.lr_grid for ay in cfg.alpha_y_grid]
    key_eval = jax.random.key(args.seed + 1000)
    t1 = time.time()
    per_env = {}
    for name, e in zip(names, env, strict=True):
        lrs = [float(x) for x in args.a2c_lrs.split(",")]
        ents = [float(x) for x in args.a2c_ents.split(",")]
        a2c = evaluate_a2c(cfg, e, hp, key_eval, args.eval_seeds, args.lifetime, lrs, ents)
        per_env[name] = {
            "trained_lpg": evaluate(cfg, e, state.eta, hp, key_eval, args.eval_seeds,
                                    args.lifetime, arms),
            "random_lpg": evaluate(cfg, e, eta0, hp, key_eval, args.eval_seeds,
                                   args.lifetime, arms),
            "a2c": a2c,
        }  # fmt: skip
    result = {
        "args": vars(args),
        "config": dataclasses.asdict(cfg),
        "meta_updates_done": int(state.step),
        "meta_train_wall_s": round(t1 - t0, 1),
        "eval_wall_s": round(time.time() - t1, 1),
        "bandit_counts": [b.counts.tolist() for b in bandits],
        "eval": per_env,
        "log": log,
    }
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    for name, ev in per_env.items():
        best = lambda d: max(d.items(), key=lambda kv: kv[1]["final_mean"])  # noqa: E731
        print(f"== {name}")
        print("arm                      trained   random")
        for k in ev["trained_lpg"]:
            tr, rd = ev["trained_lpg"][k]["final_mean"], ev["random_lpg"][k]["final_mean"]
            print(f"{k:24s} {tr:8.3f} {rd:8.3f}")
        k, v = best(ev["a2c"])
        print(f"A2C best ({k}): {v['final_mean']:.3f} ± {v['final_std']:.3f}")
        k, v = best(ev["trained_lpg"])
        print(f"LPG best ({k}): {v['final_mean']:.3f} ± {v['final_std']:.3f}")


if __name__ == "__main__":
    main()
