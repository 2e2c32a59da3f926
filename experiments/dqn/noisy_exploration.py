"""How much do noisy nets explore, with and without C51? (issue 5, the Rainbow plateau)

On Breakout-MinAtar at 128k steps, Noisy DQN matches DQN but Noisy C51 plateaus near
Rainbow's score (RESULTS.md, "Probing the noisy-net plateau"). This script tests one
explanation: that noise in the categorical head barely changes the greedy action, so the
noisy C51 agent stops exploring early. It trains each arm in ``--chunks`` equal chunks (one
compiled program per arm, ``--seeds`` seeds vmapped; chunked training gives the numbers of
one unchunked run) and after each chunk measures, per seed, on the current observations of
the ``num_envs`` envs (the states the agent is acting in):

* ``flip``: the fraction of (noise draw, env) pairs whose greedy action under a fresh noise
  draw differs from the greedy action of the mean weights, over ``--draws`` draws (each
  draw shared by all envs, as when acting): the agent's effective exploration rate;
* ``gap``: the mean gap between the best and second-best action value of the mean weights;
* ``q_std``: the standard deviation of an action's value over noise draws (mean over
  actions and envs): how far the noise moves the values the greedy choice compares;
* ``sigma_ratio``: mean ``|kernel_sigma|`` over mean ``|kernel_mu|`` of the noisy layers.

At the end each seed is evaluated greedily as ``compare.py`` does (same keys), so the final
scores can be checked against ``probes_seed1.json``.

    python experiments/dqn/noisy_exploration.py --seed 1 \\
        --json experiments/dqn/noisy_exploration.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.algorithms import dqn
from jaxrl.envs import registry
from jaxrl.runner import evaluate as evaluation

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (experiments/dqn/compare.py: the arms' presets)

ENV = "Breakout-MinAtar"
# The Rainbow preset with components switched off, as in RESULTS.md's probes.
BARE = {"double": "false", "dueling": "false", "n_step": "1", "prioritised": "false"}
ARMS = {
    "Noisy DQN": BARE | {"distribution": "none"},
    "Noisy C51": BARE,
}


def noise_statistics(cfg, env, params: dict, obs: jax.Array, key: jax.Array, draws: int) -> dict:
    """``flip``, ``gap``, ``q_std`` and ``sigma_ratio`` (scalars) of one run's ``params`` at
    observations ``obs [N, *obs_shape]``."""
    q_mean = dqn.q_values(cfg, env, params, obs, None)  # [N, A]
    q_noisy = jax.vmap(lambda k: dqn.q_values(cfg, env, params, obs, k))(
        jax.random.split(key, draws)
    )  # [draws, N, A]
    greedy = jnp.argmax(q_mean, axis=-1)
    flip = jnp.mean(jnp.argmax(q_noisy, axis=-1) != greedy[None])
    top2 = jax.lax.top_k(q_mean, 2)[0]
    leaves = jax.tree_util.tree_leaves_with_path(params)
    named = {jax.tree_util.keystr(p): x for p, x in leaves}
    sigma = [jnp.mean(jnp.abs(x)) for n, x in named.items() if "kernel_sigma" in n]
    mu = [jnp.mean(jnp.abs(x)) for n, x in named.items() if "kernel_mu" in n]
    return {
        "flip": flip,
        "gap": jnp.mean(top2[:, 0] - top2[:, 1]),
        "q_std": jnp.mean(jnp.std(q_noisy, axis=0)),
        "sigma_ratio": sum(sigma) / sum(mu),
    }


def run_arm(name: str, sets: dict, seeds: int, seed: int, chunks: int, draws: int) -> dict:
    """Trains one arm in ``chunks`` chunks, measuring after each; returns a JSON-ready dict."""
    arms = compare.arm_settings(ENV, None, sets)
    algo, cfg, hp = arms[compare.ablation_name(sets)]
    env, env_params = registry.make(ENV)
    if cfg.num_updates % chunks:
        raise SystemExit(f"{cfg.num_updates} updates do not split into {chunks} chunks")
    keys = jax.random.split(jax.random.key(seed), seeds)
    init = jax.jit(lambda ks: jax.lax.map(lambda k: algo.init(cfg, env, k, hp, env_params), ks))
    state = jax.block_until_ready(init(keys))
    n = cfg.num_updates // chunks
    # The metrics are returned though unused: dropping them lets XLA fuse the rest
    # differently, and the rounding differences grow into other runs (RESULTS.md).
    train = jax.jit(jax.vmap(lambda s: algo.train(cfg, env, s, hp, n)), donate_argnums=0)
    measure = jax.jit(jax.vmap(lambda p, o, k: noise_statistics(cfg, env, p, o, k, draws)))
    rows = []
    t0 = time.perf_counter()
    for chunk in range(chunks):
        state, _ = train(state)
        stats_key = jax.random.split(jax.random.key(10_000 + chunk), seeds)
        s = jax.device_get(measure(state.params.online, state.obs, stats_key))
        row = {"env_steps": int(state.env_steps[0])}
        row |= {k: np.asarray(v).tolist() for k, v in s.items()}
        rows.append(row)
        print(
            f"{name:10s} {row['env_steps']:>7,} steps: flip {np.mean(row['flip']):.3f}  "
            f"gap {np.mean(row['gap']):.3f}  q_std {np.mean(row['q_std']):.3f}  "
            f"sigma/mu {np.mean(row['sigma_ratio']):.3f}  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    eval_keys = jax.random.split(jax.random.key(seed + 1), seeds)
    returns = jax.jit(
        jax.vmap(lambda p, k: evaluation.evaluate(algo, cfg, env, p, k, 16, True, env_params))
    )(state.params, eval_keys)
    scores = np.asarray(returns, dtype=np.float64).mean(axis=1)
    print(f"{name}: greedy scores {np.round(scores, 1).tolist()}", flush=True)
    return {"sets": sets, "chunks": rows, "scores": scores.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--draws", type=int, default=64, help="noise draws per measurement")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    record = {"env": ENV, "seed": args.seed, "seeds": args.seeds, "draws": args.draws, "arms": {}}
    for name in args.arms.split(","):
        record["arms"][name] = run_arm(
            name, ARMS[name], args.seeds, args.seed, args.chunks, args.draws
        )
        if args.json:  # after each arm, atomically
            tmp = args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(args.json)


if __name__ == "__main__":
    main()
