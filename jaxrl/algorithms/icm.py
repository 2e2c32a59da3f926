"""Curiosity-driven exploration by an Intrinsic Curiosity Module (Pathak et al. 2017,
arXiv:1705.05363) on PPO.

The agent is paid for transitions its own forward model fails to predict. The module has
three networks on flat observations:

- an encoder ``phi(s) [B, F]``;
- an inverse model ``g(phi(s), phi(s')) -> a``: logits for discrete actions (cross-entropy
  loss ``L_I``), the action itself for Box actions (squared error, halved and summed);
- a forward model ``f(phi(s), a) -> phi(s')`` with loss
  ``L_F = mean 0.5 ||f(phi(s), a) - phi(s')||^2`` (summed over the ``F`` features).

The module's loss is ``(1 - beta) L_I + beta L_F`` (``hp.icm_forward_weight`` is beta;
0.2 in the paper). The forward loss reaches neither ``phi(s)`` nor ``phi(s')``: the
features are learned by the inverse model alone, so they keep what the agent's actions
can change and ignore the rest (the paper's argument), and the forward model cannot
shrink its error by collapsing them. The intrinsic reward of a transition is its own
forward error, ``r_i = hp.intrinsic_coef * 0.5 ||f(phi(s), a) - phi(s')||^2``
(eta times the per-step ``L_F``). One ``update``:

1. PPO collects ``cfg.rollout_len`` steps of ``cfg.num_envs`` envs (:func:`ppo.collect`);
2. every transition ``(s, a, s')`` gets ``r_i`` from the module *before* it learns on
   them (``s'`` is the pre-reset observation, also at episode ends);
3. the module takes ``cfg.icm_steps`` Adam steps on the whole rollout;
4. PPO learns (:func:`ppo.learn`) on ``hp.extrinsic_coef * r + r_i``: 0 makes the agent
   purely curious (the paper's "no reward" setting), 1 adds curiosity to the env's reward.

The episode metrics are always the env's own returns. Box actions reach the module clipped
to the env's bounds, as the env ran them; with ``normalize_obs`` it sees the normalised
observations, as the policy does. The curiosity is episodic: GAE cuts the intrinsic return
at episode ends as it cuts the env's. Reward scaling (``scale_reward``) and data-parallel
shards are not supported (a ConfigError).
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
from jaxrl.algorithms import rollout as rollout_lib
from jaxrl.algorithms.demos import executed_action
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.networks.torsos import MLP
from jaxrl.types import Metrics

DATA_SHARDED = ppo.DATA_SHARDED
Batch = ppo.Batch
loss = ppo.loss
network = ppo.network


@dataclasses.dataclass(frozen=True)
class Config(ppo.Config):
    """PPO's settings plus the curiosity module's."""

    icm_hidden: tuple[int, ...] = (64,)  # hidden layers of the encoder, inverse and forward models
    icm_features: int = 32  # F: the size of phi(s)
    icm_steps: int = 4  # the module's Adam steps per update, each on the whole rollout

    def __post_init__(self):
        super().__post_init__()
        base.check_positive_ints(self, ("icm_features", "icm_steps"))
        if self.scale_reward:
            raise base.ConfigError(
                "ICM adds its own reward to the env's: scale_reward must be False"
            )
        if self.data_shards != 1:
            raise base.ConfigError("ICM runs on one shard: data_shards must be 1")


HPARAM_DEFAULTS = ppo.HPARAM_DEFAULTS | dict(
    icm_learning_rate=1e-3, icm_forward_weight=0.2, intrinsic_coef=1.0, extrinsic_coef=1.0
)
HPARAM_RANGES = ppo.HPARAM_RANGES | dict(
    icm_learning_rate=(0.0, 1.0),
    icm_forward_weight=(0.0, 1.0),
    intrinsic_coef=(0.0, 1e6),
    extrinsic_coef=(0.0, 1e6),
)


class HParams(ppo.HParams):
    """PPO's traced hyperparameters plus the module's Adam learning rate, the forward
    loss's weight beta, and the weights of the intrinsic (eta) and the env's reward."""

    icm_learning_rate: jax.Array
    icm_forward_weight: jax.Array
    intrinsic_coef: jax.Array
    extrinsic_coef: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """ConfigError for out-of-range hyperparameters (before compiling)."""
    del cfg
    base.check_ranges(hp, HPARAM_RANGES)


class State(ppo.State):
    """PPO's state plus the curiosity module's parameters and Adam state."""

    icm_params: dict
    icm_opt_state: optax.OptState


class CuriosityModule(nn.Module):
    """Encoder, inverse and forward models (tanh MLPs with ``hidden`` layers).

    ``__call__(obs [B, ...], action [B, A], next_obs [B, ...])`` returns the inverse
    model's output ``[B, A]`` (logits, or the predicted Box action), the forward model's
    prediction ``[B, F]`` and the target ``phi(s') [B, F]``; ``action`` is one-hot for
    discrete spaces. The forward model sees ``phi(s)`` and ``phi(s')`` through
    ``stop_gradient``.
    """

    hidden: tuple[int, ...]
    features: int
    action_dim: int

    def setup(self):
        self.encoder = nn.Sequential([MLP(self.hidden, "tanh"), nn.Dense(self.features)])
        self.inverse = nn.Sequential([MLP(self.hidden, "tanh"), nn.Dense(self.action_dim)])
        self.forward = nn.Sequential([MLP(self.hidden, "tanh"), nn.Dense(self.features)])

    def __call__(self, obs: jax.Array, action: jax.Array, next_obs: jax.Array):
        phi, phi_next = self.encoder(obs), self.encoder(next_obs)
        inverse = self.inverse(jnp.concatenate([phi, phi_next], -1))
        phi, phi_next = jax.lax.stop_gradient(phi), jax.lax.stop_gradient(phi_next)
        predicted = self.forward(jnp.concatenate([phi, action], -1))
        return inverse, predicted, phi_next


def _action_space(env: Env):
    return env.action_space(env.default_params())


def module(cfg: Config, env: Env) -> CuriosityModule:
    space = _action_space(env)
    action_dim = int(space.n) if isinstance(space, spaces.Discrete) else int(space.shape[-1])
    return CuriosityModule(cfg.icm_hidden, cfg.icm_features, action_dim)


def module_inputs(env: Env, obs, action, next_obs):
    """``(obs [B, D], action [B, A], next_obs [B, D])``: flat float32 observations; actions
    one-hot if discrete (``[B]``), clipped to the bounds if Box (``[B, A]``)."""
    flat = lambda o: o.reshape(o.shape[0], -1).astype(jnp.float32)  # noqa: E731
    space = _action_space(env)
    if isinstance(space, spaces.Discrete):
        action = jax.nn.one_hot(action, int(space.n))
    else:
        action = executed_action(env, action).reshape(action.shape[0], -1)
    return flat(obs), action.astype(jnp.float32), flat(next_obs)


def forward_error(cfg: Config, env: Env, icm_params: dict, obs, action, next_obs) -> jax.Array:
    """``0.5 ||f(phi(s), a) - phi(s')||^2`` ``[B]`` for transitions ``[B, ...]``."""
    _, predicted, target = module(cfg, env).apply(
        icm_params, *module_inputs(env, obs, action, next_obs)
    )
    return 0.5 * jnp.sum(jnp.square(predicted - target), axis=-1)


def intrinsic_reward(cfg: Config, env: Env, icm_params: dict, obs, action, next_obs, hp):
    """``hp.intrinsic_coef * forward_error`` ``[B]``: the curiosity reward."""
    return hp.intrinsic_coef * forward_error(cfg, env, icm_params, obs, action, next_obs)


def icm_loss(
    cfg: Config, env: Env, icm_params: dict, transitions: tuple, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """``(1 - beta) L_I + beta L_F`` on ``transitions = (obs, action, next_obs)``, each
    ``[B, ...]``. Metrics: both losses and, for discrete actions, the inverse model's
    accuracy."""
    obs, action, next_obs = module_inputs(env, *transitions)
    inverse, predicted, target = module(cfg, env).apply(icm_params, obs, action, next_obs)
    forward = jnp.mean(0.5 * jnp.sum(jnp.square(predicted - target), axis=-1))
    metrics = {"train/icm_forward_loss": forward}
    if isinstance(_action_space(env), spaces.Discrete):
        inverse_loss = jnp.mean(optax.softmax_cross_entropy(inverse, action))
        metrics["train/icm_inverse_accuracy"] = jnp.mean(
            jnp.argmax(inverse, -1) == jnp.argmax(action, -1)
        )
    else:
        inverse_loss = jnp.mean(0.5 * jnp.sum(jnp.square(inverse - action), axis=-1))
    metrics["train/icm_inverse_loss"] = inverse_loss
    beta = hp.icm_forward_weight
    return (1.0 - beta) * inverse_loss + beta * forward, metrics


def icm_optimizer(hp: HParams) -> optax.GradientTransformation:
    return optim.adam(hp.icm_learning_rate)


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """PPO's initial state, a fresh curiosity module and its Adam state."""
    key, key_icm = jax.random.split(key)
    agent = ppo.init(cfg, env, key, hp, env_params)
    space = _action_space(env)
    action = jnp.zeros((1,) + tuple(space.shape), space.dtype)
    first = module_inputs(env, agent.obs[:1], action, agent.obs[:1])
    icm_params = module(cfg, env).init(key_icm, *first)
    fields = {f.name: getattr(agent, f.name) for f in dataclasses.fields(agent)}
    return State(
        **fields, icm_params=icm_params, icm_opt_state=icm_optimizer(hp).init(icm_params)
    )


def train_module(
    cfg: Config, env: Env, state: State, transitions: tuple, hp: HParams
) -> tuple[dict, optax.OptState, Metrics]:
    """``cfg.icm_steps`` Adam steps of :func:`icm_loss` on ``transitions`` ``[B, ...]``;
    metrics of the last step."""
    tx = icm_optimizer(hp)
    grad_fn = jax.grad(lambda p: icm_loss(cfg, env, p, transitions, hp), has_aux=True)

    def step(carry, _):
        params, opt_state = carry
        grads, metrics = grad_fn(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), metrics

    (params, opt_state), metrics = jax.lax.scan(
        step, (state.icm_params, state.icm_opt_state), None, cfg.icm_steps
    )
    return params, opt_state, jax.tree.map(lambda x: x[-1], metrics)


LossFn = Callable[[Config, Env, dict, Batch, HParams], tuple[jax.Array, Metrics]]


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One ICM iteration: collect, intrinsic rewards, module steps, PPO learns on
    ``extrinsic_coef * r + r_i``.

    ``loss_fn`` (PPO's signature) replaces the policy loss, as in :func:`ppo.update`.
    Metrics: PPO's, the module's, ``train/intrinsic_reward`` (mean ``r_i``) and the env's
    episode returns.
    """
    state, rollout = ppo.collect(cfg, env, state)
    t, n = rollout.reward.shape
    transitions = rollout_lib.flatten((rollout.obs, rollout.action, rollout.final_obs), t * n)
    curiosity = intrinsic_reward(cfg, env, state.icm_params, *transitions, hp).reshape(t, n)
    icm_params, icm_opt_state, icm_metrics = train_module(cfg, env, state, transitions, hp)
    state = state.replace(icm_params=icm_params, icm_opt_state=icm_opt_state)
    reward = hp.extrinsic_coef * rollout.reward + curiosity
    state, metrics = ppo.learn(cfg, env, state, rollout.replace(reward=reward), hp, loss_fn)
    return state, metrics | icm_metrics | {"train/intrinsic_reward": jnp.mean(curiosity)}


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` ICM iterations as one scan; metrics stacked ``[num_updates]``."""
    return jax.lax.scan(lambda s, _: update(cfg, env, s, hp, loss_fn), state, None, num_updates)
