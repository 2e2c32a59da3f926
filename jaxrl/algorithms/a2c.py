"""Advantage actor-critic (A2C, the synchronous A3C; Mnih et al. 2016, arXiv:1602.01783).

One ``update`` rolls out ``cfg.rollout_len`` steps of ``cfg.num_envs`` auto-reset envs
(:mod:`jaxrl.algorithms.rollout`, shared with PPO), computes truncation-aware advantages,
and takes **one** gradient step on the whole batch:

    L = −mean(log π(a|s) · Â) + vf_coef · 0.5 · mean((V(s) − G)²) − ent_coef · mean(H[π(·|s)])

``G = Â + V(s)``. The advantage estimator is chosen by the traced ``gae_lambda``:
``1`` gives A3C's n-step returns (each step bootstraps from ``V`` at the end of the
rollout, so step ``t`` gets a ``T − t``-step return), ``0 < λ < 1`` GAE, ``0`` one-step TD.
Episode ends inside the rollout cut the return: terminations do not bootstrap,
truncations bootstrap from the pre-reset observation.

``Config.baseline = False`` drops the critic: the network is the actor alone, ``V ≡ 0``
(not learned), so ``Â`` is the discounted reward-to-go *within the rollout* and the value
term vanishes. That is REINFORCE; :mod:`jaxrl.algorithms.vpg` is this module with VPG's
defaults (long rollouts, Adam, normalised advantages).

Static ``Config``: shapes, ``optimizer`` (``"rmsprop"`` as in the A3C paper and SB3, or
``"adam"``), ``shared_torso``, ``baseline`` and the normalisation switches. Traced
``HParams``: every coefficient; the optimiser is rebuilt from them inside the traced
update, so one compiled program serves a vmapped grid of seeds x hyperparameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base, ppo
from jaxrl.algorithms import rollout as rollout_lib
from jaxrl.envs.base import Env
from jaxrl.losses.value import value_loss
from jaxrl.networks.torsos import ACTIVATIONS
from jaxrl.types import Metrics

OPTIMIZERS = ("rmsprop", "adam")
RMSPROP_DECAY = 0.99  # the A3C paper's alpha, as in SB3 and OpenAI baselines
OPTIMIZER_EPS = 1e-5  # RMSProp (SB3's rms_prop_eps) and Adam alike


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings. Defaults are SB3's A2C (and rl-zoo's CartPole settings)."""

    total_timesteps: int = 500_000  # per run; the horizon of learning-rate annealing
    num_envs: int = 8
    rollout_len: int = 5  # A3C's t_max
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    torso: str = "mlp"  # "mlp" or "cnn"
    shared_torso: bool = False  # one torso for actor and critic (A3C's Atari net) or two
    baseline: bool = True  # False: no critic, V = 0 (REINFORCE)
    optimizer: str = "rmsprop"  # "rmsprop" (decay 0.99, eps 1e-5) or "adam" (eps 1e-5)
    ortho_init: bool = True
    anneal_lr: bool = False
    clip_grad_norm: bool = True
    normalize_advantages: bool = False
    normalize_obs: bool = False
    scale_reward: bool = False
    reward_scaling_discount: float = 0.99

    def __post_init__(self):
        base.check_fields(self)
        base.check_ranges(self, {"reward_scaling_discount": (0.0, 1.0)})
        base.check_positive_ints(self, ("total_timesteps", "num_envs", "rollout_len"))
        base.check_choices(
            self, {"optimizer": OPTIMIZERS, "torso": ("mlp", "cnn"), "activation": ACTIVATIONS}
        )
        if self.shared_torso and not self.baseline:
            raise base.ConfigError("shared_torso=True needs baseline=True (there is no critic)")
        base.check_budget(self, "num_envs * rollout_len")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.rollout_len

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


HPARAM_DEFAULTS = dict(
    learning_rate=7e-4,
    discount=0.99,
    gae_lambda=1.0,
    ent_coef=0.0,
    vf_coef=0.5,
    max_grad_norm=0.5,
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    discount=(0.0, 1.0),
    gae_lambda=(0.0, 1.0),
    ent_coef=(0.0, 1e3),
    vf_coef=(0.0, 1e3),
    max_grad_norm=(0.0, 1e9),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, each a float32 array (scalar, or ``[R]`` for a sweep)."""

    learning_rate: jax.Array
    discount: jax.Array
    gae_lambda: jax.Array  # 1: n-step returns to the rollout end; < 1: GAE
    ent_coef: jax.Array
    vf_coef: jax.Array
    max_grad_norm: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """Raises ``ConfigError`` for out-of-range concrete hyperparameters (before compiling)."""
    del cfg
    base.check_ranges(hp, HPARAM_RANGES)


class State(struct.PyTreeNode):
    """Everything one run carries between updates (arrays only)."""

    params: dict
    opt_state: optax.OptState
    env_state: object
    obs: jax.Array  # [num_envs, *obs_shape]
    env_params: object
    key: jax.Array
    update_count: jax.Array  # int32 scalar


Batch = ppo.Batch  # obs, action, log_prob, value, advantage, target; every leaf [B, ...]
Rollout = rollout_lib.Rollout


class ActorOnly(nn.Module):
    """An ``ActorCritic``'s actor with the critic replaced by the constant ``V ≡ 0``.

    Same interface (``__call__``, ``policy``, ``value``); only the actor torso and policy
    head have parameters, so nothing is learned or stored for a critic.
    """

    net: nn.Module  # jaxrl.networks.ActorCritic

    def __call__(self, obs: jax.Array):
        return self.policy(obs), self.value(obs)

    def policy(self, obs: jax.Array):
        return self.net.policy(obs)

    def value(self, obs: jax.Array) -> jax.Array:
        """``obs [..., *obs_shape] -> zeros [...]``."""
        return jnp.zeros(obs.shape[: obs.ndim - self.net.obs_ndim], jnp.float32)


def network(cfg: Config, env: Env) -> nn.Module:
    """PPO's actor-critic for ``env`` (``cfg.shared_torso`` etc.); the actor alone without
    a baseline."""
    net = ppo.network(cfg, env)
    return net if cfg.baseline else ActorOnly(net)


def optimizer(cfg: Config, hp: HParams, lr: jax.Array) -> optax.GradientTransformation:
    """RMSProp or Adam, after global-norm clipping when enabled; built from traced values.

    RMSProp follows PyTorch / SB3: ``θ −= lr · g / (sqrt(ν) + ε)``, ``ν`` a 0.99-decayed
    mean of ``g²`` started at 0.
    """
    if cfg.optimizer == "rmsprop":
        opt = optim.rmsprop(lr, decay=RMSPROP_DECAY, eps=OPTIMIZER_EPS)
    else:
        opt = optim.adam(lr, eps=OPTIMIZER_EPS)
    if not cfg.clip_grad_norm:
        return opt
    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), opt)


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """Initial state: fresh network, optimiser state and reset envs."""
    env_params = env.default_params() if env_params is None else env_params
    key, key_net, key_env = jax.random.split(key, 3)
    obs, env_state = ppo.vec_env(cfg, env).reset(key_env, env_params)
    params = network(cfg, env).init(key_net, obs)
    return State(
        params=params,
        opt_state=optimizer(cfg, hp, hp.learning_rate).init(params),
        env_state=env_state,
        obs=obs,
        env_params=env_params,
        key=key,
        update_count=jnp.zeros((), jnp.int32),
    )


def policy_gradient_loss(log_prob: jax.Array, advantage: jax.Array) -> jax.Array:
    """REINFORCE's surrogate ``−mean(log π(a_t|s_t) · A_t)`` (Williams 1992).

    Args:
        log_prob: ``[B]`` log-probabilities of the taken actions under the current policy.
        advantage: ``[B]`` advantage estimates.

    Returns:
        A scalar whose gradient is the (negated) policy gradient. Equals
        ``rlax.policy_gradient_loss`` for categorical policies (tested); this form takes
        any distrax distribution's ``log_prob``, Gaussian too. No stop-gradient on the
        advantage: the update computes it from the pre-update parameters, and
        meta-gradients need ``∂A/∂γ``.
    """
    chex.assert_rank([log_prob, advantage], 1)
    chex.assert_equal_shape([log_prob, advantage])
    return -jnp.mean(log_prob * advantage)


def loss(
    cfg: Config, env: Env, params: dict, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """The A2C loss on ``batch`` (every leaf ``[B, ...]``); see the module docstring.

    Without a baseline the value term is 0 (there are no critic parameters).
    """
    chex.assert_rank([batch.advantage, batch.target, batch.value], 1)
    dist, value = network(cfg, env).apply(params, batch.obs)
    advantage = batch.advantage
    if cfg.normalize_advantages:
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    pg_loss = policy_gradient_loss(dist.log_prob(batch.action), advantage)
    v_loss = jnp.zeros((), jnp.float32)
    if cfg.baseline:
        v_loss = value_loss(value, batch.value, batch.target, jnp.float32(0.0), clip=False)
    entropy = jnp.mean(dist.entropy())
    total = pg_loss + hp.vf_coef * v_loss - hp.ent_coef * entropy
    metrics = {
        "train/total_loss": total,
        "train/policy_loss": pg_loss,
        "train/value_loss": v_loss,
        "train/entropy": entropy,
    }
    return total, metrics


def collect(cfg: Config, env: Env, state: State) -> tuple[State, Rollout]:
    """Rolls the current policy out for ``cfg.rollout_len`` steps of every env."""
    return rollout_lib.collect(ppo.vec_env(cfg, env), network(cfg, env), state, cfg.rollout_len)


def make_batch(cfg: Config, env: Env, params: dict, rollout: Rollout, hp: HParams) -> Batch:
    """Advantages and value targets (``rollout.advantages`` with ``hp.gae_lambda``), ``[B]``."""
    advantage, target = rollout_lib.advantages(
        network(cfg, env), params, rollout, hp.discount, hp.gae_lambda
    )
    batch = Batch(rollout.obs, rollout.action, rollout.log_prob, rollout.value, advantage, target)
    return rollout_lib.flatten(batch, cfg.steps_per_update)


LossFn = Callable[[Config, Env, dict, Batch, HParams], tuple[jax.Array, Metrics]]


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One iteration: collect ``rollout_len x num_envs`` steps, one gradient step on them.

    ``loss_fn`` (same signature as :func:`loss`) replaces the loss, e.g. to add a term.
    """
    state, rollout = collect(cfg, env, state)
    batch = make_batch(cfg, env, state.params, rollout, hp)
    lr = ppo.learning_rate(cfg, hp, state.update_count)
    grad_fn = jax.grad(lambda p: loss_fn(cfg, env, p, batch, hp), has_aux=True)
    grads, metrics = grad_fn(state.params)
    updates, opt_state = optimizer(cfg, hp, lr).update(grads, state.opt_state, state.params)
    metrics |= {
        "train/learning_rate": lr,
        "train/grad_norm": optax.global_norm(grads),
    } | rollout_lib.episode_metrics(rollout)
    state = state.replace(
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        update_count=state.update_count + 1,
    )
    return state, metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` iterations as one scan; metrics stacked ``[num_updates]``."""
    step = lambda s, _: update(cfg, env, s, hp, loss_fn)
    return jax.lax.scan(step, state, None, num_updates)


def act(cfg: Config, env: Env, params: dict, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Samples actions for a batch of observations (for evaluation or host actors)."""
    return network(cfg, env).apply(params, obs, method="policy").sample(seed=key)
