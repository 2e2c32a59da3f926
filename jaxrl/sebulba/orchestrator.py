"""Orchestration of the Sebulba actor-learner: threads, shutdown, errors, checkpoints.

:func:`run` is the one-call entry point (an algorithm name, a host env id, its ``Config`` and
``HParams``); :func:`train` runs a ready :class:`~jaxrl.sebulba.agents.Agent` on ready host
envs. The learner runs in the calling (main) thread; ``A`` :class:`~jaxrl.sebulba.actor.Actor`
daemon threads step the envs. Shutdown, whatever ends the run:

* **done** (``num_updates`` learner updates): stop event, join every actor (they notice within
  one env step), final checkpoint, return a :class:`Result`;
* **an actor raises**: it records the exception and sets the stop event; the learner sees it
  within ``actor.POLL_S``, every thread is joined, and the actor's exception is re-raised here,
  in the main thread, with a note naming the thread. No checkpoint is written for a failed run:
  the last periodic one stays as it was;
* **Ctrl-C** (SIGINT, noted by a handler while the learner runs in the main thread, or a
  ``KeyboardInterrupt``): the learner stops between updates, so
  its state is consistent; every thread is joined, a final checkpoint of that state is written
  (orbax writes to a temporary directory and renames it, so an interrupted write leaves the
  previous checkpoint intact) and ``KeyboardInterrupt`` is re-raised;
* **an actor does not stop** within ``join_timeout`` seconds: ``RuntimeError`` naming it (it
  is a daemon thread, so the process can still exit).

Trajectories still queued at shutdown are dropped, never trained on.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

import jaxrl
from jaxrl import algorithms
from jaxrl.checkpoint import io as checkpoint_io
from jaxrl.logger import metrics as metric_utils
from jaxrl.logger import writers
from jaxrl.sebulba import agents as agents_lib
from jaxrl.sebulba import host_envs
from jaxrl.sebulba.actor import Actor, Failures, ParamStore, TrajectoryInfo, buffers
from jaxrl.sebulba.agents import Agent, Trajectory
from jaxrl.sebulba.learner import Learner


@dataclasses.dataclass
class Result:
    """What a Sebulba run returns.

    Attributes:
        agent: the :class:`~jaxrl.sebulba.agents.Agent` that ran (for :func:`evaluate`).
        state: the algorithm's ``State`` after ``num_updates`` learner updates.
        num_updates: learner updates done.
        metrics: ``{name: [num_updates]}``: the algorithm's metrics (``train/…``,
            ``episode/…``) and the host's (``sebulba/policy_lag_{mean,max}``,
            ``sebulba/learner_wait_s``, ``sebulba/learner_step_s``, ``sebulba/time_s``).
        ledger: ``(TrajectoryInfo, learner version)`` of every trajectory trained on, in order.
        env_steps: env steps trained on (``num_updates x T x num_envs``).
        actor_env_steps: env steps each actor took (some may still have been queued).
        wall_s: seconds from starting the actors to the end of the last update.
        timings: per actor, seconds spent acting, stepping envs, waiting on the queue.
        summary: ``final_return`` (mean return of the episodes of the last 5% of updates),
            ``steps_per_second`` (trained env steps / wall_s), policy-lag statistics.
    """

    agent: Agent
    state: Any
    num_updates: int
    metrics: dict[str, np.ndarray]
    ledger: list[tuple[TrajectoryInfo, int]]
    env_steps: int
    actor_env_steps: list[int]
    wall_s: float
    timings: list[dict[str, float]]
    summary: dict[str, Any]


def manifest(agent: Agent, env_name: str) -> dict[str, Any]:
    """The checkpoint manifest of a Sebulba run (JSON-normalised)."""
    hparams = {k: np.asarray(v).tolist() for k, v in vars(agent.hp).items()}
    out = {
        "jaxrl_version": jaxrl.__version__,
        "algo": f"sebulba/{agent.algo}",
        "env": env_name,
        "config": dataclasses.asdict(agent.cfg),
        "hparams": hparams,
        "num_runs": 1,
        "num_actors": agent.num_actors,
    }
    return json.loads(json.dumps(writers.to_jsonable(out)))


def _join(threads: Sequence[threading.Thread], timeout: float) -> list[str]:
    """Joins ``threads`` within ``timeout`` seconds in all; returns the names still alive."""
    deadline = time.monotonic() + timeout
    for th in threads:
        if th.ident is not None:  # started
            th.join(max(0.0, deadline - time.monotonic()))
    return [th.name for th in threads if th.is_alive()]


class _CtrlC:
    """Ctrl-C (SIGINT) noted in a flag while the learner loop runs, in the main thread.

    A ``KeyboardInterrupt`` raised by Python's own handler can be lost: when the signal lands
    while a garbage-collection callback runs (JAX registers one), the exception is printed as
    "ignored" and the loop goes on. A flag the loop checks after every update is not lost.
    Outside the main thread (no signal handlers there) nothing changes.
    """

    def __init__(self):
        self.pressed = False
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGINT, self._note)

    def _note(self, signum, frame) -> None:
        self.pressed = True

    def restore(self) -> None:
        if self._installed:
            previous = signal.default_int_handler if self._previous is None else self._previous
            signal.signal(signal.SIGINT, previous)
            self._installed = False


def train(
    agent: Agent,
    envs: Sequence[host_envs.HostEnv],
    *,
    seed: int = 0,
    num_updates: int | None = None,
    queue_size: int = 1,
    max_policy_lag: int | None = None,
    run_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    join_timeout: float = 10.0,
    actor_device: jax.Device | None = None,
    learner_device: jax.Device | None = None,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
    log_every: int = 0,
    state: Any = None,
) -> Result:
    """Runs ``agent`` with one actor thread per host env batch in ``envs`` (see module docs).

    Args:
        agent: from :func:`jaxrl.sebulba.agents.make`, with ``len(envs)`` actors.
        envs: ``A`` host envs of ``agent.envs_per_actor`` envs each; all are closed when
            ``train`` returns or raises.
        seed: the learner's initial state comes from ``key(seed)``, actor ``i``'s key from
            ``fold_in(key(seed), i + 1)``.
        num_updates: learner updates (default ``agent.cfg.num_updates``, the in-JAX budget).
        queue_size: capacity of each actor's queue (trajectories).
        max_policy_lag: ``None`` lets actors run free; ``k`` makes trajectory ``s`` of every
            actor wait for parameters of version ``s - k`` (``0``: on-policy, as in-JAX).
        run_dir: where checkpoints go (``run_dir/checkpoints/<updates>``); none if ``None``.
        checkpoint_every: learner updates between checkpoints (0: only the final one).
        resume: continue from the newest checkpoint in ``run_dir``.
        join_timeout: seconds the actors get to stop before ``RuntimeError``.
        actor_device, learner_device: where acting and learning run (default device).
        log_fn: called as ``log_fn(update, metrics)`` every ``log_every`` updates.
        state: an initial ``State`` (default ``agent.init(key(seed))``).

    Raises:
        KeyboardInterrupt: after a clean shutdown and a final checkpoint.
        Exception: the first exception of an actor thread, after a clean shutdown.
        RuntimeError: an actor thread that did not stop within ``join_timeout``.
    """
    num_updates = agent.cfg.num_updates if num_updates is None else int(num_updates)
    try:
        learner, actors = _setup(
            agent, envs, seed, queue_size, max_policy_lag, run_dir, resume, actor_device,
            learner_device, state,
        )  # fmt: skip
    except BaseException:
        for env in envs:
            env.close()
        raise
    meta = manifest(agent, envs[0].name)

    def save() -> None:
        if run_dir is not None:
            checkpoint_io.save(run_dir, learner.version, learner.state, meta)

    failures = actors[0].failures
    interrupted = False
    t0 = time.perf_counter()
    ctrl_c = _CtrlC()
    try:
        for a in actors:
            a.start()
        while learner.version < num_updates and not ctrl_c.pressed and learner.step():
            done = learner.version
            if log_fn is not None and log_every and done % log_every == 0:
                log_fn(done, _last(learner))
            if checkpoint_every and done % checkpoint_every == 0 and done < num_updates:
                save()
        jax.block_until_ready(learner.state)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as err:  # the learner's own error: stop the actors, then re-raise
        failures.record("learner (main thread)", err)
    finally:
        ctrl_c.restore()
        interrupted = interrupted or ctrl_c.pressed
        wall_s = time.perf_counter() - t0
        learner.stop.set()
        alive = _join(actors, join_timeout)
        for a in actors:
            if a.ident is None:  # never started: its env is still open
                a.env.close()
    if failures.error is not None:
        err = failures.error
        err.add_note(f"raised in {failures.where}; every Sebulba thread was stopped")
        raise err
    if interrupted:
        save()
        raise KeyboardInterrupt
    if alive:
        raise RuntimeError(f"Sebulba actor threads did not stop within {join_timeout} s: {alive}")
    save()
    return _result(agent, learner, actors, wall_s)


def _setup(
    agent: Agent,
    envs: Sequence[host_envs.HostEnv],
    seed: int,
    queue_size: int,
    max_policy_lag: int | None,
    run_dir: str | Path | None,
    resume: bool,
    actor_device: jax.Device | None,
    learner_device: jax.Device | None,
    state: Any,
) -> tuple[Learner, list[Actor]]:
    """Checks the envs; builds the learner on the initial (or restored) state and the actors
    (not started)."""
    if len(envs) != agent.num_actors:
        raise ValueError(f"agent has {agent.num_actors} actors but {len(envs)} envs were given")
    for env in envs:
        if env.num_envs != agent.envs_per_actor:
            raise ValueError(
                f"each actor needs {agent.envs_per_actor} envs, {env.name} has {env.num_envs}"
            )
    root = jax.random.key(seed)
    version = 0
    if state is None:
        state = jax.jit(agent.init)(root)
    if resume:
        if run_dir is None:
            raise ValueError("resume needs a run_dir")
        state, version, _ = checkpoint_io.restore(run_dir, state, manifest(agent, envs[0].name))
    if learner_device is not None:
        state = jax.device_put(state, learner_device)
    stop, failures = threading.Event(), Failures()
    store = ParamStore(agent.actor_params(state), version)
    queues = [queue.Queue(maxsize=queue_size) for _ in envs]
    act = jax.jit(agent.act)
    _compile_act(agent, act, store.latest()[0], root, actor_device)
    actors = [
        Actor(
            i, env, act, store, queues[i], stop, failures, agent.rollout_len,
            jax.random.fold_in(root, i + 1), agent.num_actors, max_policy_lag, actor_device,
        )
        for i, env in enumerate(envs)
    ]  # fmt: skip
    start_steps = version * agent.rollout_len * agent.envs_per_actor
    for a in actors:
        a.env_steps = start_steps  # so exploration schedules continue after a resume
    learner = Learner(agent, state, queues, store, stop, version, learner_device)
    _compile_learn(agent, learner)
    return learner, actors


def _compile_act(agent: Agent, act, params, key, device) -> None:
    """Compiles ``act`` once before the actors start, so their timers measure acting only."""
    space = agent.spec.observation_space()
    obs = np.zeros((agent.envs_per_actor, *space.shape), space.dtype)
    if device is not None:
        params, key = jax.device_put((params, key), device)
    jax.block_until_ready(act(params, obs, key, 0, 0))


def _compile_learn(agent: Agent, learner: Learner) -> None:
    """Compiles the learner's step on a batch of zeros (result discarded) before the actors
    start, so ``wall_s`` and the actors' timers exclude compilation."""
    space = agent.spec.observation_space()
    obs = np.zeros((agent.cfg.num_envs, *space.shape), space.dtype)
    zeros = {
        k: np.zeros_like(v)
        for k, v in buffers(agent.rollout_len, obs, agent.spec.act_space).items()
    }
    jax.block_until_ready(
        learner.learn(learner.state, jax.device_put(Trajectory(**zeros), learner.device))
    )


def _last(learner: Learner) -> dict[str, float]:
    """The newest update's metrics for ``log_fn``, with ``episode/return`` forward-filled:
    the mean return of the newest update in which episodes ended (NaN before the first),
    as the in-JAX runner prints it, so long episodes do not print as missing. Scalars only."""
    newest = jax.device_get(learner.metrics[-1])
    metrics = {k: float(v) for k, v in newest.items() if np.ndim(v) == 0}
    if not np.isfinite(metrics.get("episode/return", 0.0)):
        for earlier in reversed(learner.metrics[:-1]):
            ret = float(jax.device_get(earlier["episode/return"]))
            if np.isfinite(ret):
                metrics["episode/return"] = ret
                break
    return {**metrics, **learner.host_metrics[-1]}


def _result(agent: Agent, learner: Learner, actors: list[Actor], wall_s: float) -> Result:
    history = learner.history()
    updates = len(learner.metrics)
    env_steps = updates * agent.steps_per_update
    summary: dict[str, Any] = {
        "steps_per_second": env_steps / wall_s if wall_s > 0 else float("nan"),
    }
    if "episode/return" in history:
        final = metric_utils.final_return(
            history["episode/return"][None], history["episode/count"][None]
        )
        summary["final_return"] = float(final[0])
    if updates:
        summary["policy_lag_mean"] = float(np.mean(history["sebulba/policy_lag_mean"]))
        summary["policy_lag_max"] = int(np.max(history["sebulba/policy_lag_max"]))
    return Result(
        agent=agent,
        state=learner.state,
        num_updates=learner.version,
        metrics=history,
        ledger=learner.ledger,
        env_steps=env_steps,
        actor_env_steps=[a.env_steps for a in actors],
        wall_s=wall_s,
        timings=[dict(a.timings) for a in actors],
        summary=summary,
    )


def make_envs(env_id: str, num_actors: int, envs_per_actor: int, seed: int = 0, **kwargs):
    """``num_actors`` host envs of ``envs_per_actor`` envs each (none left open on failure).

    Env ``j`` of actor ``i`` is seeded ``seed + i * envs_per_actor + j``.
    """
    envs: list[host_envs.HostEnv] = []
    try:
        for i in range(num_actors):
            envs.append(host_envs.make(env_id, envs_per_actor, seed + i * envs_per_actor, **kwargs))
    except BaseException:
        for env in envs:
            env.close()
        raise
    return envs


def run(
    algo: str,
    env_id: str,
    cfg: Any,
    hp: Any,
    *,
    num_actors: int = 1,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    agent_kwargs: dict[str, Any] | None = None,
    **train_kwargs: Any,
) -> Result:
    """Trains ``algo`` (``"ppo"``, ``"impala"``, ``"dqn"``) on host envs ``env_id`` with Sebulba.

    ``cfg.num_envs`` host envs are split evenly over ``num_actors`` actor threads. Example::

        from jaxrl.algorithms import ppo
        from jaxrl import sebulba
        result = sebulba.run("ppo", "gymnasium/CartPole-v1", ppo.Config(), ppo.HParams.make(),
                             num_actors=2)
        print(result.summary["final_return"])
        returns = sebulba.evaluate(result.agent, result.state.params, "gymnasium/CartPole-v1")

    Args:
        env_kwargs: passed to :func:`jaxrl.sebulba.host_envs.make`.
        agent_kwargs: passed to the agent's maker (e.g. ``exploration="apex"`` for DQN).
        **train_kwargs: passed to :func:`train` (``num_updates``, ``run_dir``, ...).
    """
    agents_lib.check(algo, cfg, num_actors)
    algorithms.get(algo).check(cfg, hp)
    envs = make_envs(env_id, num_actors, cfg.num_envs // num_actors, seed, **(env_kwargs or {}))
    try:
        agent = agents_lib.make(algo, cfg, hp, envs[0].spec, num_actors, **(agent_kwargs or {}))
    except BaseException:
        for env in envs:
            env.close()
        raise
    return train(agent, envs, seed=seed, **train_kwargs)


def evaluate(
    agent: Agent,
    params: Any,
    env_id: str,
    num_episodes: int = 16,
    seed: int = 10_000,
    deterministic: bool = True,
    max_steps: int = 100_000,
) -> np.ndarray:
    """Returns ``[num_episodes]`` of the first episode of ``num_episodes`` fresh host envs.

    The policy is :func:`jaxrl.runner.evaluate.policy_fn` of the agent's algorithm (the
    distribution's mode, or DQN's greedy action) with ``params`` (``State.params``).
    """
    from jaxrl.runner import evaluate as evaluate_lib

    policy = jax.jit(
        evaluate_lib.policy_fn(agent.module, agent.cfg, agent.spec, deterministic, agent.hp)
    )
    env = host_envs.make(env_id, num_episodes, seed)
    try:
        obs, key = env.reset(), jax.random.key(seed)
        returns = np.zeros(num_episodes, np.float64)
        finished = np.zeros(num_episodes, bool)
        for _ in range(max_steps):
            key, key_act = jax.random.split(key)
            _, action = policy(params, (), obs, key_act)
            step = env.step(np.asarray(action))
            returns += np.where(finished, 0.0, step.reward)
            finished |= step.terminated | step.truncated
            if finished.all():
                return returns
            obs = step.obs
    finally:
        env.close()
    return np.where(finished, returns, np.nan)
