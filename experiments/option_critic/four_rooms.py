"""Option-critic in the four-rooms world: how fast each learner recovers when the goal moves.

Bacon, Harb & Precup (2017, "The Option-Critic Architecture", Figure 2) train on the
four-rooms world with the goal in the east doorway for 1,000 episodes, then move it to a
random cell of the lower-right room for 1,000 more. Option-critic with 4 and with 8
options recovers faster than the actor-critic with primitive actions (AC-PG) and than
SARSA(0); before the move, all of them learn the first goal. This experiment repeats
that with :mod:`jaxrl.algorithms.option_critic` and :mod:`jaxrl.envs.four_rooms`
(slip 1/3, 1,000-step episodes).

Arms: option-critic with 4 and 8 options; AC-PG (option-critic with 1 option); SARSA(0).
Every arm uses the authors' settings (critic step 0.5, intra-option and termination steps
0.25, ε 0.01, softmax temperature 0.01, γ 0.99, no deliberation cost), SARSA its critic
step and ε. Runs: keys ``split(key(--key), seeds)``; each run's new goal is drawn from
the lower-right room with ``key(--goal-key)``, the same for every arm.

    python experiments/option_critic/four_rooms.py --seeds 64 \
        --json experiments/option_critic/results.json

RESULTS.md in this folder records the protocol, the predictions and a run.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.algorithms import option_critic as oc
from jaxrl.envs import four_rooms as fr
from jaxrl.logger.writers import atomic_write_text

ARMS = ("oc_4", "oc_8", "ac_pg", "sarsa")


def goals(seeds: int, key: int) -> tuple[fr.FourRoomsParams, fr.FourRoomsParams]:
    """Every run's first goal (the east doorway) and second (a lower-right room cell)."""
    room = jnp.asarray(fr.LOWER_RIGHT_ROOM, jnp.int32)
    second = room[jax.random.randint(jax.random.key(key), (seeds,), 0, len(room))]
    first = jnp.full((seeds,), fr.EAST_DOORWAY, jnp.int32)
    return fr.FourRoomsParams(goal=first), fr.FourRoomsParams(goal=second)


def run_arm(arm: str, keys, first, second, episodes: int, **hparams) -> dict:
    """Both phases of ``len(keys)`` vmapped runs (``hparams`` override ``oc.HParams``
    defaults); means over runs per episode and per-run means per 100-episode window."""
    env, hp = fr.FourRooms(), oc.HParams.make(**hparams)
    if arm == "sarsa":
        state = jax.vmap(lambda k: oc.sarsa_init(env, k))(keys)
        phase = jax.jit(jax.vmap(lambda s, p: oc.sarsa_train(episodes, env, s, hp, p)))
    else:
        options = {"oc_4": 4, "oc_8": 8, "ac_pg": 1}[arm]
        cfg = oc.Config(options=options, episodes=episodes)
        oc.check(cfg, env, hp)
        state = jax.vmap(lambda k: oc.init(cfg, env, k))(keys)
        phase = jax.jit(jax.vmap(lambda s, p: oc.train(cfg, env, s, hp, p)))
    start = time.perf_counter()
    state, before = phase(state, first)
    state, after = jax.block_until_ready(phase(state, second))
    seconds = time.perf_counter() - start
    m = {k: np.concatenate([np.asarray(before[k]), np.asarray(after[k])], 1) for k in before}
    windows = lambda x: x.reshape(x.shape[0], -1, 100).mean(-1).round(3).tolist()  # noqa: E731
    out = {
        "mean_steps": m["steps"].mean(0).round(3).tolist(),  # [2 episodes], over runs
        "window_steps": windows(m["steps"]),  # [runs, 2 episodes / 100]
        "terminated": float(m["terminated"].mean()),
        "seconds": seconds,
    }
    if arm.startswith("oc_"):  # steps per option, per episode
        out["window_option_duration"] = windows(m["steps"] / (m["switches"] + 1))
    return out


def summary(arm: dict, episodes: int) -> dict:
    """Mean steps per episode over runs and 100-episode windows around the move."""
    steps, w = np.asarray(arm["window_steps"]), episodes // 100
    out = {
        "before (last 100 on goal 1)": steps[:, w - 1].mean(),
        "recovery (first 100 on goal 2)": steps[:, w].mean(),
        "end (last 100 on goal 2)": steps[:, -1].mean(),
    }
    if "window_option_duration" in arm:
        duration = np.asarray(arm["window_option_duration"])
        out["option duration (last 100 on goal 1)"] = duration[:, w - 1].mean()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--key", type=int, default=1609)
    parser.add_argument("--goal-key", type=int, default=5140)
    parser.add_argument("--episodes", type=int, default=1000, help="per goal, a multiple of 100")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    keys = jax.random.split(jax.random.key(args.key), args.seeds)
    first, second = goals(args.seeds, args.goal_key)
    results = {"second_goal": np.asarray(second.goal).tolist()}
    for name in ARMS:
        arm = run_arm(name, keys, first, second, args.episodes)
        arm["summary"] = summary(arm, args.episodes)
        results[name] = arm
        shown = {k: round(float(v), 1) for k, v in arm["summary"].items()}
        print(f"{name}: {shown}; {arm['seconds']:.0f} s", flush=True)
        if args.json:
            atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
