"""Recurrent PPO / A2C for any ``Env`` with discrete or 1-D Box actions (the learner behind
RL^2).

A GRU or LSTM actor-critic (:class:`RecurrentActorCritic`: an optional feature torso, the
recurrent core, linear policy and value heads; categorical over Discrete actions, a
diagonal Gaussian with a state-independent log-std over Box actions, clipped to the
bounds by the env stack) acts in ``num_envs`` auto-reset copies of the env. The recurrent
carry is kept across steps and zeroed *before* the first step of every new episode
(``reset [N]``, the previous step's ``done``), so no information leaks between episodes.
For RL^2 the env is ``jaxrl.meta.rl2.TrialWrapper(task_env)``, whose episode is a whole
trial: the carry then persists across the task env's episodes inside a trial and is reset
between trials.

One ``update``:

1. ``collect`` rolls out ``rollout_len`` steps, storing per step the observation, the
   ``reset`` flag, action, log-prob, value, reward, ``terminated``/``truncated`` and the
   bootstrap value ``V(final_obs)`` (the carry after the step, for truncations), and keeps
   the carry at the start of the rollout.
2. GAE over the rollout (``losses.returns.episode_gae``).
3. ``algo="ppo"``: ``num_epochs`` x ``num_minibatches`` Adam steps on the clipped surrogate;
   a minibatch is a set of env *columns* (whole sequences), re-run from the stored initial
   carry with the stored reset flags (truncated BPTT at rollout boundaries).
   ``algo="a2c"``: one Adam step on ``-mean(log pi(a|h) A)`` over the whole rollout.
   ``cfg.anneal_lr`` / ``cfg.anneal_ent`` take the learning rate / entropy coefficient
   linearly to 0 over ``cfg.num_updates = cfg.total_timesteps // (num_envs * rollout_len)``.

Follows the algorithm contract of :mod:`jaxrl.algorithms.ppo` (static ``Config``,
traced ``HParams``, ``State`` of arrays; nothing here calls ``jit``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base
from jaxrl.envs import spaces, wrappers
from jaxrl.envs.base import Env
from jaxrl.losses import policy as policy_losses
from jaxrl.losses.returns import episode_gae
from jaxrl.losses.value import value_loss
from jaxrl.networks.heads import GaussianHead
from jaxrl.networks.init import orthogonal
from jaxrl.networks.recurrent import CELLS, RecurrentScan, initial_carry
from jaxrl.networks.torsos import CNN, MLP
from jaxrl.types import Metrics

ALGOS = ("ppo", "a2c")
# Features fed to the core: the observation itself ("none", vectors), an MLP of
# ``torso_hidden`` (vectors) or MinAtar's conv torso then that MLP (images [H, W, C]).
TORSOS = ("none", "mlp", "minatar")


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings (shapes, loops, switches)."""

    total_timesteps: int = 8_192_000  # per run; the horizon of lr / entropy annealing
    num_envs: int = 64
    rollout_len: int = 128
    algo: str = "ppo"
    num_epochs: int = 4  # ppo only
    num_minibatches: int = 4  # ppo only; splits the env axis
    hidden: int = 128  # features of the recurrent core
    cell: str = "gru"
    torso: str = "none"
    torso_hidden: tuple[int, ...] = (128,)  # ReLU layers of the "mlp" / "minatar" torso
    separate_critic: bool = False  # the value gets its own torso and core; carry (actor, critic)
    clip_value: bool = False
    anneal_lr: bool = False
    anneal_ent: bool = False  # entropy coefficient linearly to 0 over num_updates
    normalize_advantages: bool = True
    scale_reward: bool = False  # divide rewards by a running std of the discounted return
    reward_discount: float = 0.99  # the discount of that running return

    def __post_init__(self):
        base.check_fields(self)
        base.check_ranges(self, {"reward_discount": (0.0, 1.0)})
        names = ("total_timesteps", "num_envs", "rollout_len", "num_epochs",
                 "num_minibatches", "hidden")  # fmt: skip
        base.check_positive_ints(self, names)
        base.check_choices(self, {"algo": ALGOS, "cell": CELLS, "torso": TORSOS})
        if self.num_envs % self.minibatches:
            raise base.ConfigError(
                f"num_envs = {self.num_envs} is not divisible by "
                f"num_minibatches = {self.num_minibatches}"
            )
        base.check_budget(self, "num_envs * rollout_len")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.rollout_len

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update

    @property
    def epochs(self) -> int:
        return self.num_epochs if self.algo == "ppo" else 1

    @property
    def minibatches(self) -> int:
        return self.num_minibatches if self.algo == "ppo" else 1


HPARAM_DEFAULTS = dict(
    learning_rate=1e-3,
    discount=0.99,
    gae_lambda=0.95,
    clip_eps=0.2,
    ent_coef=0.01,
    vf_coef=0.5,
    max_grad_norm=0.5,
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    discount=(0.0, 1.0),
    gae_lambda=(0.0, 1.0),
    clip_eps=(0.0, 10.0),
    ent_coef=(0.0, 1e3),
    vf_coef=(0.0, 1e3),
    max_grad_norm=(0.0, 1e9),
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

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """Raises ``ConfigError`` for hyperparameters outside their ranges."""
    del cfg
    base.check_ranges(hp, HPARAM_RANGES)


class RecurrentActorCritic(nn.Module):
    """Torso, recurrent core, then linear policy and value heads.

    ``__call__(carry, obs [T, N, *O], reset [T, N]) -> (carry, dist, value [T, N])``;
    ``dist`` has batch shape ``[T, N]``: a ``distrax.Categorical`` over ``num_actions``
    actions, or (``continuous``) a ``MultivariateNormalDiag`` over ``num_actions``
    dimensions with a state-independent log-std (:class:`~jaxrl.networks.heads.GaussianHead`).
    ``O`` is ``(D,)`` for the ``"none"`` and ``"mlp"`` torsos, ``(H, W, C)`` for
    ``"minatar"``. Torso layers are ReLU with orthogonal init (gain sqrt 2). With
    ``separate_critic`` the value head reads a second torso and core of the same shape
    (``critic_torso``, ``critic_rnn``) and the carry is the pair ``(actor, critic)``, so no
    value gradient reaches the policy's core (as SB3-contrib's ``RecurrentPPO`` by default).
    """

    num_actions: int  # Discrete: actions; continuous: action dimensions
    hidden: int = 128
    cell: str = "gru"
    torso: str = "none"
    torso_hidden: tuple[int, ...] = (128,)
    separate_critic: bool = False
    continuous: bool = False

    @nn.compact
    def __call__(self, carry, obs: jax.Array, reset: jax.Array):
        def torso_and_core(carry, prefix: str):
            x = obs.astype(jnp.float32)
            if self.torso == "mlp":
                x = MLP(self.torso_hidden, "relu", name=f"{prefix}torso")(x)
            elif self.torso == "minatar":
                x = CNN(hidden=self.torso_hidden, activation="relu", name=f"{prefix}torso")(x)
            return RecurrentScan(self.hidden, self.cell, name=f"{prefix}rnn")(carry, x, reset)

        if self.separate_critic:
            actor_carry, y = torso_and_core(carry[0], "")
            critic_carry, z = torso_and_core(carry[1], "critic_")
            carry = (actor_carry, critic_carry)
        else:
            carry, y = torso_and_core(carry, "")
            z = y
        if self.continuous:
            dist = GaussianHead(self.num_actions, name="policy")(y)
        else:
            logits = nn.Dense(self.num_actions, kernel_init=orthogonal(0.01), name="policy")(y)
            dist = distrax.Categorical(logits=logits)
        value = nn.Dense(1, kernel_init=orthogonal(1.0), name="value")(z)[..., 0]
        return carry, dist, value


class State(struct.PyTreeNode):
    """Everything one run carries between updates (arrays only)."""

    params: dict
    opt_state: optax.OptState
    env_state: object
    obs: jax.Array  # [N, D] observation to act on next
    carry: object  # recurrent carry [N, H] (LSTM: (c, h); a pair with separate_critic)
    reset: jax.Array  # [N] bool: the next step starts a new episode (carry zeroed)
    env_params: object
    key: jax.Array
    update_count: jax.Array  # int32 scalar


class Rollout(struct.PyTreeNode):
    """Time-major rollout; every leaf ``[T, N, ...]`` except ``carry0`` (``[N, H]``)."""

    obs: jax.Array
    reset: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    bootstrap_value: jax.Array  # V(final_obs_t) with the carry after step t
    info: dict
    carry0: object  # the carry before the first step


class Batch(struct.PyTreeNode):
    """Sequences for the loss: leaves ``[T, N, ...]``; ``carry0`` ``[N, H]``."""

    obs: jax.Array
    reset: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array
    carry0: object


def network(cfg: Config, env: Env) -> RecurrentActorCritic:
    """The recurrent actor-critic for ``env``'s spaces (at the default params); a
    ``ConfigError`` if the torso does not fit the observations."""
    params = env.default_params()
    space = env.action_space(params)
    if isinstance(space, spaces.Discrete):
        num_actions, continuous = space.n, False
    elif isinstance(space, spaces.Box) and len(space.shape) == 1:
        num_actions, continuous = space.shape[0], True
    else:
        raise base.ConfigError(
            f"recurrent PPO needs Discrete or 1-D Box actions; {env.name} has {space}"
        )
    base.check_torso_fits(cfg.torso, env)
    shape = tuple(env.observation_space(params).shape)
    if cfg.torso not in base.IMAGE_TORSOS and len(shape) != 1:
        raise base.ConfigError(
            f"torso={cfg.torso!r} needs vector observations; {env.name}'s have shape {shape} "
            "(use torso='minatar' for images)"
        )
    return RecurrentActorCritic(
        num_actions, cfg.hidden, cfg.cell, cfg.torso, cfg.torso_hidden, cfg.separate_critic,
        continuous,
    )  # fmt: skip


def vec_env(cfg: Config, env: Env) -> Env:
    """``num_envs`` auto-reset copies with episode statistics (true returns) in ``Step.info``
    and Box actions clipped to the bounds (``wrappers.make_vec_env``), optionally with
    rewards scaled by the running std of the discounted return."""
    return wrappers.make_vec_env(
        env, cfg.num_envs, scale_reward=cfg.scale_reward, reward_discount=cfg.reward_discount
    )


def learning_rate(cfg: Config, hp: HParams, update_count: jax.Array) -> jax.Array:
    """``hp.learning_rate``, linearly annealed to 0 over ``cfg.num_updates`` if enabled."""
    if not cfg.anneal_lr:
        return hp.learning_rate
    frac = 1.0 - update_count.astype(jnp.float32) / cfg.num_updates
    return hp.learning_rate * jnp.maximum(frac, 0.0)


def entropy_coef(cfg: Config, hp: HParams, update_count: jax.Array) -> jax.Array:
    """``ent_coef``, or ``ent_coef * max(1 - update_count / num_updates, 0)`` when
    ``cfg.anneal_ent``."""
    if not cfg.anneal_ent:
        return hp.ent_coef
    frac = 1.0 - update_count.astype(jnp.float32) / cfg.num_updates
    return hp.ent_coef * jnp.maximum(frac, 0.0)


def optimizer(hp: HParams, lr: jax.Array) -> optax.GradientTransformation:
    """Global-norm clipping then Adam (eps 1e-5), built from traced values."""
    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), optim.adam(lr, eps=1e-5))


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """Fresh network, optimiser and envs; every env starts a new episode."""
    if env_params is None:
        env_params = env.default_params()
    key, key_net, key_env = jax.random.split(key, 3)
    obs, env_state = vec_env(cfg, env).reset(key_env, env_params)
    carry = policy_carry(cfg, cfg.num_envs)
    reset = jnp.ones((cfg.num_envs,), bool)
    params = network(cfg, env).init(key_net, carry, obs[None], reset[None])
    opt_state = optimizer(hp, hp.learning_rate).init(params)
    return State(params, opt_state, env_state, obs, carry, reset, env_params, key,
                 jnp.zeros((), jnp.int32))  # fmt: skip


def collect(cfg: Config, env: Env, state: State) -> tuple[State, Rollout]:
    """Rolls the current (frozen) policy out for ``cfg.rollout_len`` steps of every env.

    The carry is zeroed where ``reset`` is set (the previous step ended an episode); the
    bootstrap value of step ``t`` runs the core one step on ``final_obs_t`` from the carry
    after step ``t`` (it only matters where an episode is truncated).
    """
    venv, net = vec_env(cfg, env), network(cfg, env)
    no_reset = jnp.zeros((1, cfg.num_envs), bool)

    def env_step(loop, _):
        env_state, obs, carry, reset, key = loop
        key, key_act, key_env = jax.random.split(key, 3)
        carry, dist, value = net.apply(state.params, carry, obs[None], reset[None])
        action = dist.sample(seed=key_act)  # [1, N] (Box: [1, N, A], unclipped)
        log_prob, action = dist.log_prob(action)[0], action[0]
        next_obs, env_state, step = venv.step(key_env, env_state, action, state.env_params)
        _, _, boot = net.apply(state.params, carry, step.final_obs[None], no_reset)
        out = Rollout(obs, reset, action, log_prob, value[0], step.reward, step.terminated,
                      step.truncated, boot[0], step.info, None)  # fmt: skip
        return (env_state, next_obs, carry, step.done, key), out

    loop = (state.env_state, state.obs, state.carry, state.reset, state.key)
    (env_state, obs, carry, reset, key), rollout = jax.lax.scan(
        env_step, loop, None, cfg.rollout_len
    )
    rollout = rollout.replace(carry0=state.carry)
    state = state.replace(env_state=env_state, obs=obs, carry=carry, reset=reset, key=key)
    return state, rollout


def policy_carry(cfg: Config, num_episodes: int):
    """The zero recurrent state of ``num_episodes`` sequences (envs, evaluation episodes
    for ``jaxrl.runner.evaluate``, RL^2 trials): ``[E, H]`` per core (LSTM: ``(c, h)``),
    the pair ``(actor, critic)`` with ``cfg.separate_critic``."""
    carry = initial_carry(cfg.cell, (num_episodes,), cfg.hidden)
    return (carry, carry) if cfg.separate_critic else carry


def recurrent_policy(
    cfg: Config,
    env: Env,
    params: dict,
    carry,
    obs: jax.Array,
    key: jax.Array,
    deterministic: bool,
    hp: HParams | None = None,
):
    """Evaluation policy for ``obs [E, ...]`` from ``carry``: the most likely action, or
    (``deterministic=False``) a sample, as in :func:`collect`; returns ``(carry, action
    [E])`` (Box: ``[E, A]``, the Gaussian's mean or a sample, clipped by the evaluator).
    Each evaluation episode starts from :func:`policy_carry` and is played to its end, so
    no step resets the carry."""
    del hp
    reset = jnp.zeros((1, obs.shape[0]), bool)
    net = network(cfg, env)
    carry, dist, _ = net.apply(params, carry, obs[None], reset)
    action = (dist.mode() if deterministic else dist.sample(seed=key))[0]
    return carry, action if net.continuous else action.astype(jnp.int32)


def make_batch(rollout: Rollout, hp: HParams) -> Batch:
    """GAE over the rollout; terminations cut the return, truncations bootstrap."""
    advantage, target = episode_gae(
        rollout.reward, rollout.value, rollout.bootstrap_value, rollout.terminated,
        rollout.truncated, hp.discount, hp.gae_lambda,
    )  # fmt: skip
    return Batch(rollout.obs, rollout.reset, rollout.action, rollout.log_prob, rollout.value,
                 advantage, target, rollout.carry0)  # fmt: skip


def loss(
    cfg: Config, env: Env, params: dict, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """Loss on sequences ``[T, N]`` re-run from ``batch.carry0`` with the stored resets.

    ``policy + vf_coef * value - ent_coef * entropy``; the policy term is PPO's clipped
    surrogate ``-mean(min(rho A, clip(rho, 1-eps, 1+eps) A))`` (``algo="ppo"``) or
    ``-mean(log pi(a|h) A)`` (``algo="a2c"``); ``A`` is normalised over the minibatch when
    ``cfg.normalize_advantages``.
    """
    chex.assert_rank([batch.obs, batch.reset, batch.advantage], [{3, 5}, 2, 2])
    _, dist, value = network(cfg, env).apply(params, batch.carry0, batch.obs, batch.reset)
    log_prob = dist.log_prob(batch.action).reshape(-1)
    old_log_prob = batch.log_prob.reshape(-1)
    advantage = batch.advantage.reshape(-1)
    if cfg.normalize_advantages:
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    if cfg.algo == "ppo":
        pg_loss, clip_fraction = policy_losses.clipped_surrogate_loss(
            log_prob, old_log_prob, advantage, hp.clip_eps
        )
    else:
        pg_loss = -jnp.mean(log_prob * advantage)
        clip_fraction = jnp.zeros(())
    v_loss = value_loss(
        value.reshape(-1), batch.value.reshape(-1), batch.target.reshape(-1), hp.clip_eps,
        cfg.clip_value,
    )  # fmt: skip
    entropy = jnp.mean(dist.entropy())
    total = pg_loss + hp.vf_coef * v_loss - hp.ent_coef * entropy
    metrics = {
        "train/total_loss": total,
        "train/policy_loss": pg_loss,
        "train/value_loss": v_loss,
        "train/entropy": entropy,
        "train/approx_kl": policy_losses.approx_kl(log_prob, old_log_prob),
        "train/clip_fraction": jnp.asarray(clip_fraction, jnp.float32),
    }
    return total, metrics


LossFn = Callable[[Config, Env, dict, Batch, HParams], tuple[jax.Array, Metrics]]


def split_envs(batch: Batch, perm: jax.Array, num_minibatches: int) -> Batch:
    """Permutes the env axis and splits it: leaves ``[M, T, N/M, ...]`` (carry ``[M, N/M, H]``)."""

    def seq(x):
        x = x[:, perm]
        x = x.reshape((x.shape[0], num_minibatches, -1) + x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    def flat(x):
        return x[perm].reshape((num_minibatches, -1) + x.shape[1:])

    carry0 = jax.tree.map(flat, batch.carry0)
    return jax.tree.map(seq, batch.replace(carry0=None)).replace(carry0=carry0)


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One iteration: collect, GAE, then PPO epochs over env-column minibatches or one A2C step.

    ``loss_fn`` (same signature as :func:`loss`, e.g. a learned loss for
    ``jaxrl.meta.metagrad``'s ``wrt="loss"``) replaces the loss every step descends.
    """
    state, rollout = collect(cfg, env, state)
    batch = make_batch(rollout, hp)
    tx = optimizer(hp, learning_rate(cfg, hp, state.update_count))
    loss_hp = hp.replace(ent_coef=entropy_coef(cfg, hp, state.update_count))
    grad_fn = jax.grad(lambda p, b: loss_fn(cfg, env, p, b, loss_hp), has_aux=True)

    def sgd_step(carry, minibatch):
        params, opt_state = carry
        grads, metrics = grad_fn(params, minibatch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), metrics

    def epoch(carry, key):
        perm = jax.random.permutation(key, cfg.num_envs)
        return jax.lax.scan(sgd_step, carry, split_envs(batch, perm, cfg.minibatches))

    key, key_epochs = jax.random.split(state.key)
    (params, opt_state), metrics = jax.lax.scan(
        epoch, (state.params, state.opt_state), jax.random.split(key_epochs, cfg.epochs)
    )
    metrics = jax.tree.map(jnp.mean, metrics)
    done = jnp.logical_or(rollout.terminated, rollout.truncated).astype(jnp.float32)
    metrics |= {
        "train/learning_rate": learning_rate(cfg, hp, state.update_count),
        "train/ent_coef": loss_hp.ent_coef,
        "episode/return": base.nan_mean(rollout.info["episode_return"], done),
        "episode/length": base.nan_mean(rollout.info["episode_length"], done),
        "episode/count": jnp.sum(done),
    }
    state = state.replace(params=params, opt_state=opt_state, key=key,
                          update_count=state.update_count + 1)  # fmt: skip
    return state, metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` iterations of :func:`update` on ``loss_fn`` as one scan; metrics
    stacked ``[num_updates]``."""
    step = lambda s, _: update(cfg, env, s, hp, loss_fn)  # noqa: E731
    return jax.lax.scan(step, state, None, num_updates)
