"""Ape-X DQN (Horgan et al. 2018, https://arxiv.org/abs/1803.00933): many actors, one central
prioritised replay and one learner, all in one program.

Ape-X is the DQN core of :mod:`jaxrl.algorithms.dqn` plus actors; nothing of the core is
copied. One :func:`update`:

1. **Act.** ``num_actors`` actors each step their own env ``train_freq`` times with
   :func:`jaxrl.algorithms.dqn.collect`, epsilon-greedily with actor ``i``'s own
   ``epsilon_i = eps_base ** (1 + eps_alpha * i / (N - 1))`` (0.4 and 7 in the paper), using
   a *stale* copy of the learner's networks (``State.actor_params``).
2. **Form n-step transitions.** Each actor prepends the last ``n_step - 1`` steps it kept
   from its previous chunk (``Actors.tail``) and cuts ``train_freq`` windows of ``n_step``
   consecutive steps, one starting at every step (cut at episode ends by the loss, as in DQN).
3. **Initial priorities.** The actors rate each window with the core's loss under *their*
   parameters: ``p = |n-step double-Q TD error|`` (:func:`actor_priorities`), then add the
   windows to the central prioritised replay with those priorities (:func:`add`).
4. **Learn.** ``gradient_steps`` learner steps, each: a prioritised batch, importance
   weights ``(N P(i))^-beta`` normalised by the batch max (fixed ``beta = hp.per_beta``, as
   in the paper), one :func:`jaxrl.algorithms.dqn.gradient_step` (Adam, periodic target
   update), then the sampled items' priorities become the new ``|TD|`` of that step
   (computed in the loss's forward pass, i.e. before the parameter update, as Dopamine and
   Acme do). The learner starts once ``learning_starts`` env steps are taken.
5. **Sync.** Every ``actor_sync_period`` updates the actors copy the learner's online and
   target networks.

The replay holds compact n-step items (:class:`Experience`: first observation, action,
``n`` rewards / done / terminated flags, the bootstrap observation), so memory is that of a
1-step buffer; :func:`to_window` expands them into the core's ``[B, n]`` windows, so the
n-step return is computed by the core with the current ``hp.discount``. The n-step return,
double Q and the dueling head are the paper's defaults (``n_step=3``, ``double``,
``dueling``); the optimiser is the core's Adam, not the paper's centred RMSProp.

**The actor axis.** Every leaf of ``State.actors`` has the actor axis first
(``[num_actors, ...]``); nothing else does. The actors' parameters have no actor axis: one
copy serves all actors (replicated when sharded). ``docs/apex.md`` shows how to shard the
actor axis across devices with ``jax.sharding`` without changing this file.

Before the first update, :func:`init` steps every actor ``n_step - 1`` times so that the
first chunk already forms complete windows; ``State.env_steps`` counts those steps too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl.algorithms import base, dqn
from jaxrl.envs.base import Env
from jaxrl.losses import q as qloss
from jaxrl.replay import buffers
from jaxrl.types import Metrics
from jaxrl.utils import tree

# Added to |TD| so that an item with zero error can still be sampled.
PRIORITY_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings: sizes, counts and the switches of the core."""

    total_timesteps: int = 100_000  # env steps per run, over all actors
    num_actors: int = 32
    train_freq: int = 1  # env steps per actor per update
    gradient_steps: int = 1  # learner steps per update
    buffer_size: int = 50_000  # n-step transitions in the central replay
    batch_size: int = 64
    learning_starts: int = 1_000  # env steps (all actors) before the learner starts
    target_update_period: int = 500  # learner steps between target-network copies
    actor_sync_period: int = 10  # updates between copies of the learner's nets to the actors
    hidden: tuple[int, ...] = (64, 64)
    torso: str = "mlp"
    activation: str = "relu"
    loss: str = "huber"
    n_step: int = 3
    double: bool = True
    dueling: bool = True
    priority_exponent: float = 0.6  # alpha of proportional prioritisation

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(
            self,
            (
                "total_timesteps", "num_actors", "train_freq", "gradient_steps", "buffer_size",
                "batch_size", "target_update_period", "actor_sync_period", "n_step",
            ),
        )  # fmt: skip
        base.check_non_negative_ints(self, ("learning_starts",))
        if not 0 <= self.priority_exponent <= 1:
            raise base.ConfigError(
                f"priority_exponent must be in [0, 1], got {self.priority_exponent}"
            )
        base.check_batch_fits(self)
        if self.steps_per_update > self.buffer_size:
            raise base.ConfigError(
                f"one update adds num_actors * train_freq = {self.steps_per_update} "
                f"transitions, more than buffer_size = {self.buffer_size}"
            )
        base.check_budget(self, "num_actors * train_freq")
        core_config(self)  # the core's own checks (torso, activation, loss names)

    @property
    def steps_per_update(self) -> int:
        return self.num_actors * self.train_freq

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


HPARAM_DEFAULTS = dict(
    learning_rate=1e-3,
    discount=0.99,
    tau=1.0,  # target update: 1 copies (the paper), small values average
    eps_base=0.4,  # epsilon_i = eps_base ** (1 + eps_alpha * i / (N - 1))
    eps_alpha=7.0,
    per_beta=0.4,  # importance-weight exponent (fixed, as in the paper)
    max_grad_norm=40.0,
    adam_eps=1e-8,
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    discount=(0.0, 1.0),
    tau=(0.0, 1.0),
    eps_base=(0.0, 1.0),
    eps_alpha=(0.0, 1e3),
    per_beta=(0.0, 1.0),
    max_grad_norm=(1e-6, 1e9),
    adam_eps=(1e-12, 1.0),  # > 0: 0 gives 0/0 for a zero gradient
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, each a float32 array (scalar, or ``[R]`` for a sweep)."""

    learning_rate: jax.Array
    discount: jax.Array
    tau: jax.Array
    eps_base: jax.Array
    eps_alpha: jax.Array
    per_beta: jax.Array
    max_grad_norm: jax.Array
    adam_eps: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """Raises ConfigError for hyperparameters outside their ranges (before compiling)."""
    del cfg
    base.check_ranges(hp, HPARAM_RANGES)


class Experience(struct.PyTreeNode):
    """One n-step transition as the central replay stores it (batched ``[B, ...]``).

    ``reward``, ``done`` and ``terminated`` are the window's ``[n]`` steps; ``next_obs`` is
    the observation after the window's last step, or after its first episode end if sooner.
    """

    obs: jax.Array  # [*obs_shape]
    action: jax.Array  # [] int32
    reward: jax.Array  # [n]
    done: jax.Array  # [n] float 0/1
    terminated: jax.Array  # [n] float 0/1
    next_obs: jax.Array  # [*obs_shape]


class Actors(struct.PyTreeNode):
    """What the actors carry: every leaf has the actor axis first, ``[num_actors, ...]``."""

    env_state: object  # [N, ...]
    obs: jax.Array  # [N, *obs_shape]
    tail: dqn.Transition  # [N, n_step - 1, ...]: the last steps, first of the next windows


class State(struct.PyTreeNode):
    """Everything one run carries between updates (arrays only)."""

    params: dqn.Params  # the learner's online and target networks
    actor_params: dqn.Params  # the actors' stale copy (no actor axis: one copy for all)
    opt_state: optax.OptState
    replay: object  # the central prioritised flat buffer of Experience
    actors: Actors
    env_params: object
    key: jax.Array
    env_steps: jax.Array  # int32: env steps taken so far (all actors)
    grad_steps: jax.Array  # int32: learner steps taken so far
    update_count: jax.Array  # int32


@functools.cache
def core_config(cfg: Config) -> dqn.Config:
    """The DQN core's config: one env per actor, prioritisation handled here."""
    return dqn.Config(
        total_timesteps=cfg.total_timesteps,
        num_envs=cfg.num_actors,
        train_freq=cfg.train_freq,
        gradient_steps=cfg.gradient_steps,
        # The core's own replay is never built; keep its size checks satisfied.
        buffer_size=max(cfg.buffer_size, cfg.num_actors * max(cfg.n_step, 2)),
        batch_size=cfg.batch_size,
        learning_starts=cfg.learning_starts,
        target_update_period=cfg.target_update_period,
        hidden=cfg.hidden,
        torso=cfg.torso,
        activation=cfg.activation,
        loss=cfg.loss,
        double=cfg.double,
        dueling=cfg.dueling,
        n_step=cfg.n_step,
        prioritised=False,
    )


def core_hparams(hp: HParams) -> dqn.HParams:
    """The core's hyperparameters (its epsilon schedule is unused: actors pass their own)."""
    unused = hp.eps_base
    return dqn.HParams(
        learning_rate=hp.learning_rate,
        discount=hp.discount,
        tau=hp.tau,
        eps_start=unused,
        eps_end=unused,
        eps_fraction=jnp.ones_like(unused),
        per_beta=hp.per_beta,
        max_grad_norm=hp.max_grad_norm,
        adam_eps=hp.adam_eps,
    )


def epsilons(num_actors: int, hp: HParams) -> jax.Array:
    """Per-actor exploration ``[N]``: ``eps_i = eps_base ** (1 + eps_alpha * i / (N - 1))``
    (Horgan et al. 2018, sec. 4.1); a single actor gets ``eps_base``."""
    frac = jnp.arange(num_actors, dtype=jnp.float32) / max(num_actors - 1, 1)
    return hp.eps_base ** (1.0 + hp.eps_alpha * frac)


def replay_buffer(cfg: Config):
    """The central replay: a prioritised flat buffer of :class:`Experience`."""
    return buffers.prioritised_flat_buffer(
        capacity=cfg.buffer_size,
        batch_size=cfg.batch_size,
        min_size=cfg.batch_size,
        priority_exponent=cfg.priority_exponent,
    )


def to_window(exp: Experience) -> dqn.Transition:
    """Expands items ``[B]`` into the core's windows ``[B, n]`` (first obs, action and the
    bootstrap obs repeated along the window: the core reads only ``obs[:, 0]``,
    ``action[:, 0]`` and ``next_obs`` at the window's last step)."""
    n = exp.reward.shape[-1]
    rep = lambda x: jnp.broadcast_to(x[:, None], (x.shape[0], n, *x.shape[1:]))  # noqa: E731
    return dqn.Transition(
        obs=rep(exp.obs),
        action=rep(exp.action),
        reward=exp.reward,
        terminated=exp.terminated,
        done=exp.done,
        next_obs=rep(exp.next_obs),
    )


def from_window(window: dqn.Transition) -> Experience:
    """Compacts windows ``[B, n]`` into items ``[B]``; inverse of :func:`to_window` for
    what the loss reads."""
    _, _, last = qloss.n_step_bootstrap(window.reward, window.done, window.terminated, 1.0)
    return Experience(
        obs=window.obs[:, 0],
        action=window.action[:, 0],
        reward=window.reward,
        done=window.done,
        terminated=window.terminated,
        next_obs=qloss.take_last(window.next_obs, last),
    )


def make_windows(
    tail: dqn.Transition, chunk: dqn.Transition
) -> tuple[dqn.Transition, dqn.Transition]:
    """Every actor's n-step windows starting at each step of its new chunk.

    Args:
        tail: ``[N, n - 1, ...]`` the actors' last steps before ``chunk``.
        chunk: ``[N, T, ...]`` the steps just collected.

    Returns:
        ``(windows [N, T, n, ...], new_tail [N, n - 1, ...])``; window ``t`` of actor ``i``
        is steps ``t .. t + n - 1`` of ``concat(tail_i, chunk_i)``.
    """
    seq = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), tail, chunk)
    n_minus_1 = jax.tree.leaves(tail)[0].shape[1]
    steps = jax.tree.leaves(chunk)[0].shape[1]
    idx = jnp.arange(steps)[:, None] + jnp.arange(n_minus_1 + 1)[None, :]  # [T, n]
    windows = jax.tree.map(lambda x: x[:, idx], seq)
    return windows, jax.tree.map(lambda x: x[:, steps:], seq)


def actor_priorities(
    cfg: Config, env: Env, actor_params: dqn.Params, window: dqn.Transition, hp: HParams,
    key: jax.Array,
) -> jax.Array:  # fmt: skip
    """Initial priorities ``[B]`` of windows ``[B, n]``: the core's ``|TD|`` (n-step, double
    Q if ``cfg.double``) under the actors' online and target networks."""
    b = window.reward.shape[0]
    batch = dqn.Batch(window, jnp.ones((b,)), jnp.zeros((b,), jnp.int32), key)
    _, priorities, _ = dqn.per_example_loss(
        core_config(cfg), env, actor_params.online, actor_params.target, batch, core_hparams(hp)
    )
    return priorities


def added_indices(cfg: Config, replay_state, count: int) -> jax.Array:
    """Buffer indices ``[count]`` that the next ``add`` of ``count`` items will write."""
    return (replay_state.current_index + jnp.arange(count, dtype=jnp.int32)) % cfg.buffer_size


def add(cfg: Config, replay_state, items: Experience, priorities: jax.Array):
    """Adds items ``[K]`` to the central replay with priorities ``[K]`` (``|TD|``; plus
    :data:`PRIORITY_EPS`), overriding the buffer's default max priority."""
    buf = replay_buffer(cfg)
    indices = added_indices(cfg, replay_state, priorities.shape[0])
    replay_state = buf.add(replay_state, items)
    return buf.set_priorities(replay_state, indices, priorities + PRIORITY_EPS)


def _core_state(state: State) -> dqn.State:
    """A view of ``state`` as the core's state (actors' envs as its envs; no core replay)."""
    return dqn.State(
        params=state.params,
        opt_state=state.opt_state,
        buffer=None,
        env_state=state.actors.env_state,
        obs=state.actors.obs,
        env_params=state.env_params,
        key=state.key,
        env_steps=state.env_steps,
        grad_steps=state.grad_steps,
        update_count=state.update_count,
    )


def _after_collect(state: State, core: dqn.State) -> State:
    actors = state.actors.replace(env_state=core.env_state, obs=core.obs)
    return state.replace(actors=actors, key=core.key, env_steps=core.env_steps)


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """A fresh network (target and actors' copies equal to it), Adam, an empty replay, and
    actors that have taken ``n_step - 1`` steps to fill their tails."""
    core, chp = core_config(cfg), core_hparams(hp)
    env_params = env.default_params() if env_params is None else env_params
    key, key_net, key_noise, key_env = jax.random.split(key, 4)
    obs, env_state = dqn.vec_env(core, env).reset(key_env, env_params)
    online = dqn.network(core, env).init({"params": key_net, "noise": key_noise}, obs)
    params = dqn.Params(online, online)
    n = cfg.n_step
    zeros = jnp.zeros((n,))
    item = Experience(obs[0], jnp.zeros((), jnp.int32), zeros, zeros, zeros, obs[0])
    zero = jnp.zeros((), jnp.int32)
    # Before the warm-up the tails hold no steps: [N, 0, ...].
    flag = jnp.zeros(obs.shape[:1])
    template = dqn.Transition(obs, flag.astype(jnp.int32), flag, flag, flag, obs)
    empty_tail = jax.tree.map(lambda x: x[:, None][:, :0], template)
    state = State(
        params=params,
        actor_params=params,
        opt_state=dqn.optimizer(chp).init(online),
        replay=replay_buffer(cfg).init(item),
        actors=Actors(env_state, obs, empty_tail),
        env_params=env_params,
        key=key,
        env_steps=zero,
        grad_steps=zero,
        update_count=zero,
    )
    if n == 1:
        return state
    warmup = dataclasses.replace(core, train_freq=n - 1)
    collected, steps, _ = dqn.collect(
        warmup, env, _core_state(state), chp, params=online, eps=epsilons(cfg.num_actors, hp)
    )
    tail = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), steps)
    state = _after_collect(state, collected)
    return state.replace(actors=state.actors.replace(tail=tail))


def sample_batch(cfg: Config, env: Env, replay_state, key: jax.Array, hp: HParams) -> dqn.Batch:
    """A prioritised learner batch: windows ``[B, n]``, importance weights
    ``(N P(i))^-beta / max`` ``[B]`` with ``beta = hp.per_beta``, and the buffer indices."""
    del env
    key_sample, key_noise = jax.random.split(key)
    sample = replay_buffer(cfg).sample(replay_state, key_sample)
    weights = buffers.importance_weights(
        sample.probabilities, buffers.num_items(replay_state), hp.per_beta
    )
    return dqn.Batch(to_window(sample.experience), weights, sample.indices, key_noise)


def loss(
    cfg: Config, env: Env, params: dqn.Params, batch: dqn.Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """The contract's loss: the core's importance-weighted loss on windows ``[B, n]``."""
    return dqn.loss(core_config(cfg), env, params, batch, core_hparams(hp))


LossFn = Callable[[Config, Env, dqn.Params, dqn.Batch, HParams], tuple[jax.Array, Metrics]]


def learner_step(
    cfg: Config,
    env: Env,
    state: State,
    hp: HParams,
    key: jax.Array,
    ready: jax.Array,
    loss_fn: LossFn = loss,
) -> tuple[State, Metrics]:
    """One learner step: sample, :func:`jaxrl.algorithms.dqn.gradient_step` on ``loss_fn``
    (:func:`loss`'s signature: Ape-X's ``cfg`` and ``hp``), then set the sampled items'
    priorities to their new ``|TD|`` (+ :data:`PRIORITY_EPS`). A no-op where ``ready`` is
    false."""
    batch = sample_batch(cfg, env, state.replay, key, hp)
    # The core calls it with its own Config and HParams, which Ape-X's determine; Ape-X's
    # loss is the core's (whose forward pass also gives the priorities).
    core_loss = dqn.loss if loss_fn is loss else lambda _c, e, p, b, _h: loss_fn(cfg, e, p, b, hp)
    core, metrics, priorities = dqn.gradient_step(
        core_config(cfg), env, _core_state(state), batch, core_hparams(hp), ready, core_loss
    )
    replay = replay_buffer(cfg).set_priorities(
        state.replay, batch.indices, priorities + PRIORITY_EPS
    )
    # Only the sum tree changed: select it alone, not the stored experience.
    sum_tree = tree.select(ready, replay.sum_tree_state, state.replay.sum_tree_state)
    state = state.replace(
        params=core.params,
        opt_state=core.opt_state,
        grad_steps=core.grad_steps,
        replay=state.replay.replace(sum_tree_state=sum_tree),
    )
    return state, metrics | {"train/priority": jnp.mean(priorities)}


def learn(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``cfg.gradient_steps`` :func:`learner_step` s on ``loss_fn`` (no-ops before
    ``learning_starts`` env steps or while the replay holds fewer than ``batch_size`` items)."""
    ready = jnp.logical_and(
        state.env_steps >= cfg.learning_starts, replay_buffer(cfg).can_sample(state.replay)
    )
    key, key_steps = jax.random.split(state.key)
    state, metrics = jax.lax.scan(
        lambda s, k: learner_step(cfg, env, s, hp, k, ready, loss_fn),
        state.replace(key=key),
        jax.random.split(key_steps, cfg.gradient_steps),
    )
    return state, jax.tree.map(jnp.mean, metrics)


def act_and_store(cfg: Config, env: Env, state: State, hp: HParams) -> tuple[State, Metrics]:
    """Steps 1-3 of :func:`update`: the actors collect ``train_freq`` steps each with their
    stale networks and own epsilons, form n-step windows, rate them and add them to replay.
    Returns the state and the finished episodes' metrics."""
    core = core_config(cfg)
    core_state, chunk, info = dqn.collect(
        core, env, _core_state(state), core_hparams(hp),
        params=state.actor_params.online, eps=epsilons(cfg.num_actors, hp),
    )  # fmt: skip
    state = _after_collect(state, core_state)
    chunk = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), chunk)  # [N, T, ...]
    windows, tail = make_windows(state.actors.tail, chunk)
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), windows)  # [N * T, n, ...]
    key, key_noise = jax.random.split(state.key)
    priorities = actor_priorities(cfg, env, state.actor_params, flat, hp, key_noise)
    replay = add(cfg, state.replay, from_window(flat), priorities)
    state = state.replace(actors=state.actors.replace(tail=tail), replay=replay, key=key)
    metrics = dqn.episode_metrics(info) | {"train/initial_priority": jnp.mean(priorities)}
    return state, metrics


def with_params(cfg: Config, state: State, params: dqn.Params) -> State:
    """``state`` as if the run started from ``params``, the actors' copy included.

    ``params`` (online and target networks) become the learner's and the actors' networks,
    as after :func:`init`. :func:`jaxrl.meta.metagrad.with_params` (MAML's ``wrt="params"``)
    calls it; ``state.replace(params=...)`` would leave the actors acting with, and rating
    priorities by, the old networks until the next sync."""
    del cfg
    return state.replace(params=params, actor_params=params)


def sync(cfg: Config, state: State) -> State:
    """Copies the learner's networks to the actors after every ``actor_sync_period``-th
    update (counting the update that just ran)."""
    due = (state.update_count + 1) % cfg.actor_sync_period == 0
    return state.replace(actor_params=tree.select(due, state.params, state.actor_params))


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One iteration: act and store (:func:`act_and_store`), learn, maybe sync the actors.

    ``loss_fn`` (same signature as :func:`loss`, e.g. a learned loss) replaces the loss
    whose gradient the learner takes; the actors' initial priorities and the learner's new
    ones stay the core's ``|TD|``."""
    state, metrics = act_and_store(cfg, env, state, hp)
    state, learn_metrics = learn(cfg, env, state, hp, loss_fn)
    state = sync(cfg, state)
    metrics = metrics | learn_metrics | {"train/grad_steps": state.grad_steps}
    return state.replace(update_count=state.update_count + 1), metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` iterations as one scan; metrics stacked ``[num_updates]``."""
    step = lambda s, _: update(cfg, env, s, hp, loss_fn)
    return jax.lax.scan(step, state, None, num_updates)


def act(cfg: Config, env: Env, params: dqn.Params, obs: jax.Array) -> jax.Array:
    """Greedy actions ``[...]`` of the learner's online network."""
    return dqn.act(core_config(cfg), env, params, obs)


def policy(
    cfg: Config,
    env: Env,
    params: dqn.Params,
    obs: jax.Array,
    key: jax.Array,
    deterministic: bool,
    hp: HParams | None = None,
) -> jax.Array:
    """Evaluation policy for ``obs [E, ...]``: greedy, or (``deterministic=False``)
    epsilon-greedy at the greediest actor's ``eps_base ** (1 + eps_alpha)``."""
    if deterministic:
        return act(cfg, env, params, obs)
    if hp is None:
        raise base.ConfigError("stochastic evaluation of apex needs hp (eps_base, eps_alpha)")
    eps = hp.eps_base ** (1.0 + hp.eps_alpha)
    return dqn.explore(core_config(cfg), env, params.online, obs, eps, key)


def shardings(state: State, mesh: jax.sharding.Mesh, actor_axis: str = "actor", runs: bool = False):
    """Where each leaf of ``state`` lives to spread the actors over ``mesh[actor_axis]``.

    Every leaf of ``state.actors`` is split along its actor axis (the leading one, or the
    second after a run axis when ``runs``); everything else (learner and actors' networks,
    optimiser, replay, counters) is replicated. Use with ``jax.device_put`` and
    ``jax.jit(..., in_shardings=..., out_shardings=...)``; ``num_actors`` must be a multiple
    of the axis size. Returns a pytree of ``NamedSharding`` shaped like ``state``.
    """
    spec = jax.sharding.PartitionSpec
    lead = (None,) if runs else ()
    replicated = jax.sharding.NamedSharding(mesh, spec())
    split = jax.sharding.NamedSharding(mesh, spec(*lead, actor_axis))
    out = jax.tree.map(lambda _: replicated, state)
    return out.replace(actors=jax.tree.map(lambda _: split, state.actors))
