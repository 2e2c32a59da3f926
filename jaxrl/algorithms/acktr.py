"""ACKTR: actor-critic using Kronecker-factored trust region (Wu et al. 2017, arXiv:1708.05144).

A2C's data and loss with a natural-gradient step. One ``update`` rolls out
``cfg.rollout_len`` steps of ``cfg.num_envs`` envs and builds the batch exactly as
:mod:`jaxrl.algorithms.a2c` does (the shared :mod:`~jaxrl.algorithms.rollout`,
truncation-aware advantages by ``gae_lambda``: ``1`` is A3C's n-step return), takes the
gradient ``g`` of A2C's loss ``−mean(log π · Â) + vf_coef · ½ mean((V − G)²) − ent_coef · H``,
and then **one** K-FAC step:

    F̂  = K-FAC Fisher of the joint predictive distribution π(a|s) · N(v; V(s), σ² = 1)
    Δθ = F̂⁻¹ g                        (per layer: A⁻¹ ∇W G⁻¹, damped by λ)
    η  = min(η_max, sqrt(2δ / (Δθᵀ F̂ Δθ)))   (the trust region; ½η²ΔθᵀF̂Δθ ≤ δ)
    v  ← μ v + (1 − μ) η Δθ,  θ ← θ − v   (μ = ``momentum``; μ = 0: θ ← θ − η Δθ)

The critic's Gaussian output with unit variance makes its Fisher block the Gauss-Newton
matrix of the squared error (as in the paper); with ``shared_torso`` the shared layers
see both. ``F̂`` is sampled from the model's own predictive distribution
(``estimation_mode="fisher_gradients"``: actions from π, values from ``N(V, 1)``), its
Kronecker factors are bias-corrected moving averages with decay ``stats_decay``, and their
damped inverses are refreshed every ``inverse_update_period`` updates.
The K-FAC machinery is :mod:`jaxrl.optim.kfac` (pure functions; the same numbers as
kfac-jax's curvature estimator, which is not used: docs/acktr.md).

Static ``Config``: shapes, the network, the Fisher estimation mode, switches.
Traced ``HParams``: every number, the trust-region radius ``max_kl``, ``damping``,
``stats_decay`` and ``momentum`` included, so one compiled program serves a vmapped
grid of seeds x hyperparameters. Policies must be categorical (Discrete actions).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl.algorithms import a2c, base, ppo
from jaxrl.algorithms import rollout as rollout_lib
from jaxrl.algorithms.a2c import (  # noqa: F401  (the algorithm contract, re-exported)
    Batch,
    Rollout,
    act,
    collect,
    loss,
    make_batch,
)
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.networks.torsos import ACTIVATIONS
from jaxrl.optim import kfac
from jaxrl.types import Metrics
from jaxrl.utils.branch import run_if

CRITIC_VARIANCE = 1.0  # σ² of the critic's Gaussian output (the paper's σ = 1: Gauss-Newton)


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings: OpenAI Baselines' ACKTR defaults on A2C's network.

    ``rollout_len`` and the ``HParams`` defaults follow Baselines (20 steps, η_max 0.25,
    kfac_clip 0.001 = 2δ, damping 0.01, factor decay 0.99, momentum 0.9, linear η
    annealing); the net is A2C's (separate 64-64 tanh torsos).
    """

    total_timesteps: int = 500_000  # per run; the horizon of learning-rate annealing
    num_envs: int = 16
    rollout_len: int = 20
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    torso: str = "mlp"  # "mlp" or "cnn"
    shared_torso: bool = False
    ortho_init: bool = True
    estimation_mode: str = "fisher_gradients"  # see jaxrl.optim.kfac.ESTIMATION_MODES
    inverse_update_period: int = 1  # refresh the damped inverses every this many updates
    anneal_lr: bool = True  # η_max decays linearly to 0 over the run (Baselines)
    normalize_advantages: bool = False
    normalize_obs: bool = False
    scale_reward: bool = False
    reward_scaling_discount: float = 0.99

    def __post_init__(self):
        base.check_fields(self)
        base.check_ranges(self, {"reward_scaling_discount": (0.0, 1.0)})
        base.check_positive_ints(
            self, ("total_timesteps", "num_envs", "rollout_len", "inverse_update_period")
        )
        base.check_choices(
            self,
            {
                "estimation_mode": kfac.ESTIMATION_MODES,
                "torso": ("mlp", "cnn"),
                "activation": ACTIVATIONS,
            },
        )
        base.check_budget(self, "num_envs * rollout_len")

    @property
    def baseline(self) -> bool:
        """Always ``True``: ACKTR has a critic (A2C's functions read this switch)."""
        return True

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.rollout_len

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


HPARAM_DEFAULTS = dict(
    learning_rate=0.25,  # η_max
    discount=0.99,
    gae_lambda=1.0,
    ent_coef=0.01,
    vf_coef=0.5,
    max_kl=0.0005,  # δ; Baselines' kfac_clip = 0.001 = 2δ
    damping=0.01,
    stats_decay=0.99,
    momentum=0.9,
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1e3),
    discount=(0.0, 1.0),
    gae_lambda=(0.0, 1.0),
    ent_coef=(0.0, 1e3),
    vf_coef=(0.0, 1e3),
    max_kl=(0.0, 1e3),
    damping=(1e-8, 1e6),
    stats_decay=(0.0, 1.0),
    momentum=(0.0, 0.999),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, each a float32 array (scalar, or ``[R]`` for a sweep)."""

    learning_rate: jax.Array  # η_max, the largest step (annealed when cfg.anneal_lr)
    discount: jax.Array
    gae_lambda: jax.Array  # 1: n-step returns to the rollout end; < 1: GAE
    ent_coef: jax.Array
    vf_coef: jax.Array
    max_kl: jax.Array  # δ, the trust-region radius in (predicted) KL
    damping: jax.Array  # λ, added to each Kronecker-factored Fisher block
    stats_decay: jax.Array  # moving-average decay of the Kronecker factors
    momentum: jax.Array  # μ: the step is an EMA of past scaled natural gradients (0: none)

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """Raises ``ConfigError`` for out-of-range concrete hyperparameters, before compiling."""
    del cfg
    base.check_ranges(hp, HPARAM_RANGES)


class State(struct.PyTreeNode):
    """Everything one run carries between updates (arrays only)."""

    params: dict
    kfac_state: kfac.Curvature  # Kronecker factors (moving averages) and inverses
    opt_state: optax.OptState  # momentum buffer, shaped like params
    env_state: object
    obs: jax.Array  # [num_envs, *obs_shape]
    env_params: object
    key: jax.Array
    update_count: jax.Array  # int32 scalar


def network(cfg: Config, env: Env) -> nn.Module:
    """A2C's (PPO's) actor-critic. Raises ``ConfigError`` unless actions are Discrete."""
    action_space = env.action_space(env.default_params())
    if not isinstance(action_space, spaces.Discrete):
        raise base.ConfigError(
            "ACKTR needs a Discrete action space (its Fisher is that of a categorical "
            f"policy); got {type(action_space).__name__}"
        )
    return a2c.network(cfg, env)


def predictive_fn(cfg: Config, env: Env) -> kfac.PredictiveFn:
    """``(params, obs [B, ...]) ->`` the joint predictive distribution K-FAC factors.

    The policy as a categorical distribution over the logits ``[B, A]``, the critic as
    ``N(v; V(s), CRITIC_VARIANCE)`` over ``[B]``.
    """
    net = network(cfg, env)

    def fn(params: dict, obs: jax.Array) -> tuple[kfac.Categorical, kfac.Normal]:
        dist, value = net.apply(params, obs)
        return kfac.Categorical(dist.logits), kfac.Normal(value, CRITIC_VARIANCE)

    return fn


def _batch_obs_struct(cfg: Config, env: Env) -> jax.ShapeDtypeStruct:
    """The shape of a batch's observations, ``[num_envs * rollout_len, *obs_shape]``."""
    key = jax.eval_shape(lambda: jax.random.key(0))
    obs, _ = jax.eval_shape(lambda k: ppo.vec_env(cfg, env).reset(k, env.default_params()), key)
    return jax.ShapeDtypeStruct((cfg.steps_per_update, *obs.shape[1:]), obs.dtype)


@functools.cache
def layers(cfg: Config, env: Env) -> tuple[kfac.Layer, ...]:
    """The K-FAC blocks of this network at the batch shape (static, found once).

    Found from shapes alone (``jax.eval_shape``), so it is safe to call under a trace.
    """
    obs = _batch_obs_struct(cfg, env)
    key = jax.eval_shape(lambda: jax.random.key(0))
    params = jax.eval_shape(network(cfg, env).init, key, obs)
    return kfac.find_layers(predictive_fn(cfg, env), params, obs)


def momentum(hp: HParams) -> optax.GradientTransformation:
    """``v ← μ v + (1 − μ) u`` from ``v = 0`` (optax ``ema``, no debiasing), traced ``μ``.

    Baselines' ``MomentumOptimizer(lr · (1 − μ), μ)``: an average of past steps, so a
    steady direction moves ``η Δθ`` per update, the size the trust region allows (heavy
    ball, ``v ← μ v + u``, would move ``η Δθ / (1 − μ)``).
    """
    return optax.ema(decay=hp.momentum, debias=False)


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """Initial state: fresh network, empty Kronecker factors, zero momentum, reset envs."""
    env_params = env.default_params() if env_params is None else env_params
    key, key_net, key_env = jax.random.split(key, 3)
    obs, env_state = ppo.vec_env(cfg, env).reset(key_env, env_params)
    params = network(cfg, env).init(key_net, obs)
    return State(
        params=params,
        kfac_state=kfac.init(layers(cfg, env)),
        opt_state=momentum(hp).init(params),
        env_state=env_state,
        obs=obs,
        env_params=env_params,
        key=key,
        update_count=jnp.zeros((), jnp.int32),
    )


def natural_step(
    cfg: Config,
    env: Env,
    kfac_state: kfac.Curvature,
    params: dict,
    grads: dict,
    obs: jax.Array,
    key: jax.Array,
    update_count: jax.Array,
    hp: HParams,
) -> tuple[kfac.Curvature, dict, jax.Array, jax.Array]:
    """Fisher update, inverse refresh, ``Δθ = F̂⁻¹ g`` and the trust-region step size.

    Args:
        params, grads: the current parameters and the loss gradient.
        obs: ``[B, *obs_shape]``, the batch the Fisher is estimated on.
        key: draws the model's outputs for the sampled Fisher.
        update_count: int32 scalar; the inverses refresh when it is a multiple of
            ``cfg.inverse_update_period``.

    Returns:
        ``(kfac_state, Δθ, η, Δθᵀ F̂ Δθ)``; the update is ``−η Δθ`` (before momentum).
    """
    blocks = layers(cfg, env)
    kfac_state = kfac.update_curvature(
        blocks, kfac_state, key, predictive_fn(cfg, env), params, obs, hp.stats_decay,
        cfg.estimation_mode,
    )  # fmt: skip
    refresh = lambda c: (kfac.update_inverses(blocks, c, hp.damping), {})
    period = cfg.inverse_update_period
    due = True if period == 1 else update_count % period == 0
    kfac_state, _ = run_if(due, refresh, kfac_state, ("a_inv", "g_inv"))
    direction = kfac.natural_gradient(blocks, kfac_state, grads)
    max_step = ppo.learning_rate(cfg, hp, update_count)
    step, quad = kfac.trust_region_step_size(grads, direction, max_step, hp.max_kl)
    return kfac_state, direction, step, quad


LossFn = Callable[[Config, Env, dict, Batch, HParams], tuple[jax.Array, Metrics]]


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One iteration: collect ``rollout_len x num_envs`` steps, one K-FAC trust-region step.

    ``loss_fn`` (same signature as :func:`loss`) replaces A2C's loss; its metrics are
    returned with ``train/step_size`` (η), ``train/predicted_kl`` (½η²ΔθᵀF̂Δθ, the
    quadratic model's KL before momentum) and ``train/kl`` (the measured mean
    ``KL(π_old ‖ π_new)`` on the batch).
    """
    state, rollout = collect(cfg, env, state)
    batch = make_batch(cfg, env, state.params, rollout, hp)
    key, key_fisher = jax.random.split(state.key)
    grads, metrics = jax.grad(lambda p: loss_fn(cfg, env, p, batch, hp), has_aux=True)(state.params)
    kfac_state, direction, step, quad = natural_step(
        cfg, env, state.kfac_state, state.params, grads, batch.obs, key_fisher,
        state.update_count, hp,
    )  # fmt: skip
    scaled = jax.tree.map(lambda d: step * d, direction)
    updates, opt_state = momentum(hp).update(scaled, state.opt_state)
    params = jax.tree.map(jnp.subtract, state.params, updates)

    net = network(cfg, env)
    old_policy = net.apply(state.params, batch.obs, method="policy")
    new_policy = net.apply(params, batch.obs, method="policy")
    max_step = ppo.learning_rate(cfg, hp, state.update_count)
    metrics |= {
        "train/learning_rate": max_step,
        "train/step_size": step,
        "train/trust_region_active": (step < max_step).astype(jnp.float32),
        "train/predicted_kl": 0.5 * step**2 * quad,
        "train/kl": jnp.mean(old_policy.kl_divergence(new_policy)),
        "train/grad_norm": optax.global_norm(grads),
    } | rollout_lib.episode_metrics(rollout)
    state = state.replace(
        params=params,
        kfac_state=kfac_state,
        opt_state=opt_state,
        key=key,
        update_count=state.update_count + 1,
    )
    return state, metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` iterations as one scan; metrics stacked ``[num_updates]``."""
    step = lambda s, _: update(cfg, env, s, hp, loss_fn)
    return jax.lax.scan(step, state, None, num_updates)
