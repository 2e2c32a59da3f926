"""Proximal Policy Optimisation (Schulman et al. 2017, arXiv:1707.06347) as pure functions.

One ``update`` rolls out ``cfg.rollout_len`` steps of ``cfg.num_envs`` auto-reset envs,
computes truncation-aware GAE, then runs ``cfg.num_epochs`` epochs of minibatch Adam on
the clipped surrogate (or, with ``objective="kl"``, the adaptive-KL-penalty surrogate).

Static ``Config`` decides shapes and switches, including the code-level optimisations
studied in "Implementation Matters in Deep RL" (Engstrom et al. 2020,
arXiv:2005.12729): value clipping, reward scaling, observation normalisation,
orthogonal initialisation, learning-rate annealing, gradient clipping and advantage
normalisation. Traced ``HParams`` hold every number one might sweep or differentiate;
the optimiser is rebuilt from them inside the traced update, so one compiled program
serves a vmapped grid of seeds x hyperparameters and ``jax.grad`` reaches them.

The paper's first four optimisations also have traced gates in ``HParams``
(``clip_value_on``, ``scale_reward_on``, ``ortho_init_on``, ``anneal_lr_on``, float32 in
[0, 1], default 1). Where the Config switch compiles a feature in, its gate blends it:
``on · feature + (1 − on) · without`` (:func:`blend`), so gate 1 is the switch on and
gate 0 is the switch off, exactly, and all 2^4 combinations x seeds run as one program.

``Config.data_shards = D > 1`` trains the one agent data-parallel
(:mod:`jaxrl.distributed.data_parallel`): each shard rolls out ``num_envs / D`` envs and
takes its ``1 / D`` of every minibatch; gradients, metrics, the observation / reward
normalisers and the advantage normalisation are averaged over shards. ``State.env_state``
and ``State.obs`` then carry a leading shard axis ``[D, ...]``; everything else is
replicated. ``D = 1`` is the single-device program, unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base
from jaxrl.algorithms import rollout as rollout_lib
from jaxrl.distributed import data_parallel as dp
from jaxrl.envs.base import Env
from jaxrl.losses import policy as policy_losses
from jaxrl.losses.value import value_loss
from jaxrl.networks import ActorCritic
from jaxrl.networks.torsos import ACTIVATIONS
from jaxrl.types import Metrics

OBJECTIVES = ("clip", "kl")
# Traced gates of the Config switches clip_value, scale_reward, ortho_init, anneal_lr:
GATES = ("clip_value_on", "scale_reward_on", "ortho_init_on", "anneal_lr_on")
# State fields with a leading shard axis [data_shards, ...] when data_shards > 1:
DATA_SHARDED = ("env_state", "obs")


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings. Defaults are PureJaxRL's CartPole configuration."""

    total_timesteps: int = 500_000  # per run; the horizon of learning-rate annealing
    num_envs: int = 4
    rollout_len: int = 128
    num_epochs: int = 4
    num_minibatches: int = 4
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    torso: str = "mlp"  # "mlp" or "cnn"
    shared_torso: bool = False
    objective: str = "clip"  # "clip" (PPO-clip) or "kl" (adaptive KL penalty)
    # Code-level optimisations (Engstrom et al. 2020), each a switch:
    clip_value: bool = True
    normalize_obs: bool = False
    scale_reward: bool = False
    ortho_init: bool = True
    anneal_lr: bool = True
    clip_grad_norm: bool = True
    normalize_advantages: bool = True
    reward_scaling_discount: float = 0.99
    data_shards: int = 1  # data-parallel shards of the envs and of every minibatch

    def __post_init__(self):
        base.check_fields(self)
        base.check_ranges(self, {"reward_scaling_discount": (0.0, 1.0)})
        base.check_positive_ints(
            self,
            ("total_timesteps", "num_envs", "rollout_len", "num_epochs", "num_minibatches"),
        )
        if self.steps_per_update % self.num_minibatches:
            raise base.ConfigError(
                f"num_envs * rollout_len = {self.steps_per_update} is not divisible by "
                f"num_minibatches = {self.num_minibatches}"
            )
        dp.check_divides(
            self.data_shards,
            {"num_envs": self.num_envs, "the minibatch size": self.minibatch_size},
        )
        base.check_choices(
            self, {"objective": OBJECTIVES, "torso": ("mlp", "cnn"), "activation": ACTIVATIONS}
        )
        base.check_budget(self, "num_envs * rollout_len")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.rollout_len

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update

    @property
    def minibatch_size(self) -> int:
        return self.steps_per_update // self.num_minibatches


HPARAM_DEFAULTS = dict(
    learning_rate=2.5e-4,
    discount=0.99,
    gae_lambda=0.95,
    clip_eps=0.2,
    ent_coef=0.01,
    vf_coef=0.5,
    max_grad_norm=0.5,
    kl_target=0.01,
    kl_beta=1.0,
    **dict.fromkeys(GATES, 1.0),
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    discount=(0.0, 1.0),
    gae_lambda=(0.0, 1.0),
    clip_eps=(0.0, 10.0),
    ent_coef=(0.0, 1e3),
    vf_coef=(0.0, 1e3),
    max_grad_norm=(0.0, 1e9),
    kl_target=(0.0, 1e3),
    kl_beta=(0.0, 1e6),
    **dict.fromkeys(GATES, (0.0, 1.0)),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, each a float32 array (scalar, or ``[R]`` for a sweep)."""

    learning_rate: jax.Array
    discount: jax.Array
    gae_lambda: jax.Array
    clip_eps: jax.Array
    ent_coef: jax.Array
    vf_coef: jax.Array
    max_grad_norm: jax.Array
    kl_target: jax.Array  # objective="kl" only: the target KL per update
    kl_beta: jax.Array  # objective="kl" only: the initial penalty coefficient
    # Gates in [0, 1] of switches that are on in Config (1: on, 0: off; see blend):
    clip_value_on: jax.Array
    scale_reward_on: jax.Array
    ortho_init_on: jax.Array
    anneal_lr_on: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """Raises ``ConfigError`` for out-of-range concrete hyperparameters (before compiling)."""
    del cfg
    base.check_ranges(hp, HPARAM_RANGES)


class State(struct.PyTreeNode):
    """Everything one PPO run carries between updates (arrays only)."""

    params: dict
    opt_state: optax.OptState
    env_state: object
    obs: jax.Array  # [num_envs, *obs_shape]
    env_params: object
    key: jax.Array
    update_count: jax.Array  # int32 scalar
    kl_beta: jax.Array  # current adaptive-KL coefficient


class Batch(struct.PyTreeNode):
    """Flattened rollout data for the loss; every leaf ``[B, ...]``."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array


def blend(on: jax.Array, feature, without):
    """``on · feature + (1 − on) · without``, leaf by leaf over two same-shaped pytrees.

    ``on`` is a scalar gate in [0, 1]; at 1 the result is ``feature`` and at 0 ``without``,
    bit for bit (for finite leaves), so a traced gate stands in for a static switch.
    """
    return jax.tree.map(lambda a, b: on * a + (1.0 - on) * b, feature, without)


def network(cfg: Config, env: Env) -> ActorCritic:
    """The actor-critic for ``env``'s spaces (taken at the env's default params)."""
    base.check_torso_fits(cfg.torso, env)
    params = env.default_params()
    obs_space = env.observation_space(params)
    return ActorCritic(
        action_space=env.action_space(params),
        hidden=cfg.hidden,
        activation=cfg.activation,
        ortho_init=cfg.ortho_init,
        shared_torso=cfg.shared_torso,
        torso=cfg.torso,
        obs_ndim=max(len(obs_space.shape), 1),
    )


def vec_env(cfg: Config, env: Env) -> Env:
    """The training env stack: ``num_envs`` auto-reset copies, optional normalisation.

    With ``cfg.data_shards = D > 1``: one shard's ``num_envs / D`` copies, with the
    normalisation statistics synced over shards (call it inside the shards).
    """
    return dp.make_vec_env(
        env,
        cfg.num_envs,
        dp.shards(cfg),
        normalize_obs=cfg.normalize_obs,
        scale_reward=cfg.scale_reward,
        reward_discount=cfg.reward_scaling_discount,
    )


def learning_rate(
    cfg: Config, hp: HParams, update_count: jax.Array, anneal_on: jax.Array | float = 1.0
) -> jax.Array:
    """``hp.learning_rate``, linearly annealed to 0 over ``cfg.num_updates`` if enabled.

    ``anneal_on`` (scalar in [0, 1]) gates the annealing: the multiplier is
    ``anneal_on · frac + (1 − anneal_on)``; PPO and TRPO pass ``hp.anneal_lr_on``.
    """
    if not cfg.anneal_lr:
        return hp.learning_rate
    frac = 1.0 - update_count.astype(jnp.float32) / cfg.num_updates
    return hp.learning_rate * blend(anneal_on, jnp.maximum(frac, 0.0), 1.0)


def optimizer(cfg: Config, hp: HParams, lr: jax.Array) -> optax.GradientTransformation:
    """Adam (eps 1e-5), after global-norm clipping when enabled; built from traced values."""
    adam = optim.adam(lr, eps=1e-5)
    if not cfg.clip_grad_norm:
        return adam
    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), adam)


def init_params(
    cfg: Config, env: Env, key: jax.Array, obs: jax.Array, ortho_init_on: jax.Array | float = 1.0
) -> dict:
    """The network's initial params for ``obs [N, *obs_shape]``.

    With ``cfg.ortho_init``, both initialisations are drawn from the same ``key`` and
    blended: ``ortho_init_on · orthogonal + (1 − ortho_init_on) · default (lecun)``.
    """
    params = network(cfg, env).init(key, obs)
    if not cfg.ortho_init:
        return params
    default = network(dataclasses.replace(cfg, ortho_init=False), env).init(key, obs)
    return blend(ortho_init_on, params, default)


def gated_value_loss(
    value: jax.Array,
    old_value: jax.Array,
    target: jax.Array,
    clip_eps: jax.Array,
    clip: bool,
    clip_on: jax.Array,
) -> jax.Array:
    """The value loss with its static ``clip`` switch gated by a traced ``clip_on``.

    :func:`jaxrl.losses.value.value_loss`; when ``clip``, ``clip_on · clipped +
    (1 − clip_on) · unclipped``. ``value``, ``old_value``, ``target``: ``[B]``.
    """
    loss = value_loss(value, old_value, target, clip_eps, clip)
    if not clip:
        return loss
    return blend(clip_on, loss, value_loss(value, old_value, target, clip_eps, False))


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """Initial state: fresh network, optimiser state and reset envs (every shard's)."""
    env_params = env.default_params() if env_params is None else env_params
    key, key_net, key_env = jax.random.split(key, 3)
    obs, env_state = dp.reset(vec_env(cfg, env), key_env, env_params, cfg.data_shards)
    params = init_params(cfg, env, key_net, dp.first_shard(obs, cfg.data_shards), hp.ortho_init_on)
    opt_state = optimizer(cfg, hp, hp.learning_rate).init(params)
    return State(
        params=params,
        opt_state=opt_state,
        env_state=env_state,
        obs=obs,
        env_params=env_params,
        key=key,
        update_count=jnp.zeros((), jnp.int32),
        kl_beta=jnp.asarray(hp.kl_beta, jnp.float32),
    )


def loss(
    cfg: Config, env: Env, params: dict, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """PPO loss on one minibatch: surrogate + ``vf_coef`` · value loss − ``ent_coef`` · entropy.

    With ``objective="kl"`` the surrogate is ``−mean(ρA) + hp.kl_beta · KL`` (the update
    passes the current adaptive β in ``hp.kl_beta``). With ``cfg.data_shards > 1``, ``batch``
    is one shard's part of the minibatch and advantages are normalised by the statistics
    of the whole minibatch (a collective: call it inside the shards).
    """
    dist, value = network(cfg, env).apply(params, batch.obs)
    log_prob = dist.log_prob(batch.action)
    advantage = batch.advantage
    if cfg.normalize_advantages:
        mean, std = dp.mean_std(advantage, dp.shards(cfg))
        advantage = (advantage - mean) / (std + 1e-8)
    if cfg.objective == "clip":
        pg_loss, clip_fraction = policy_losses.clipped_surrogate_loss(
            log_prob, batch.log_prob, advantage, hp.clip_eps
        )
    else:
        pg_loss, _ = policy_losses.kl_penalty_loss(log_prob, batch.log_prob, advantage, hp.kl_beta)
        clip_fraction = jnp.mean(jnp.abs(jnp.exp(log_prob - batch.log_prob) - 1) > hp.clip_eps)
    v_loss = gated_value_loss(
        value, batch.value, batch.target, hp.clip_eps, cfg.clip_value, hp.clip_value_on
    )
    entropy = jnp.mean(dist.entropy())
    total = pg_loss + hp.vf_coef * v_loss - hp.ent_coef * entropy
    metrics = {
        "train/total_loss": total,
        "train/policy_loss": pg_loss,
        "train/value_loss": v_loss,
        "train/entropy": entropy,
        "train/approx_kl": policy_losses.approx_kl(log_prob, batch.log_prob),
        "train/clip_fraction": clip_fraction.astype(jnp.float32),
    }
    return total, metrics


Rollout = rollout_lib.Rollout


def collect(cfg: Config, env: Env, state: State) -> tuple[State, Rollout]:
    """Rolls the current policy out for ``cfg.rollout_len`` steps of every env."""
    return rollout_lib.collect(vec_env(cfg, env), network(cfg, env), state, cfg.rollout_len)


def make_batch(cfg: Config, env: Env, params: dict, rollout: Rollout, hp: HParams) -> Batch:
    """Truncation-aware GAE on the rollout (``rollout.advantages``), flattened to ``[B]``
    (``B = num_envs * rollout_len / data_shards``: one shard's rollout).

    With ``cfg.scale_reward`` the rewards are ``hp.scale_reward_on · scaled + (1 − on) ·
    raw`` (the raw ones from ``rollout.info["raw_reward"]``).
    """
    if cfg.scale_reward:
        reward = blend(hp.scale_reward_on, rollout.reward, rollout.info["raw_reward"])
        rollout = rollout.replace(reward=reward)
    advantage, target = rollout_lib.advantages(
        network(cfg, env), params, rollout, hp.discount, hp.gae_lambda
    )
    batch = Batch(rollout.obs, rollout.action, rollout.log_prob, rollout.value, advantage, target)
    return rollout_lib.flatten(batch, cfg.steps_per_update // dp.shards(cfg))


LossFn = Callable[[Config, Env, dict, Batch, HParams], tuple[jax.Array, Metrics]]


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One PPO iteration: :func:`collect`, then :func:`learn` (GAE, ``num_epochs`` x
    ``num_minibatches`` Adam steps).

    ``loss_fn`` (same signature as :func:`loss`) replaces the PPO loss, e.g. to add a
    regulariser; its metrics are averaged and returned with the rest. With
    ``cfg.data_shards > 1`` every shard runs :func:`shard_update` on its envs
    (:func:`jaxrl.distributed.data_parallel.run_update`: vmapped, or one shard per device
    under ``jax.set_mesh(data_parallel.data_mesh(D))``).
    """
    step = lambda s, h: shard_update(cfg, env, s, h, loss_fn)
    return dp.run_update(step, state, hp, cfg.data_shards, DATA_SHARDED)


def shard_update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """:func:`update` as one shard sees it (all of it when ``cfg.data_shards == 1``):
    :func:`collect` on the shard's envs, then :func:`learn` on its rollout."""
    state, rollout = collect(cfg, env, state)
    return learn(cfg, env, state, rollout, hp, loss_fn)


def learn(
    cfg: Config, env: Env, state: State, rollout: Rollout, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """The learning half of :func:`update` on one shard's ``rollout`` ``[T, N / D]``.

    Truncation-aware GAE (:func:`make_batch`), then ``cfg.num_epochs`` epochs of
    ``cfg.num_minibatches`` steps of :func:`optimizer` at :func:`learning_rate` on
    ``loss_fn``, the adaptive-KL coefficient update, and the rollout's episode metrics.
    ``rollout.value`` are the old values of the value loss. ``state``'s env fields are not
    read, so a host actor's rollout (:mod:`jaxrl.sebulba`) trains through it too.

    The shard's minibatches are ``minibatch_size / data_shards`` of its own transitions;
    gradients are averaged over shards before Adam, so the parameters stay replicated.

    Returns:
        ``(state, metrics)``: new params, optimiser state, key, ``update_count + 1`` and
        ``kl_beta``; metrics averaged over epochs, minibatches and shards.
    """
    shards = cfg.data_shards
    batch = make_batch(cfg, env, state.params, rollout, hp)
    loss_hp = hp.replace(kl_beta=state.kl_beta)
    lr = learning_rate(cfg, hp, state.update_count, hp.anneal_lr_on)
    tx = optimizer(cfg, hp, lr)
    grad_fn = jax.grad(lambda p, b: loss_fn(cfg, env, p, b, loss_hp), has_aux=True)
    num_steps = cfg.steps_per_update // shards

    def sgd_step(carry, minibatch):
        params, opt_state = carry
        grads, metrics = grad_fn(dp.local_grad_params(params, shards), minibatch)
        grads = dp.pmean(grads, shards)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), metrics

    def epoch(carry, key):
        perm = jax.random.permutation(key, num_steps)
        shape = (cfg.num_minibatches, cfg.minibatch_size // shards)
        minibatches = jax.tree.map(lambda x: x[perm].reshape(shape + x.shape[1:]), batch)
        return jax.lax.scan(sgd_step, carry, minibatches)

    key, key_epochs = jax.random.split(state.key)
    (params, opt_state), metrics = jax.lax.scan(
        epoch,
        (state.params, state.opt_state),
        jax.random.split(key_epochs, cfg.num_epochs),
    )
    metrics = dp.pmean(jax.tree.map(jnp.mean, metrics), shards)
    kl_beta = state.kl_beta
    if cfg.objective == "kl":
        kl_beta = policy_losses.adapt_kl_beta(kl_beta, metrics["train/approx_kl"], hp.kl_target)
    if shards == 1:
        episodes = rollout_lib.episode_metrics(rollout)
    else:
        done = jnp.logical_or(rollout.terminated, rollout.truncated)
        episodes = dp.episode_metrics(rollout.info, done, shards)
    metrics |= {
        "train/learning_rate": lr,
        "train/kl_beta": state.kl_beta,
    } | episodes
    state = state.replace(
        params=params,
        opt_state=opt_state,
        key=key,
        update_count=state.update_count + 1,
        kl_beta=kl_beta,
    )
    return state, metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` PPO iterations as one scan; metrics stacked ``[num_updates]``."""
    step = lambda s, h: shard_update(cfg, env, s, h, loss_fn)
    return dp.run_train(step, state, hp, num_updates, cfg.data_shards, DATA_SHARDED)


def act(cfg: Config, env: Env, params: dict, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Samples actions for a batch of observations (for evaluation or host actors)."""
    dist, _ = network(cfg, env).apply(params, obs)
    return dist.sample(seed=key)
