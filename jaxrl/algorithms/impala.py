"""IMPALA (Espeholt et al. 2018, arXiv:1802.01561) in its single-program form.

One ``update`` rolls out ``cfg.rollout_len`` steps of ``cfg.num_envs`` auto-reset envs with
the **behaviour policy** μ, the learner's parameters from ``cfg.lag`` updates ago, then takes
one RMSProp (or Adam) step on the V-trace actor-critic loss of the learner's policy π:

- V-trace targets ``v_s`` (rlax's recursion, vmapped over envs) regress the baseline,
  ``0.5 · (v_s − V(x_s))^2``;
- the policy gradient uses ``min(ρ̄_pg, ρ_s) · (r_s + γ_s v_{s+1} − V(x_s))``;
- an entropy bonus.

``State.stale_params`` is a ring buffer of the last ``lag + 1`` parameter sets (a stacked
pytree with a leading ``[lag + 1]`` axis): before update ``k``, slot ``j % (lag + 1)`` holds
the learner's parameters after ``j`` updates, for ``j = k − lag .. k``. Update ``k`` acts with
slot ``(k − lag) % (lag + 1)`` and then writes its result over it. Until ``lag`` updates have
passed the actors use the initial parameters. With ``lag = 0`` the one slot is the learner's
parameters, every ``ρ`` is 1 and the loss is on-policy A2C with ``λ = 1`` returns (tested).
The buffer keeps one slot more than strictly needed so that every ``lag`` has the same code
and a non-empty buffer (empty arrays lose their run-axis sharding in the runner).

:func:`loss` is a pure function of a time-major :class:`Batch` ``[T, N]`` carrying the
behaviour log-probabilities, so the asynchronous actor-learner form reuses it unchanged.
Episode ends follow ``jaxrl.losses.returns``: a termination sets the discount to 0; a
truncation bootstraps from ``V(final_obs)`` (the pre-reset observation) and cuts the trace.

The network and env stack are PPO's (``ppo.network``, ``ppo.vec_env`` read the same
``Config`` fields); the rollout is ``jaxrl.algorithms.rollout.collect``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import distrax
import jax
import jax.numpy as jnp
import optax
import rlax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base, ppo
from jaxrl.algorithms import rollout as rollout_lib
from jaxrl.envs.base import Env
from jaxrl.losses import policy as policy_losses
from jaxrl.losses.value import value_loss
from jaxrl.networks import ActorCritic
from jaxrl.networks.torsos import ACTIVATIONS
from jaxrl.types import Metrics

OPTIMIZERS = ("rmsprop", "adam")


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings (shapes, switches, the policy lag)."""

    total_timesteps: int = 500_000  # per run; the horizon of learning-rate annealing
    num_envs: int = 16
    rollout_len: int = 20  # the paper's unroll length n
    lag: int = 0  # updates by which the behaviour policy trails the learner
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    torso: str = "mlp"  # "mlp" or "cnn"
    shared_torso: bool = False
    ortho_init: bool = True
    optimizer: str = "rmsprop"  # "rmsprop" (the paper's) or "adam"
    anneal_lr: bool = True  # linear decay to 0, as in the paper
    normalize_obs: bool = False
    scale_reward: bool = False
    reward_scaling_discount: float = 0.99

    def __post_init__(self):
        base.check_fields(self)
        base.check_ranges(self, {"reward_scaling_discount": (0.0, 1.0)})
        base.check_positive_ints(self, ("total_timesteps", "num_envs", "rollout_len"))
        base.check_non_negative_ints(self, ("lag",))
        base.check_choices(
            self, {"optimizer": OPTIMIZERS, "torso": ("mlp", "cnn"), "activation": ACTIVATIONS}
        )
        base.check_budget(self, "num_envs * rollout_len")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.rollout_len

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


HPARAM_DEFAULTS = dict(
    learning_rate=6e-4,
    discount=0.99,
    vtrace_lambda=1.0,  # λ of V-trace's traces c_s = λ min(c̄, ρ_s)
    rho_bar=1.0,  # ρ̄: clip of the importance weights in the TD errors
    c_bar=1.0,  # c̄: clip of the trace coefficients
    pg_rho_bar=1.0,  # clip of the importance weights in the policy gradient
    ent_coef=0.01,
    vf_coef=0.5,
    max_grad_norm=40.0,
    rms_decay=0.99,  # RMSProp only
    rms_eps=0.01,  # RMSProp only (TorchBeast's; the paper's 0.1 is for summed Atari losses)
    adam_eps=1e-5,  # Adam only
    # Gates of the off-policy correction (1: V-trace; 0: treat the data as on-policy). The
    # targets use ρ_s^target_correction_on, the policy gradient ρ_s^pg_correction_on.
    target_correction_on=1.0,
    pg_correction_on=1.0,
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    discount=(0.0, 1.0),
    vtrace_lambda=(0.0, 1.0),
    rho_bar=(0.0, 1e6),
    c_bar=(0.0, 1e6),
    pg_rho_bar=(0.0, 1e6),
    ent_coef=(0.0, 1e3),
    vf_coef=(0.0, 1e3),
    max_grad_norm=(0.0, 1e9),
    rms_decay=(0.0, 1.0),
    rms_eps=(1e-12, 1.0),  # > 0: 0 gives 0/0 for a zero gradient
    adam_eps=(1e-12, 1.0),  # > 0: 0 gives 0/0 for a zero gradient
    target_correction_on=(0.0, 1.0),
    pg_correction_on=(0.0, 1.0),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, each a float32 array (scalar, or ``[R]`` for a sweep)."""

    learning_rate: jax.Array
    discount: jax.Array
    vtrace_lambda: jax.Array
    rho_bar: jax.Array
    c_bar: jax.Array
    pg_rho_bar: jax.Array
    ent_coef: jax.Array
    vf_coef: jax.Array
    max_grad_norm: jax.Array
    rms_decay: jax.Array
    rms_eps: jax.Array
    adam_eps: jax.Array
    target_correction_on: jax.Array
    pg_correction_on: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """Raises ``ConfigError`` for out-of-range concrete hyperparameters (before compiling)."""
    del cfg
    base.check_ranges(hp, HPARAM_RANGES)


class State(struct.PyTreeNode):
    """Everything one IMPALA run carries between updates (arrays only)."""

    params: dict  # the learner's
    stale_params: dict  # ring buffer, every leaf [lag + 1, ...]; slot j % (lag + 1) = update j
    opt_state: optax.OptState
    env_state: object
    obs: jax.Array  # [num_envs, *obs_shape]
    env_params: object
    key: jax.Array
    update_count: jax.Array  # int32 scalar


class Batch(struct.PyTreeNode):
    """Time-major trajectories of the behaviour policy μ; every leaf ``[T, N, ...]``."""

    obs: jax.Array  # x_s, the observation acted on
    action: jax.Array
    behaviour_log_prob: jax.Array  # log μ(a_s | x_s)
    reward: jax.Array
    terminated: jax.Array  # bool: no bootstrap
    truncated: jax.Array  # bool: bootstrap from final_obs, cut the trace
    final_obs: jax.Array  # the observation reached, before auto-reset


def network(cfg: Config, env: Env) -> ActorCritic:
    """PPO's actor-critic for ``env``'s spaces."""
    return ppo.network(cfg, env)


def vec_env(cfg: Config, env: Env) -> Env:
    """PPO's training env stack: ``num_envs`` auto-reset copies, optional normalisation."""
    return ppo.vec_env(cfg, env)


def learning_rate(cfg: Config, hp: HParams, update_count: jax.Array) -> jax.Array:
    """``hp.learning_rate``, linearly annealed to 0 over ``cfg.num_updates`` if enabled."""
    return ppo.learning_rate(cfg, hp, update_count)


def optimizer(cfg: Config, hp: HParams, lr: jax.Array) -> optax.GradientTransformation:
    """Global-norm clipping, then RMSProp (decay ``rms_decay``) or Adam; from traced values."""
    if cfg.optimizer == "rmsprop":  # optax's: ε inside the root, finite meta-gradients
        opt = optax.rmsprop(lr, decay=hp.rms_decay, eps=hp.rms_eps)
    else:
        opt = optim.adam(lr, eps=hp.adam_eps)
    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), opt)


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """Initial state: fresh network, ``lag + 1`` copies of it in the ring buffer, reset envs."""
    env_params = env.default_params() if env_params is None else env_params
    key, key_net, key_env = jax.random.split(key, 3)
    obs, env_state = vec_env(cfg, env).reset(key_env, env_params)
    params = network(cfg, env).init(key_net, obs)
    return State(
        params=params,
        stale_params=_ring(cfg, params),
        opt_state=optimizer(cfg, hp, hp.learning_rate).init(params),
        env_state=env_state,
        obs=obs,
        env_params=env_params,
        key=key,
        update_count=jnp.zeros((), jnp.int32),
    )


def _ring(cfg: Config, params: dict) -> dict:
    """The ring buffer with every one of its ``lag + 1`` slots equal to ``params``."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (cfg.lag + 1, *x.shape)), params)


def with_params(cfg: Config, state: State, params: dict) -> State:
    """``state`` as if the run started from ``params``, its lagged copies included.

    Sets the learner's parameters and every slot of the ring buffer, so the actors act
    with ``params`` for the next ``lag`` updates, as after :func:`init`.
    :func:`jaxrl.meta.metagrad.with_params` (MAML's ``wrt="params"``) calls it;
    ``state.replace(params=...)`` would leave the actors on the old parameters."""
    return state.replace(params=params, stale_params=_ring(cfg, params))


def behaviour_params(cfg: Config, state: State) -> dict:
    """The parameters the actors use in the next update: the learner's ``lag`` updates ago."""
    slot = (state.update_count - cfg.lag) % (cfg.lag + 1)
    return jax.tree.map(lambda x: x[slot], state.stale_params)


def vtrace(
    v_tm1: jax.Array,
    v_t: jax.Array,
    r_t: jax.Array,
    discount_t: jax.Array,
    cut_t: jax.Array,
    rho_tm1: jax.Array,
    lambda_: jax.Array,
    rho_bar: jax.Array,
    c_bar: jax.Array,
    pg_rho_bar: jax.Array,
    pg_rho_tm1: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """V-trace targets and policy-gradient advantages of one trajectory (IMPALA eq. 1, §4.2).

    ``v_s = V(x_s) + δ_s + γ_s c_s (v_{s+1} − V(x_{s+1}))`` with
    ``δ_s = min(ρ̄, ρ_s)(r_s + γ_s V(x'_s) − V(x_s))`` and ``c_s = λ min(c̄, ρ_s)``, where
    ``x'_s`` is the state step ``s`` reached (pre-reset) and the trace is cut (``c_s = 0``)
    where ``cut_t`` is set (truncations). The policy-gradient advantage is
    ``min(ρ̄_pg, ρ_s)(r_s + γ_s v_{s+1} − V(x_s))``, with ``v_{s+1} := V(x'_s)`` at a cut and
    at the end of the trajectory.

    The recursion is ``rlax.vtrace``; its ``c_s = λ_s min(1, ρ_s)`` takes ``c̄`` through the
    per-step ``λ_s = λ (1 − cut_s) min(c̄, ρ_s) / min(1, ρ_s)``. The advantage is not rlax's
    ``vtrace_td_error_and_advantage``, which bootstraps ``q`` from ``V(x_{s+1})`` (the
    *reset* observation after a truncation) and mixes by ``λ``; the two agree when ``λ = 1``,
    ``c̄ = 1`` and nothing is cut (tested).

    Args:
        v_tm1: ``V(x_s)`` ``[T]``. v_t: ``V(x'_s)`` ``[T]``. r_t: rewards ``[T]``.
        discount_t: ``γ (1 − terminated)`` ``[T]``. cut_t: truncated ``[T]`` (bool or 0/1).
        rho_tm1: ``π(a_s|x_s) / μ(a_s|x_s)`` ``[T]``.
        lambda_, rho_bar, c_bar, pg_rho_bar: scalars.
        pg_rho_tm1: the ratios that weight the policy gradient ``[T]``; ``None``: ``rho_tm1``.
            (The paper's "1-step importance sampling" baseline weights the advantage while
            the targets use ``ρ = 1``.)

    Returns:
        ``(v_s, pg_advantage)``, each ``[T]``. Gradients reach every input (pass
        stop-gradiented network outputs), so meta-gradients reach ``γ``, ``λ`` and the clips.
    """
    chex.assert_rank([v_tm1, v_t, r_t, discount_t, cut_t, rho_tm1], 1)
    chex.assert_equal_shape([v_tm1, v_t, r_t, discount_t, cut_t, rho_tm1])
    keep = 1.0 - cut_t.astype(v_tm1.dtype)
    # min(c̄, ρ) / min(1, ρ), written without dividing by a vanishing ρ.
    safe_rho = jnp.maximum(rho_tm1, 1e-30)
    c_scale = jnp.where(
        rho_tm1 < 1.0, jnp.minimum(1.0, c_bar / safe_rho), jnp.minimum(c_bar, rho_tm1)
    )
    lambda_t = lambda_ * keep * c_scale
    errors = rlax.vtrace(
        v_tm1, v_t, r_t, discount_t, rho_tm1, lambda_t, rho_bar, stop_target_gradients=False
    )
    vs = v_tm1 + errors
    vs_tp1 = jnp.concatenate([vs[1:], v_t[-1:]])
    last = jnp.arange(v_tm1.shape[0]) == v_tm1.shape[0] - 1
    vs_tp1 = jnp.where(jnp.logical_or(keep == 0.0, last), v_t, vs_tp1)
    q_t = r_t + discount_t * vs_tp1
    pg_rho_tm1 = rho_tm1 if pg_rho_tm1 is None else pg_rho_tm1
    pg_advantage = jnp.minimum(pg_rho_bar, pg_rho_tm1) * (q_t - v_tm1)
    return vs, pg_advantage


def policy_gradient_loss(
    dist: distrax.Distribution, action: jax.Array, log_prob: jax.Array, advantage: jax.Array
) -> jax.Array:
    """``−mean(log π(a_s|x_s) · A_s)`` over ``[T, N]``.

    ``rlax.policy_gradient_loss`` for a categorical policy, the same mean written out for
    others. No stop-gradient on ``A``: the caller passes advantages without a path to the
    parameters, and meta-gradients need ``∂A/∂γ``.
    """
    chex.assert_equal_shape([log_prob, advantage])
    if isinstance(dist, distrax.Categorical):
        num = advantage.size
        logits = dist.logits.reshape((num, dist.logits.shape[-1]))
        flat_adv = advantage.reshape(num)
        return rlax.policy_gradient_loss(
            logits, action.reshape(num), flat_adv, jnp.ones_like(flat_adv), use_stop_gradient=False
        )
    return -jnp.mean(log_prob * advantage)


def loss(
    cfg: Config, env: Env, params: dict, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """IMPALA loss on a time-major batch ``[T, N]``: PG + ``vf_coef`` · baseline − entropy.

    ``L = −mean(log π(a_s|x_s) A_s) + vf_coef · 0.5 · mean((v_s − V(x_s))^2)
    − ent_coef · mean(H[π(·|x_s)])`` with V-trace targets ``v_s`` and advantages ``A_s``
    (:func:`vtrace`) from the learner's values and ``ρ_s = π(a_s|x_s) / μ(a_s|x_s)``,
    raised to the gates' powers: ``ρ_s^target_correction_on`` in the targets and
    ``ρ_s^pg_correction_on`` in the policy gradient (1, 1: V-trace; 0, 0: no correction;
    0, 1: the paper's 1-step importance sampling). ``train/rho_mean`` and
    ``train/approx_kl`` measure the ungated ``ρ``, how far the behaviour policy lags.
    The targets and advantages carry no gradient to ``params`` (their network inputs are
    stop-gradiented), but do to ``hp``.
    """
    chex.assert_rank([batch.reward, batch.behaviour_log_prob, batch.terminated], 2)
    chex.assert_equal_shape([batch.reward, batch.behaviour_log_prob, batch.truncated])
    sg = jax.lax.stop_gradient
    net = network(cfg, env)
    dist, value = net.apply(params, batch.obs)
    bootstrap = net.apply(params, batch.final_obs, method="value")  # V(x'_s), pre-reset
    log_prob = dist.log_prob(batch.action)
    log_rho = sg(log_prob) - batch.behaviour_log_prob
    rho = jnp.exp(log_rho)
    # The gates' powers of ρ; at 1 exactly ρ (x · 1 = x), at 0 exactly 1 (no correction).
    target_rho = jnp.exp(hp.target_correction_on * log_rho)
    pg_rho = jnp.exp(hp.pg_correction_on * log_rho)
    discount_t = hp.discount * (1.0 - batch.terminated.astype(jnp.float32))
    vs, pg_advantage = jax.vmap(vtrace, in_axes=(1,) * 6 + (None,) * 4 + (1,), out_axes=1)(
        sg(value), sg(bootstrap), batch.reward, discount_t, batch.truncated, target_rho,
        hp.vtrace_lambda, hp.rho_bar, hp.c_bar, hp.pg_rho_bar, pg_rho,
    )  # fmt: skip
    pg_loss = policy_gradient_loss(dist, batch.action, log_prob, pg_advantage)
    value, vs = value.reshape(-1), vs.reshape(-1)
    v_loss = value_loss(value, value, vs, jnp.float32(0.0), clip=False)  # 0.5 mean((v - V)^2)
    entropy = jnp.mean(dist.entropy())
    total = pg_loss + hp.vf_coef * v_loss - hp.ent_coef * entropy
    metrics = {
        "train/total_loss": total,
        "train/policy_loss": pg_loss,
        "train/value_loss": v_loss,
        "train/entropy": entropy,
        "train/rho_mean": jnp.mean(rho),
        "train/rho_clip_fraction": jnp.mean((target_rho > hp.rho_bar).astype(jnp.float32)),
        "train/approx_kl": policy_losses.approx_kl(sg(log_prob), batch.behaviour_log_prob),
    }
    return total, metrics


def make_batch(rollout: rollout_lib.Rollout) -> Batch:
    """The loss's view of a rollout (time-major, unflattened)."""
    return Batch(
        obs=rollout.obs,
        action=rollout.action,
        behaviour_log_prob=rollout.log_prob,
        reward=rollout.reward,
        terminated=rollout.terminated,
        truncated=rollout.truncated,
        final_obs=rollout.final_obs,
    )


def collect(cfg: Config, env: Env, state: State) -> tuple[State, rollout_lib.Rollout]:
    """Rolls the behaviour policy (:func:`behaviour_params`) out for ``cfg.rollout_len`` steps."""
    return rollout_lib.collect(
        vec_env(cfg, env),
        network(cfg, env),
        state,
        cfg.rollout_len,
        params=behaviour_params(cfg, state),
    )


LossFn = Callable[[Config, Env, dict, Batch, HParams], tuple[jax.Array, Metrics]]


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One IMPALA iteration: act with the stale policy (:func:`collect`), then :func:`learn`.

    ``loss_fn`` (same signature as :func:`loss`, e.g. a learned loss) replaces the loss
    whose gradient the learner takes; its metrics are returned with the rest.
    """
    state, rollout = collect(cfg, env, state)
    return learn(cfg, env, state, rollout, hp, loss_fn)


def learn(
    cfg: Config,
    env: Env,
    state: State,
    rollout: rollout_lib.Rollout,
    hp: HParams,
    loss_fn: LossFn = loss,
) -> tuple[State, Metrics]:
    """The learning half of :func:`update`: one optimiser step on ``loss_fn`` (default
    :func:`loss`) of a behaviour ``rollout`` ``[T, N]`` (V-trace against its recorded
    ``log_prob``), the new parameters written to the ring buffer, and the rollout's
    episode metrics.

    ``state``'s env fields are not read, so a host actor's rollout trains through it too
    (:mod:`jaxrl.sebulba`, with ``lag = 0`` and the real actor-learner lag).
    """
    batch = make_batch(rollout)
    lr = learning_rate(cfg, hp, state.update_count)
    grads, metrics = jax.grad(loss_fn, argnums=2, has_aux=True)(cfg, env, state.params, batch, hp)
    updates, opt_state = optimizer(cfg, hp, lr).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The new parameters act `lag` updates from now; they replace the oldest, just used.
    slot = (state.update_count + 1) % (cfg.lag + 1)
    stale = jax.tree.map(lambda buf, x: buf.at[slot].set(x), state.stale_params, params)
    metrics |= {
        "train/learning_rate": lr,
        "train/grad_norm": optax.global_norm(grads),
    } | rollout_lib.episode_metrics(rollout)
    state = state.replace(
        params=params,
        stale_params=stale,
        opt_state=opt_state,
        update_count=state.update_count + 1,
    )
    return state, metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` IMPALA iterations as one scan; metrics stacked ``[num_updates]``."""
    step = lambda s, _: update(cfg, env, s, hp, loss_fn)
    return jax.lax.scan(step, state, None, num_updates)


def act(cfg: Config, env: Env, params: dict, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Samples actions for a batch of observations (for evaluation or host actors)."""
    return network(cfg, env).apply(params, obs, method="policy").sample(seed=key)
