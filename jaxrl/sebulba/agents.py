"""The algorithms' acting and learning halves, composed from their public pieces for Sebulba.

An in-JAX ``update`` rolls out and learns in one traced function. Sebulba splits the two:
actor threads step host envs with :attr:`Agent.act`, and the learner turns each batch of
host trajectories into the algorithm's own batch and calls the algorithm's own loss and
optimiser (:attr:`Agent.learn`). Nothing here is a new loss or a copy of a learning loop:
each ``learn_*`` calls the public learning half of that algorithm's ``update``
(``ppo.learn``, ``impala.learn``, ``dqn.store_and_learn``) with the rollout replaced by a
:class:`Trajectory` from the host; ``tests/sebulba/test_sebulba_agents.py`` checks that it
gives the algorithm's ``update`` bit for bit on the same rollout.

* **PPO** (:func:`learn_ppo`): the critic's values of the trajectory under the learner's
  parameters (one batched pass, as ``rollout.collect`` does), then ``ppo.learn``:
  ``ppo.make_batch`` (truncation-aware GAE), ``num_epochs x num_minibatches`` Adam steps on
  ``ppo.loss``. The clipped ratio uses the *behaviour* log-probabilities the actor recorded,
  so a policy lag is corrected as far as PPO's clipping does.
* **IMPALA** (:func:`learn_impala`): ``impala.learn``, one step on ``impala.loss`` (V-trace)
  of the time-major batch; the behaviour log-probabilities carry the real lag between actor
  and learner, so the in-JAX simulated lag (``Config.lag``) must be 0.
* **DQN** (:func:`learn_dqn`): ``dqn.store_and_learn``: ``dqn.store`` of the trajectory's
  transitions, then ``dqn.learn`` (``gradient_steps`` replayed minibatches). Replay is
  intended here: every transition may be sampled many times; the trajectory itself is
  stored once.

A learner batch is one *round*: one trajectory from each of the ``A`` actors, concatenated on
the env axis in actor order, so column ``j`` is always the same host env (the DQN replay's
per-env streams need that) and ``cfg.num_envs = A x envs_per_actor`` keeps the in-JAX
meaning of every ``Config`` field (steps per update, annealing horizon).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl.algorithms import apex, dqn, impala, ppo
from jaxrl.algorithms import rollout as rollout_lib
from jaxrl.errors import ConfigError
from jaxrl.sebulba.host_envs import EnvSpec
from jaxrl.types import Metrics

ALGOS = ("ppo", "impala", "dqn")
EXPLORATIONS = ("schedule", "apex")


class Trajectory(struct.PyTreeNode):
    """Time-major host trajectory; every leaf ``[T, N, ...]``.

    numpy arrays on the host, device arrays on the learner. ``log_prob`` is the behaviour
    policy's ``log μ(a_t | x_t)`` (0 for DQN); ``final_obs`` the observation step ``t``
    reached, before auto-reset; ``episode_return`` / ``episode_length`` the finished
    episode's where it ended, 0 elsewhere.
    """

    obs: Any
    action: Any
    log_prob: Any
    reward: Any
    terminated: Any
    truncated: Any
    final_obs: Any
    episode_return: Any
    episode_length: Any


def concat_envs(trajectories: list[Trajectory]) -> Trajectory:
    """Concatenates ``[T, N_i, ...]`` host trajectories on the env axis: ``[T, sum N_i, ...]``."""
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *trajectories)


@dataclasses.dataclass(frozen=True)
class Agent:
    """One algorithm's Sebulba halves. Every callable is pure (the caller jits it).

    Attributes:
        algo: ``"ppo"``, ``"impala"`` or ``"dqn"``.
        module: the algorithm module (``jaxrl.algorithms.<algo>``).
        cfg, hp: its ``Config`` (``num_envs`` over all actors) and ``HParams``.
        spec: the host env's spaces.
        num_actors: ``A``; each actor steps ``cfg.num_envs // A`` envs.
        rollout_len: ``T`` of every trajectory (``cfg.rollout_len``; DQN: ``cfg.train_freq``).
        init: ``key -> State``, the algorithm's ``State`` without env fields (``None``).
        actor_params: ``State -> params`` the actors act with.
        act: ``(params, obs [N, ...], key, env_steps, actor_id) -> (key, action [N, ...],
            log_prob [N])``; ``env_steps`` is the actor's estimate of all actors' env steps.
        learn: ``(State, Trajectory [T, A*N, ...]) -> (State, Metrics)``.
    """

    algo: str
    module: ModuleType
    cfg: Any
    hp: Any
    spec: EnvSpec
    num_actors: int
    rollout_len: int
    init: Callable[[jax.Array], Any]
    actor_params: Callable[[Any], Any]
    act: Callable[..., tuple[jax.Array, jax.Array, jax.Array]]
    learn: Callable[[Any, Trajectory], tuple[Any, Metrics]]

    @property
    def envs_per_actor(self) -> int:
        return self.cfg.num_envs // self.num_actors

    @property
    def steps_per_update(self) -> int:
        """Env steps in one learner batch (all actors)."""
        return self.rollout_len * self.cfg.num_envs


def _dummy_obs(cfg: Any, spec: EnvSpec) -> jax.Array:
    space = spec.observation_space()
    return jnp.zeros((cfg.num_envs, *space.shape), space.dtype)


def _to_rollout(net, params, traj: Trajectory) -> rollout_lib.Rollout:
    """The in-JAX :class:`~jaxrl.algorithms.rollout.Rollout` of a host trajectory, with the
    critic's values under ``params`` (one batched pass, as ``rollout.collect`` computes them)."""
    return rollout_lib.Rollout(
        obs=traj.obs,
        action=traj.action,
        log_prob=traj.log_prob,
        value=net.apply(params, traj.obs, method="value"),
        reward=traj.reward,
        terminated=traj.terminated,
        truncated=traj.truncated,
        final_obs=traj.final_obs,
        info={"episode_return": traj.episode_return, "episode_length": traj.episode_length},
    )


def _policy_act(net):
    """Sampling from an actor-critic's policy head, with the behaviour log-probability."""

    def act(params, obs, key, env_steps, actor_id):
        del env_steps, actor_id
        key, key_act = jax.random.split(key)
        dist = net.apply(params, obs, method="policy")
        action = dist.sample(seed=key_act)
        return key, action, dist.log_prob(action)

    return act


# ------------------------------------------------------------------------------------ PPO


def init_ppo(cfg: ppo.Config, spec: EnvSpec, key: jax.Array, hp: ppo.HParams) -> ppo.State:
    """``ppo.init`` without envs: the same network (same key split) and optimiser state."""
    key, key_net, _ = jax.random.split(key, 3)
    params = ppo.init_params(cfg, spec, key_net, _dummy_obs(cfg, spec), hp.ortho_init_on)
    return ppo.State(
        params=params,
        opt_state=ppo.optimizer(cfg, hp, hp.learning_rate).init(params),
        env_state=None,
        obs=None,
        env_params=None,
        key=key,
        update_count=jnp.zeros((), jnp.int32),
        kl_beta=jnp.asarray(hp.kl_beta, jnp.float32),
    )


def learn_ppo(
    cfg: ppo.Config, spec: EnvSpec, state: ppo.State, traj: Trajectory, hp: ppo.HParams
) -> tuple[ppo.State, Metrics]:
    """:func:`jaxrl.algorithms.ppo.learn` (the learning half of ``ppo.update``: GAE, then
    ``num_epochs`` x ``num_minibatches`` Adam steps) on a host trajectory ``[T, N]``, with
    the old values of the critic under ``state.params``."""
    rollout = _to_rollout(ppo.network(cfg, spec), state.params, traj)
    return ppo.learn(cfg, spec, state, rollout, hp)


def _check_ppo_like(cfg: Any) -> None:
    if cfg.normalize_obs or cfg.scale_reward:
        raise ConfigError(
            "Sebulba host envs have no in-JAX normalisation wrappers: set normalize_obs=False "
            "and scale_reward=False"
        )


def make_ppo(cfg: ppo.Config, hp: ppo.HParams, spec: EnvSpec, num_actors: int) -> Agent:
    """PPO's Sebulba halves (see :func:`learn_ppo`)."""
    _check_ppo_like(cfg)
    return Agent(
        algo="ppo",
        module=ppo,
        cfg=cfg,
        hp=hp,
        spec=spec,
        num_actors=num_actors,
        rollout_len=cfg.rollout_len,
        init=lambda key: init_ppo(cfg, spec, key, hp),
        actor_params=lambda state: state.params,
        act=_policy_act(ppo.network(cfg, spec)),
        learn=lambda state, traj: learn_ppo(cfg, spec, state, traj, hp),
    )


# --------------------------------------------------------------------------------- IMPALA


def init_impala(
    cfg: impala.Config, spec: EnvSpec, key: jax.Array, hp: impala.HParams
) -> impala.State:
    """``impala.init`` without envs: the same network (same key split) and optimiser state."""
    key, key_net, _ = jax.random.split(key, 3)
    params = impala.network(cfg, spec).init(key_net, _dummy_obs(cfg, spec))
    stale = jax.tree.map(lambda x: jnp.broadcast_to(x, (cfg.lag + 1, *x.shape)), params)
    return impala.State(
        params=params,
        stale_params=stale,
        opt_state=impala.optimizer(cfg, hp, hp.learning_rate).init(params),
        env_state=None,
        obs=None,
        env_params=None,
        key=key,
        update_count=jnp.zeros((), jnp.int32),
    )


def learn_impala(
    cfg: impala.Config, spec: EnvSpec, state: impala.State, traj: Trajectory, hp: impala.HParams
) -> tuple[impala.State, Metrics]:
    """:func:`jaxrl.algorithms.impala.learn` (the learning half of ``impala.update``, ``lag =
    0``) on a host trajectory ``[T, N]``: one optimiser step, V-trace with the recorded
    behaviour log-probabilities, which carry the real actor-learner lag."""
    rollout = _to_rollout(impala.network(cfg, spec), state.params, traj)
    return impala.learn(cfg, spec, state, rollout, hp)


def _check_no_simulated_lag(cfg: impala.Config) -> None:
    if cfg.lag != 0:
        raise ConfigError(
            f"impala Config.lag = {cfg.lag} simulates a policy lag in JAX; under Sebulba the "
            "lag is the real one between actors and learner: set lag=0"
        )


def make_impala(cfg: impala.Config, hp: impala.HParams, spec: EnvSpec, num_actors: int) -> Agent:
    """IMPALA's Sebulba halves (see :func:`learn_impala`)."""
    _check_ppo_like(cfg)
    _check_no_simulated_lag(cfg)
    return Agent(
        algo="impala",
        module=impala,
        cfg=cfg,
        hp=hp,
        spec=spec,
        num_actors=num_actors,
        rollout_len=cfg.rollout_len,
        init=lambda key: init_impala(cfg, spec, key, hp),
        actor_params=lambda state: state.params,
        act=_policy_act(impala.network(cfg, spec)),
        learn=lambda state, traj: learn_impala(cfg, spec, state, traj, hp),
    )


# ------------------------------------------------------------------------------------ DQN


def init_dqn(cfg: dqn.Config, spec: EnvSpec, key: jax.Array, hp: dqn.HParams) -> dqn.State:
    """``dqn.init`` without envs: the same networks (same key split), Adam and empty replay."""
    key, key_net, key_noise, _ = jax.random.split(key, 4)
    obs = _dummy_obs(cfg, spec)
    online = dqn.network(cfg, spec).init({"params": key_net, "noise": key_noise}, obs)
    zero_f, zero_i = jnp.zeros(()), jnp.zeros((), jnp.int32)
    item = dqn.Transition(obs[0], zero_i, zero_f, zero_f, zero_f, obs[0])
    return dqn.State(
        params=dqn.Params(online, online),
        opt_state=dqn.optimizer(hp).init(online),
        buffer=dqn.buffer(cfg).init(item),
        env_state=None,
        obs=None,
        env_params=None,
        key=key,
        env_steps=zero_i,
        grad_steps=zero_i,
        update_count=zero_i,
    )


def transitions(traj: Trajectory) -> dqn.Transition:
    """The replay items ``[T, N, ...]`` of a host trajectory (``next_obs`` pre-reset)."""
    done = jnp.logical_or(traj.terminated, traj.truncated)
    return dqn.Transition(
        obs=traj.obs,
        action=traj.action.astype(jnp.int32),
        reward=traj.reward,
        terminated=traj.terminated.astype(jnp.float32),
        done=done.astype(jnp.float32),
        next_obs=traj.final_obs,
    )


def learn_dqn(
    cfg: dqn.Config, spec: EnvSpec, state: dqn.State, traj: Trajectory, hp: dqn.HParams
) -> tuple[dqn.State, Metrics]:
    """The learning half of ``dqn.update`` on a host trajectory ``[train_freq, N]``.

    Counts its env steps, then :func:`jaxrl.algorithms.dqn.store_and_learn` (stores it
    once, replayed minibatches).
    """
    eps = dqn.epsilon(cfg, hp, state.env_steps)
    items = transitions(traj)
    info = {
        "done": items.done,
        "episode_return": traj.episode_return,
        "episode_length": traj.episode_length,
    }
    state = state.replace(env_steps=state.env_steps + items.reward.size)
    state, metrics = dqn.store_and_learn(cfg, spec, state, items, info, hp)
    return state, metrics | {"train/epsilon": eps}


def make_dqn(
    cfg: dqn.Config,
    hp: dqn.HParams,
    spec: EnvSpec,
    num_actors: int,
    exploration: str = "schedule",
) -> Agent:
    """The DQN family's Sebulba halves (see :func:`learn_dqn`).

    Args:
        exploration: ``"schedule"``: every actor follows ``dqn.epsilon`` of the (estimated)
            env steps of all actors; ``"apex"``: env column ``i`` of ``M = cfg.num_envs``
            explores at Ape-X's fixed ``0.4 ** (1 + 7 i / (M - 1))`` (``apex.epsilons``)
            after ``learning_starts`` uniformly random steps.
    """
    if exploration not in EXPLORATIONS:
        raise ConfigError(f"exploration must be one of {EXPLORATIONS}, got {exploration!r}")
    dqn.num_actions(spec)  # a clear error for continuous actions
    n = cfg.num_envs // num_actors
    apex_eps = apex.epsilons(cfg.num_envs, apex.HParams.make())

    def act(params, obs, key, env_steps, actor_id):
        key, key_act = jax.random.split(key)
        if exploration == "apex":
            eps = jax.lax.dynamic_slice(apex_eps, (actor_id * n,), (n,))
            eps = jnp.where(env_steps < cfg.learning_starts, 1.0, eps)
        else:
            eps = dqn.epsilon(cfg, hp, env_steps)
        action = dqn.explore(cfg, spec, params, obs, eps, key_act)
        return key, action, jnp.zeros(obs.shape[:1])

    return Agent(
        algo="dqn",
        module=dqn,
        cfg=cfg,
        hp=hp,
        spec=spec,
        num_actors=num_actors,
        rollout_len=cfg.train_freq,
        init=lambda key: init_dqn(cfg, spec, key, hp),
        actor_params=lambda state: state.params.online,
        act=act,
        learn=lambda state, traj: learn_dqn(cfg, spec, state, traj, hp),
    )


MAKERS = {"ppo": make_ppo, "impala": make_impala, "dqn": make_dqn}


def make(algo: str, cfg: Any, hp: Any, spec: EnvSpec, num_actors: int = 1, **kwargs) -> Agent:
    """The :class:`Agent` of ``algo`` (one of :data:`ALGOS`) for ``num_actors`` actors.

    Raises:
        ConfigError: an unknown algorithm, ``cfg.num_envs`` not divisible by ``num_actors``,
            or a setting Sebulba cannot honour (in-JAX normalisation, IMPALA's simulated lag).
    """
    check(algo, cfg, num_actors)
    return MAKERS[algo](cfg, hp, spec, num_actors, **kwargs)


def check(algo: str, cfg: Any, num_actors: int) -> None:
    """Raises ``ConfigError`` for an algorithm Sebulba does not run, envs that do not split
    evenly over ``num_actors``, a data-parallel ``Config``, in-JAX normalisation or IMPALA's
    simulated lag (before any env is made)."""
    if algo not in MAKERS:
        raise ConfigError(f"Sebulba runs one of {ALGOS}, got {algo!r}")
    if algo in ("ppo", "impala"):
        _check_ppo_like(cfg)
    if algo == "impala":
        _check_no_simulated_lag(cfg)
    if not isinstance(num_actors, int) or num_actors < 1 or cfg.num_envs % num_actors:
        raise ConfigError(
            f"num_envs = {cfg.num_envs} must split evenly over num_actors = {num_actors}"
        )
    if getattr(cfg, "data_shards", 1) != 1:
        raise ConfigError("the Sebulba learner runs on one device: set data_shards=1")
