"""Generative Adversarial Imitation Learning (Ho & Ermon 2016, arXiv:1606.03476) on PPO.

The agent never reads the env's reward. It imitates expert state-action pairs
(:mod:`jaxrl.algorithms.demos`) by matching their occupancy measure: a discriminator
``D(s, a) = sigmoid(f(s, a))`` learns to tell the expert's pairs (label 1) from the
policy's (label 0), and the policy is trained by PPO to maximise the learned reward
``r(s, a) = -log(1 - D(s, a)) = softplus(f(s, a))``. One ``update``:

1. PPO collects ``cfg.rollout_len`` steps of ``cfg.num_envs`` envs (:func:`ppo.collect`);
2. the discriminator takes ``cfg.disc_steps`` Adam steps on the logistic loss
   ``mean softplus(-f(expert)) + mean softplus(f(policy))``, each on every rollout pair and
   as many expert pairs drawn uniformly (with replacement) from the demonstrations, plus
   ``hp.disc_grad_penalty`` times a zero-centred gradient penalty (:func:`disc_loss`; 0,
   the default, is the paper's plain loss);
3. the rollout's rewards are replaced by ``softplus(f(s, a))`` of the updated
   discriminator and PPO learns on them (:func:`ppo.learn`: truncation-aware GAE,
   ``num_epochs`` x ``num_minibatches`` clipped-surrogate Adam steps).

Ho & Ermon take TRPO steps for the policy and an entropy bonus; here the policy step is
PPO's (``ppo.HParams.ent_coef`` is the entropy bonus), as in most later implementations.
The discriminator sees Box actions clipped to the env's bounds, as the env runs them,
and, with ``normalize_obs``, the expert's observations normalised by the agent's own
running statistics. The episode metrics are the env's true returns (the imitator's
score), never a learning signal. Reward scaling (``scale_reward``) and data-parallel
shards are not supported (a ConfigError). The reward is positive, so it also pays for
surviving: good where surviving is the expert's aim (CartPole), bad where the expert ends
episodes early (Acrobot; experiments/gail/RESULTS.md).

The demonstrations are read from ``cfg.demos`` (an ``.npz`` written by
:func:`jaxrl.algorithms.demos.save`) when :func:`init` is traced and are part of the
:class:`State`, so checkpoints carry them and runs resume exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxrl import optim
from jaxrl.algorithms import base, ppo
from jaxrl.algorithms import demos as demos_lib
from jaxrl.algorithms import rollout as rollout_lib
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.envs.wrappers import NormalizeObs
from jaxrl.networks.torsos import MLP
from jaxrl.runner import evaluate
from jaxrl.types import Metrics

DATA_SHARDED = ppo.DATA_SHARDED
Batch = ppo.Batch
loss = ppo.loss
network = ppo.network


@dataclasses.dataclass(frozen=True)
class Config(ppo.Config):
    """PPO's settings plus the demonstrations and the discriminator's."""

    demos: str = ""  # path of an .npz of expert (obs, action) pairs: demos.save
    disc_hidden: tuple[int, ...] = (64, 64)  # discriminator MLP (tanh) on [obs, action]
    disc_steps: int = 1  # discriminator Adam steps per update

    def __post_init__(self):
        super().__post_init__()
        base.check_positive_ints(self, ("disc_steps",))
        if self.scale_reward:
            raise base.ConfigError(
                "GAIL replaces the env's reward by the discriminator's: scale_reward must be False"
            )
        if self.data_shards != 1:
            raise base.ConfigError("GAIL runs on one shard: data_shards must be 1")


HPARAM_DEFAULTS = ppo.HPARAM_DEFAULTS | dict(disc_learning_rate=3e-4, disc_grad_penalty=0.0)
HPARAM_RANGES = ppo.HPARAM_RANGES | dict(
    disc_learning_rate=(0.0, 1.0), disc_grad_penalty=(0.0, 1e6)
)


class HParams(ppo.HParams):
    """PPO's traced hyperparameters plus the discriminator's Adam learning rate and
    gradient-penalty weight (0: Ho & Ermon's plain logistic loss)."""

    disc_learning_rate: jax.Array
    disc_grad_penalty: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """ConfigError for out-of-range hyperparameters or missing/unreadable demonstrations
    (before compiling)."""
    base.check_ranges(hp, HPARAM_RANGES)
    demos_lib.load(demos_lib.required(cfg.demos, "GAIL"))


class State(ppo.State):
    """PPO's state plus the discriminator and the demonstrations ``[M, ...]``."""

    disc_params: dict
    disc_opt_state: optax.OptState
    demos: demos_lib.Demos


class Discriminator(nn.Module):
    """``x [B, D + A] -> logit f(s, a) [B]``, an MLP (tanh) on :func:`disc_inputs`."""

    hidden: tuple[int, ...] = (64, 64)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(1)(MLP(self.hidden, "tanh")(x))[:, 0]


def discriminator(cfg: Config) -> Discriminator:
    return Discriminator(cfg.disc_hidden)


def disc_inputs(env: Env, obs: jax.Array, action: jax.Array) -> jax.Array:
    """``[B, D + A]``: the flat observations ``[B, *obs_shape]`` and the actions, one-hot
    if discrete (``[B]``), as they are if continuous (``[B, A]``)."""
    obs = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
    space = env.action_space(env.default_params())
    if isinstance(space, spaces.Discrete):
        action = jax.nn.one_hot(action, int(space.n))
    return jnp.concatenate([obs, action.reshape(action.shape[0], -1).astype(jnp.float32)], -1)


def logits(cfg: Config, env: Env, disc_params: dict, obs: jax.Array, action: jax.Array):
    """``f(s, a) [B]`` for pairs ``[B, ...]``."""
    return discriminator(cfg).apply(disc_params, disc_inputs(env, obs, action))


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """PPO's initial state, a fresh discriminator and its Adam state, and the
    demonstrations read from ``cfg.demos`` (ConfigError if missing or not fitting ``env``)."""
    key, key_disc = jax.random.split(key)
    agent = ppo.init(cfg, env, key, hp, env_params)
    demos = demos_lib.load_for(cfg.demos, "GAIL", env, env_params).pairs()
    first = disc_inputs(env, demos.obs[:1], demos.action[:1])
    disc_params = discriminator(cfg).init(key_disc, first)
    fields = {f.name: getattr(agent, f.name) for f in dataclasses.fields(agent)}
    return State(
        **fields,
        disc_params=disc_params,
        disc_opt_state=disc_optimizer(hp).init(disc_params),
        demos=demos,
    )


def disc_optimizer(hp: HParams) -> optax.GradientTransformation:
    return optim.adam(hp.disc_learning_rate)


def expert_obs(cfg: Config, env: Env, state: State, obs: jax.Array) -> jax.Array:
    """Expert observations as the agent sees its own: normalised by its running statistics
    when ``cfg.normalize_obs``."""
    if not cfg.normalize_obs:
        return obs
    return NormalizeObs(env)._normalize(obs, evaluate.obs_stats(state.env_state))


def disc_loss(
    cfg: Config,
    env: Env,
    disc_params: dict,
    expert: tuple,
    policy: tuple,
    hp: HParams,
    key: jax.Array,
) -> tuple[jax.Array, Metrics]:
    """Logistic loss ``mean softplus(-f(expert)) + mean softplus(f(policy))`` on pairs
    ``(obs [B, ...], action [B, ...])`` (as many of each), plus ``hp.disc_grad_penalty *
    mean ||grad_x f(x)||^2`` at random points ``x`` between paired expert and policy
    inputs (a zero-centred gradient penalty). Metrics: the logistic loss, the penalty,
    each side's accuracy."""
    net = discriminator(cfg)
    x_expert, x_policy = disc_inputs(env, *expert), disc_inputs(env, *policy)
    f_expert, f_policy = net.apply(disc_params, x_expert), net.apply(disc_params, x_policy)
    logistic = jnp.mean(jax.nn.softplus(-f_expert)) + jnp.mean(jax.nn.softplus(f_policy))
    mix = jax.random.uniform(key, (x_expert.shape[0], 1))
    between = mix * x_expert + (1.0 - mix) * x_policy
    grad_f = jax.vmap(jax.grad(lambda x: net.apply(disc_params, x[None])[0]))(between)
    penalty = jnp.mean(jnp.sum(jnp.square(grad_f), axis=-1))
    return logistic + hp.disc_grad_penalty * penalty, {
        "train/disc_loss": logistic,
        "train/disc_grad_penalty": penalty,
        "train/disc_expert_accuracy": jnp.mean(f_expert > 0),
        "train/disc_policy_accuracy": jnp.mean(f_policy < 0),
    }


def reward(cfg: Config, env: Env, disc_params: dict, obs: jax.Array, action: jax.Array):
    """``-log(1 - D(s, a)) = softplus(f(s, a))`` ``[B]`` for pairs ``[B, ...]``."""
    return jax.nn.softplus(logits(cfg, env, disc_params, obs, action))


def train_discriminator(
    cfg: Config, env: Env, state: State, policy: tuple, hp: HParams, key: jax.Array
) -> tuple[dict, optax.OptState, Metrics]:
    """``cfg.disc_steps`` Adam steps of :func:`disc_loss` on the policy pairs ``[B, ...]``
    against ``B`` expert pairs drawn afresh for each step; metrics of the last step."""
    tx = disc_optimizer(hp)
    size = policy[0].shape[0]
    grad_fn = jax.grad(lambda p, e, k: disc_loss(cfg, env, p, e, policy, hp, k), has_aux=True)

    def step(carry, key):
        params, opt_state = carry
        key_index, key_mix = jax.random.split(key)
        index = jax.random.randint(key_index, (size,), 0, state.demos.obs.shape[0])
        expert = (
            expert_obs(cfg, env, state, state.demos.obs[index]),
            state.demos.action[index],
        )
        grads, metrics = grad_fn(params, expert, key_mix)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), metrics

    keys = jax.random.split(key, cfg.disc_steps)
    (params, opt_state), metrics = jax.lax.scan(
        step, (state.disc_params, state.disc_opt_state), keys
    )
    return params, opt_state, jax.tree.map(lambda x: x[-1], metrics)


LossFn = Callable[[Config, Env, dict, Batch, HParams], tuple[jax.Array, Metrics]]


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One GAIL iteration: collect, discriminator steps, relabel the rewards, PPO learns.

    ``loss_fn`` (PPO's signature) replaces the policy loss, as in :func:`ppo.update`.
    Metrics: PPO's, the discriminator's, ``train/gail_reward`` (mean relabelled reward)
    and the env's episode returns.
    """
    state, rollout = ppo.collect(cfg, env, state)
    key, key_disc = jax.random.split(state.key)
    t, n = rollout.reward.shape
    pairs = rollout_lib.flatten(
        (rollout.obs, demos_lib.executed_action(env, rollout.action)), t * n
    )
    disc_params, disc_opt_state, d_metrics = train_discriminator(
        cfg, env, state, pairs, hp, key_disc
    )
    relabelled = reward(cfg, env, disc_params, *pairs).reshape(t, n)
    state = state.replace(key=key, disc_params=disc_params, disc_opt_state=disc_opt_state)
    state, metrics = ppo.learn(cfg, env, state, rollout.replace(reward=relabelled), hp, loss_fn)
    return state, metrics | d_metrics | {"train/gail_reward": jnp.mean(relabelled)}


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` GAIL iterations as one scan; metrics stacked ``[num_updates]``."""
    return jax.lax.scan(lambda s, _: update(cfg, env, s, hp, loss_fn), state, None, num_updates)
