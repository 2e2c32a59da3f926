"""The Decision Transformer on mixed-quality CartPole data: does conditioning on the return
pick out the best behaviour in the data, where behavioural cloning averages it?

Chen et al. (2021) report that a Decision Transformer (DT) conditioned on a high return
matches "%BC" (cloning only the best episodes), beats BC on all the data when the data
mixes good and poor behaviour, and that the return it reaches follows the target it is
given over the range the data covers.

**Dataset** ``mixed`` (recorded with key 0), in CartPole-v1:

* ``EXPERT_EPISODES`` episodes of the scripted expert ``a = [theta + 0.5 theta_dot > 0]``
  with its action replaced by a uniform one 10 % of the time (most last the 500 steps);
* ``BIASED_EPISODES`` episodes of a biased expert, ``a = [theta + 0.5 theta_dot + 0.2 >
  0]`` with its action replaced by a uniform one 20 % of the time; it drifts and falls
  after 20-100 steps, and about half the data's steps are its.

**Arms**, ``--seeds`` seeds (keys ``split(key(--key), seeds)``, 2020 by default), each
trained for ``STEPS`` steps on minibatches from the same file:

* ``dt``: :mod:`jaxrl.algorithms.decision_transformer` defaults (context 20, 2 layers,
  embedding 64), evaluated at every target in ``TARGETS``;
* ``bc``: :mod:`jaxrl.algorithms.bc` on all the data;
* ``bc_top10``: BC on the 10 % of episodes with the highest returns
  (:func:`jaxrl.algorithms.demos.best_episodes`);
* ``cql``: :mod:`jaxrl.algorithms.cql`, ``cql_alpha = 1`` (for reference).

**Scores**: the mean return of ``EVAL_EPISODES`` episodes per seed (greedy; DT: argmax at
each target), and the seconds of each arm's compiled program (compile included). The
seeds run vmapped on one device.

    python experiments/offline/decision_transformer.py --seeds 8 \\
        --json experiments/offline/dt_results.json

RESULTS.md in this folder records the protocol, the predictions and a run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl import envs
from jaxrl.algorithms import bc, cql, demos
from jaxrl.algorithms import decision_transformer as dt
from jaxrl.logger.writers import atomic_write_text
from jaxrl.runner import evaluate

EXPERT_EPISODES = 20
BIASED_EPISODES = 200
STEPS = 5_000
EVAL_EPISODES = 50
TARGETS = (50, 100, 150, 200, 300, 400, 500)


class Scripted:
    """The expert with its threshold moved by ``offset`` and its action replaced by a
    uniform one with probability ``epsilon`` (set per part of the dataset)."""

    __name__ = "scripted"
    offset = 0.0
    epsilon = 0.0

    @classmethod
    def policy(cls, cfg, env, params, obs, key, deterministic, hp=None):
        action = (obs[:, 2] + 0.5 * obs[:, 3] + cls.offset > 0).astype(jnp.int32)
        key_action, key_coin = jax.random.split(key)
        uniform = jax.random.randint(key_action, action.shape, 0, 2)
        return jnp.where(jax.random.uniform(key_coin, action.shape) < cls.epsilon, uniform, action)


def record_mixed(env) -> tuple[demos.Demos, np.ndarray]:
    """The expert's episodes, then the biased expert's: ``(data, returns)``."""
    parts, returns = [], []
    for offset, epsilon, episodes, key in ((0.0, 0.1, EXPERT_EPISODES, 0),
                                           (0.2, 0.2, BIASED_EPISODES, 1)):  # fmt: skip
        Scripted.offset, Scripted.epsilon = offset, epsilon
        data, r = demos.record(
            Scripted, None, env, None, jax.random.key(key), episodes, deterministic=False
        )
        parts.append(data)
        returns.append(r)
    data = jax.tree.map(lambda *x: jnp.concatenate(x), *parts)
    return data, np.concatenate(returns)


def timed(fn, keys):
    t0 = time.perf_counter()
    out = jax.block_until_ready(jax.jit(jax.vmap(fn))(keys))
    return jax.tree.map(np.asarray, out), time.perf_counter() - t0


def dt_arm(env, path, keys):
    cfg, hp = dt.Config(demos=str(path), num_steps=STEPS), dt.HParams.make()
    dt.check(cfg, hp)
    targets = jnp.asarray(TARGETS, jnp.float32)

    def one(key):
        state = dt.init(cfg, env, key, hp)
        state, metrics = dt.train(cfg, env, state, hp, cfg.num_steps)
        play = lambda target: dt.rollout(  # noqa: E731
            cfg, env, state.params, target, jax.random.fold_in(key, 1), EVAL_EPISODES, 500
        )[0].mean()
        return jax.lax.map(play, targets), metrics["train/accuracy"][-100:].mean()

    return timed(one, keys)


def policy_arm(module, cfg, hp, env, keys):
    """An offline learner with a greedy ``policy`` (BC, CQL): trained, then evaluated."""
    module.check(cfg, hp)

    def one(key):
        state, _ = module.train(cfg, env, module.init(cfg, env, key, hp), hp, cfg.num_steps)
        return evaluate.evaluate(
            module, cfg, env, state.params, jax.random.fold_in(key, 1), EVAL_EPISODES, True
        ).mean()

    return timed(one, keys)


def reference_arms(paths) -> dict:
    """``name: (module, cfg, hp)`` of the BC, top-10 % BC and CQL arms."""
    return {
        "bc": (bc, bc.Config(demos=str(paths["mixed"]), num_steps=STEPS), bc.HParams.make()),
        "bc_top10": (
            bc,
            bc.Config(demos=str(paths["top10"]), num_steps=STEPS),
            bc.HParams.make(),
        ),  # fmt: skip
        "cql": (
            cql,
            cql.Config(demos=str(paths["mixed"]), num_steps=STEPS),
            cql.HParams.make(cql_alpha=1.0),
        ),  # fmt: skip
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--key", type=int, default=2020, help="root key of the seeds")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/jaxrl_dt"))
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    env, _ = envs.make("CartPole-v1")
    data, returns = record_mixed(env)
    paths = {"mixed": args.workdir / "mixed.npz", "top10": args.workdir / "top10.npz"}
    demos.save(paths["mixed"], data)
    top = demos.best_episodes(data, 0.1)
    demos.save(paths["top10"], top)
    keys = jax.random.split(jax.random.key(args.key), args.seeds)
    record = {
        "seeds": args.seeds,
        "steps": STEPS,
        "data": {
            "transitions": data.size,
            "expert_return_mean": float(returns[:EXPERT_EPISODES].mean()),
            "biased_return_mean": float(returns[EXPERT_EPISODES:].mean()),
            "biased_return_range": [
                float(returns[EXPERT_EPISODES:].min()),
                float(returns[EXPERT_EPISODES:].max()),
            ],  # fmt: skip
            "top10_transitions": top.size,
        },
        "arms": {},
    }
    print(f"data: {data.size} transitions; expert mean {returns[:EXPERT_EPISODES].mean():.1f} "
          f"over {EXPERT_EPISODES}; biased mean "
          f"{returns[EXPERT_EPISODES:].mean():.1f} over {BIASED_EPISODES}; top 10 %: "
          f"{top.size} transitions")  # fmt: skip
    print("| arm | target | return (mean ± sd over seeds) | per seed | seconds |")
    print("| --- | --- | --- | --- | --- |")
    (per_target, accuracy), seconds = dt_arm(env, paths["mixed"], keys)
    record["arms"]["dt"] = {
        "targets": list(TARGETS),
        "return_per_seed": per_target.T.tolist(),  # [target][seed]
        "train_accuracy": accuracy.tolist(),
        "seconds": seconds,
    }
    for i, target in enumerate(TARGETS):
        x = per_target[:, i]
        print(f"| dt | {target} | {x.mean():.1f} ± {x.std():.1f} | "
              f"{' '.join(f'{v:.0f}' for v in x)} | {seconds:.0f} |", flush=True)  # fmt: skip
    for arm, (module, cfg, hp) in reference_arms(paths).items():
        x, seconds = policy_arm(module, cfg, hp, env, keys)
        record["arms"][arm] = {"return_per_seed": x.tolist(), "seconds": seconds}
        print(f"| {arm} | - | {x.mean():.1f} ± {x.std():.1f} | "
              f"{' '.join(f'{v:.0f}' for v in x)} | {seconds:.0f} |", flush=True)  # fmt: skip
        if args.json:
            atomic_write_text(args.json, json.dumps(record, indent=1))
    if args.json:
        atomic_write_text(args.json, json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
