"""Trust Region Policy Optimisation (Schulman et al. 2015, arXiv:1502.05477) and the
natural policy gradient (Kakade 2001; Rajeswaran et al. 2017, arXiv:1703.02660).

One ``update``:

1. rolls the policy out for ``cfg.rollout_len`` steps of ``cfg.num_envs`` envs and computes
   truncation-aware GAE (PPO's :func:`~jaxrl.algorithms.ppo.collect` and
   :func:`~jaxrl.algorithms.ppo.make_batch`, on the shared :mod:`~jaxrl.algorithms.rollout`);
2. **policy step** on the actor's parameters ``θ`` only (flattened to ``[P]``): the
   surrogate ``L(θ) = mean(π_θ(a|s) / π_old(a|s) · A) + ent_coef · H`` and its gradient
   ``g``; conjugate gradient (``cfg.cg_iters``) for ``s ≈ F⁻¹ g``, with ``F v`` the Hessian
   of the mean ``KL(π_old ‖ π_θ)`` times ``v`` by forward-over-reverse autodiff (plus
   ``cg_damping · v``); the full step ``√(2 max_kl / sᵀFs) · s``; then a backtracking
   line search (``cfg.backtrack_iters`` fractions ``backtrack_coef^j``) that takes the
   first candidate whose surrogate improves and whose mean KL is ``<= max_kl``, else no
   step. With ``cfg.line_search=False`` the full step is always taken (NPG);
3. **critic fit**: ``cfg.num_epochs`` x ``cfg.num_minibatches`` Adam steps on the value
   regression to the GAE targets, on the critic's parameters only.

Config switches share their names, meanings and code with :mod:`~jaxrl.algorithms.ppo`
(``normalize_obs``, ``scale_reward``, ``ortho_init``, ``anneal_lr``, ``clip_grad_norm``,
``clip_value``, ``normalize_advantages``), so "Implementation Matters" (Engstrom et al.
2020, arXiv:2005.12729) ablations run on both; here ``anneal_lr``, ``clip_grad_norm`` and
``clip_value`` act on the critic's optimiser and loss, the only gradient-descent part.
The env stack (:func:`ppo.vec_env`), network (:func:`ppo.network`), critic optimiser
(:func:`ppo.optimizer`, :func:`ppo.learning_rate`) are PPO's, read from this Config.
The flat-vector machinery (FVP, CG, step size, line search) is :mod:`jaxrl.losses.natural`.

As in PPO, the traced gates ``clip_value_on``, ``scale_reward_on``, ``ortho_init_on`` and
``anneal_lr_on`` (``HParams``, in [0, 1], default 1) blend each of those four features in
where its Config switch is on (:func:`ppo.blend`): gate 1 is the switch on, gate 0 off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from jaxrl.algorithms import base, ppo
from jaxrl.algorithms import rollout as rollout_lib
from jaxrl.envs.base import Env
from jaxrl.losses import natural
from jaxrl.networks import ActorCritic
from jaxrl.networks.torsos import ACTIVATIONS
from jaxrl.types import Metrics

ACTOR_MODULES = ("actor_torso", "policy_head")  # ActorCritic submodules the policy uses


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings. Defaults: OpenAI Baselines' TRPO loop (2048 steps per update,
    10 CG iterations, 10 backtracks) with PPO's network and all code-level extras off
    except advantage normalisation and orthogonal init."""

    total_timesteps: int = 500_000  # per run; the horizon of critic learning-rate annealing
    num_envs: int = 4
    rollout_len: int = 512
    num_epochs: int = 5  # critic epochs per update
    num_minibatches: int = 32  # critic minibatches per epoch
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    torso: str = "mlp"  # "mlp" or "cnn"
    shared_torso: bool = False  # must be False: the policy step moves the actor only
    line_search: bool = True  # False: natural policy gradient (always the full step)
    cg_iters: int = 10
    backtrack_iters: int = 10
    # Code-level optimisations (Engstrom et al. 2020), same names as ppo.Config:
    clip_value: bool = False
    normalize_obs: bool = False
    scale_reward: bool = False
    ortho_init: bool = True
    anneal_lr: bool = False
    clip_grad_norm: bool = False
    normalize_advantages: bool = True
    reward_scaling_discount: float = 0.99

    def __post_init__(self):
        base.check_fields(self)
        base.check_ranges(self, {"reward_scaling_discount": (0.0, 1.0)})
        base.check_positive_ints(
            self,
            (
                "total_timesteps", "num_envs", "rollout_len", "num_epochs", "num_minibatches",
                "cg_iters", "backtrack_iters",
            ),
        )  # fmt: skip
        if self.steps_per_update % self.num_minibatches:
            raise base.ConfigError(
                f"num_envs * rollout_len = {self.steps_per_update} is not divisible by "
                f"num_minibatches = {self.num_minibatches}"
            )
        base.check_choices(self, {"torso": ("mlp", "cnn"), "activation": ACTIVATIONS})
        if self.shared_torso:
            raise base.ConfigError(
                "shared_torso must be False for TRPO: the trust-region step moves the actor's "
                "parameters only and the critic is fitted separately"
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
    learning_rate=1e-3,  # the critic's Adam step size (the policy's step is set by max_kl)
    discount=0.99,
    gae_lambda=0.97,
    max_kl=0.01,
    cg_damping=0.1,
    backtrack_coef=0.8,
    ent_coef=0.0,
    max_grad_norm=0.5,  # clip_grad_norm only (critic)
    vf_clip_eps=0.2,  # clip_value only
    **dict.fromkeys(ppo.GATES, 1.0),
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    discount=(0.0, 1.0),
    gae_lambda=(0.0, 1.0),
    max_kl=(0.0, 10.0),
    cg_damping=(0.0, 1e3),
    backtrack_coef=(0.0, 1.0),
    ent_coef=(0.0, 1e3),
    max_grad_norm=(0.0, 1e9),
    vf_clip_eps=(0.0, 1e3),
    **dict.fromkeys(ppo.GATES, (0.0, 1.0)),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, each a float32 array (scalar, or ``[R]`` for a sweep)."""

    learning_rate: jax.Array  # critic Adam learning rate
    discount: jax.Array
    gae_lambda: jax.Array
    max_kl: jax.Array  # trust-region radius δ on the mean KL(π_old ‖ π)
    cg_damping: jax.Array  # added to the Fisher diagonal
    backtrack_coef: jax.Array  # line-search shrink factor per backtrack
    ent_coef: jax.Array  # entropy bonus inside the surrogate
    max_grad_norm: jax.Array
    vf_clip_eps: jax.Array
    # Gates in [0, 1] of switches that are on in Config (1: on, 0: off; see ppo.blend):
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
    """Everything one TRPO run carries between updates (arrays only)."""

    params: dict  # the whole ActorCritic (actor and critic parts, see split_params)
    opt_state: optax.OptState  # the critic's Adam state
    env_state: object
    obs: jax.Array  # [num_envs, *obs_shape]
    env_params: object
    key: jax.Array
    update_count: jax.Array  # int32 scalar


Batch = ppo.Batch
Rollout = rollout_lib.Rollout


def network(cfg: Config, env: Env) -> ActorCritic:
    """PPO's actor-critic (separate actor and critic torsos)."""
    return ppo.network(cfg, env)


def split_params(params: dict) -> tuple[dict, dict]:
    """``ActorCritic`` params -> ``(actor, critic)``, each ``{"params": {...}}``.

    Either half can be passed to ``network(...).apply`` with ``method="policy"`` or
    ``method="value"`` respectively.
    """
    inner = params["params"]
    actor = {k: v for k, v in inner.items() if k in ACTOR_MODULES}
    critic = {k: v for k, v in inner.items() if k not in ACTOR_MODULES}
    return {"params": actor}, {"params": critic}


def merge_params(actor: dict, critic: dict) -> dict:
    """Inverse of :func:`split_params`."""
    return {"params": {**actor["params"], **critic["params"]}}


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """Initial state: fresh network, critic optimiser state and reset envs."""
    env_params = env.default_params() if env_params is None else env_params
    key, key_net, key_env = jax.random.split(key, 3)
    obs, env_state = ppo.vec_env(cfg, env).reset(key_env, env_params)
    params = ppo.init_params(cfg, env, key_net, obs, hp.ortho_init_on)
    opt_state = ppo.optimizer(cfg, hp, hp.learning_rate).init(split_params(params)[1])
    return State(
        params=params,
        opt_state=opt_state,
        env_state=env_state,
        obs=obs,
        env_params=env_params,
        key=key,
        update_count=jnp.zeros((), jnp.int32),
    )


def collect(cfg: Config, env: Env, state: State) -> tuple[State, Rollout]:
    """Rolls the current policy out for ``cfg.rollout_len`` steps of every env (PPO's)."""
    return ppo.collect(cfg, env, state)


def make_batch(cfg: Config, env: Env, params: dict, rollout: Rollout, hp: HParams) -> Batch:
    """Truncation-aware GAE, flattened to ``[B]`` (PPO's)."""
    return ppo.make_batch(cfg, env, params, rollout, hp)


# ---------------------------------------------------------------- objectives


def surrogate_loss(
    cfg: Config, env: Env, params: dict, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """Negated TRPO surrogate: ``−(mean(ρ A) + ent_coef · mean H(π_θ))``, ``ρ = π_θ/π_old``.

    ``π_old`` is the behaviour policy (``batch.log_prob``); at ``θ = θ_old`` its gradient
    is the policy gradient ``−E[∇ log π A]``. ``params`` may be the whole ActorCritic or
    its actor half (:func:`split_params`). ``batch`` leaves are ``[B, ...]``; advantages
    are normalised over the batch when ``cfg.normalize_advantages``.
    """
    chex.assert_rank([batch.log_prob, batch.advantage], 1)
    chex.assert_equal_shape([batch.log_prob, batch.advantage])
    dist = network(cfg, env).apply(params, batch.obs, method="policy")
    log_prob = dist.log_prob(batch.action)
    advantage = batch.advantage
    if cfg.normalize_advantages:
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    ratio = jnp.exp(log_prob - batch.log_prob)
    surrogate = jnp.mean(ratio * advantage)
    entropy = jnp.mean(dist.entropy())
    total = -(surrogate + hp.ent_coef * entropy)
    return total, {"train/surrogate": surrogate, "train/entropy": entropy}


def value_loss(
    cfg: Config, env: Env, params: dict, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """Critic regression ``½ mean((V − target)²)`` (PPO2's clipped form if ``clip_value``).

    The clipped form is gated by ``hp.clip_value_on`` (:func:`ppo.gated_value_loss`).

    ``params`` may be the whole ActorCritic or its critic half; ``batch`` leaves ``[B, ...]``.
    """
    chex.assert_rank([batch.value, batch.target], 1)
    v = network(cfg, env).apply(params, batch.obs, method="value")
    loss = ppo.gated_value_loss(
        v, batch.value, batch.target, hp.vf_clip_eps, cfg.clip_value, hp.clip_value_on
    )
    return loss, {"train/value_loss": loss}


def loss(
    cfg: Config, env: Env, params: dict, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """``surrogate_loss + value_loss`` on one batch (no shared parameters, so the gradient
    of the sum is each half's gradient). The update does not descend it: its gradient in
    the actor half is what the trust-region step preconditions, its gradient in the critic
    half what the critic's Adam steps follow (:func:`update`)."""
    pg_loss, pg_metrics = surrogate_loss(cfg, env, params, batch, hp)
    v_loss, v_metrics = value_loss(cfg, env, params, batch, hp)
    total = pg_loss + v_loss
    return total, pg_metrics | v_metrics | {"train/total_loss": total}


LossFn = Callable[[Config, Env, dict, Batch, HParams], tuple[jax.Array, Metrics]]


def policy_gradient(cfg: Config, env: Env, params: dict, batch: Batch, hp: HParams) -> dict:
    """The policy-gradient estimate ``∇_θ L(θ)`` of the surrogate *objective* on ``batch``.

    Returns a pytree shaped like the actor half of ``params`` (:func:`split_params`);
    at the behaviour parameters it equals ``mean(∇ log π(a|s) A) (+ ent_coef ∇H)``.
    """
    actor, _ = split_params(params)
    grads = jax.grad(lambda p: surrogate_loss(cfg, env, p, batch, hp)[0])(actor)
    return jax.tree.map(jnp.negative, grads)


def make_kl_fn(cfg: Config, env: Env, params: dict, obs: jax.Array):
    """``θ [P] -> mean_s KL(π_params(·|s) ‖ π_θ(·|s))`` over ``obs [B, ...]``, and the
    unravel function of the actor's flat parameters: ``(kl_fn, θ_old [P], unravel)``."""
    net = network(cfg, env)
    actor, _ = split_params(params)
    theta, unravel = ravel_pytree(actor)
    # No stop_gradient on ``actor``: ``kl`` and its derivatives in ``t`` are the same without
    # one (``old`` is a constant of ``t``), and a meta-gradient keeps the dependence of the
    # Fisher ``F(θ_old)`` on ``θ_old`` (MAML's ``θ_0``; ``γ``, ``λ`` through earlier steps).
    old = net.apply(actor, obs, method="policy")
    kl = lambda t: natural.mean_kl(old, net.apply(unravel(t), obs, method="policy"))
    return kl, theta, unravel


def _actor_functions(
    cfg: Config, env: Env, params: dict, batch: Batch, hp: HParams, loss_fn: LossFn
):
    """``(θ_old [P], unravel, objective, ascent, kl)`` on the flattened actor:
    ``objective(θ) = (−surrogate_loss, metrics)``, ``ascent(θ) = −loss_fn`` with the
    actor half set to ``θ`` (the critic half held), ``kl(θ) = mean KL(π_old ‖ π_θ)``."""
    kl, theta, unravel = make_kl_fn(cfg, env, params, batch.obs)
    _, critic = split_params(params)

    def objective(t):
        neg_surrogate, metrics = surrogate_loss(cfg, env, unravel(t), batch, hp)
        return -neg_surrogate, metrics

    def ascent(t):
        return -loss_fn(cfg, env, merge_params(unravel(t), critic), batch, hp)[0]

    return theta, unravel, objective, ascent, kl


def _natural_step(cfg: Config, hp: HParams, theta, objective, ascent, kl):
    value, metrics = objective(theta)
    grad = jax.grad(ascent)(theta)
    fvp = natural.fisher_vector_product(kl, theta, hp.cg_damping)
    direction = natural.conjugate_gradient(fvp, grad, cfg.cg_iters)
    full_step, _ = natural.trust_region_step(direction, fvp, hp.max_kl)
    return full_step, grad, value, metrics


def natural_step(
    cfg: Config, env: Env, params: dict, batch: Batch, hp: HParams, loss_fn: LossFn = loss
) -> tuple[jax.Array, jax.Array]:
    """The actor's full trust-region step and the policy gradient, both flat ``[P]``.

    ``g = −∇_θ loss_fn`` in the actor half (for :func:`loss`, the gradient of the surrogate
    objective at ``θ_old``), ``s = CG(F + cg_damping · I, g)`` with ``cfg.cg_iters``
    iterations, and the full step ``√(2 max_kl / sᵀ(F + λI)s) · s``. Flat vectors are in
    the order of ``ravel_pytree(split_params(params)[0])``.
    """
    theta, _, objective, ascent, kl = _actor_functions(cfg, env, params, batch, hp, loss_fn)
    full_step, grad, _, _ = _natural_step(cfg, hp, theta, objective, ascent, kl)
    return full_step, grad


def policy_step(
    cfg: Config, env: Env, params: dict, batch: Batch, hp: HParams, loss_fn: LossFn = loss
) -> tuple[dict, Metrics]:
    """One TRPO (or, with ``cfg.line_search=False``, NPG) step of the actor on ``batch``.

    The step preconditions ``g = −∇_θ loss_fn`` in the actor half (:func:`natural_step`;
    a learned ``loss_fn`` replaces the surrogate there), while the line search accepts a
    candidate by the surrogate objective's improvement and the KL, as TRPO's safeguard
    whatever ``loss_fn`` is; the metrics are the surrogate's (:func:`surrogate_loss`).

    Returns the whole ActorCritic params with only the actor half changed, and metrics:
    the surrogate and entropy at ``θ_old``, the accepted step fraction, the measured mean
    KL between the old and new policies on the batch, the surrogate's actual and
    first-order expected improvement, the number of backtracks, ``‖g‖`` and the full
    step's norm.
    """
    theta, unravel, objective, ascent, kl = _actor_functions(cfg, env, params, batch, hp, loss_fn)
    full_step, grad, value, metrics = _natural_step(cfg, hp, theta, objective, ascent, kl)
    if cfg.line_search:
        theta_new, info = natural.backtracking_line_search(
            lambda t: objective(t)[0], kl, theta, full_step, value, hp.max_kl,
            hp.backtrack_coef, cfg.backtrack_iters,
        )  # fmt: skip
        fraction, accepted = info.fraction, info.accepted.astype(jnp.float32)
        backtracks, new_kl, improvement = info.backtracks, info.kl, info.improvement
    else:
        theta_new = theta + full_step
        fraction, accepted, backtracks = jnp.float32(1.0), jnp.float32(1.0), jnp.int32(0)
        new_kl, improvement = kl(theta_new), objective(theta_new)[0] - value
    metrics |= {
        "train/kl": new_kl,
        "train/step_fraction": fraction,
        "train/line_search_accepted": accepted,
        "train/backtracks": backtracks.astype(jnp.float32),
        "train/surrogate_improvement": improvement,
        "train/expected_improvement": fraction * jnp.vdot(grad, full_step),
        "train/policy_grad_norm": jnp.linalg.norm(grad),
        "train/full_step_norm": jnp.linalg.norm(full_step),
    }
    return merge_params(unravel(theta_new), split_params(params)[1]), metrics


def fit_critic(
    cfg: Config,
    env: Env,
    params: dict,
    opt_state: optax.OptState,
    batch: Batch,
    hp: HParams,
    lr: jax.Array,
    key: jax.Array,
    loss_fn: LossFn = loss,
) -> tuple[dict, optax.OptState, Metrics]:
    """``cfg.num_epochs`` x ``cfg.num_minibatches`` Adam steps of the critic half of
    ``params`` down ``∇ loss_fn`` in it (the actor half held; for :func:`loss`, the
    gradient of :func:`value_loss`). Returns the new critic half, the optimiser state and
    :func:`value_loss`'s metrics averaged over the steps."""
    tx = ppo.optimizer(cfg, hp, lr)
    actor, critic = split_params(params)

    def objective(c, b):
        value = loss_fn(cfg, env, merge_params(actor, c), b, hp)[0]
        return value, value_loss(cfg, env, c, b, hp)[1]

    grad_fn = jax.grad(objective, has_aux=True)

    def sgd_step(carry, minibatch):
        c, opt_state = carry
        grads, metrics = grad_fn(c, minibatch)
        updates, opt_state = tx.update(grads, opt_state, c)
        return (optax.apply_updates(c, updates), opt_state), metrics

    def epoch(carry, key):
        perm = jax.random.permutation(key, cfg.steps_per_update)
        shape = (cfg.num_minibatches, cfg.minibatch_size)
        minibatches = jax.tree.map(lambda x: x[perm].reshape(shape + x.shape[1:]), batch)
        return jax.lax.scan(sgd_step, carry, minibatches)

    keys = jax.random.split(key, cfg.num_epochs)
    (critic, opt_state), metrics = jax.lax.scan(epoch, (critic, opt_state), keys)
    return critic, opt_state, jax.tree.map(jnp.mean, metrics)


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One iteration: collect, GAE, a trust-region step of the actor, Adam epochs of the
    critic (both on the same batch, from the parameters that collected it).

    ``loss_fn`` (same signature as :func:`loss`, e.g. a learned loss) replaces ``loss``
    wherever the update takes its gradient: its actor-half gradient is the one the
    natural-gradient step preconditions (:func:`policy_step`), its critic-half gradient
    the critic's Adam steps' (:func:`fit_critic`, at the old actor). The line search's
    acceptance test (surrogate improvement and KL) and the reported metrics stay TRPO's.
    """
    state, rollout = collect(cfg, env, state)
    batch = make_batch(cfg, env, state.params, rollout, hp)
    params, pg_metrics = policy_step(cfg, env, state.params, batch, hp, loss_fn)
    actor, _ = split_params(params)
    key, key_critic = jax.random.split(state.key)
    lr = ppo.learning_rate(cfg, hp, state.update_count, hp.anneal_lr_on)
    critic, opt_state, v_metrics = fit_critic(
        cfg, env, state.params, state.opt_state, batch, hp, lr, key_critic, loss_fn
    )
    metrics = (
        pg_metrics | v_metrics | {"train/learning_rate": lr} | rollout_lib.episode_metrics(rollout)
    )
    state = state.replace(
        params=merge_params(actor, critic),
        opt_state=opt_state,
        key=key,
        update_count=state.update_count + 1,
    )
    return state, metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` TRPO iterations as one scan; metrics stacked ``[num_updates]``."""
    step = lambda s, _: update(cfg, env, s, hp, loss_fn)
    return jax.lax.scan(step, state, None, num_updates)


def act(cfg: Config, env: Env, params: dict, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Samples actions for a batch of observations (for evaluation or host actors)."""
    return network(cfg, env).apply(params, obs, method="policy").sample(seed=key)
