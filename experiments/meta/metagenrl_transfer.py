"""MetaGenRL transfer: meta-train ``L_α`` on one or several env types, train fresh agents
with it frozen.

Phase ``meta``: a population of ``--agents`` TD3 agents (different seeds) *per env type* of
``--train-envs`` (default Pendulum-v1 only) trains its actors on ``L_α`` while the one ``α``
is meta-trained on all of them (:mod:`jaxrl.meta.metagenrl`; with several env types each
agent's meta-loss may be scale-normalised, ``--normalise-meta-loss``); ``α`` is saved to
``--alpha``. Phase ``eval``: fresh agents (seeds never used in meta-training) train for a
fixed number of env steps on each of ``--tasks`` (Pendulum-v1, meta/nav2d with its fixed
default goal (0.25, 0.25) and 2-D actions, MountainCarContinuous-v0, and
probe/continuous_target: one-step episodes, reward ``-(a - o)^2``, best action ``o`` inside
the range, and the brax tasks inverted_pendulum, inverted_double_pendulum and reacher (2-D
actions), 1000-step episodes) with (i) the learned ``α``, (ii) any ``--extra-alpha NAME=PATH``
objectives (e.g. one meta-trained elsewhere), (iii) a randomly initialised ``α`` (a different
one per seed), (iv) TD3's DPG actor loss. ``--anneal-steps N`` moves the meta-training agents'
actor loss from DPG's to ``L_α`` over N env steps (``Config.anneal_steps``).
Reported: the greedy policy's return at the end (8 envs, one episode each) and the mean
training-episode return over the last 10% of steps, mean ± std over seeds, and one-sided
Mann-Whitney U p-values of "learned > other arm" on the greedy returns. Results go to
``--out`` as JSON. See experiments/meta/RESULTS_metagenrl.md for the commands run.

    python experiments/meta/metagenrl_transfer.py --phase all
    python experiments/meta/metagenrl_transfer.py --phase all \\
        --train-envs Pendulum-v1 MountainCarContinuous-v0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from jaxrl.algorithms import td3
from jaxrl.envs import registry
from jaxrl.meta import metagenrl as mg

# env id -> episode length (the greedy evaluation runs one episode per env)
TASKS = {
    "Pendulum-v1": 200,
    "meta/nav2d": 100,
    "MountainCarContinuous-v0": 999,
    "probe/continuous_target": 1,
    "brax/inverted_pendulum": 1000,
    "brax/inverted_double_pendulum": 1000,
    "brax/reacher": 1000,
}


def make_cfg(args, num_agents: int) -> mg.Config:
    agent = td3.Config(
        hidden=(64, 64),
        batch_size=args.batch,
        buffer_size=50_000,
        learning_starts=1_000,
        total_timesteps=10**9,
    )
    return mg.Config(
        agent=agent,
        seq_len=args.seq_len,
        num_agents=num_agents,
        normalise_meta_loss=args.normalise_meta_loss,
        anneal_steps=args.anneal_steps,
    )


def make_hp(args) -> mg.HParams:
    return mg.HParams.make(
        td3.HParams.make(learning_rate=args.lr),
        inner_lr=args.inner_lr,
        meta_learning_rate=args.meta_lr,
    )


def meta_phase(args) -> dict:
    envs = tuple(registry.make(env_id)[0] for env_id in args.train_envs)
    cfg, hp = make_cfg(args, args.agents), make_hp(args)
    state = mg.init(cfg, envs, jax.random.key(args.meta_seed), hp)
    chunk = jax.jit(lambda s: mg.train(cfg, envs, s, hp, args.chunk))
    log, start = [], time.time()
    for i in range(args.meta_updates // args.chunk):
        state, m = chunk(state)
        row = {k: float(np.nanmean(np.asarray(v))) for k, v in m.items()}
        row["updates"] = (i + 1) * args.chunk
        row["wall_s"] = time.time() - start
        log.append(row)
        groups = " ".join(
            f"[{env_id}: ret {row[f'episode/return/group{g}']:.1f} "
            f"|g| {row[f'meta/grad_norm/group{g}']:.3g} "
            f"cos {row[f'meta/dpg_cosine/group{g}']:.2f} "
            f"|pi| {row[f'train/abs_policy_action/group{g}']:.2f}]"
            for g, env_id in enumerate(args.train_envs)
        )
        print(
            f"meta {row['updates']:6d} meta_loss {row['meta/loss']:8.3f} "
            f"|g| {row['meta/grad_norm']:.3g} {groups} {row['wall_s']:.0f}s",
            flush=True,
        )
    mg.save(args.alpha, state.alpha, cfg)
    return {"log": log, "wall_s": time.time() - start}


def eval_task(args, env_id: str, alphas: dict) -> dict:
    env, env_params = registry.make(env_id)
    cfg, hp = make_cfg(args, 1), make_hp(args)
    eval_cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, num_envs=8))
    steps = args.steps[env_id]
    num_seeds = args.nav_seeds if env_id == "meta/nav2d" else args.seeds
    seeds = jnp.arange(num_seeds) + 1000  # disjoint from the meta-training keys

    def run(seed, alpha):
        key_init, key_eval = jax.random.split(jax.random.key(seed))
        if alpha == "random":  # a different random objective for every seed
            alpha = mg.init_objective(
                cfg, jax.random.fold_in(jax.random.key(args.random_seed), seed)
            )
        state = mg.init_agent(cfg, env, key_init, hp, env_params)
        state, m = mg.train_agent(cfg, env, state, hp, steps, alpha)
        greedy = mg.evaluate(eval_cfg, env, state.params, key_eval, env_params, TASKS[env_id])
        tail = m["episode/return"][-steps // 10 :]
        return greedy, jnp.nanmean(tail)

    out = {}
    for name, alpha in alphas.items():
        start = time.time()
        greedy, train_ret = jax.jit(jax.vmap(lambda s, a=alpha: run(s, a)))(seeds)
        greedy, train_ret = np.asarray(greedy), np.asarray(train_ret)
        out[name] = {
            "greedy": greedy.tolist(),
            "train_tail": train_ret.tolist(),
            "greedy_mean": float(greedy.mean()),
            "greedy_std": float(greedy.std()),
            "train_tail_mean": float(train_ret.mean()),
            "train_tail_std": float(train_ret.std()),
            "wall_s": time.time() - start,
        }
        print(
            f"{env_id:12s} {name:10s} greedy {greedy.mean():9.2f} ± {greedy.std():7.2f} "
            f"train-tail {train_ret.mean():9.2f} ± {train_ret.std():7.2f} "
            f"({out[name]['wall_s']:.0f}s) per seed {np.round(greedy, 2).tolist()}",
            flush=True,
        )
    if "learned" in out:
        for name in out:
            if name != "learned":
                p = stats.mannwhitneyu(
                    out["learned"]["greedy"], out[name]["greedy"], alternative="greater"
                ).pvalue
                out["learned"][f"mannwhitney_p_greater_than_{name}"] = float(p)
                print(f"{env_id:12s} learned > {name}: one-sided Mann-Whitney p = {p:.4f}")
    return out


def eval_phase(args) -> dict:
    cfg = make_cfg(args, 1)
    alphas = {"learned": mg.load(args.alpha, cfg)}
    for spec in args.extra_alpha:
        name, path = spec.split("=", 1)
        alphas[name] = mg.load(path, cfg)
    alphas |= {"random": "random", "dpg": None}
    alphas = {k: v for k, v in alphas.items() if args.arms is None or k in args.arms}
    return {env_id: eval_task(args, env_id, alphas) for env_id in args.tasks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=("meta", "eval", "all"), default="all")
    p.add_argument("--train-envs", nargs="+", default=["Pendulum-v1"], choices=list(TASKS))
    p.add_argument("--normalise-meta-loss", action="store_true")
    p.add_argument(
        "--anneal-steps", type=int, default=0, help="meta-training agents: DPG -> L_α over N steps"
    )
    p.add_argument("--agents", type=int, default=4, help="agents per training env type")
    p.add_argument("--meta-updates", type=int, default=15000)
    p.add_argument("--chunk", type=int, default=500)
    p.add_argument("--meta-seed", type=int, default=0)
    p.add_argument("--random-seed", type=int, default=12345)
    p.add_argument("--seeds", type=int, default=3, help="eval seeds (nav2d: --nav-seeds)")
    p.add_argument("--nav-seeds", type=int, default=3)
    p.add_argument("--pendulum-steps", type=int, default=10000)
    p.add_argument("--nav-steps", type=int, default=5000)
    p.add_argument("--mcc-steps", type=int, default=10000)
    p.add_argument("--probe-steps", type=int, default=3000)
    p.add_argument("--brax-steps", type=int, default=10000, help="env steps on each brax task")
    p.add_argument("--tasks", nargs="+", default=["Pendulum-v1", "meta/nav2d"])
    p.add_argument("--extra-alpha", nargs="*", default=[], help="NAME=PATH saved objectives")
    p.add_argument("--arms", nargs="+", default=None, help="evaluate only these arms")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--inner-lr", type=float, default=1e-3)
    p.add_argument("--meta-lr", type=float, default=1e-2)
    p.add_argument("--alpha", default="/tmp/metagenrl_alpha")
    p.add_argument("--out", default="/tmp/metagenrl_results.json")
    args = p.parse_args()
    args.steps = {
        "Pendulum-v1": args.pendulum_steps,
        "meta/nav2d": args.nav_steps,
        "MountainCarContinuous-v0": args.mcc_steps,
        "probe/continuous_target": args.probe_steps,
    } | {env_id: args.brax_steps for env_id in TASKS if env_id.startswith("brax/")}
    results = {"args": {k: v for k, v in vars(args).items()}}
    if args.phase in ("meta", "all"):
        results["meta"] = meta_phase(args)
    if args.phase in ("eval", "all"):
        results["eval"] = eval_phase(args)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
