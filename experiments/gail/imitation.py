"""GAIL against behavioural cloning on CartPole-v1 and Pendulum-v1, from 1, 4 and 10 expert
trajectories (Ho & Ermon 2016, arXiv:1606.03476, Figure 1's classic-control protocol).

Per env:

1. **Expert**: PPO trained from the env's preset (``ppo/cartpole``, ``ppo/pendulum``; on
   ``--envs Acrobot-v1``, ``ppo/cartpole``'s settings), one seed (``--seed``); its greedy
   policy is the expert. Its greedy return and a uniform
   random policy's are measured over ``EVAL_EPISODES`` episodes each.
2. **Demonstrations**: ``n`` greedy expert episodes for ``n`` in ``--trajectories``
   (:func:`jaxrl.algorithms.demos.record`, written under ``--workdir``).
3. For each ``n``, ``--seeds`` seeds of
   * ``gail``: the env's GAIL preset (``gail/cartpole``, ``gail/pendulum``; Acrobot:
     ``gail/cartpole``'s settings);
   * ``bc``: behavioural cloning (``bc.Config()``: 2,000 Adam steps at 1e-3, minibatch 256,
     the same 64-64 tanh policy);
   and, at the middle ``n``, the control ``gail_frozen``: GAIL with the discriminator's
   learning rate 0, so its reward ``softplus(f(s, a))`` stays the initial network's. It
   measures what GAIL gets from a positive reward alone, without imitating: on CartPole
   a positive reward per step is a survival bonus, which is what the expert does anyway.
4. Score per seed: the final policy's greedy return over ``EVAL_EPISODES`` episodes, and the
   normalised score ``(R - R_random) / (R_expert - R_random)`` (the paper's y-axis).

All seeds of an arm run as one program (``use_all_cpu_cores``: seeds split over the cores).

    python experiments/gail/imitation.py --seeds 8 --json experiments/gail/results.json

RESULTS.md in this folder records the protocol, the predictions and a run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxrl import envs  # noqa: E402
from jaxrl.algorithms import bc, demos, gail, ppo  # noqa: E402
from jaxrl.distributed import run_mesh, shard_runs  # noqa: E402
from jaxrl.logger.writers import atomic_write_text  # noqa: E402
from jaxrl.runner import config, evaluate  # noqa: E402

# env: the presets (ppo/<name>, gail/<name>) whose settings it trains with
ENVS = {"CartPole-v1": "cartpole", "Pendulum-v1": "pendulum", "Acrobot-v1": "cartpole"}
EVAL_EPISODES = 100


class Uniform:
    """Uniform random actions (the normalised score's zero)."""

    __name__ = "uniform"

    @staticmethod
    def policy(cfg, env, params, obs, key, deterministic, hp=None):
        space = env.action_space(env.default_params())
        if space.shape == ():
            return jax.random.randint(key, obs.shape[:1], 0, space.n)
        low, high = space.bounds()
        return jax.random.uniform(key, obs.shape[:1] + space.shape, minval=low, maxval=high)


def train_expert(env_name: str, env, seed: int):
    """``(params, obs_stats, greedy returns)`` of PPO trained from the env's preset."""
    cfg, hp = config.resolve(ppo, config.load_preset(f"ppo/{ENVS[env_name]}"), {}, None)

    def run(key):
        state = ppo.init(cfg, env, key, hp)
        state, _ = ppo.train(cfg, env, state, hp, cfg.num_updates)
        stats = evaluate.obs_stats(state.env_state)
        greedy = evaluate.evaluate(
            ppo, cfg, env, state.params, jax.random.fold_in(key, 1), EVAL_EPISODES, True,
            obs_stats=stats,
        )  # fmt: skip
        return state.params, stats, greedy

    return cfg, *jax.jit(run)(jax.random.key(seed))


def score(algo, cfg, env, init_train, keys):
    """Greedy returns ``[S, EVAL_EPISODES]`` of ``init_train(key) -> state`` for each key."""

    def one(key):
        state = init_train(key)
        stats = evaluate.obs_stats(getattr(state, "env_state", None))
        return evaluate.evaluate(
            algo, cfg, env, state.params, jax.random.fold_in(key, 1), EVAL_EPISODES, True,
            obs_stats=stats,
        )  # fmt: skip

    t0 = time.perf_counter()
    returns = np.asarray(jax.jit(jax.vmap(one))(keys))
    return returns, time.perf_counter() - t0


def gail_arm(env_name, env, path, keys, disc_learning_rate=None):
    sets = {"demos": str(path)}
    if disc_learning_rate is not None:
        sets["disc_learning_rate"] = str(disc_learning_rate)
    preset = config.load_preset(f"gail/{ENVS[env_name]}")
    cfg, hp = config.resolve(gail, preset, sets, None)
    run = lambda k: gail.train(cfg, env, gail.init(cfg, env, k, hp), hp, cfg.num_updates)[0]  # noqa: E731
    return score(gail, cfg, env, run, keys)


def bc_arm(env, path, keys):
    cfg, hp = bc.Config(demos=str(path)), bc.HParams.make()
    bc.check(cfg, hp)
    run = lambda k: bc.train(cfg, env, bc.init(cfg, env, k, hp), hp, cfg.num_steps)[0]  # noqa: E731
    return score(bc, cfg, env, run, keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="the expert's seed; arms use 1000+")
    parser.add_argument("--trajectories", type=int, nargs="+", default=[1, 4, 10])
    parser.add_argument("--envs", nargs="+", default=list(ENVS)[:2], choices=list(ENVS))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/jaxrl_gail"))
    parser.add_argument("--json", help="write every score here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    keys = shard_runs(jax.random.split(jax.random.key(1000 + args.seed), args.seeds), run_mesh())
    record = {"seeds": args.seeds, "seed": args.seed, "eval_episodes": EVAL_EPISODES, "envs": {}}
    print("| env | arm | trajectories (pairs) | greedy return (mean ± sd over seeds) | "
          "normalised | per seed | seconds |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for env_name in args.envs:
        env, _ = envs.make(env_name)
        expert_cfg, params, stats, expert = train_expert(env_name, env, args.seed)
        rand = np.asarray(
            evaluate.evaluate(Uniform, None, env, None, jax.random.key(7), EVAL_EPISODES, False)
        )
        r_expert, r_random = float(np.mean(expert)), float(np.mean(rand))
        out = {"expert": r_expert, "random": r_random, "arms": {}}
        print(f"| {env_name} | expert (PPO, greedy) | - | {r_expert:.1f} | 1 | - | - |")
        print(f"| {env_name} | uniform random | - | {r_random:.1f} | 0 | - | - |", flush=True)
        middle = args.trajectories[len(args.trajectories) // 2]
        for n in args.trajectories:
            data, demo_returns = demos.record(
                ppo, expert_cfg, env, params, jax.random.key(100 + n), n, obs_stats=stats
            )
            path = args.workdir / f"{ENVS[env_name]}_{n}.npz"
            demos.save(path, data)
            arms = ["gail", "bc"] + (["gail_frozen"] if n == middle else [])
            for arm in arms:
                if arm == "bc":
                    returns, seconds = bc_arm(env, path, keys)
                else:
                    frozen = 0.0 if arm == "gail_frozen" else None
                    returns, seconds = gail_arm(env_name, env, path, keys, frozen)
                per_seed = returns.mean(axis=1)
                norm = (per_seed - r_random) / (r_expert - r_random)
                out["arms"][f"{arm}/{n}"] = {
                    "pairs": data.size, "demo_returns": demo_returns.tolist(),
                    "greedy_per_seed": per_seed.tolist(), "normalised_per_seed": norm.tolist(),
                    "seconds": seconds,
                }  # fmt: skip
                print(
                    f"| {env_name} | {arm} | {n} ({data.size}) | {per_seed.mean():.1f} ± "
                    f"{per_seed.std():.1f} | {norm.mean():.2f} | "
                    f"{' '.join(f'{x:.0f}' for x in per_seed)} | {seconds:.0f} |",
                    flush=True,
                )
                record["envs"][env_name] = out
                if args.json:
                    atomic_write_text(args.json, json.dumps(record))


if __name__ == "__main__":
    main()
