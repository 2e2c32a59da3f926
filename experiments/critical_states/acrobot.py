"""Critical states of an Acrobot PPO agent: are the generated states really the agent's
best, worst and most decisive?

Rupprecht, Ibrahim & Pal (2020) generate states that maximise a function of a trained
agent's outputs, from a generative model of the states it visits, and show them as the
agent's weak spots. Here the agent is small enough to check the generated states against
the env: an Acrobot observation (the cosines and sines of the two joint angles and their
velocities) gives a full env state, so the agent can be run from it.

Protocol:

* **Agents**: ``--agents`` PPO agents with the ``ppo/cartpole`` preset's settings (5e5 env
  steps) on Acrobot-v1 (keys ``split(key(2020), agents)``).
* **States** per agent: ``EPISODES`` episodes (key 1) of the agent sampling from its
  policy.
* **Model and search** (:mod:`jaxrl.analysis.critical_states` defaults): a VAE with a
  4-dimensional latent fitted for 5,000 steps (key 4); per score, ``SEARCHES`` latent
  searches of 500 Adam steps from ``z ~ N(0, I)`` inside ``||z|| <= 3`` (key 2). Scores:
  ``best`` = the critic's value ``V``; ``worst`` = ``-V``; ``decisive`` = the gap between
  the largest and smallest logit of the policy.
* **Checks**, per agent and score, against ``SEARCHES`` states drawn uniformly from the
  data (key 3):

  - the score of the generated states against its distribution on the data (the median
    generated score's percentile among the data's scores);
  - the tip's height ``-cos a1 - cos(a1 + a2)`` (the goal is a height above 1);
  - **steps to the goal** of the greedy agent from each state (at most ``HORIZON``; 0 for
    a state already at the goal);
  - **one wrong action**: steps to the goal when the first action is the policy's least
    preferred and the rest greedy, minus the greedy steps.

    python experiments/critical_states/acrobot.py --agents 4 \\
        --json experiments/critical_states/results.json

RESULTS.md in this folder records the protocol, the predictions and a run.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl import envs
from jaxrl.algorithms import demos, ppo
from jaxrl.analysis import critical_states as cs
from jaxrl.logger.writers import atomic_write_text
from jaxrl.runner import config

EPISODES = 50
SEARCHES = 256
HORIZON = 500


def train_agents(num_agents: int):
    cfg, hp = config.resolve(ppo, config.load_preset("ppo/cartpole"), {}, None)
    env, env_params = envs.make("Acrobot-v1")
    keys = jax.random.split(jax.random.key(2020), num_agents)

    def one(key):
        state, _ = ppo.train(cfg, env, ppo.init(cfg, env, key, hp), hp, cfg.num_updates)
        return state.params

    return cfg, env, env_params, jax.jit(jax.vmap(one))(keys)


def heads(cfg, env, params):
    """``obs [B, 6] -> (logits [B, 3], value [B])``."""

    def fn(obs):
        dist, value = ppo.network(cfg, env).apply(params, obs)
        return dist.logits, value

    return fn


def scores(outputs) -> dict:
    return {
        "best": lambda obs: outputs(obs)[1],
        "worst": lambda obs: -outputs(obs)[1],
        "decisive": lambda obs: jnp.max(outputs(obs)[0], -1) - jnp.min(outputs(obs)[0], -1),
    }


def height(obs: np.ndarray) -> np.ndarray:
    """The tip's height ``-cos a1 - cos(a1 + a2)`` from observations ``[B, 6]``."""
    a1, a2 = np.arctan2(obs[:, 1], obs[:, 0]), np.arctan2(obs[:, 3], obs[:, 2])
    return -np.cos(a1) - np.cos(a1 + a2)


def steps_to_goal(env, env_params, outputs, obs: jax.Array, first_worst: bool) -> jax.Array:
    """Steps ``[B]`` the greedy agent takes to the goal from Acrobot states given as
    observations ``[B, 6]`` (at most ``HORIZON``; 0 at the goal); ``first_worst``: the first
    action is the least preferred one."""
    inner = env.gymnax_env
    state_type = type(inner.reset_env(jax.random.key(0), env_params)[1])
    state = state_type(
        joint_angle1=jnp.arctan2(obs[:, 1], obs[:, 0]),
        joint_angle2=jnp.arctan2(obs[:, 3], obs[:, 2]),
        velocity_1=jnp.clip(obs[:, 4], -4 * jnp.pi, 4 * jnp.pi),
        velocity_2=jnp.clip(obs[:, 5], -9 * jnp.pi, 9 * jnp.pi),
        time=jnp.zeros(obs.shape[0], jnp.int32),
    )
    at_goal = jax.vmap(lambda s: inner.is_terminal(s, env_params))(state)
    obs = jax.vmap(lambda s: inner.get_obs(s))(state)

    def step(carry, t):
        state, obs, running, steps = carry
        logits, _ = outputs(obs)
        worst = jnp.logical_and(first_worst, t == 0)
        action = jnp.where(worst, jnp.argmin(logits, -1), jnp.argmax(logits, -1))
        obs, state, out = jax.vmap(env.step, in_axes=(None, 0, 0, None))(
            jax.random.key(0), state, action, env_params
        )
        steps = steps + running.astype(jnp.int32)
        running = jnp.logical_and(running, jnp.logical_not(out.terminated))
        return (state, obs, running, steps), None

    init = (state, obs, jnp.logical_not(at_goal), jnp.zeros(obs.shape[0], jnp.int32))
    (_, _, _, steps), _ = jax.lax.scan(step, init, jnp.arange(HORIZON))
    return steps


class Sampling:
    """The agent sampling from its policy (for recording its states)."""

    __name__ = "sampling"

    def __init__(self, outputs):
        self.outputs = outputs

    def policy(self, cfg, env, params, obs, key, deterministic, hp=None):
        return jax.random.categorical(key, self.outputs(obs)[0]).astype(jnp.int32)


def analyse(cfg, env, env_params, params) -> dict:
    outputs = heads(cfg, env, params)
    data, returns = demos.record(
        Sampling(outputs), None, env, None, jax.random.key(1), EPISODES, deterministic=False
    )
    states = data.obs
    cs.check(states)
    model_cfg = cs.Config()
    model, losses = jax.jit(lambda k: cs.fit(model_cfg, states, k))(jax.random.key(4))
    sample = states[jax.random.randint(jax.random.key(3), (SEARCHES,), 0, states.shape[0])]
    to_goal = jax.jit(lambda o, w: steps_to_goal(env, env_params, outputs, o, w), static_argnums=1)

    def describe(obs):
        greedy, wrong = np.asarray(to_goal(obs, False)), np.asarray(to_goal(obs, True))
        return {
            "height_median": float(np.median(height(np.asarray(obs)))),
            "steps_to_goal_median": float(np.median(greedy)),
            "one_wrong_action_extra_steps_mean": float(np.mean(wrong - greedy)),
        }

    out = {"data": {"states": int(states.shape[0]), "return_mean": float(returns.mean()),
                    "vae_loss_first_last": [float(losses[0]), float(losses[-1])],
                    **describe(sample)}}  # fmt: skip
    for name, score in scores(outputs).items():
        generated, values, z = jax.jit(
            lambda k, score=score: cs.search(model_cfg, model, score, k, SEARCHES)
        )(jax.random.key(2))
        data_scores = np.asarray(score(states))
        out[name] = {
            "score_median": float(np.median(values)),
            "score_percentile_in_data": float(np.mean(data_scores < np.median(values)) * 100),
            "data_score_median": float(np.median(data_scores)),
            "z_norm_median": float(np.median(np.linalg.norm(np.asarray(z), axis=-1))),
            **describe(generated),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    t0 = time.perf_counter()
    cfg, env, env_params, params = train_agents(args.agents)
    print(f"trained {args.agents} agents in {time.perf_counter() - t0:.0f} s", flush=True)
    results = {}
    print("| agent | states | score (median) | percentile in data | tip height | steps to "
          "goal | extra steps after one wrong action |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i in range(args.agents):
        r = analyse(cfg, env, env_params, jax.tree.map(lambda x, i=i: x[i], params))
        results[str(i)] = r
        for name in ("data", "best", "worst", "decisive"):
            t = r[name]
            score = "-" if name == "data" else f"{t['score_median']:.2f}"
            pct = "-" if name == "data" else f"{t['score_percentile_in_data']:.0f}"
            print(f"| {i} | {name} | {score} | {pct} | {t['height_median']:.2f} | "
                  f"{t['steps_to_goal_median']:.0f} | "
                  f"{t['one_wrong_action_extra_steps_mean']:.1f} |", flush=True)  # fmt: skip
        if args.json:
            atomic_write_text(args.json, json.dumps(results, indent=1))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
