"""LPG, the Learned Policy Gradient (Oh et al., NeurIPS 2020, arXiv:2007.08794).

A meta-network ``η`` reads each rollout segment and emits per step a scalar policy target
``π̂_t`` and a categorical prediction target ``ŷ_t``; agents (tabular or a small MLP) learn
with no hand-written RL loss::

    L_agent(θ) = − mean_t[ log π_θ(a_t|s_t) · π̂_t ] + α_y · mean_t[ KL(y_θ(s_t) ‖ ŷ_t) ]

``η`` is meta-trained by differentiating an A2C-style objective of the agent after its last
``K`` updates (spec ``/work/shared/specs/meta_rl.md`` section 1)::

    L_meta(η) = − mean[log π_θK(a|s) · Â] − β0 H(π_θ) − β1 H(y_θ) + β2 ‖π̂‖² + β3 ‖ŷ‖²

Conventions: rollouts are time-major ``[T, B, ...]``; one *lifetime* is one agent (``B``
envs sharing one ``EnvParams``); the meta-batch vmaps ``num_lifetimes`` lifetimes. ``Config``
is static, ``HParams`` traced. Nothing here calls ``jit``. The update rule is any function
``rule_fn(cfg, eta, inputs) -> (pi_hat [T, B], log_y_hat [T, B, m])``: :func:`lpg_apply` is
the learned one, :func:`returns_rule` the hand-written REINFORCE check (acceptance L0).

LPG targets are computed *outside* the agent's inner ``jax.grad`` and passed in as
arguments (DiscoRL style): the inner gradient treats them as constants while the outer
gradient still sees them as functions of ``η``. ``Config.grad_through_inputs=False`` stops
gradients on LPG's inputs instead (GROOVE style).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import serialization, struct

from jaxrl import optim
from jaxrl.algorithms import base
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.envs.wrappers import AutoReset, EpisodeStats
from jaxrl.errors import ConfigError
from jaxrl.logger.writers import atomic_write_bytes
from jaxrl.losses import returns
from jaxrl.networks.functional import dense, dense_init, lstm_step

Params = Any
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Config:
    """Static LPG settings: shapes, loop lengths, switches and the bandit's arm grids.

    Attributes:
        num_lifetimes: parallel lifetimes (agents) in one meta-update.
        num_envs: ``B``, envs per lifetime.
        rollout_len: ``T``, steps per rollout segment.
        num_inner: ``K``, agent updates the meta-gradient flows through.
        lifetime_len: agent updates in one lifetime (a multiple of ``K`` is natural).
        lstm_size, pred_dim, phi_hidden: LPG widths (``m = pred_dim``).
        agent: ``"tabular"`` (two zero-init linear tables over the observation, i.e. lookup
            tables for one-hot observations) or ``"mlp"``.
        agent_hidden: MLP agent width (two layers).
        agent_optimizer: ``"sgd"`` (tabular) or ``"adam"`` (MLP).
        lr_grid, alpha_y_grid: the bandit's arms are their product (spec 1.7).
        use_bandit: sample (lr, α_y) per lifetime from the bandit; else use ``HParams``.
        grad_through_inputs: full nested differentiation (DiscoRL); False = GROOVE.
        use_next_y: feed ``φ(y(s_{t+1}))``; False is the bootstrapping ablation (L6).
        stagger: stagger lifetime starts so the meta-batch mixes early and late agents.
    """

    num_lifetimes: int = 32
    num_envs: int = 16
    rollout_len: int = 20
    num_inner: int = 5
    lifetime_len: int = 300
    lstm_size: int = 32
    pred_dim: int = 8
    phi_hidden: int = 16
    agent: str = "tabular"
    agent_hidden: int = 32
    agent_optimizer: str = "sgd"
    lr_grid: tuple[float, ...] = (20.0, 40.0, 80.0, 160.0, 320.0)
    alpha_y_grid: tuple[float, ...] = (0.1, 0.5, 1.0)
    use_bandit: bool = True
    grad_through_inputs: bool = True
    use_next_y: bool = True
    stagger: bool = True

    def __post_init__(self):
        base.check_fields(self)
        for name in ("num_lifetimes", "num_envs", "rollout_len", "num_inner", "lifetime_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.agent not in ("tabular", "mlp"):
            raise ConfigError(f"agent must be 'tabular' or 'mlp', got {self.agent!r}")
        if self.agent_optimizer not in ("sgd", "adam"):
            raise ConfigError(
                f"agent_optimizer must be 'sgd' or 'adam', got {self.agent_optimizer!r}"
            )
        if not self.lr_grid or not self.alpha_y_grid:
            raise ConfigError("lr_grid and alpha_y_grid must be non-empty")
        if self.pred_dim < 2 or self.lstm_size < 1:
            raise ConfigError("need pred_dim >= 2 and lstm_size >= 1")

    @property
    def num_arms(self) -> int:
        return len(self.lr_grid) * len(self.alpha_y_grid)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters (float32 scalars; vmappable and differentiable).

    ``learning_rate``/``max_grad_norm``: meta-optimiser (Adam + global-norm clip).
    ``agent_learning_rate``/``alpha_y``: the agent's, used when the bandit is off.
    ``discount``: γ of the LPG input and of the meta-critic's GAE; ``gae_lambda``: its λ.
    ``critic_learning_rate``: Adam step of the separate value function of the meta-objective.
    ``ent_coef``, ``pred_ent_coef``, ``pi_hat_l2``, ``y_hat_l2``: β0..β3 (GROOVE's values).
    ``bandit_temperature``, ``bandit_bonus``: softmax temperature and exploration bonus.
    """

    learning_rate: jax.Array
    max_grad_norm: jax.Array
    agent_learning_rate: jax.Array
    alpha_y: jax.Array
    discount: jax.Array
    gae_lambda: jax.Array
    critic_learning_rate: jax.Array
    ent_coef: jax.Array
    pred_ent_coef: jax.Array
    pi_hat_l2: jax.Array
    y_hat_l2: jax.Array
    bandit_temperature: jax.Array
    bandit_bonus: jax.Array

    @classmethod
    def make(cls, **kw) -> HParams:
        """Defaults of spec 1.5-1.7 (meta Adam 1e-4, clip 0.5, β = GROOVE's column)."""
        defaults = dict(
            learning_rate=1e-4,
            max_grad_norm=0.5,
            agent_learning_rate=40.0,
            alpha_y=0.5,
            discount=0.99,
            gae_lambda=0.95,
            critic_learning_rate=0.05,
            ent_coef=0.05,
            pred_ent_coef=0.001,
            pi_hat_l2=0.005,
            y_hat_l2=0.001,
            bandit_temperature=0.1,
            bandit_bonus=0.2,
        )
        return base.make_hparams(cls, defaults, kw)


class Batch(struct.PyTreeNode):
    """One rollout segment, time-major.

    Attributes: ``obs`` ``[T, B, D]``; ``action`` int32 ``[T, B]``; ``reward`` ``[T, B]``;
    ``done`` ``[T, B]`` float (terminated or truncated); ``terminated`` ``[T, B]`` float;
    ``next_obs`` ``[T, B, D]`` (the observation reached, before auto-reset);
    ``episode_return`` ``[T, B]`` (finished episode's return where ``done``, else 0).
    """

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    done: jax.Array
    terminated: jax.Array
    next_obs: jax.Array
    episode_return: jax.Array


class LPGInputs(struct.PyTreeNode):
    """Per-step LPG inputs ``[r_t, d_t, γ, π(a_t|s_t), y(s_t), y(s_{t+1})]``.

    Attributes: ``reward``, ``done``, ``pi_a`` ``[T, B]``; ``discount`` ``[]``;
    ``y_t``, ``y_tp1`` ``[T, B, m]`` probabilities.
    """

    reward: jax.Array
    done: jax.Array
    discount: jax.Array
    pi_a: jax.Array
    y_t: jax.Array
    y_tp1: jax.Array


class Lifetime(struct.PyTreeNode):
    """One agent's lifetime: parameters, optimiser states, its task and its envs.

    ``agent_lr``/``alpha_y``/``arm`` are the bandit's pick; ``num_updates`` counts agent
    updates so far; ``return_ema`` tracks the return of finished episodes (bandit score).
    """

    theta: Params
    agent_opt: Any
    critic: Params
    critic_opt: Any
    env_params: Any
    env_state: Any
    obs: jax.Array
    agent_lr: jax.Array
    alpha_y: jax.Array
    arm: jax.Array
    num_updates: jax.Array
    return_ema: jax.Array


class Bandit(struct.PyTreeNode):
    """Hyperparameter bandit: ``scores`` ``[A, W]`` last ``W`` final returns per arm (ring
    buffer), ``counts`` int32 ``[A]`` times each arm has been scored."""

    scores: jax.Array
    counts: jax.Array


class MetaState(struct.PyTreeNode):
    """Meta-training state: LPG params ``eta``, meta-optimiser state, per training environment
    a :class:`Lifetime` batch (leading axis ``num_lifetimes``) and a :class:`Bandit` (tuples
    in the order of the ``envs`` given to :func:`init`), the key and the meta-update counter."""

    eta: Params
    meta_opt: Any
    lifetimes: tuple[Lifetime, ...]
    bandits: tuple[Bandit, ...]
    key: jax.Array
    step: jax.Array


# ----------------------------------------------------------------------------- agent


class _MLPTwoHeads(nn.Module):
    """Two ReLU layers of ``hidden`` units, then one linear head per entry of ``outs``."""

    hidden: int
    outs: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        for _ in range(2):
            x = nn.relu(nn.Dense(self.hidden)(x))
        return tuple(nn.Dense(n)(x) for n in self.outs)


def init_agent(cfg: Config, key: jax.Array, obs_dim: int, num_actions: int) -> Params:
    """Agent parameters θ: tabular ``{"pi": [D, A], "y": [D, m]}`` zeros, or MLP params."""
    if cfg.agent == "tabular":
        return {"pi": jnp.zeros((obs_dim, num_actions)), "y": jnp.zeros((obs_dim, cfg.pred_dim))}
    module = _MLPTwoHeads(cfg.agent_hidden, (num_actions, cfg.pred_dim))
    return module.init(key, jnp.zeros((obs_dim,)))


def agent_apply(cfg: Config, theta: Params, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Policy and prediction logits ``([..., A], [..., m])`` for observations ``[..., D]``
    (or integer state indices ``[...]`` for the tabular agent: a table lookup)."""
    if cfg.agent == "tabular":
        if jnp.issubdtype(obs.dtype, jnp.integer):
            return theta["pi"][obs], theta["y"][obs]
        return (
            jnp.einsum("...d,da->...a", obs, theta["pi"]),
            jnp.einsum("...d,dm->...m", obs, theta["y"]),
        )
    num_actions = jax.tree.leaves(theta["params"]["Dense_2"])[0].shape[-1]
    return _MLPTwoHeads(cfg.agent_hidden, (num_actions, cfg.pred_dim)).apply(theta, obs)


def agent_tx(cfg: Config, learning_rate: jax.Array) -> optax.GradientTransformation:
    """The agent optimiser, rebuilt from a traced learning rate (SGD or Adam). Meta-gradients
    pass through it, so Adam is :func:`jaxrl.optim.adam` (finite where ``ν = 0``)."""
    if cfg.agent_optimizer == "sgd":
        return optax.sgd(learning_rate)
    return optim.adam(learning_rate)


def init_critic(cfg: Config, key: jax.Array, obs_dim: int) -> Params:
    """Meta-critic params (used only by the meta-objective): ``[D]`` zeros or an MLP."""
    if cfg.agent == "tabular":
        return {"v": jnp.zeros((obs_dim,))}
    return _MLPTwoHeads(cfg.agent_hidden, (1,)).init(key, jnp.zeros((obs_dim,)))


def critic_apply(cfg: Config, critic: Params, obs: jax.Array) -> jax.Array:
    """State values ``[...]`` for observations ``[..., D]`` (tabular: or indices ``[...]``)."""
    if cfg.agent == "tabular":
        if jnp.issubdtype(obs.dtype, jnp.integer):
            return critic["v"][obs]
        return jnp.einsum("...d,d->...", obs, critic["v"])
    return _MLPTwoHeads(cfg.agent_hidden, (1,)).apply(critic, obs)[0][..., 0]


# ----------------------------------------------------------------------------- LPG network


def init_lpg(cfg: Config, key: jax.Array) -> Params:
    """LPG params η: ``phi`` (Dense(16)→ReLU→Dense(1)), ``lstm`` (one linear on ``[x, h]``
    giving gates i, g, f, o; LeCun-normal), ``pi_head`` (→1) and ``y_head`` (→m)."""
    k = jax.random.split(key, 5)
    h = cfg.lstm_size
    return {
        "phi": {"l1": dense_init(k[0], cfg.pred_dim, cfg.phi_hidden),
                "l2": dense_init(k[1], cfg.phi_hidden, 1)},
        "lstm": dense_init(k[2], 6 + h, 4 * h),
        "pi_head": dense_init(k[3], h, 1),
        "y_head": dense_init(k[4], h, cfg.pred_dim),
    }  # fmt: skip


def backward_scan(step_fn: Callable, carry0: Any, xs: Any, done: jax.Array) -> jax.Array:
    """Runs ``step_fn(carry, x_t) -> (carry, out_t)`` from ``t = T-1`` down to 0.

    Where ``done[t]`` the carry coming from ``t + 1`` (the next episode) is zeroed first, so
    the output at ``t`` summarises only steps ``t..`` of its own episode inside the segment.

    Args:
        step_fn: the recurrence.
        carry0: initial carry (the segment end), a pytree of ``[B, ...]`` arrays.
        xs: pytree of ``[T, B, ...]`` per-step inputs.
        done: ``[T, B]`` episode-end flags.

    Returns:
        Outputs stacked ``[T, ...]``.
    """

    def body(carry, inputs):
        x, d = inputs
        keep = 1.0 - d
        carry = jax.tree.map(lambda c: c * keep.reshape(keep.shape + (1,) * (c.ndim - 1)), carry)
        return step_fn(carry, x)

    _, outs = jax.lax.scan(body, carry0, (xs, done), reverse=True)
    return outs


def lpg_apply(cfg: Config, eta: Params, inputs: LPGInputs) -> tuple[jax.Array, jax.Array]:
    """The LPG network: targets ``π̂ [T, B]`` and ``log ŷ [T, B, m]`` for one segment.

    ``x_t = [r_t, d_t, γ, π(a_t|s_t), φ(y_t), (1 − d_t) φ(y_{t+1})]`` (6 inputs) goes through
    a backward-in-time LSTM reset at episode ends, a ReLU, then ``π̂ = Linear(1)`` and
    ``ŷ = softmax(Linear(m))``.
    """
    chex.assert_rank([inputs.reward, inputs.done, inputs.pi_a], 2)
    chex.assert_rank([inputs.y_t, inputs.y_tp1], 3)

    def phi(y):
        return dense(eta["phi"]["l2"], jax.nn.relu(dense(eta["phi"]["l1"], y)))[..., 0]

    phi_tp1 = phi(inputs.y_tp1) * (1.0 - inputs.done)
    if not cfg.use_next_y:
        phi_tp1 = jnp.zeros_like(phi_tp1)
    gamma = jnp.broadcast_to(inputs.discount, inputs.reward.shape)
    x = jnp.stack(
        [inputs.reward, inputs.done, gamma, inputs.pi_a, phi(inputs.y_t), phi_tp1], axis=-1
    )
    batch = inputs.reward.shape[1]
    zeros = jnp.zeros((batch, cfg.lstm_size), x.dtype)
    h = backward_scan(lambda c, x_t: lstm_step(eta["lstm"], c, x_t), (zeros, zeros), x, inputs.done)
    h = jax.nn.relu(h)
    pi_hat = dense(eta["pi_head"], h)[..., 0]
    log_y_hat = jax.nn.log_softmax(dense(eta["y_head"], h), axis=-1)
    return pi_hat, log_y_hat


def returns_rule(cfg: Config, eta: Params, inputs: LPGInputs) -> tuple[jax.Array, jax.Array]:
    """Hand-written rule (acceptance L0): ``π̂_t`` = discounted return-to-go inside the segment
    (the same :func:`backward_scan`), ``ŷ`` uniform. With ``α_y = 0`` this is REINFORCE."""
    del eta
    zeros = jnp.zeros(inputs.reward.shape[1:], inputs.reward.dtype)

    def step(g, r_t):
        g = r_t + inputs.discount * g
        return g, g

    pi_hat = backward_scan(step, zeros, inputs.reward, inputs.done)
    log_y_hat = jnp.full(inputs.y_t.shape, -jnp.log(float(cfg.pred_dim)), inputs.y_t.dtype)
    return pi_hat, log_y_hat


# ----------------------------------------------------------------------------- agent update


def make_inputs(cfg: Config, theta: Params, batch: Batch, discount: jax.Array) -> LPGInputs:
    """LPG inputs from a batch and the agent ``θ`` that produced it (differentiable in θ)."""
    pi_logits, y_logits = agent_apply(cfg, theta, batch.obs)
    _, y_logits_tp1 = agent_apply(cfg, theta, batch.next_obs)
    pi = jax.nn.softmax(pi_logits, axis=-1)
    pi_a = jnp.take_along_axis(pi, batch.action[..., None], axis=-1)[..., 0]
    return LPGInputs(
        reward=batch.reward,
        done=batch.done,
        discount=discount,
        pi_a=pi_a,
        y_t=jax.nn.softmax(y_logits, axis=-1),
        y_tp1=jax.nn.softmax(y_logits_tp1, axis=-1),
    )


def agent_loss(
    cfg: Config,
    theta: Params,
    batch: Batch,
    pi_hat: jax.Array,
    log_y_hat: jax.Array,
    alpha_y: jax.Array,
) -> jax.Array:
    """``− mean[log π_θ(a|s) π̂] + α_y mean[KL(y_θ(s) ‖ ŷ)]`` (spec 1.4); scalar.

    Args:
        theta: agent params; batch: a ``[T, B]`` segment.
        pi_hat: ``[T, B]`` policy targets; log_y_hat: ``[T, B, m]`` log prediction targets.
            Both are constants for this loss's gradient (computed outside it).
        alpha_y: KL weight ``[]``.
    """
    chex.assert_equal_shape([pi_hat, batch.reward])
    pi_logits, y_logits = agent_apply(cfg, theta, batch.obs)
    log_pi = jax.nn.log_softmax(pi_logits, axis=-1)
    log_pi_a = jnp.take_along_axis(log_pi, batch.action[..., None], axis=-1)[..., 0]
    log_y = jax.nn.log_softmax(y_logits, axis=-1)
    kl = jnp.sum(jnp.exp(log_y) * (log_y - log_y_hat), axis=-1)
    return -jnp.mean(log_pi_a * pi_hat) + alpha_y * jnp.mean(kl)


def _entropy(logits: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def agent_update(
    cfg: Config,
    rule_fn: Callable,
    eta: Params,
    theta: Params,
    agent_opt: Any,
    batch: Batch,
    agent_lr: jax.Array,
    alpha_y: jax.Array,
    discount: jax.Array,
) -> tuple[Params, Any, Metrics]:
    """One agent step with targets from ``rule_fn``; differentiable w.r.t. ``eta``.

    Returns the new ``θ``, optimiser state and the regulariser terms of the meta-objective:
    ``"ent_pi"``/``"ent_y"`` (entropies of the *updated* agent on this batch's states) and
    ``"pi_hat_sq"``/``"y_hat_sq"`` (mean ``π̂²`` and mean ``‖ŷ‖²``).
    """
    inputs = make_inputs(cfg, theta, batch, discount)
    if not cfg.grad_through_inputs:
        inputs = jax.lax.stop_gradient(inputs)
    pi_hat, log_y_hat = rule_fn(cfg, eta, inputs)
    grads = jax.grad(agent_loss, argnums=1)(cfg, theta, batch, pi_hat, log_y_hat, alpha_y)
    updates, agent_opt = agent_tx(cfg, agent_lr).update(grads, agent_opt, theta)
    theta = optax.apply_updates(theta, updates)
    pi_logits, y_logits = agent_apply(cfg, theta, batch.obs)
    regs = {
        "ent_pi": jnp.mean(_entropy(pi_logits)),
        "ent_y": jnp.mean(_entropy(y_logits)),
        "pi_hat_sq": jnp.mean(jnp.square(pi_hat)),
        "y_hat_sq": jnp.mean(jnp.sum(jnp.square(jnp.exp(log_y_hat)), axis=-1)),
    }
    return theta, agent_opt, regs


# ----------------------------------------------------------------------------- rollouts, critic


def wrap_env(env: Env) -> Env:
    """The stack LPG runs: ``EpisodeStats(AutoReset(env))`` (vmapped over ``B`` here)."""
    return EpisodeStats(AutoReset(env))


def sample_env_params(env: Env, key: jax.Array) -> Any:
    """A lifetime's task: ``env.sample_params(key)`` when the env has one, else defaults."""
    if hasattr(env, "sample_params"):
        return env.sample_params(key)
    return env.default_params()


def rollout(
    cfg: Config, env: Env, theta: Params, env_params: Any, env_state: Any, obs: jax.Array,
    key: jax.Array,
) -> tuple[Batch, Any, jax.Array]:  # fmt: skip
    """Collects ``T`` steps in ``B`` envs with the agent's stochastic policy.

    Args:
        env: the raw env (wrapped here by :func:`wrap_env`); env_state/obs: ``[B, ...]``.

    Returns:
        ``(batch [T, B], env_state, obs)``. Actions are samples, so no gradient flows here.
    """
    wenv = wrap_env(env)
    theta = jax.lax.stop_gradient(theta)

    def step(carry, key_t):
        env_state, obs = carry
        key_act, key_env = jax.random.split(key_t)
        logits, _ = agent_apply(cfg, theta, obs)
        action = jax.random.categorical(key_act, logits).astype(jnp.int32)
        keys = jax.random.split(key_env, obs.shape[0])
        next_obs, env_state, st = jax.vmap(wenv.step, in_axes=(0, 0, 0, None))(
            keys, env_state, action, env_params
        )
        float_dtype = jnp.result_type(float)
        item = Batch(
            obs=obs,
            action=action,
            reward=st.reward.astype(float_dtype),
            done=st.done.astype(float_dtype),
            terminated=st.terminated.astype(float_dtype),
            next_obs=st.final_obs,
            episode_return=st.info["episode_return"].astype(float_dtype),
        )
        return (env_state, next_obs), item

    (env_state, obs), batch = jax.lax.scan(
        step, (env_state, obs), jax.random.split(key, cfg.rollout_len)
    )
    return batch, env_state, obs


def mean_episode_return(batch: Batch) -> tuple[jax.Array, jax.Array]:
    """``(mean return of episodes finished in the batch, number finished)``; 0 if none."""
    n = jnp.sum(batch.done)
    return jnp.sum(batch.episode_return * batch.done) / jnp.maximum(n, 1.0), n


def critic_advantages(cfg: Config, critic: Params, batch: Batch, hp: HParams) -> jax.Array:
    """GAE advantages ``[T, B]`` of the meta-critic (γ = ``hp.discount``, λ = ``hp.gae_lambda``),
    bootstrapping from ``next_obs`` unless terminated; no gradient to the critic."""
    critic = jax.lax.stop_gradient(critic)
    v_tm1 = critic_apply(cfg, critic, batch.obs)
    v_t = critic_apply(cfg, critic, batch.next_obs)
    discount_t = hp.discount * (1.0 - batch.terminated)
    lambda_t = hp.gae_lambda * (1.0 - (batch.done - batch.terminated))
    gae = jax.vmap(returns.gae, in_axes=1, out_axes=1)
    return gae(batch.reward, discount_t, lambda_t, v_tm1, v_t)


def critic_update(
    cfg: Config, critic: Params, critic_opt: Any, batch: Batch, hp: HParams
) -> tuple[Params, Any]:
    """One Adam step of the meta-critic on ``0.5 mean (v(s) − sg(v(s) + Â))²`` (TD(λ))."""
    critic = jax.lax.stop_gradient(critic)
    batch = jax.lax.stop_gradient(batch)
    target = critic_apply(cfg, critic, batch.obs) + critic_advantages(cfg, critic, batch, hp)

    def loss(c):
        return 0.5 * jnp.mean(jnp.square(critic_apply(cfg, c, batch.obs) - target))

    grads = jax.grad(loss)(critic)
    updates, critic_opt = optax.adam(hp.critic_learning_rate).update(grads, critic_opt, critic)
    return optax.apply_updates(critic, updates), critic_opt


# ----------------------------------------------------------------------------- meta-objective


def meta_objective(
    cfg: Config, theta: Params, batch: Batch, advantages: jax.Array, regs: Metrics, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """``−mean[log π_θK(a|s) Â_norm] − β0 H(π) − β1 H(y) + β2 π̂² + β3 ‖ŷ‖²`` (spec 1.5).

    Args:
        theta: the agent after ``K`` updates; batch: a fresh ``[T, B]`` rollout of it.
        advantages: ``[T, B]``, normalised here over the batch (constants).
        regs: the ``K``-averaged terms from :func:`agent_update`.
    """
    chex.assert_equal_shape([advantages, batch.reward])
    adv = jax.lax.stop_gradient(advantages)
    adv = (adv - jnp.mean(adv)) / (jnp.std(adv) + 1e-8)
    pi_logits, _ = agent_apply(cfg, theta, batch.obs)
    log_pi = jax.nn.log_softmax(pi_logits, axis=-1)
    log_pi_a = jnp.take_along_axis(log_pi, batch.action[..., None], axis=-1)[..., 0]
    pg = -jnp.mean(log_pi_a * adv)
    loss = (
        pg
        - hp.ent_coef * regs["ent_pi"]
        - hp.pred_ent_coef * regs["ent_y"]
        + hp.pi_hat_l2 * regs["pi_hat_sq"]
        + hp.y_hat_l2 * regs["y_hat_sq"]
    )
    return loss, {"meta/pg": pg, **{f"meta/{k}": v for k, v in regs.items()}}


def fixed_data_meta_loss(
    cfg: Config, rule_fn: Callable, eta: Params, theta: Params, agent_opt: Any,
    batches: Batch, eval_batch: Batch, advantages: jax.Array, agent_lr: jax.Array,
    alpha_y: jax.Array, hp: HParams,
) -> jax.Array:  # fmt: skip
    """Meta-loss on pre-collected data: ``K`` agent updates on ``batches`` (leading axis
    ``K``), then :func:`meta_objective` on ``eval_batch`` with given ``advantages [T, B]``.
    A smooth function of ``eta``: used by the finite-difference check (acceptance L1)."""

    def body(carry, batch):
        theta, opt = carry
        theta, opt, regs = agent_update(
            cfg, rule_fn, eta, theta, opt, batch, agent_lr, alpha_y, hp.discount
        )
        return (theta, opt), regs

    (theta, _), regs = jax.lax.scan(body, (theta, agent_opt), batches)
    regs = jax.tree.map(jnp.mean, regs)
    return meta_objective(cfg, theta, eval_batch, advantages, regs, hp)[0]


def lifetime_meta_loss(
    cfg: Config, env: Env, rule_fn: Callable, eta: Params, lt: Lifetime, key: jax.Array,
    hp: HParams,
) -> tuple[jax.Array, tuple[Lifetime, Metrics]]:  # fmt: skip
    """One lifetime's meta-loss: ``K`` (rollout, critic step, agent step) rounds, then a fresh
    rollout of ``θ_K`` scored with the critic's normalised GAE advantages.

    Returns ``(loss, (lifetime after the K updates and the critic steps, metrics))``; the
    returned lifetime still depends on ``eta`` (callers stop its gradient).
    """
    keys = jax.random.split(key, cfg.num_inner + 1)

    def body(lt, key_k):
        batch, env_state, obs = rollout(
            cfg, env, lt.theta, lt.env_params, lt.env_state, lt.obs, key_k
        )
        critic, critic_opt = critic_update(cfg, lt.critic, lt.critic_opt, batch, hp)
        theta, agent_opt, regs = agent_update(
            cfg, rule_fn, eta, lt.theta, lt.agent_opt, batch, lt.agent_lr, lt.alpha_y, hp.discount
        )
        ret, n = mean_episode_return(batch)
        lt = lt.replace(
            theta=theta, agent_opt=agent_opt, critic=critic, critic_opt=critic_opt,
            env_state=env_state, obs=obs, num_updates=lt.num_updates + 1,
        )  # fmt: skip
        return lt, (regs, ret, n)

    lt, (regs, rets, ns) = jax.lax.scan(body, lt, keys[:-1])
    batch, env_state, obs = rollout(
        cfg, env, lt.theta, lt.env_params, lt.env_state, lt.obs, keys[-1]
    )
    adv = critic_advantages(cfg, lt.critic, batch, hp)
    loss, metrics = meta_objective(cfg, lt.theta, batch, adv, jax.tree.map(jnp.mean, regs), hp)
    critic, critic_opt = critic_update(cfg, lt.critic, lt.critic_opt, batch, hp)
    ret, n = mean_episode_return(batch)
    total = jnp.sum(ns) + n
    window_ret = (jnp.sum(rets * ns) + ret * n) / jnp.maximum(total, 1.0)
    ema = jnp.where(total > 0, 0.9 * lt.return_ema + 0.1 * window_ret, lt.return_ema)
    lt = lt.replace(
        critic=critic, critic_opt=critic_opt, env_state=env_state, obs=obs, return_ema=ema
    )
    metrics = metrics | {"train/episode_return": window_ret, "train/episodes": total}
    return loss, (lt, metrics)


# ----------------------------------------------------------------------------- bandit


def arm_values(cfg: Config, arm: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(agent lr, α_y)`` of arm index ``arm`` (row-major over ``lr_grid × alpha_y_grid``)."""
    lrs = jnp.asarray(cfg.lr_grid, jnp.float32)
    ays = jnp.asarray(cfg.alpha_y_grid, jnp.float32)
    return lrs[arm // len(cfg.alpha_y_grid)], ays[arm % len(cfg.alpha_y_grid)]


def init_bandit(cfg: Config, window: int = 10) -> Bandit:
    """Empty bandit: ``scores [A, window]`` zeros and ``counts [A]`` zeros."""
    return Bandit(jnp.zeros((cfg.num_arms, window)), jnp.zeros((cfg.num_arms,), jnp.int32))


def bandit_logits(bandit: Bandit, hp: HParams) -> jax.Array:
    """``[A]`` logits ``(mean of the last ≤W scores + bonus/√max(n, 1)) / temperature``;
    unscored arms have mean 0 and the full bonus."""
    window = bandit.scores.shape[1]
    n = jnp.minimum(bandit.counts, window)
    mean = jnp.sum(bandit.scores, axis=1) / jnp.maximum(n, 1)
    bonus = hp.bandit_bonus / jnp.sqrt(jnp.maximum(bandit.counts, 1).astype(jnp.float32))
    return (mean + bonus) / hp.bandit_temperature


def bandit_update(bandit: Bandit, arm: jax.Array, score: jax.Array, mask: jax.Array) -> Bandit:
    """Writes ``score`` into arm ``arm``'s ring buffer where ``mask`` (scalars; a no-op else)."""
    window = bandit.scores.shape[1]
    slot = bandit.counts[arm] % window
    scores = bandit.scores.at[arm, slot].set(jnp.where(mask, score, bandit.scores[arm, slot]))
    counts = bandit.counts.at[arm].add(mask.astype(jnp.int32))
    return Bandit(scores, counts)


# ----------------------------------------------------------------------------- lifetimes


def init_lifetime(
    cfg: Config, env: Env, key: jax.Array, arm: jax.Array, hp: HParams, env_params: Any = None
) -> Lifetime:
    """A fresh lifetime: new task (``env.sample_params`` unless ``env_params`` is given),
    zero/new agent and critic, ``B`` reset envs, and the arm's (lr, α_y) (``hp``'s when the
    bandit is off)."""
    key_env, key_agent, key_critic, key_reset = jax.random.split(key, 4)
    if env_params is None:
        env_params = sample_env_params(env, key_env)
    wenv = wrap_env(env)
    obs, env_state = jax.vmap(wenv.reset, in_axes=(0, None))(
        jax.random.split(key_reset, cfg.num_envs), env_params
    )
    obs_space = env.observation_space(env_params)
    obs_dim = obs_space.n if isinstance(obs_space, spaces.Discrete) else obs.shape[-1]
    num_actions = env.action_space(env_params).n
    theta = init_agent(cfg, key_agent, obs_dim, num_actions)
    critic = init_critic(cfg, key_critic, obs_dim)
    if cfg.use_bandit:
        agent_lr, alpha_y = arm_values(cfg, arm)
    else:
        agent_lr, alpha_y = hp.agent_learning_rate, hp.alpha_y
    return Lifetime(
        theta=theta,
        agent_opt=agent_tx(cfg, agent_lr).init(theta),
        critic=critic,
        critic_opt=optax.adam(hp.critic_learning_rate).init(critic),
        env_params=env_params,
        env_state=env_state,
        obs=obs,
        agent_lr=agent_lr,
        alpha_y=alpha_y,
        arm=jnp.asarray(arm, jnp.int32),
        num_updates=jnp.zeros((), jnp.int32),
        return_ema=jnp.zeros(()),
    )


def meta_tx(hp: HParams) -> optax.GradientTransformation:
    """Meta-optimiser: global-norm clip then Adam (spec 1.6), rebuilt from traced ``hp``."""
    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), optax.adam(hp.learning_rate))


def as_envs(envs: Env | tuple[Env, ...] | list[Env]) -> tuple[Env, ...]:
    """The training environments as a non-empty tuple (one ``Env`` is a 1-tuple)."""
    envs = tuple(envs) if isinstance(envs, tuple | list) else (envs,)
    if not envs or not all(isinstance(e, Env) for e in envs):
        raise ConfigError(f"expected an Env or a non-empty tuple of Envs, got {envs!r}")
    return envs


def _env_keys(key: jax.Array, i: int) -> jax.Array:
    """Environment ``i``'s key: ``key`` itself for the first, ``fold_in(key, i)`` after."""
    return key if i == 0 else jax.random.fold_in(key, i)


def _init_group(cfg: Config, env: Env, key_arm: jax.Array, key_lt: jax.Array, hp: HParams):
    """``(lifetimes [L], bandit)`` of one training environment (see :func:`init`)."""
    arms = jax.random.randint(key_arm, (cfg.num_lifetimes,), 0, cfg.num_arms)
    keys = jax.random.split(key_lt, cfg.num_lifetimes)
    lts = jax.vmap(lambda k, a: init_lifetime(cfg, env, k, a, hp))(keys, arms)
    if cfg.stagger:
        offsets = jnp.arange(cfg.num_lifetimes) * cfg.lifetime_len // cfg.num_lifetimes
        offsets = (offsets // cfg.num_inner) * cfg.num_inner
        lts = lts.replace(num_updates=offsets.astype(jnp.int32))
    return lts, init_bandit(cfg)


def init(cfg: Config, envs: Env | tuple[Env, ...], key: jax.Array, hp: HParams) -> MetaState:
    """Random LPG and, per training environment, ``num_lifetimes`` fresh lifetimes on
    uniformly drawn bandit arms. With ``cfg.stagger`` lifetime ``i`` starts ``⌊i·N/L⌋``
    (rounded down to a multiple of ``K``) updates into its lifetime, so lifetimes end at
    different meta-updates.

    Args:
        envs: one ``Env`` or a tuple of them (e.g. tabular Dense and Sparse, spec L4); each
            gets ``cfg.num_lifetimes`` lifetimes and its own bandit.
    """
    envs = as_envs(envs)
    key_eta, key_arm, key_lt, key = jax.random.split(key, 4)
    eta = init_lpg(cfg, key_eta)
    groups = [
        _init_group(cfg, env, _env_keys(key_arm, i), _env_keys(key_lt, i), hp)
        for i, env in enumerate(envs)
    ]
    lts, bandits = (tuple(g) for g in zip(*groups, strict=True))
    return MetaState(eta, meta_tx(hp).init(eta), lts, bandits, key, jnp.zeros((), jnp.int32))


def _select(mask: jax.Array, new: Any, old: Any) -> Any:
    """Per-lifetime ``where(mask[i], new[i], old[i])`` over pytrees with leading axis ``L``."""
    return jax.tree.map(
        lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b), new, old
    )


def _end_lifetimes(
    cfg: Config, env: Env, lts: Lifetime, bandit: Bandit, key_arm: jax.Array,
    key_new: jax.Array, hp: HParams,
) -> tuple[Lifetime, Bandit, Metrics]:  # fmt: skip
    """Scores ended lifetimes in the bandit and replaces them by fresh ones (new task, agent
    and arm drawn from the bandit); returns ``(lifetimes, bandit, end-of-lifetime metrics)``."""
    ended = lts.num_updates >= cfg.lifetime_len
    if cfg.use_bandit:
        bandit, _ = jax.lax.scan(
            lambda b, x: (bandit_update(b, *x), None), bandit, (lts.arm, lts.return_ema, ended)
        )
    arms = jax.random.categorical(key_arm, bandit_logits(bandit, hp), shape=(cfg.num_lifetimes,))
    fresh = jax.vmap(lambda k, a: init_lifetime(cfg, env, k, a, hp))(
        jax.random.split(key_new, cfg.num_lifetimes), arms
    )
    metrics = {
        "meta/lifetimes_ended": jnp.sum(ended),
        "meta/final_return": jnp.sum(jnp.where(ended, lts.return_ema, 0.0))
        / jnp.maximum(jnp.sum(ended), 1),
    }
    return _select(ended, fresh, lts), bandit, metrics


def update(
    cfg: Config, envs: Env | tuple[Env, ...], state: MetaState, hp: HParams,
    rule_fn: Callable = lpg_apply,
) -> tuple[MetaState, Metrics]:  # fmt: skip
    """One meta-update: vmapped ``K``-step meta-losses of all lifetimes of all training
    environments, their mean's gradient w.r.t. ``eta``, a clipped Adam step, then lifetime
    resets (re-sampled task, bandit arm and agent) for lifetimes that reached
    ``cfg.lifetime_len`` updates.

    Metrics are means over environments (``"meta/lifetimes_ended"`` their sum and
    ``"meta/final_return"`` the mean over ended lifetimes); with several environments each
    metric is also reported per environment as ``"<name>/<i>"`` (``i`` the position in
    ``envs``).
    """
    envs = as_envs(envs)
    if len(envs) != len(state.lifetimes):
        raise ConfigError(f"state was made for {len(state.lifetimes)} envs, got {len(envs)}")
    key, key_lt, key_arm, key_new = jax.random.split(state.key, 4)

    def loss_fn(eta):
        losses, out = [], []
        for i, (env, lts) in enumerate(zip(envs, state.lifetimes, strict=True)):
            keys = jax.random.split(_env_keys(key_lt, i), cfg.num_lifetimes)
            loss_i, out_i = jax.vmap(
                lambda lt, k, env=env: lifetime_meta_loss(cfg, env, rule_fn, eta, lt, k, hp)
            )(lts, keys)
            losses.append(loss_i)
            out.append(out_i)
        return jnp.mean(jnp.concatenate(losses)), out

    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.eta)
    updates, meta_opt = meta_tx(hp).update(grads, state.meta_opt, state.eta)
    eta = optax.apply_updates(state.eta, updates)

    all_lts, bandits, per_env = [], [], []
    for i, (env, bandit, (lts, metrics)) in enumerate(zip(envs, state.bandits, out, strict=True)):
        lts, bandit, end_metrics = _end_lifetimes(
            cfg, env, jax.lax.stop_gradient(lts), bandit,
            _env_keys(key_arm, i), _env_keys(key_new, i), hp,
        )  # fmt: skip
        all_lts.append(lts)
        bandits.append(bandit)
        per_env.append(jax.tree.map(jnp.mean, metrics) | end_metrics)
    metrics = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *per_env)
    ended = jnp.stack([m["meta/lifetimes_ended"] for m in per_env])
    finals = jnp.stack([m["meta/final_return"] for m in per_env])
    metrics["meta/lifetimes_ended"] = jnp.sum(ended)
    metrics["meta/final_return"] = jnp.sum(finals * ended) / jnp.maximum(jnp.sum(ended), 1)
    if len(envs) > 1:
        for i, m in enumerate(per_env):
            metrics |= {f"{k}/{i}": v for k, v in m.items()}
    metrics |= {"meta/loss": loss, "meta/grad_norm": optax.global_norm(grads)}
    state = MetaState(eta, meta_opt, tuple(all_lts), tuple(bandits), key, state.step + 1)
    return state, metrics


# ----------------------------------------------------------------------------- using an LPG


def _train_fresh_agent(
    cfg: Config, env: Env, key: jax.Array, num_updates: int, hp: HParams, env_params: Any,
    agent_step: Callable[[Lifetime, Batch], Lifetime],
) -> tuple[Lifetime, Metrics]:  # fmt: skip
    """A fresh lifetime run for ``num_updates`` (rollout, ``agent_step``) rounds; the
    metrics of :func:`train_agent`."""
    cfg = dataclasses.replace(cfg, use_bandit=False)
    key_init, key = jax.random.split(key)
    lt = init_lifetime(cfg, env, key_init, jnp.zeros((), jnp.int32), hp, env_params)

    def body(lt, key_k):
        batch, env_state, obs = rollout(
            cfg, env, lt.theta, lt.env_params, lt.env_state, lt.obs, key_k
        )
        lt = agent_step(lt, batch)
        lt = lt.replace(env_state=env_state, obs=obs, num_updates=lt.num_updates + 1)
        ret, n = mean_episode_return(batch)
        return lt, {"train/episode_return": ret, "train/episodes": n}

    return jax.lax.scan(body, lt, jax.random.split(key, num_updates))


def train_agent(
    cfg: Config, env: Env, eta: Params, key: jax.Array, num_updates: int, hp: HParams,
    agent_lr: jax.Array | None = None, alpha_y: jax.Array | None = None,
    env_params: Any = None, rule_fn: Callable = lpg_apply,
) -> tuple[Lifetime, Metrics]:  # fmt: skip
    """Trains one fresh agent for ``num_updates`` updates with a frozen update rule.

    Args:
        eta: LPG params (e.g. from :func:`load`); agent_lr/alpha_y: default ``hp``'s.
        env_params: the task; drawn with ``env.sample_params`` when None.

    Returns:
        ``(final lifetime, metrics)`` with ``metrics["train/episode_return"]`` ``[num_updates]``
        (mean return of episodes finished in each update's rollout, 0 if none) and
        ``"train/episodes"`` their counts.
    """
    hp = hp.replace(
        agent_learning_rate=hp.agent_learning_rate if agent_lr is None else agent_lr,
        alpha_y=hp.alpha_y if alpha_y is None else alpha_y,
    )
    eta = jax.lax.stop_gradient(eta)

    def agent_step(lt: Lifetime, batch: Batch) -> Lifetime:
        theta, agent_opt, _ = agent_update(
            cfg, rule_fn, eta, lt.theta, lt.agent_opt, batch, lt.agent_lr, lt.alpha_y, hp.discount
        )
        return lt.replace(theta=theta, agent_opt=agent_opt)

    return _train_fresh_agent(cfg, env, key, num_updates, hp, env_params, agent_step)


def a2c_loss(
    cfg: Config, theta: Params, batch: Batch, advantages: jax.Array, ent_coef: jax.Array
) -> jax.Array:
    """Advantage actor-critic loss ``−mean[log π_θ(a|s) Â] − c_H mean[H(π_θ(·|s))]``; scalar.

    Args:
        batch: a ``[T, B]`` segment; advantages: ``[T, B]`` constants; ent_coef: ``[]``.
    """
    chex.assert_equal_shape([advantages, batch.reward])
    pi_logits, _ = agent_apply(cfg, theta, batch.obs)
    log_pi = jax.nn.log_softmax(pi_logits, axis=-1)
    log_pi_a = jnp.take_along_axis(log_pi, batch.action[..., None], axis=-1)[..., 0]
    adv = jax.lax.stop_gradient(advantages)
    return -jnp.mean(log_pi_a * adv) - ent_coef * jnp.mean(_entropy(pi_logits))


def train_a2c_agent(
    cfg: Config, env: Env, key: jax.Array, num_updates: int, hp: HParams, agent_lr: jax.Array,
    ent_coef: jax.Array = 0.01, env_params: Any = None,
) -> tuple[Lifetime, Metrics]:  # fmt: skip
    """The hand-written reference of spec 1.11: A2C on the same agent, rollouts and critic.

    Each update: GAE advantages of the lifetime's critic (``hp.discount``, ``hp.gae_lambda``,
    bootstrapping through truncation, not termination), one Adam step of the critic
    (:func:`critic_update`), one step of the agent's optimiser (``agent_lr``) on
    :func:`a2c_loss`. The prediction ``y`` is not trained. Returns what :func:`train_agent`
    returns; tune ``agent_lr`` (and ``ent_coef``) by vmapping over them.
    """

    def agent_step(lt: Lifetime, batch: Batch) -> Lifetime:
        adv = critic_advantages(cfg, lt.critic, batch, hp)
        critic, critic_opt = critic_update(cfg, lt.critic, lt.critic_opt, batch, hp)
        grads = jax.grad(a2c_loss, argnums=1)(cfg, lt.theta, batch, adv, ent_coef)
        updates, agent_opt = agent_tx(cfg, agent_lr).update(grads, lt.agent_opt, lt.theta)
        theta = optax.apply_updates(lt.theta, updates)
        return lt.replace(theta=theta, agent_opt=agent_opt, critic=critic, critic_opt=critic_opt)

    return _train_fresh_agent(cfg, env, key, num_updates, hp, env_params, agent_step)


def save(path: str, eta: Params, cfg: Config) -> None:
    """Writes ``path + ".msgpack"`` (LPG params, flax serialization) and ``path + ".json"``
    (the ``Config``, so :func:`load` can rebuild the parameter structure), each atomically."""
    config = json.dumps({"format": "jaxrl.lpg/1", "config": dataclasses.asdict(cfg)}, indent=1)
    atomic_write_bytes(path + ".json", config.encode())
    atomic_write_bytes(path + ".msgpack", serialization.to_bytes(jax.device_get(eta)))


def load(path: str) -> tuple[Params, Config]:
    """Reads what :func:`save` wrote; returns ``(eta, cfg)``.

    Raises:
        ConfigError: a missing, corrupt or incompatible file (unknown format or config keys,
            parameters whose structure or shapes do not match the saved config).
    """
    try:
        with open(path + ".json") as f:
            raw = json.load(f)
        with open(path + ".msgpack", "rb") as f:
            data = f.read()
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read saved LPG {path!r}: {err}") from err
    if not isinstance(raw, dict) or raw.get("format") != "jaxrl.lpg/1":
        raise ConfigError(f"{path}.json is not a saved jaxrl LPG (format jaxrl.lpg/1)")
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = set(raw["config"]) - fields
    if unknown:
        raise ConfigError(f"{path}.json has unknown config keys {sorted(unknown)}")
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw["config"].items()})
    template = init_lpg(cfg, jax.random.key(0))
    try:
        eta = serialization.from_bytes(template, data)
    except Exception as err:  # msgpack and flax raise several types for bad bytes
        raise ConfigError(f"{path}.msgpack is corrupt or does not match its config: {err}") from err
    got = jax.tree.map(jnp.shape, eta)
    want = jax.tree.map(jnp.shape, template)
    if got != want:
        raise ConfigError(f"{path}.msgpack parameter shapes {got} do not match the config {want}")
    return eta, cfg
