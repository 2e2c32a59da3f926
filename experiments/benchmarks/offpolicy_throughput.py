"""SAC and TD3 throughput on gymnax Pendulum-v1: jaxrl against Rejax and sbx; raw env as ceiling.

Config: Rejax's own Pendulum configs (``configs/gymnax/pendulum.yaml`` in the Rejax repo; its
``sac`` entry is the one ``/work/shared/perf_baseline.md`` measured), 1e4 env steps per seed,
one env, one gradient step per env step once learning starts:

* SAC: replay 10,000, batch 256, learning after 256 env steps, Adam 0.01, gamma 0.99, polyak
  0.98 (tau 0.02), learned temperature (initial alpha 1, target entropy -1), 64-64 nets.
* TD3: replay 10,000, batch 100, learning after 1,000 env steps, Adam 1e-3, gamma 0.99, polyak
  0.95 (tau 0.05), exploration noise 0.3, target noise 0.2 clipped at 0.5 (in Pendulum's
  action units, [-2, 2]), policy delay 2, 64-64 nets.

Parts, each in its own process (env steps per second of all seeds together, after
compilation, which is timed apart), for each vmapped seed count ``S`` (default 1 and 8):

``rejax_sac``, ``rejax_td3``
    ``rejax.SAC/TD3.create(**config)``, ``jit(vmap(algo.train))`` over ``S`` keys (init
    inside). Periodic evaluation off (``eval_freq == total_timesteps``,
    ``skip_initial_evaluation``) and the one final evaluation replaced by a no-op in the timed
    program; Rejax's own evaluation (``rejax.evaluate``: 128 episodes per seed, its ``act``,
    which samples for SAC and is noise-free for TD3) runs afterwards, untimed.
``jaxrl_sac``, ``jaxrl_td3``
    ``init`` (``lax.map`` over seeds) + ``vmap(train)`` in one ``jit`` with the matched
    :func:`jaxrl_sac_config` / :func:`jaxrl_td3_config`. Final return: 128 greedy episodes
    per seed (``act``) of the final networks, untimed.
``sbx_sac``
    sbx (SB3's JAX port) SAC on a gymnasium ``Pendulum-v1`` stepped on the host, same numbers
    (``train_freq=1, gradient_steps=1``, ``learning_starts=256``, 64-64 swish nets), 1 seed
    only: sbx trains one agent per process and cannot vmap; 8 sequential seeds would run at
    its 1-seed rate. Its jitted functions are compiled by a short warm-up model first (timed
    as "compile"); then a fresh model's ``learn`` is timed. Final return: 128 deterministic
    episodes (SB3 ``evaluate_policy``, 16 envs).
``raw``
    gymnax's own auto-resetting ``step`` with uniform random actions, ``[S, 1]`` envs, 1e4
    steps per seed in a jitted ``lax.scan``: what no training loop can beat.

Gradient steps per seed (counted from each final state's optimiser step counts):

* SAC: 9,744 for all three (Rejax learns once ``global_step > 256`` after the step; jaxrl
  with ``learning_starts=257``; sbx once ``num_timesteps > 256``).
* TD3: 8,999 critic steps for both; actor steps: Rejax 4,500, jaxrl 4,499 (Rejax learns the
  critic once ``global_step > 1000`` before the step, jaxrl with ``learning_starts=1002``;
  both step the actor on every second critic step).

Rejax (0.1.3, the latest) expects gymnax's old five-value ``step`` and fails on gymnax 1.x,
which jaxrl needs; sbx needs torch (through stable-baselines3). So each part runs in its own
process and venv, appending JSON lines to one file; ``--combine`` prints the tables. Set up
the two peer venvs once (same jax/flax/optax as jaxrl's venv)::

    python -m venv /work/venv_bench
    /work/venv_bench/bin/pip install rejax==0.1.3 gymnax==0.0.9 jax==0.10.2 jaxlib==0.10.2 \\
        flax==0.12.8 optax==0.2.8 chex==0.1.92 distrax==0.1.9
    python -m venv /work/venv_sbx  # torch: the default (CUDA) wheel is ~6 GB, a CPU one 1.7
    /work/venv_sbx/bin/pip install torch==2.13.0  # the CPU build this machine keeps on disk
    /work/venv_sbx/bin/pip install sbx-rl==0.28.0 jax==0.10.2 jaxlib==0.10.2 flax==0.12.8 \\
        optax==0.2.8

Then either run parts by hand (any order; repeated invocations add repeats)::

    B=experiments/benchmarks/offpolicy_throughput.py
    /work/venv/bin/python $B --only jaxrl_sac --out /tmp/offpolicy.jsonl
    /work/venv_bench/bin/python $B --only rejax_sac --out /tmp/offpolicy.jsonl
    /work/venv_sbx/bin/python $B --only sbx_sac --out /tmp/offpolicy.jsonl
    /work/venv/bin/python $B --combine /tmp/offpolicy.jsonl

or let the script alternate all parts for ``--rounds`` rounds, so that machine load hits them
alike (each round recompiles; compile is timed apart)::

    /work/venv/bin/python $B --rounds 3 --out /tmp/offpolicy.jsonl [--parts rejax_sac,jaxrl_sac]

Each record also keeps the process's CPU seconds of each timed run (all its threads; the
XLA programs use up to 2 here); ``--combine`` gives the ratios per CPU-second too, which
other load on a shared machine moves less than wall-clock rates.

``jaxrl_sac_cores``, ``jaxrl_td3_cores``
    the same, run as the jaxrl CLI runs seeds on a CPU: one XLA device per core
    (:func:`jaxrl.distributed.mesh.use_all_cpu_cores`) and the seed axis split over them by
    ``shard_map``; seed counts that the core count divides only. XLA:CPU keeps about one core
    busy on these small matrices, so the plain parts use one core where these use all.

Flags: ``--seeds 1,8`` (sbx always runs 1), ``--repeats N`` (timed runs per compiled
program, default 1), ``--total-timesteps N`` (per seed, default 1e4, even),
``--rejax-python``, ``--sbx-python``.

This file imports jaxrl only for ``jaxrl_*`` and ``raw``, rejax only for ``rejax_*``, sbx only
for ``sbx_sac``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ENV_ID = "Pendulum-v1"
TOTAL_TIMESTEPS = 10_000
EVAL_EPISODES = 128  # Rejax's evaluation: 128 episodes per seed
REJAX_PYTHON = Path("/work/venv_bench/bin/python")
SBX_PYTHON = Path("/work/venv_sbx/bin/python")
PARTS = (
    "raw", "jaxrl_sac", "jaxrl_sac_cores", "rejax_sac", "sbx_sac",
    "jaxrl_td3", "jaxrl_td3_cores", "rejax_td3",
)  # fmt: skip
ALGOS = ("sac", "td3")
# Steps/s of all seeds in /work/shared/perf_baseline.md ("SAC on gymnax Pendulum-v1").
PERF_BASELINE = {("rejax_sac", 1): 1_800, ("rejax_sac", 8): 2_300, ("sbx_sac", 1): 290}
TARGETS = {"rejax": 1.5, "sbx": 5.0}  # issue 7: jaxrl / peer

# Rejax's configs/gymnax/pendulum.yaml (eval settings are set in measure_rejax).
REJAX_CONFIGS = {
    "sac": dict(
        env=ENV_ID,
        agent_kwargs={"activation": "swish"},  # hidden_layer_sizes default (64, 64)
        num_envs=1,
        buffer_size=10_000,
        fill_buffer=256,  # learns once global_step (after the step) > 256
        batch_size=256,
        learning_rate=0.01,
        num_epochs=1,  # gradient steps per env step
        gamma=0.99,
        polyak=0.98,  # target <- 0.98 target + 0.02 online after every env step
        target_entropy_ratio=None,  # Box actions: target entropy -A
        normalize_observations=True,
    ),
    "td3": dict(
        env=ENV_ID,
        actor_kwargs={"activation": "swish"},  # 64-64
        critic_kwargs={"activation": "swish"},
        num_envs=1,
        buffer_size=10_000,
        fill_buffer=1_000,  # critic learns once global_step (before the step) > 1000
        batch_size=100,
        learning_rate=0.001,
        num_epochs=1,
        gamma=0.99,
        polyak=0.95,  # after every policy_delay env steps
        max_grad_norm=100.0,  # optax.clip: element-wise
        exploration_noise=0.3,  # action units: Pendulum's actions are in [-2, 2]
        target_noise=0.2,
        target_noise_clip=0.5,
        policy_delay=2,
        normalize_observations=True,
    ),
}
PENDULUM_ACTION_SCALE = 2.0  # jaxrl's TD3 noise is in [-1, 1] units, Rejax's in env units


def jaxrl_sac_config(sac, total_timesteps: int):
    """``(sac.Config, sac.HParams)`` matched to ``REJAX_CONFIGS["sac"]``.

    * ``learning_starts=257``: Rejax learns in iteration ``i`` iff ``i + 1 > 256`` (step count
      after the env step), jaxrl iff ``i + 1 >= learning_starts``: both from ``i = 256`` on,
      ``total_timesteps - 256`` gradient steps per seed (9,744 at 1e4).
    * ``tau=0.02`` after every gradient step (Rejax: polyak 0.98 after every env step, also
      before learning starts, when the critics do not move).
    * Adam 0.01 for actor, critics and temperature; initial alpha 1 (Rejax: log alpha 0);
      target entropy ``-1 * A``; two critics; batch 256; replay 10,000.
    * Not matched: activation (jaxrl's Config has none: ReLU; Rejax swish); observation
      normalisation (Rejax on; jaxrl's SAC has no switch); Rejax acts with the policy from
      the first step, jaxrl uniformly until learning starts; Rejax's log-std clip (-10, 2);
      its ``optax.clip(inf)``.
    """
    fill = REJAX_CONFIGS["sac"]["fill_buffer"]
    cfg = sac.Config(
        total_timesteps=total_timesteps,
        num_envs=1,
        train_freq=1,
        gradient_steps=1,
        buffer_size=10_000,
        batch_size=256,
        learning_starts=fill + 1,
        policy_delay=1,
        num_critics=2,
        hidden=(64, 64),
        autotune=True,
    )
    hp = sac.HParams.make(
        learning_rate=0.01, discount=0.99, tau=0.02, init_alpha=1.0, target_entropy_scale=1.0
    )
    return cfg, hp


def jaxrl_td3_config(td3, total_timesteps: int):
    """``(td3.Config, td3.HParams)`` matched to ``REJAX_CONFIGS["td3"]``.

    * ``learning_starts=1002``: Rejax steps the critics in iteration ``i`` iff ``i > 1000``
      (step count before the env step), jaxrl iff ``i + 1 >= learning_starts``: both from
      ``i = 1001`` on, ``total_timesteps - 1001`` critic steps (8,999 at 1e4). Actor: every
      second critic step (jaxrl 4,499; Rejax 4,500, as it steps the actor after each pair of
      env steps).
    * Noise in jaxrl's ``[-1, 1]`` action units: exploration 0.15, smoothing 0.1 clipped at
      0.25 (Rejax: 0.3, 0.2, 0.5 on Pendulum's ``[-2, 2]``).
    * ``tau=0.05`` with each actor step (Rejax: polyak 0.95 after every pair of env steps).
    * Adam 1e-3, batch 100, replay 10,000, uniform random actions before learning (both).
    * Not matched: activation (ReLU vs swish), observation normalisation (Rejax on),
      gradient clipping (Rejax ``optax.clip(100)``, element-wise; jaxrl's TD3 has none),
      the actor loss (jaxrl ``-Q_1``; Rejax the mean of both critics).
    """
    rejax = REJAX_CONFIGS["td3"]
    cfg = td3.Config(
        total_timesteps=total_timesteps,
        num_envs=1,
        train_freq=1,
        gradient_steps=1,
        buffer_size=10_000,
        batch_size=100,
        learning_starts=rejax["fill_buffer"] + 2,
        policy_delay=2,
        hidden=(64, 64),
    )
    s = PENDULUM_ACTION_SCALE
    hp = td3.HParams.make(
        learning_rate=1e-3,
        discount=0.99,
        tau=1.0 - rejax["polyak"],
        exploration_noise=rejax["exploration_noise"] / s,
        policy_noise=rejax["target_noise"] / s,
        noise_clip=rejax["target_noise_clip"] / s,
    )
    return cfg, hp


def expected_grad_steps(part: str, total_timesteps: int) -> dict[str, int]:
    """Gradient steps per seed each part should take (see the module docstring)."""
    if "sac" in part:
        n = total_timesteps - REJAX_CONFIGS["sac"]["fill_buffer"]
        return {"critic": n, "actor": n}
    critic = total_timesteps - REJAX_CONFIGS["td3"]["fill_buffer"] - 1
    actor = critic // 2 if part.startswith("jaxrl") else (critic + 1) // 2
    return {"critic": critic, "actor": actor}


# --------------------------------------------------------------------------- helpers


def jaxrl_revision() -> str:
    """The commit measured, with ``+dirty`` if ``jaxrl/`` has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        git = lambda *a: subprocess.run(
            ["git", *a], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = "+dirty" if git("status", "--porcelain", "jaxrl") else ""
        return git("rev-parse", "--short", "HEAD") + dirty
    except (OSError, subprocess.CalledProcessError):
        return "?"


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def versions() -> dict[str, str]:
    names = (
        "jax", "jaxlib", "flax", "optax", "chex", "distrax", "gymnax", "flashbax", "rejax",
        "sbx-rl", "stable_baselines3", "torch", "gymnasium",
    )  # fmt: skip
    return {name: version(name) for name in names if version(name) != "-"}


def compile_timed(fn, args: tuple):
    """``jax.jit(fn).lower(*args).compile()``; returns ``(compiled, lower_s, compile_s)``."""
    import jax

    start = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return compiled, lowered_at - start, time.perf_counter() - lowered_at


def run_timed(compiled, args: tuple, repeats: int) -> tuple[list[float], list[float], object]:
    """Runs ``compiled(*args)`` ``repeats`` times; returns the wall seconds, the process's
    CPU seconds (all its threads) and the last output."""
    import jax

    seconds, cpu_seconds, output = [], [], None
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        output = jax.block_until_ready(compiled(*args))
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return seconds, cpu_seconds, output


def adam_count(opt_state) -> list[int]:
    """Adam's step count per seed from a vmapped ``optax.adam`` state (``[S]``)."""
    import numpy as np

    return np.asarray(opt_state[0].count).tolist()


# ------------------------------------------------------------------------ Rejax


def measure_rejax(algo_name: str, seeds: int, total_timesteps: int, repeats: int, base_seed: int):
    """Rejax SAC or TD3, ``jit(vmap(algo.train))`` over ``seeds`` keys; evaluation after."""
    import jax
    import numpy as np
    from rejax import get_algo

    algo = get_algo(algo_name).create(
        **REJAX_CONFIGS[algo_name],
        total_timesteps=total_timesteps,
        eval_freq=total_timesteps,  # one "evaluation", after the last iteration ...
        skip_initial_evaluation=True,
    )
    timed = algo.replace(eval_callback=lambda algo, ts, rng: ())  # ... which is a no-op
    keys = jax.random.split(jax.random.PRNGKey(base_seed), seeds)
    compiled, lower_s, compile_s = compile_timed(jax.vmap(timed.train), (keys,))
    run_s, cpu_s, (ts, _) = run_timed(compiled, (keys,), repeats)
    eval_keys = jax.random.split(jax.random.PRNGKey(base_seed + 1), seeds)
    evaluate = jax.jit(jax.vmap(lambda ts, key: algo.eval_callback(algo, ts, key)))
    _, returns = evaluate(ts, eval_keys)  # [seeds, 128]
    return {
        "env_steps": int(np.asarray(ts.global_step).sum()),
        "grad_steps_per_seed": {
            "critic": np.asarray(ts.critic_ts.step).tolist(),
            "actor": np.asarray(ts.actor_ts.step).tolist(),
        },
        "run_s": run_s,
        "cpu_s": cpu_s,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "final_return": float(np.mean(np.asarray(returns))),
        "final_return_per_seed": np.asarray(returns).mean(axis=1).tolist(),
    }


# ------------------------------------------------------------------------ jaxrl


def measure_jaxrl(
    algo_name: str, seeds: int, total_timesteps: int, repeats: int, base_seed: int, cores: bool
):
    """jaxrl SAC or TD3: init (``lax.map``) + ``vmap(train)`` in one program. With ``cores``
    (parts ``jaxrl_*_cores``), as the jaxrl CLI runs seeds: one CPU device per core and the
    seed axis split over them by ``shard_map`` (each device trains its share; no collectives).
    """
    from jaxrl.distributed import mesh as run_mesh

    if cores and not run_mesh.use_all_cpu_cores():
        raise RuntimeError("could not expose one CPU device per core (XLA_FLAGS set?)")
    import jax
    import numpy as np

    from jaxrl.algorithms import sac, td3
    from jaxrl.envs import make

    module = {"sac": sac, "td3": td3}[algo_name]
    config_fn = {"sac": jaxrl_sac_config, "td3": jaxrl_td3_config}[algo_name]
    env, env_params = make(ENV_ID)
    cfg, hp = config_fn(module, total_timesteps)

    def run(keys, hp):
        states = jax.vmap(lambda key: module.init(cfg, env, key, hp, env_params))(keys)
        return jax.vmap(lambda state: module.train(cfg, env, state, hp, cfg.num_updates))(states)

    keys = jax.random.split(jax.random.key(base_seed), seeds)
    if cores:
        mesh = run_mesh.run_mesh()
        if seeds % mesh.size:
            raise ValueError(f"{seeds} seeds do not split over {mesh.size} CPU devices")
        spec = jax.sharding.PartitionSpec(run_mesh.RUN_AXIS)
        run = jax.shard_map(
            run, mesh=mesh, in_specs=(spec, jax.sharding.PartitionSpec()), out_specs=spec,
            check_vma=False,  # per-device runs; the env's constants need no varying-axis casts
        )  # fmt: skip
    compiled, lower_s, compile_s = compile_timed(run, (keys, hp))
    run_s, cpu_s, (state, metrics) = run_timed(compiled, (keys, hp), repeats)
    returns = np.asarray(metrics["episode/return"])[:, -2_000:]  # last 2e3 env steps
    per_seed = evaluate_jaxrl(module, cfg, env, env_params, state.params, keys)
    return {
        "env_steps": int(np.asarray(state.env_steps).sum()),
        "grad_steps_per_seed": {
            "critic": adam_count(state.critic_opt_state),
            "actor": adam_count(state.actor_opt_state),
        },
        "run_s": run_s,
        "cpu_s": cpu_s,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "final_return": float(np.mean(per_seed)),
        "final_return_per_seed": per_seed,
        "training_return": float(np.nanmean(returns)),
        "config": {
            "cfg": repr(cfg),
            "hp": {f.name: float(getattr(hp, f.name)) for f in dataclasses.fields(hp)},
        },
    }


def evaluate_jaxrl(module, cfg, env, env_params, params, keys) -> list[float]:
    """Mean return of ``EVAL_EPISODES`` greedy episodes (``module.act``) per seed ``[S]``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrl.envs.wrappers import make_vec_env

    venv = make_vec_env(env, EVAL_EPISODES)
    max_steps = int(env_params.max_steps_in_episode)

    def run_one(params, key):
        key, key_reset = jax.random.split(key)
        obs, env_state = venv.reset(key_reset, env_params)

        def body(carry, _):
            env_state, obs, key, total, running = carry
            key, key_step = jax.random.split(key)
            action = module.act(cfg, env, params, obs)
            obs, env_state, step = venv.step(key_step, env_state, action, env_params)
            total = total + jnp.where(running, step.reward, 0.0)
            return (env_state, obs, key, total, running & ~step.done), None

        init = (env_state, obs, key, jnp.zeros(EVAL_EPISODES), jnp.ones(EVAL_EPISODES, bool))
        (*_, total, _), _ = jax.lax.scan(body, init, None, max_steps)
        return total.mean()

    eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    return np.asarray(jax.jit(jax.vmap(run_one))(params, eval_keys)).tolist()


# -------------------------------------------------------------------------- sbx


def sbx_sac(seed: int, learning_starts: int):
    """sbx SAC on a host gymnasium Pendulum-v1 with the numbers of ``REJAX_CONFIGS["sac"]``."""
    import flax.linen as nn
    import gymnasium as gym
    from sbx import SAC

    rejax = REJAX_CONFIGS["sac"]
    return SAC(
        "MlpPolicy",
        gym.make(ENV_ID),
        learning_rate=rejax["learning_rate"],
        buffer_size=rejax["buffer_size"],
        learning_starts=learning_starts,  # uniform random actions until then
        batch_size=rejax["batch_size"],
        tau=1.0 - rejax["polyak"],
        gamma=rejax["gamma"],
        train_freq=1,
        gradient_steps=1,
        policy_delay=1,
        ent_coef="auto",  # learned, initial 1.0
        target_entropy="auto",  # -A
        policy_kwargs=dict(net_arch=[64, 64], activation_fn=nn.swish),
        seed=seed,
        verbose=0,
    )


def measure_sbx(seeds: int, total_timesteps: int, repeats: int, base_seed: int) -> dict:
    """sbx SAC, one seed: a warm-up model compiles sbx's jitted functions, then a fresh
    model's ``learn(total_timesteps)`` is timed ``repeats`` times."""
    import numpy as np
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    if seeds != 1:
        raise ValueError("sbx runs one seed per process")
    fill = REJAX_CONFIGS["sac"]["fill_buffer"]  # learns once num_timesteps > 256
    start = time.perf_counter()
    sbx_sac(base_seed + 1_000, fill).learn(fill + 100)  # compiles update and predict
    warmup_s = time.perf_counter() - start
    run_s, cpu_s, model = [], [], None
    for _ in range(repeats):
        model = sbx_sac(base_seed, fill)
        start, cpu_start = time.perf_counter(), time.process_time()
        model.learn(total_timesteps)
        run_s.append(time.perf_counter() - start)
        cpu_s.append(time.process_time() - cpu_start)
    eval_env = make_vec_env(ENV_ID, n_envs=16, seed=base_seed + 1)
    returns, _ = evaluate_policy(
        model,
        eval_env,
        n_eval_episodes=EVAL_EPISODES,
        deterministic=True,
        return_episode_rewards=True,
    )
    updates = [int(model._n_updates)]  # actor and critics step together (policy_delay 1)
    return {
        "env_steps": int(model.num_timesteps),
        "grad_steps_per_seed": {"critic": updates, "actor": updates},
        "run_s": run_s,
        "cpu_s": cpu_s,
        "lower_s": 0.0,
        "compile_s": warmup_s,  # warm-up: compile plus fill + 100 env steps, 100 updates
        "final_return": float(np.mean(returns)),
        "final_return_per_seed": [float(np.mean(returns))],
    }


# -------------------------------------------------------------------------- raw


def measure_raw(seeds: int, total_timesteps: int, repeats: int, base_seed: int) -> dict:
    """gymnax's own auto-resetting ``step``, uniform random actions, ``[seeds, 1]`` envs."""
    import gymnax
    import jax
    import jax.numpy as jnp

    env, env_params = gymnax.make(ENV_ID)
    shape = (seeds, 1)
    space = env.action_space(env_params)
    nested = lambda fn, in_axes: jax.vmap(jax.vmap(fn, in_axes), in_axes)
    reset = nested(env.reset, (0, None))
    step = nested(env.step, (0, 0, 0, None))
    split = lambda key: jax.random.split(key, seeds).reshape(*shape, -1)

    def run(key):
        key, key_reset = jax.random.split(key)
        obs, state = reset(split(key_reset), env_params)

        def body(carry, _):
            state, obs, key, total = carry
            key, key_act, key_step = jax.random.split(key, 3)
            action = jax.random.uniform(
                key_act, (*shape, *space.shape), minval=space.low, maxval=space.high
            )
            obs, state, reward, *_ = step(split(key_step), state, action, env_params)  # 5 or 6
            return (state, obs, key, total + reward.sum()), None

        carry, _ = jax.lax.scan(body, (state, obs, key, jnp.zeros(())), None, total_timesteps)
        return carry[1], carry[3]

    key = jax.random.PRNGKey(base_seed)
    compiled, lower_s, compile_s = compile_timed(run, (key,))
    run_s, cpu_s, _ = run_timed(compiled, (key,), repeats)
    return {
        "env_steps": seeds * total_timesteps,
        "run_s": run_s,
        "cpu_s": cpu_s,
        "lower_s": lower_s,
        "compile_s": compile_s,
    }


# ----------------------------------------------------------------------- driver


def measure(part: str, **kw) -> dict:
    system, _, algo = part.partition("_")
    if system == "rejax":
        return measure_rejax(algo, **kw)
    if system == "jaxrl":
        algo, _, cores = algo.partition("_")
        return measure_jaxrl(algo, cores=cores == "cores", **kw)
    if system == "sbx":
        return measure_sbx(**kw)
    return measure_raw(**kw)


def seed_counts(part: str, seeds: str) -> list[int]:
    """The seed counts a part runs: sbx only 1."""
    counts = [int(s) for s in seeds.split(",")]
    if part.startswith("sbx"):
        return [1] if 1 in counts else []
    if part.endswith("_cores"):  # the seeds are split over the cores
        return [s for s in counts if s % (os.cpu_count() or 1) == 0 and s > 1]
    return counts


def run_part(args) -> None:
    """``--only PART``: measures each seed count, appends one JSON line per seed count."""
    log = lambda msg: print(f"[{args.only}] {msg}", file=sys.stderr, flush=True)
    for seeds in seed_counts(args.only, args.seeds):
        load_before = os.getloadavg()[0]
        result = measure(
            args.only,
            seeds=seeds,
            total_timesteps=args.total_timesteps,
            repeats=args.repeats,
            base_seed=args.base_seed,
        )
        if result["env_steps"] != seeds * args.total_timesteps:
            raise RuntimeError(f"{args.only} took {result['env_steps']} env steps")
        rates = [result["env_steps"] / s for s in result["run_s"]]
        cpu_rates = [result["env_steps"] / s for s in result["cpu_s"]]
        record = {
            "part": args.only,
            "seeds": seeds,
            "round": args.round,
            "run_id": args.run_id,
            "total_timesteps": args.total_timesteps,
            **result,
            "steps_per_s": rates,
            "steps_per_cpu_s": cpu_rates,
            "load_avg_1min": [load_before, os.getloadavg()[0]],
            "versions": versions(),
            "machine": f"{os.cpu_count()}-core {platform.machine()}, Python "
            f"{platform.python_version()}",
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if args.only != "raw":
            expected = expected_grad_steps(args.only, args.total_timesteps)
            record["expected_grad_steps"] = expected
            record["grad_steps_match"] = all(
                set(result["grad_steps_per_seed"][name]) == {count}
                for name, count in expected.items()
            )
            if not record["grad_steps_match"]:
                log(f"gradient steps {result['grad_steps_per_seed']} differ from {expected}")
        if args.only.startswith("jaxrl"):
            record["jaxrl"] = jaxrl_revision()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
        compile_s = result["lower_s"] + result["compile_s"]
        extra = f", return {result['final_return']:.0f}" if "final_return" in result else ""
        log(
            f"S={seeds}: {', '.join(f'{r / 1e3:.2f}k' for r in rates)} steps/s, "
            f"compile {compile_s:.1f} s{extra}, load {load_before:.1f}"
        )


def run_rounds(args) -> None:
    """Runs each part in its own process, alternating, ``--rounds`` times; then combines."""
    parts = args.parts.split(",")
    python = {part: sys.executable for part in PARTS}
    python |= {p: str(args.rejax_python) for p in PARTS if p.startswith("rejax")}
    python |= {p: str(args.sbx_python) for p in PARTS if p.startswith("sbx")}
    for part in parts:
        if not Path(python[part]).exists():
            raise SystemExit(f"{python[part]} not found: create the peer venvs (see --help)")
    common = [
        f"--seeds={args.seeds}",
        f"--repeats={args.repeats}",
        f"--total-timesteps={args.total_timesteps}",
        f"--base-seed={args.base_seed}",
        f"--out={args.out}",
        f"--run-id={time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
    ]
    for r in range(args.rounds):
        for part in parts:
            print(f"[round {r + 1}/{args.rounds}] {part}", file=sys.stderr, flush=True)
            command = [python[part], __file__, f"--only={part}", f"--round={r}", *common]
            subprocess.run(command, check=True)
    print(combine(args.out))


def fmt_rate(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.2f}k"


def combine(path: Path) -> str:
    """Markdown tables from a JSON-lines file: medians over every run of each part."""
    runs = defaultdict(list)  # (part, seeds) -> records
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            runs[(record["part"], record["seeds"])].append(record)
    counts = sorted({seeds for _, seeds in runs})

    def rates(part, seeds, field="steps_per_s") -> list[float]:
        return [r for rec in runs.get((part, seeds), []) for r in rec.get(field, [])]

    def med(part, seeds, field="steps_per_s") -> float:
        values = rates(part, seeds, field)
        return statistics.median(values) if values else float("nan")

    def median_of(part, seeds, fn, fmt) -> str:
        values = [fn(rec) for rec in runs.get((part, seeds), [])]
        return fmt(statistics.median(values)) if values else "-"

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if math.isfinite(a / b) else "-"

    def grads(part, seeds) -> str:
        recs = runs.get((part, seeds), [])
        out = []
        for name in ("critic", "actor"):
            steps = sorted({g for rec in recs for g in rec["grad_steps_per_seed"][name]})
            out.append(",".join(f"{g:,}" for g in steps) or "-")
        return out[0] if out[0] == out[1] else f"{out[0]} / {out[1]}"

    lines = [
        "| part | seeds | steps/s (median) | best | runs | compile | final return "
        "| grad steps/seed (critic / actor) | load avg |",
        "|" + " --- |" * 9,
    ]
    for part in PARTS:
        for seeds in counts:
            recs = runs.get((part, seeds), [])
            if not recs:
                continue
            values = rates(part, seeds)
            loads = [x for rec in recs for x in rec["load_avg_1min"]]
            compile_s = median_of(
                part, seeds, lambda r: r["lower_s"] + r["compile_s"], "{:.1f} s".format
            )
            final = median_of(
                part, seeds, lambda r: r.get("final_return", math.nan), "{:.0f}".format
            )
            lines.append(
                f"| {part} | {seeds} | {fmt_rate(med(part, seeds))} | {fmt_rate(max(values))} "
                f"| {len(values)} | {compile_s} | {final} "
                f"| {grads(part, seeds) if part != 'raw' else '-'} "
                f"| {min(loads):.1f}-{max(loads):.1f} |"
            )

    lines += [
        "",
        "| algo | seeds | jaxrl / Rejax | per round (median, range) | target "
        "| jaxrl / sbx (1 seed) | target | per CPU-s: jaxrl / Rejax, / sbx "
        "| jaxrl / raw | Rejax / perf_baseline |",
        "|" + " --- |" * 10,
    ]
    for algo in ALGOS:
        rejax = f"rejax_{algo}"
        for jaxrl, seeds in [(f"jaxrl_{algo}{c}", s) for c in ("", "_cores") for s in counts]:
            if not runs.get((jaxrl, seeds)):
                continue
            by_round = defaultdict(dict)
            for part in (jaxrl, rejax):
                for rec in runs.get((part, seeds), []):
                    if rec.get("round") is not None:
                        key = (rec.get("run_id"), rec["round"])
                        by_round[key][part] = statistics.median(rec["steps_per_s"])
            paired = [v[jaxrl] / v[rejax] for v in by_round.values() if len(v) == 2]
            paired_s = (
                f"{statistics.median(paired):.2f} ({min(paired):.2f}-{max(paired):.2f})"
                if paired
                else "-"
            )
            sbx = med("sbx_sac", 1) if algo == "sac" else math.nan
            cpu = lambda part, s=seeds: med(part, s, "steps_per_cpu_s")
            sbx_cpu = cpu("sbx_sac", 1) if algo == "sac" else math.nan
            per_cpu = f"{ratio(cpu(jaxrl), cpu(rejax))}, {ratio(cpu(jaxrl), sbx_cpu)}"
            baseline = PERF_BASELINE.get((rejax, seeds), math.nan)
            lines.append(
                f"| {algo.upper()}{' (cores)' * jaxrl.endswith('_cores')} | {seeds} "
                f"| {ratio(med(jaxrl, seeds), med(rejax, seeds))} "
                f"| {paired_s} | {TARGETS['rejax']} "
                f"| {ratio(med(jaxrl, seeds), sbx)} | {TARGETS['sbx'] if algo == 'sac' else '-'} "
                f"| {per_cpu} | {med(jaxrl, seeds) / med('raw', seeds):.2g} "
                f"| {ratio(med(rejax, seeds), baseline)} |"
            )
    lines.append("")
    lines.append(
        "Steps/s: env steps of all seeds together per second after compilation, medians over "
        "every run. jaxrl / sbx divides jaxrl's S-seed rate by sbx's 1-seed rate (sbx runs "
        "seeds one after another). Per CPU-s: the same ratios of env steps per second of the "
        "process's CPU time (all its threads), which other load on the machine moves less."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", choices=PARTS, help="measure one part in this process")
    parser.add_argument("--combine", type=Path, metavar="JSONL", help="print the tables")
    parser.add_argument("--out", type=Path, default=Path("/tmp/offpolicy_throughput.jsonl"))
    parser.add_argument("--seeds", default="1,8", help="comma-separated vmapped seed counts")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per program")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (driver)")
    parser.add_argument("--parts", default=",".join(PARTS), help="parts the driver runs")
    parser.add_argument("--total-timesteps", type=int, default=TOTAL_TIMESTEPS)
    parser.add_argument("--base-seed", type=int, default=0)
    parser.add_argument("--rejax-python", type=Path, default=REJAX_PYTHON)
    parser.add_argument("--sbx-python", type=Path, default=SBX_PYTHON)
    parser.add_argument("--round", type=int, help=argparse.SUPPRESS)  # set by the driver
    parser.add_argument("--run-id", help=argparse.SUPPRESS)  # set by the driver
    args = parser.parse_args()
    fill = REJAX_CONFIGS["td3"]["fill_buffer"]
    if args.total_timesteps % 2 or args.total_timesteps <= fill + 2:
        parser.error(f"--total-timesteps must be even and above {fill + 2}")
    if args.combine:
        print(combine(args.combine))
    elif args.only:
        run_part(args)
    else:
        run_rounds(args)


if __name__ == "__main__":
    main()
