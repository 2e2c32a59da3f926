"""R2D3 on KeyDoor: learning from demonstrations on a hard-exploration, partially observed
task with random initial conditions, against R2D2 alone, across demo ratios (Paine et
al. 2019).

Task: ``KeyDoor(size=7, max_steps=40, cue_steps=1)`` (the door is shown only in the first
observation; random play succeeds in about 0.45 % of episodes). ``--demos`` expert episodes
(:class:`jaxrl.envs.key_door.Expert`, recorded with ``demos.record``) fill the demo replay.

Arms: ``hp.demo_ratio`` in ``--ratios`` (0 is R2D2: the demo replay is never drawn from),
each with ``--seeds`` runs (seeds ``--key`` onwards, ``jaxrl.runner.sweep.grid``), all in
one compiled program vmapped over ratio x seed. Every
run: ``--steps`` env steps of the settings in :data:`CONFIG` and :data:`HPARAMS`. After each
tenth of the budget every run's greedy policy plays 256 fresh episodes
(``jaxrl.runner.evaluate``, which carries the LSTM state through each episode).

    python experiments/r2d3/key_door.py --json experiments/r2d3/results.json

RESULTS.md in this folder records the protocol, the predictions and a run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.algorithms import demos, r2d3
from jaxrl.envs.key_door import Expert, KeyDoor
from jaxrl.logger.writers import atomic_write_text
from jaxrl.runner import evaluate, sweep

CONFIG = dict(
    num_envs=16, train_freq=10, gradient_steps=4, batch_size=32, sequence_length=40,
    burn_in=10, period=20, learning_starts=2_000, buffer_size=50_000,
    target_update_period=100,
)  # fmt: skip
HPARAMS = dict(learning_rate=1e-3, adam_eps=1e-6, discount=0.99)
CHUNKS = 10
EVAL_EPISODES = 256


def run(args) -> dict:
    """Greedy returns ``[ratios, seeds, CHUNKS]`` and the demonstrations' size."""
    env = KeyDoor(size=7, max_steps=40, cue_steps=1)
    data, returns = demos.record(
        Expert(env), None, env, None, jax.random.key(args.demo_key), args.demos, max_steps=40
    )
    path = Path(tempfile.mkdtemp()) / "key_door_demos.npz"
    demos.save(path, data)
    cfg = r2d3.Config(total_timesteps=args.steps, demos=str(path), **CONFIG)
    ratios = np.asarray(args.ratios, np.float32)
    seeds = range(args.key, args.key + args.seeds)
    runs = sweep.grid(r2d3.HParams.make(**HPARAMS), seeds, demo_ratio=list(ratios))
    keys, hp = runs.keys, runs.hps  # ratio-major: [ratios * seeds]
    r2d3.check(cfg, hp)
    updates = cfg.num_updates // CHUNKS
    eval_keys = jax.random.split(jax.random.key(args.key + 1), CHUNKS)

    state = jax.jit(jax.vmap(lambda k, h: r2d3.init(cfg, env, k, h)))(keys, hp)

    @jax.jit
    def chunk(state, eval_key):
        state, metrics = jax.vmap(lambda s, h: r2d3.train(cfg, env, s, h, updates))(state, hp)
        greedy = jax.vmap(
            lambda p: evaluate.evaluate(r2d3, cfg, env, p, eval_key, EVAL_EPISODES, True,
                                        max_steps=env.max_steps)
        )(state.params)  # fmt: skip
        train = jnp.nanmean(metrics["episode/return"], axis=1)
        return state, jnp.mean(greedy, axis=1), train

    greedy, train, start = [], [], time.time()
    for i in range(CHUNKS):
        state, g, t = chunk(state, eval_keys[i])
        greedy.append(np.asarray(g))
        train.append(np.asarray(t))
        print(f"chunk {i + 1}/{CHUNKS} {time.time() - start:.0f}s greedy by ratio:",
              np.round(g.reshape(len(ratios), -1).mean(1), 3), flush=True)  # fmt: skip
    shape = (len(ratios), args.seeds, CHUNKS)
    return dict(
        env_steps=[(i + 1) * updates * cfg.steps_per_update for i in range(CHUNKS)],
        ratios=[float(r) for r in ratios],
        greedy=np.stack(greedy, -1).reshape(shape).round(4).tolist(),
        train=np.stack(train, -1).reshape(shape).round(4).tolist(),
        demo_episodes=int(args.demos),
        demo_steps=int(data.size),
        demo_return=float(np.mean(returns)),
        wall_s=round(time.time() - start, 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200_000)
    ratios = [0.0, 1 / 256, 1 / 64, 1 / 16, 1 / 4]
    parser.add_argument("--ratios", type=float, nargs="+", default=ratios)
    parser.add_argument("--demos", type=int, default=300)
    parser.add_argument("--key", type=int, default=2019, help="the first seed (sweep.seed_key)")
    parser.add_argument("--demo-key", type=int, default=1909)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out = run(args)
    for r, runs in zip(out["ratios"], out["greedy"], strict=True):
        last = np.asarray(runs)[:, -1]
        print(f"ratio {r:.4f}: final greedy {last.mean():.3f} per seed {np.round(last, 2)}")
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
