"""Meta-Q-Learning on 2D navigation (Fakoor et al. 2020, arXiv:1910.00125; goals as in MAML).

Meta-training arms (same budget and networks, seeds vmapped in one program per arm):

* ``ctx``: multi-task TD3, a task (goal ~ U[-0.5, 0.5]^2) per episode, actor and critics
  read a GRU context of the episode's last ``--history`` transitions (MQL's context TD3).
* ``noctx``: the same multi-task TD3 without the context (``context_len = 0``).

Evaluation: one greedy episode on each of ``--eval-tasks`` held-out goals (the same for
every arm and seed); the score of a seed is the mean return over tasks; the table shows
mean ± std over seeds. Reference: standing still at the start scores ``-100 ||goal||``.
``--test-ring R_MIN,R_MAX`` draws the held-out goals on an annulus instead (key 10001), out
of the training distribution when ``R_MIN > 0.71``.

Adaptation, on the first ``--adapt-tasks`` held-out goals, from each meta-trained model:
``none`` (the meta-trained weights), ``finetune`` (``--new-envs`` exploring episodes on the
new goal, then ``--adapt-steps`` TD3 steps on them alone) and ``mql`` (the same new data
plus propensity-weighted meta-training replay and the ESS-scaled proximal term).

TD3 settings (both arms): 64-64 ReLU nets, batch 128, 8 envs, 1 gradient step per update
(8 env steps), 2000 uniform-random warm-up steps, replay 100k, GRU context 16 features; the
defaults below (Adam 1e-3, discount 0.9, exploration std 0.3) are those of RESULTS_mql.md.

    python experiments/meta/mql_nav2d.py --arms ctx --ablation
    python experiments/meta/mql_nav2d.py --arms noctx --ablation
    # RESULTS_mql.md's pre-registered tests: in distribution, then out of distribution
    python experiments/meta/mql_nav2d.py --arms ctx --seeds 8 --seed-key 1 --adapt-tasks 25
    python experiments/meta/mql_nav2d.py --arms ctx --seeds 8 --seed-key 2 --adapt-tasks 25 \
        --test-ring 0.75,1.0
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.algorithms import td3
from jaxrl.envs.nav2d import Nav2D, sample_tasks
from jaxrl.meta import mql


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed-key", type=int, default=0, help="seeds are split(key(this), seeds)")
    p.add_argument("--updates", type=int, default=20_000, help="TD3 updates (8 env steps each)")
    p.add_argument("--history", type=int, default=10)
    p.add_argument("--eval-tasks", type=int, default=50)
    p.add_argument("--adapt-tasks", type=int, default=10)
    p.add_argument("--adapt-steps", type=int, default=200)
    p.add_argument("--new-envs", type=int, default=2, help="new-task episodes for adaptation")
    p.add_argument("--discount", type=float, default=0.9)
    p.add_argument("--lr", type=float, default=1e-3, help="actor and critic Adam")
    p.add_argument("--expl-noise", type=float, default=0.3, help="in [-1, 1] action units")
    p.add_argument("--arms", default="ctx,noctx")
    p.add_argument("--ablation", action="store_true", help="also MQL without the proximal term")
    p.add_argument(
        "--test-ring",
        default=None,
        metavar="R_MIN,R_MAX",
        help="held-out goals uniform on this annulus instead of the training square "
        "(out of distribution when R_MIN > 0.5 * sqrt(2))",
    )
    p.add_argument("--out", default=None, help="write results JSON here")
    return p.parse_args()


def make_cfg(args, context_len: int) -> td3.Config:
    return td3.Config(
        total_timesteps=8 * args.updates,
        num_envs=8,
        train_freq=1,
        gradient_steps=1,
        batch_size=128,
        buffer_size=100_000,
        learning_starts=2_000,
        hidden=(64, 64),
        context_len=context_len,
        context_features=16,
    )


def ring_tasks(nav, key, num_tasks: int, r_min: float, r_max: float):
    """``num_tasks`` goals uniform (by area) on the annulus ``r_min <= ||goal|| <= r_max``."""
    k_r, k_a = jax.random.split(key)
    radius = jnp.sqrt(jax.random.uniform(k_r, (num_tasks,), jnp.float32, r_min**2, r_max**2))
    angle = jax.random.uniform(k_a, (num_tasks,), jnp.float32, 0.0, 2 * jnp.pi)
    goal = radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
    params = nav.default_params()
    return jax.vmap(lambda g: params.replace(goal=g))(goal)


def fmt(x) -> str:
    x = np.asarray(x)
    return f"{x.mean():7.2f} ± {x.std():5.2f}"


def meta_train(args, nav, hp, seed_keys, arm):
    """Meta-trains one arm for every seed; returns ``(cfg, vmapped td3 state, wall s)``."""
    context_len = args.history if arm == "ctx" else 0
    cfg = make_cfg(args, context_len)
    env = mql.make_meta_env(nav, context_len)
    t0 = time.time()
    state = jax.jit(jax.vmap(lambda k: mql.meta_init(cfg, nav, k, hp)))(seed_keys)
    chunk = 1_000
    train = jax.jit(jax.vmap(lambda s: td3.train(cfg, env, s, hp, chunk)))
    for i in range(0, args.updates, chunk):
        state, metrics = train(state)
        ret = np.nanmean(np.asarray(metrics["episode/return"]), axis=1)
        print(f"  {arm} update {i + chunk:6d}: train return {fmt(ret)}", flush=True)
    jax.block_until_ready(state)
    return cfg, state, time.time() - t0


def evaluate(cfg, nav, params, tasks, seed: int):
    """Greedy return ``[seeds, tasks]`` of per-seed params ``[seeds, ...]``."""
    keys = jax.random.split(jax.random.key(seed), tasks.goal.shape[0])

    def one_seed(p):
        return jax.vmap(lambda t, k: mql.evaluate(cfg, nav, p, t, k))(tasks, keys)

    return np.asarray(jax.jit(jax.vmap(one_seed))(params))


def evaluate_adapted(cfg, nav, params, tasks, seed: int):
    """Greedy return ``[seeds, tasks]`` of params ``[seeds, tasks, ...]`` adapted per task."""
    keys = jax.random.split(jax.random.key(seed), tasks.goal.shape[0])

    def one_seed(p):
        return jax.vmap(lambda pt, t, k: mql.evaluate(cfg, nav, pt, t, k))(p, tasks, keys)

    return np.asarray(jax.jit(jax.vmap(one_seed))(params))


def adapt_all(args, cfg, nav, hp, state, tasks, mode: str):
    """Adapts every seed's model to every task; returns params ``[seeds, tasks, ...]``, info."""
    acfg = mql.AdaptConfig(
        new_envs=args.new_envs,
        adapt_steps=args.adapt_steps,
        reuse=mode != "finetune",
        proximal=mode != "mql_noprox",
    )
    keys = jax.random.split(jax.random.key(2), tasks.goal.shape[0])

    def one_seed(s):
        return jax.vmap(lambda t, k: mql.adapt(cfg, acfg, nav, s, t, k, hp))(tasks, keys)

    return jax.jit(jax.vmap(one_seed))(state)


def run_arm(args, nav, hp, tasks, seed_keys, arm):
    cfg, state, train_s = meta_train(args, nav, hp, seed_keys, arm)
    returns = evaluate(cfg, nav, state.params, tasks, 1)  # [seeds, tasks]
    print(f"{arm}: held-out return {fmt(returns.mean(1))} (train {train_s:.0f} s)", flush=True)
    res = {"eval": returns.mean(1).tolist(), "train_s": train_s}
    adapt_tasks = jax.tree.map(lambda x: x[: args.adapt_tasks], tasks)
    for mode in ("none", "finetune", "mql") + (("mql_noprox",) if args.ablation else ()):
        t0 = time.time()
        if mode == "none":
            adapted = jax.tree.map(
                lambda x: jnp.repeat(x[:, None], args.adapt_tasks, 1), state.params
            )
            info = None
        else:
            adapted, info = adapt_all(args, cfg, nav, hp, state, adapt_tasks, mode)
        per_goal = evaluate_adapted(cfg, nav, adapted, adapt_tasks, 3)  # [seeds, tasks]
        ret = per_goal.mean(1)
        line = f"  {arm} adapt {mode:8s}: return {fmt(ret)} ({time.time() - t0:.0f} s)"
        res[f"adapt_{mode}"] = ret.tolist()
        res[f"adapt_{mode}_per_goal"] = per_goal.tolist()
        if mode.startswith("mql"):
            ess, lam, acc = (float(np.mean(v)) for v in (info.ess, info.lam, info.classifier_acc))
            line += f"  ESS {ess:.3f}  lambda {lam:.3f}  clf acc {acc:.3f}"
            res |= {f"{mode}_ess": ess, f"{mode}_lam": lam, f"{mode}_clf_acc": acc}
        print(line, flush=True)
    return res


def main():
    args = parse_args()
    nav = Nav2D()
    hp = td3.HParams.make(
        learning_rate=args.lr, discount=args.discount, exploration_noise=args.expl_noise
    )
    # Held-out goals from a key no training run uses.
    if args.test_ring:
        r_min, r_max = (float(r) for r in args.test_ring.split(","))
        tasks = ring_tasks(nav, jax.random.key(10_001), args.eval_tasks, r_min, r_max)
    else:
        tasks = sample_tasks(nav, jax.random.key(10_000), args.eval_tasks)
    still = -100.0 * np.linalg.norm(np.asarray(tasks.goal), axis=-1)
    print(f"stand-still reference on the eval goals: {still.mean():.2f}")
    results = {"stand_still": float(still.mean()), "args": vars(args)}
    seed_keys = jax.random.split(jax.random.key(args.seed_key), args.seeds)
    for arm in args.arms.split(","):
        results[arm] = run_arm(args, nav, hp, tasks, seed_keys, arm)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
