"""Twin Delayed DDPG (Fujimoto, van Hoof & Meger 2018, arXiv:1802.09477) as pure functions.

One ``update`` steps ``cfg.num_envs`` auto-reset envs ``cfg.train_freq`` times with the
exploring policy (uniform random actions for the first ``cfg.learning_starts`` env steps),
adds the transitions to a flat replay buffer (:mod:`jaxrl.replay.buffers`, a pytree in
the state), then takes ``cfg.gradient_steps`` gradient steps. Each step fits the twin
critics to the clipped double-Q target with target-policy smoothing

    a' = clip(mu_targ(s') + clip(sigma eps, -c, c), -1, 1),
    y  = r + gamma (1 - terminated) min_i Q_targ_i(s', a'),

and every ``cfg.policy_delay``-th step also moves the actor up ``Q_1(s, mu(s))`` and the
target networks towards the online ones by Polyak averaging with rate ``tau``.

Work that a step skips (all learning before ``cfg.learning_starts``, the actor step between
delayed steps) is not computed: :func:`jaxrl.utils.branch.run_if` branches on a predicate
that stays unbatched under ``vmap``. Metrics of skipped work are NaN.

Actions are normalised to ``[-1, 1]`` inside the agent and the buffer and scaled to the
env's bounds when stepping. Truncated episodes bootstrap from the pre-reset observation
(``Step.final_obs``), terminated ones do not. With ``cfg.context_len > 0`` the networks
read a GRU context of the last transitions (wrap the env in
:class:`jaxrl.envs.wrappers.History`): Meta-Q-Learning's context TD3.

The pieces (:func:`collect`, :func:`sample_batch`, :func:`critic_loss`,
:func:`actor_loss`, :func:`critic_step`, :func:`actor_step`) are public so other methods
compose them: MetaGenRL replaces :func:`actor_loss` by a learned objective.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base
from jaxrl.distributed import data_parallel as dp
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.envs.wrappers import make_vec_env
from jaxrl.networks.continuous import DeterministicActor, QNetwork, TwinQ, scale_action
from jaxrl.replay import buffers
from jaxrl.types import Metrics
from jaxrl.utils.branch import run_if


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings. Defaults follow Fujimoto et al. (256-256 ReLU nets, batch 256)."""

    total_timesteps: int = 20_000  # env steps per run, over all envs
    num_envs: int = 1
    train_freq: int = 1  # env steps per env per update
    gradient_steps: int = 1  # gradient steps per update
    buffer_size: int = 100_000
    batch_size: int = 256
    learning_starts: int = 1_000  # env steps of uniform random actions before learning
    policy_delay: int = 2
    hidden: tuple[int, ...] = (256, 256)
    context_len: int = 0  # > 0: networks read a GRU context of the last transitions
    context_features: int = 32
    num_critics: int = 2  # 1: a single critic (DDPG); the target takes the min over them
    target_smoothing: bool = True  # False: no target-policy noise (DDPG)

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(
            self,
            (
                "total_timesteps", "num_envs", "train_freq", "gradient_steps", "buffer_size",
                "batch_size", "policy_delay", "context_features", "num_critics",
            ),
        )  # fmt: skip
        base.check_non_negative_ints(self, ("learning_starts", "context_len"))
        base.check_batch_fits(self)
        base.check_budget(self, "num_envs * train_freq")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.train_freq

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


HPARAM_DEFAULTS = dict(
    learning_rate=3e-4,  # actor and critic Adam
    discount=0.99,
    tau=0.005,
    exploration_noise=0.1,  # std of the Gaussian added to actions, in [-1, 1] units
    policy_noise=0.2,  # target-policy smoothing std
    noise_clip=0.5,
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    discount=(0.0, 1.0),
    tau=(0.0, 1.0),
    exploration_noise=(0.0, 10.0),
    policy_noise=(0.0, 10.0),
    noise_clip=(0.0, 10.0),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, each a float32 array (scalar, or ``[R]`` for a sweep)."""

    learning_rate: jax.Array
    discount: jax.Array
    tau: jax.Array
    exploration_noise: jax.Array
    policy_noise: jax.Array
    noise_clip: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """Raises ``ConfigError`` for out-of-range concrete hyperparameters (before compiling)."""
    del cfg
    base.check_ranges(hp, HPARAM_RANGES)


class Params(struct.PyTreeNode):
    """Online and target networks."""

    actor: dict
    critic: dict
    target_actor: dict
    target_critic: dict


class Transition(struct.PyTreeNode):
    """One replayed step; leaves ``[...]`` per item, ``[B, ...]`` in a batch."""

    obs: jax.Array
    action: jax.Array  # normalised to [-1, 1]
    reward: jax.Array
    terminated: jax.Array  # float 0/1: no bootstrap
    next_obs: jax.Array  # the observation reached, before any auto-reset


class Batch(struct.PyTreeNode):
    """A sampled minibatch plus the target-smoothing noise ``eps ~ N(0, 1)`` ``[B, A]``."""

    transition: Transition
    target_noise: jax.Array


class State(struct.PyTreeNode):
    """Everything one TD3 run carries between updates (arrays only)."""

    params: Params
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    buffer: object  # flashbax buffer state of Transition items
    env_state: object
    obs: jax.Array  # [num_envs, D]
    env_params: object
    key: jax.Array
    env_steps: jax.Array  # int32: env steps taken so far (all envs)
    grad_steps: jax.Array  # int32: gradient steps taken so far
    update_count: jax.Array  # int32


def action_space(env: Env) -> spaces.Box:
    """``env``'s Box action space; a ConfigError for discrete actions."""
    space = env.action_space(env.default_params())
    if not isinstance(space, spaces.Box):
        raise base.ConfigError(
            f"TD3 and DDPG need a continuous (Box) action space; {env.name} has {space}"
        )
    return space


def action_dim(env: Env) -> int:
    """Number of action components ``A`` of ``env``."""
    return math.prod(action_space(env).shape)


class QEnsemble(nn.Module):
    """``num`` independent :class:`QNetwork` s: ``(obs, action) -> q [num, ...]``."""

    action_dim: int
    hidden: tuple[int, ...] = (256, 256)
    num: int = 1
    context_len: int = 0
    context_features: int = 32

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            QNetwork,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num,
        )
        return ensemble(self.action_dim, self.hidden, self.context_len, self.context_features)(
            obs, action
        )


def networks(cfg: Config, env: Env) -> tuple[DeterministicActor, nn.Module]:
    """``(actor, critics)`` for ``env``, with the configured context if any; the critics
    return ``q [cfg.num_critics, ...]`` (:class:`TwinQ` for two)."""
    dim = action_dim(env)
    ctx = dict(context_len=cfg.context_len, context_features=cfg.context_features)
    if cfg.num_critics == 2:
        critic = TwinQ(dim, cfg.hidden, **ctx)
    else:
        critic = QEnsemble(dim, cfg.hidden, cfg.num_critics, **ctx)
    return DeterministicActor(dim, cfg.hidden, **ctx), critic


def buffer(cfg: Config):
    """The flat replay buffer: ``buffer_size`` transitions, ``batch_size`` per sample.

    For a config with ``data_shards = D`` (SAC's) it is one shard's: ``buffer_size / D``
    and ``batch_size / D``.
    """
    shards = dp.shards(cfg)
    return buffers.flat_buffer(cfg.buffer_size // shards, cfg.batch_size // shards)


def vec_env(cfg: Config, env: Env) -> Env:
    """The training env stack: ``num_envs`` auto-reset copies with episode statistics
    (one shard's ``num_envs / D`` for a config with ``data_shards = D``, e.g. SAC's)."""
    return make_vec_env(env, cfg.num_envs // dp.shards(cfg))


def optimizer(hp: HParams) -> optax.GradientTransformation:
    """Adam at ``hp.learning_rate`` (actor and critics keep separate states), on the parameters
    raveled into one vector (``optax.flatten``): Adam's numbers, in a few large ops instead
    of several per parameter array."""
    return optax.flatten(optim.adam(hp.learning_rate))


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """Initial state: fresh networks (targets equal to them), optimisers, empty buffer, envs."""
    env_params = env.default_params() if env_params is None else env_params
    key, key_actor, key_critic, key_env = jax.random.split(key, 4)
    obs, env_state = vec_env(cfg, env).reset(key_env, env_params)
    actor, critic = networks(cfg, env)
    dim = action_dim(env)
    actor_params = actor.init(key_actor, obs)
    critic_params = critic.init(key_critic, obs, jnp.zeros((cfg.num_envs, dim)))
    params = Params(actor_params, critic_params, actor_params, critic_params)
    item = Transition(obs[0], jnp.zeros(dim), jnp.zeros(()), jnp.zeros(()), obs[0])
    tx = optimizer(hp)
    zero = jnp.zeros((), jnp.int32)
    return State(
        params=params,
        actor_opt_state=tx.init(actor_params),
        critic_opt_state=tx.init(critic_params),
        buffer=buffer(cfg).init(item),
        env_state=env_state,
        obs=obs,
        env_params=env_params,
        key=key,
        env_steps=zero,
        grad_steps=zero,
        update_count=zero,
    )


def exploring_action(
    mean: jax.Array, key: jax.Array, sigma: jax.Array, warm: jax.Array | bool
) -> jax.Array:
    """The exploring action ``[..., A]`` in ``[-1, 1]`` for a greedy one ``mean [..., A]``.

    ``clip(mean + sigma N(0, 1), -1, 1)``, or uniform in ``[-1, 1]`` where ``warm`` (the
    warm-up before learning starts)."""
    key_noise, key_uniform = jax.random.split(key)
    noisy = mean + sigma * jax.random.normal(key_noise, mean.shape)
    uniform = jax.random.uniform(key_uniform, mean.shape, minval=-1.0, maxval=1.0)
    return jnp.where(warm, uniform, jnp.clip(noisy, -1.0, 1.0))


def explore(
    cfg: Config, env: Env, state: State, obs: jax.Array, key: jax.Array, hp: HParams
) -> jax.Array:
    """Exploring actions ``[N, A]`` in ``[-1, 1]``: ``mu(s) + N(0, sigma^2)`` clipped, or
    uniform while ``state.env_steps < cfg.learning_starts``."""
    actor, _ = networks(cfg, env)
    mean = actor.apply(state.params.actor, obs)
    warm = state.env_steps < cfg.learning_starts
    return exploring_action(mean, key, hp.exploration_noise, warm)


def collect(cfg: Config, env: Env, state: State, hp: HParams) -> tuple[State, Transition, dict]:
    """Steps every env ``cfg.train_freq`` times. Returns transitions ``[T, N, ...]`` and info."""
    venv = vec_env(cfg, env)
    low, high = action_space(env).bounds()

    def env_step(carry, _):
        st, key = carry
        key, key_act, key_env = jax.random.split(key, 3)
        action = explore(cfg, env, st, st.obs, key_act, hp)
        next_obs, env_state, step = venv.step(
            key_env, st.env_state, scale_action(action, low, high), st.env_params
        )
        terminated = step.terminated.astype(jnp.float32)
        out = Transition(st.obs, action, step.reward, terminated, step.final_obs)
        st = st.replace(env_state=env_state, obs=next_obs, env_steps=st.env_steps + cfg.num_envs)
        return (st, key), (out, step.done, step.info)

    (state, key), (transitions, done, info) = jax.lax.scan(
        env_step, (state, state.key), None, cfg.train_freq
    )
    return state.replace(key=key), transitions, dict(info, done=done)


ExploreFn = Callable[[object, jax.Array, jax.Array], tuple[jax.Array, jax.Array, object]]
DoneFn = Callable[[object, jax.Array], object]


def collect_with(
    cfg: Config,
    env: Env,
    state,
    explore_fn: ExploreFn,
    done_fn: DoneFn | None = None,
) -> tuple[object, Transition, dict]:
    """:func:`collect` with another behaviour policy (DDPG's OU noise, SAC, discrete SAC).

    ``explore_fn(state, obs [N, D], key) -> (stored action [N, ...], env action [N, ...],
    state)`` picks the actions (and may update noise carried in ``state``);
    ``done_fn(state, done [N]) -> state`` runs after each env step (e.g. to reset that
    noise at episode ends). Returns transitions ``[T, N, ...]`` and info, like :func:`collect`.
    """
    venv = vec_env(cfg, env)

    def env_step(carry, _):
        st, key = carry
        key, key_act, key_env = jax.random.split(key, 3)
        action, env_action, st = explore_fn(st, st.obs, key_act)
        next_obs, env_state, step = venv.step(key_env, st.env_state, env_action, st.env_params)
        terminated = step.terminated.astype(jnp.float32)
        out = Transition(st.obs, action, step.reward, terminated, step.final_obs)
        st = st.replace(env_state=env_state, obs=next_obs, env_steps=st.env_steps + cfg.num_envs)
        if done_fn is not None:
            st = done_fn(st, step.done)
        return (st, key), (out, step.done, step.info)

    (state, key), (transitions, done, info) = jax.lax.scan(
        env_step, (state, state.key), None, cfg.train_freq
    )
    return state.replace(key=key), transitions, dict(info, done=done)


def store(cfg: Config, state, transitions: Transition):
    """Adds transitions ``[T, N, ...]`` to ``state.buffer``."""
    flat = jax.tree.map(lambda x: x.reshape((-1, *x.shape[2:])), transitions)
    return state.replace(buffer=buffer(cfg).add(state.buffer, flat))


def episode_metrics(info: dict) -> Metrics:
    """Mean return and length of the episodes that ended in ``info`` (NaN if none)."""
    done = info["done"].astype(jnp.float32)
    return {
        "episode/return": base.nan_mean(info["episode_return"], done),
        "episode/length": base.nan_mean(info["episode_length"], done),
        "episode/count": jnp.sum(done),
    }


def critic_loss(
    cfg: Config, env: Env, critic_params: dict, params: Params, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """Sum over the critics of the mean squared error to the clipped double-Q target
    (without target-policy noise when ``cfg.target_smoothing`` is off)."""
    actor, critic = networks(cfg, env)
    tr = batch.transition
    next_action = actor.apply(params.target_actor, tr.next_obs)
    if cfg.target_smoothing:
        noise = jnp.clip(hp.policy_noise * batch.target_noise, -hp.noise_clip, hp.noise_clip)
        next_action = jnp.clip(next_action + noise, -1.0, 1.0)
    next_q = jnp.min(critic.apply(params.target_critic, tr.next_obs, next_action), axis=0)
    # sg on the network output, not the whole target: the target keeps its ∂/∂γ (STYLE §4)
    target = tr.reward + hp.discount * (1.0 - tr.terminated) * jax.lax.stop_gradient(next_q)
    q = critic.apply(critic_params, tr.obs, tr.action)  # [num_critics, B]
    loss = jnp.sum(jnp.mean(jnp.square(q - target[None]), axis=-1))
    return loss, {"train/critic_loss": loss, "train/q": jnp.mean(q)}


def first_critic(
    cfg: Config, env: Env, critic_params: dict, obs: jax.Array, action: jax.Array
) -> jax.Array:
    """``Q_1(s, a) [...]``, the first of the critics (``critic.apply(...)[0]``), computed
    alone: the critics' joint forward would also compute the others."""
    (stacked,) = critic_params["params"].values()  # the vmapped QNetwork's leaves [K, ...]
    first = jax.tree.map(lambda x: x[0], stacked)
    q_net = QNetwork(action_dim(env), cfg.hidden, cfg.context_len, cfg.context_features)
    return q_net.apply({"params": first}, obs, action)


def actor_loss(
    cfg: Config, env: Env, actor_params: dict, params: Params, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """``-mean Q_1(s, mu(s))`` (the deterministic policy gradient), critic held fixed."""
    del hp
    actor, _ = networks(cfg, env)
    obs = batch.transition.obs
    critic_params = jax.lax.stop_gradient(params.critic)
    q = first_critic(cfg, env, critic_params, obs, actor.apply(actor_params, obs))
    loss = -jnp.mean(q)
    return loss, {"train/actor_loss": loss}


def loss(
    cfg: Config, env: Env, params: Params, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """Critic loss + actor loss; each gradient reaches only its own network."""
    c_loss, c_metrics = critic_loss(cfg, env, params.critic, params, batch, hp)
    a_loss, a_metrics = actor_loss(cfg, env, params.actor, params, batch, hp)
    return c_loss + a_loss, c_metrics | a_metrics


def sample_batch(cfg: Config, env: Env, buffer_state, key: jax.Array) -> Batch:
    """A uniform replay minibatch ``[B, ...]`` plus smoothing noise ``[B, A]``."""
    key_sample, key_noise = jax.random.split(key)
    transition = buffer(cfg).sample(buffer_state, key_sample).experience
    return Batch(transition, jax.random.normal(key_noise, transition.action.shape))


# State fields a gradient step changes (the replay and the envs stay out of its branches).
LEARNER_FIELDS = ("params", "actor_opt_state", "critic_opt_state", "grad_steps")


LossFn = Callable[[Config, Env, Params, Batch, HParams], tuple[jax.Array, Metrics]]
CriticLossFn = Callable[[Config, Env, dict, Params, Batch, HParams], tuple[jax.Array, Metrics]]
ActorLossFn = Callable[[Config, Env, dict, Params, Batch, HParams], tuple[jax.Array, Metrics]]


def block_losses(loss_fn: LossFn) -> tuple[CriticLossFn, ActorLossFn]:
    """The critics' and the actor's losses (the signatures of :func:`critic_loss` and
    :func:`actor_loss`) that a loss in :func:`loss`'s signature gives: its value with
    ``params.critic`` (``params.actor``) set to the differentiated block, the other
    parameters held. Their metrics are TD3's own (:func:`critic_loss`'s,
    :func:`actor_loss`'s) whatever ``loss_fn`` is. For :func:`loss` their gradients are
    those of :func:`critic_loss` and :func:`actor_loss` (each stops the other network)."""

    def critic_fn(cfg, env, critic_params, params, batch, hp):
        value = loss_fn(cfg, env, params.replace(critic=critic_params), batch, hp)[0]
        return value, critic_loss(cfg, env, critic_params, params, batch, hp)[1]

    def actor_fn(cfg, env, actor_params, params, batch, hp):
        value = loss_fn(cfg, env, params.replace(actor=actor_params), batch, hp)[0]
        return value, actor_loss(cfg, env, actor_params, params, batch, hp)[1]

    return critic_fn, actor_fn


def critic_step(
    cfg: Config,
    env: Env,
    state: State,
    batch: Batch,
    hp: HParams,
    critic_loss_fn: CriticLossFn = critic_loss,
) -> tuple[State, Metrics]:
    """One Adam step of the twin critics on ``critic_loss_fn``."""
    grads, metrics = jax.grad(
        lambda c: critic_loss_fn(cfg, env, c, state.params, batch, hp), has_aux=True
    )(state.params.critic)
    updates, opt_state = optimizer(hp).update(grads, state.critic_opt_state, state.params.critic)
    params = state.params.replace(critic=optax.apply_updates(state.params.critic, updates))
    return state.replace(params=params, critic_opt_state=opt_state), metrics


def actor_step(
    cfg: Config,
    env: Env,
    state: State,
    batch: Batch,
    hp: HParams,
    actor_loss_fn: ActorLossFn = actor_loss,
) -> tuple[State, Metrics]:
    """One Adam step of the actor on ``actor_loss_fn``, then Polyak updates of both targets."""
    grads, metrics = jax.grad(
        lambda a: actor_loss_fn(cfg, env, a, state.params, batch, hp), has_aux=True
    )(state.params.actor)
    updates, opt_state = optimizer(hp).update(grads, state.actor_opt_state, state.params.actor)
    p = state.params
    actor_params = optax.apply_updates(p.actor, updates)
    params = Params(
        actor_params,
        p.critic,
        optax.incremental_update(actor_params, p.target_actor, hp.tau),
        optax.incremental_update(p.critic, p.target_critic, hp.tau),
    )
    return state.replace(params=params, actor_opt_state=opt_state), metrics


def gradient_step(
    cfg: Config,
    env: Env,
    state: State,
    critic_batch: Batch,
    actor_batch: Batch,
    hp: HParams,
    ready: jax.Array | bool,
    actor_loss_fn: ActorLossFn = actor_loss,
    critic_loss_fn: CriticLossFn = critic_loss,
) -> tuple[State, Metrics]:
    """One TD3 gradient step: the critics on ``critic_loss_fn``, then on every
    ``policy_delay``-th step the actor on ``actor_loss_fn`` and the targets; a no-op where
    ``ready`` is false.

    Both gates are :func:`run_if` branches, so skipped work is not computed, also under
    ``vmap``. The actor's metrics are NaN on steps without an actor step, and all metrics
    are NaN where ``ready`` is false. ``actor_batch`` is what ``actor_loss_fn`` reads (the
    critic's batch for TD3; replay windows for MetaGenRL, whose learned objective is an
    ``actor_loss_fn``). :func:`block_losses` makes both from one loss (:func:`learn`).
    """

    def step(st: State) -> tuple[State, Metrics]:
        new, c_metrics = critic_step(cfg, env, st, critic_batch, hp, critic_loss_fn)
        actor_fn = lambda s: actor_step(cfg, env, s, actor_batch, hp, actor_loss_fn)
        if cfg.policy_delay == 1:
            new, a_metrics = actor_fn(new)
        else:
            delayed = (st.grad_steps + 1) % cfg.policy_delay == 0
            new, a_metrics = run_if(delayed, actor_fn, new, ("params", "actor_opt_state"))
        return new.replace(grad_steps=st.grad_steps + 1), c_metrics | a_metrics

    return run_if(ready, step, state, LEARNER_FIELDS)


def learn(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``cfg.gradient_steps`` :func:`gradient_step` s on uniform replay batches, skipped
    (no sampling, no gradients; NaN metrics) before ``learning_starts``. Metrics are means
    over the steps that computed them (the actor's over its delayed steps).

    ``loss_fn`` (:func:`loss`'s signature, e.g. a learned loss) sets both gradients: the
    critics step down its gradient in ``params.critic``, the actor down its gradient in
    ``params.actor`` after the critic step (:func:`block_losses`); the metrics stay TD3's
    own losses'."""
    critic_fn, actor_fn = block_losses(loss_fn)
    ready = jnp.logical_and(
        state.env_steps >= cfg.learning_starts, buffer(cfg).can_sample(state.buffer)
    )
    key, key_steps = jax.random.split(state.key)

    def steps(st: State) -> tuple[State, Metrics]:
        def step(s, key):
            batch = sample_batch(cfg, env, s.buffer, key)
            return gradient_step(cfg, env, s, batch, batch, hp, True, actor_fn, critic_fn)

        st, metrics = jax.lax.scan(step, st, jax.random.split(key_steps, cfg.gradient_steps))
        return st, jax.tree.map(jnp.mean if cfg.policy_delay == 1 else jnp.nanmean, metrics)

    return run_if(ready, steps, state.replace(key=key), LEARNER_FIELDS)


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One iteration: collect ``train_freq`` steps per env, store them, :func:`learn` on
    ``loss_fn`` (same signature as :func:`loss`, e.g. a learned loss)."""
    state, transitions, info = collect(cfg, env, state, hp)
    flat = jax.tree.map(lambda x: x.reshape((-1, *x.shape[2:])), transitions)
    state = state.replace(buffer=buffer(cfg).add(state.buffer, flat))
    state, metrics = learn(cfg, env, state, hp, loss_fn)
    done = info["done"].astype(jnp.float32)
    metrics |= {
        "episode/return": base.nan_mean(info["episode_return"], done),
        "episode/length": base.nan_mean(info["episode_length"], done),
        "episode/count": jnp.sum(done),
    }
    return state.replace(update_count=state.update_count + 1), metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` TD3 iterations as one scan; metrics stacked ``[num_updates]``."""
    step = lambda s, _: update(cfg, env, s, hp, loss_fn)
    return jax.lax.scan(step, state, None, num_updates)


def act(cfg: Config, env: Env, params: Params, obs: jax.Array) -> jax.Array:
    """The greedy (noise-free) action in the env's bounds for observations ``[..., D]``."""
    actor, _ = networks(cfg, env)
    low, high = action_space(env).bounds()
    return scale_action(actor.apply(params.actor, obs), low, high)


def policy(
    cfg: Config,
    env: Env,
    params: Params,
    obs: jax.Array,
    key: jax.Array,
    deterministic: bool,
    hp: HParams | None = None,
) -> jax.Array:
    """Evaluation policy for ``obs [E, D]``: the greedy action, or (``deterministic=False``)
    the training behaviour ``clip(mu(s) + sigma N(0, 1))`` with ``sigma = hp.exploration_noise``,
    scaled to the env's bounds."""
    if deterministic:
        return act(cfg, env, params, obs)
    if hp is None:
        raise base.ConfigError("stochastic evaluation of td3 needs hp.exploration_noise")
    actor, _ = networks(cfg, env)
    mean = actor.apply(params.actor, obs)
    noisy = jnp.clip(mean + hp.exploration_noise * jax.random.normal(key, mean.shape), -1.0, 1.0)
    low, high = action_space(env).bounds()
    return scale_action(noisy, low, high)
