"""LPG acceptance L5 (spec meta_rl.md 1.11): does the agent's prediction y encode value?

Trains fresh agents on tabular Dense for one lifetime with a saved (meta-trained) LPG and
with a random LPG, then regresses the exact ``v^π(s)`` of each agent's final policy
(``TabularGridWorld.transition_model`` + ``gridworld.policy_evaluation``, γ = 0.99) on its
prediction ``y(s)`` (``m`` probabilities, least squares), over the states the final policy
visits in 16 x 500 steps, weighted by visit counts. Reports R² per seed.

    python experiments/meta/lpg_semantics.py --load /tmp/lpg_grids/lpg --agent-lr 80 \
        --alpha-y 0.1 --out /tmp/lpg_semantics.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl import envs
from jaxrl.envs import gridworld
from jaxrl.meta import lpg


def weighted_r2(x: np.ndarray, v: np.ndarray, w: np.ndarray) -> float:
    """R² of the weighted least-squares fit ``v ≈ x b`` (``x [N, m]``, ``v, w [N]``)."""
    sw = np.sqrt(w)
    b, *_ = np.linalg.lstsq(x * sw[:, None], v * sw, rcond=None)
    resid = v - x @ b
    mean = np.sum(w * v) / np.sum(w)
    return float(1.0 - np.sum(w * resid**2) / np.sum(w * (v - mean) ** 2))


def one_agent(cfg, env, eta, key, hp, args):
    """Trains one agent; returns ``(y [S, m], v [S], visits [S], final return)``."""
    lt, m = lpg.train_agent(cfg, env, eta, key, args.updates, hp, args.agent_lr, args.alpha_y)
    pi_logits, y_logits = lpg.agent_apply(cfg, lt.theta, jnp.arange(env.num_states))
    model = env.transition_model(lt.env_params)
    v = gridworld.policy_evaluation(model, jax.nn.softmax(pi_logits), args.discount)
    long = dataclasses.replace(cfg, rollout_len=500)
    batch, _, _ = lpg.rollout(long, env, lt.theta, lt.env_params, lt.env_state, lt.obs, key)
    visits = jnp.zeros(env.num_states).at[batch.obs.reshape(-1)].add(1.0)
    r, n = m["train/episode_return"][-10:], m["train/episodes"][-10:]
    final = jnp.sum(r * n) / jnp.maximum(jnp.sum(n), 1.0)
    return jax.nn.softmax(y_logits), v, visits, final


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--load", required=True, help="a saved LPG (lpg.save path)")
    p.add_argument("--env", default="lpg/tabular_dense")
    p.add_argument("--agent-lr", type=float, default=80.0)
    p.add_argument("--alpha-y", type=float, default=0.1)
    p.add_argument("--updates", type=int, default=500)
    p.add_argument("--discount", type=float, default=0.99)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    eta, cfg = lpg.load(args.load)
    env, _ = envs.make(args.env)
    hp = lpg.HParams.make()
    keys = jax.random.split(jax.random.key(2024), args.seeds)
    result = {"args": vars(args)}
    for label, rule in [("trained", eta), ("random", lpg.init_lpg(cfg, jax.random.key(0)))]:
        run = jax.jit(jax.vmap(lambda k, rule=rule: one_agent(cfg, env, rule, k, hp, args)))
        y, v, visits, final = jax.device_get(run(keys))
        r2 = [weighted_r2(y[i], v[i], visits[i]) for i in range(args.seeds)]
        result[label] = {
            "r2_per_seed": [round(x, 3) for x in r2],
            "r2_mean": float(np.mean(r2)),
            "final_return_per_seed": [round(float(x), 2) for x in final],
            "states_visited": [int((visits[i] > 0).sum()) for i in range(args.seeds)],
        }
        print(label, json.dumps(result[label]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
