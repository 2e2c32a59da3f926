"""MAML for RL (Finn, Abbeel, Levine, ICML 2017, https://arxiv.org/abs/1703.03400).

A task is an ``EnvParams`` pytree; the env must also offer ``sample_params(key)``
(see :class:`jaxrl.envs.nav2d.Nav2D`), so a meta-batch is a batch of params and the whole
meta-iteration is vmapped over tasks and runs as one jitted call.

Inner step (vanilla policy gradient on ``num_traj`` trajectories of the task)::

    θ' = θ − α ∇θ L_in(θ),   L_in(θ) = −Σ_t m_t log π_θ(a_t|s_t) Â_t / Σ_t m_t

with ``Â = discounted return − linear feature baseline`` fitted per task (rllab's
``LinearFeatureBaseline``; λ = 1), normalised per task as rllab's ``center_adv``.
Outer step: the post-adaptation surrogate ``−mean ρ_t Â'_t`` (``ρ = π_θ'(θ)/π_old``) on
fresh trajectories of ``θ'``, averaged over the meta-batch, differentiated through ``θ'`` by
nested ``jax.grad``. This is the *original* MAML estimator (it ignores how θ changes the
pre-update sampling distribution). Two outer optimisers: Adam (optionally with a linearly
decaying step, ``Config.anneal_steps``), or TRPO (conjugate gradient with the exact KL
Hessian at θ_old in Gauss-Newton form through the inner step, max KL 0.01, backtracking
line search; see :func:`fisher_vector_product`).

``outer="reptile"``: Reptile (Nichol, Achiam, Schulman 2018, https://arxiv.org/abs/1803.02999)
on the same data. Each task adapts ``num_inner_steps = k`` times, each step on fresh
trajectories of the current adapted policy (step sizes as :func:`step_sizes`: α, then α/2,
the same procedure the evaluation uses), and the first-order meta-"gradient"
``g = mean_i (θ − θ'_i)`` goes to the same Adam as MAML's (the paper's "Reptile with Adam";
see :func:`reptile_grad`). With ``k = 1``, ``g = α ∇L_in(θ)``: joint training, the
"pretrained" baseline; Reptile needs ``k ≥ 2`` and usually a larger α than MAML.

``num_inner_steps = 0`` trains one policy on all tasks jointly with the same surrogate: the
"pretrained" baseline; with ``oracle=True`` the policy also sees the task (the flattened
float leaves of the env params, e.g. the goal): the "oracle" baseline.

Shapes: trajectories are batch-major ``[N, T, ...]`` (``N = num_traj``, ``T = horizon``);
stacked over tasks ``[M, N, T, ...]``. No function here calls ``jit``.
"""

from __future__ import annotations

import dataclasses

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import rlax
from flax import struct
from jax.flatten_util import ravel_pytree

from jaxrl.algorithms import base
from jaxrl.envs.base import Env
from jaxrl.errors import ConfigError
from jaxrl.networks.heads import GaussianHead
from jaxrl.networks.torsos import MLP

OUTERS = ("adam", "trpo", "reptile")


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings (shapes, loop counts, switches).

    Attributes:
        meta_batch_size: tasks per meta-iteration.
        num_traj: trajectories per task per adaptation step (20 in the paper).
        horizon: steps per trajectory (the env's time limit; 100 for 2D navigation).
        hidden: policy MLP widths; ``()`` gives a linear Gaussian policy.
        num_inner_steps: adaptation steps during meta-training (0: no adaptation).
        outer: ``"adam"`` or ``"trpo"`` (MAML's outer step), or ``"reptile"`` (Reptile with
            the same Adam; needs ``num_inner_steps >= 1``, meant for ``>= 2``).
        action_scale: env action = ``action_scale * a`` (rllab ``normalize``: 0.1 for nav2d).
        oracle: append the task's float params (e.g. the goal) to the observation.
        normalize_advantages: per-task advantage standardisation (rllab ``center_adv``).
        ortho_init: orthogonal torso and 0.01-scaled mean head (jaxrl's default); ``False``
            gives lecun-normal layers everywhere, close to rllab's Xavier init, whose random
            policy has a state-dependent, non-zero mean (the paper's "random init").
        anneal_steps: Adam and Reptile only: the step size decays linearly from
            ``learning_rate`` to 0 over this many meta-iterations (0: constant).
        frozen_layers: the first this many torso layers are meta-learned but left alone by
            the inner steps (0: every parameter adapts, the paper's MAML; ``len(hidden)``:
            only the Gaussian head adapts, as ANIL); :mod:`jaxrl.meta.mr_maml` makes them
            stochastic.
        cg_iters: conjugate-gradient iterations (TRPO).
        line_search_steps: backtracking steps (TRPO).
    """

    meta_batch_size: int = 20
    num_traj: int = 20
    horizon: int = 100
    hidden: tuple[int, ...] = (100, 100)
    num_inner_steps: int = 1
    outer: str = "adam"
    action_scale: float = 0.1
    oracle: bool = False
    normalize_advantages: bool = True
    ortho_init: bool = True
    anneal_steps: int = 0
    frozen_layers: int = 0
    cg_iters: int = 10
    line_search_steps: int = 15

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(
            self, ("meta_batch_size", "num_traj", "horizon", "cg_iters", "line_search_steps")
        )
        base.check_non_negative_ints(self, ("anneal_steps", "num_inner_steps", "frozen_layers"))
        if self.frozen_layers > len(self.hidden):
            raise ConfigError(
                f"Config.frozen_layers={self.frozen_layers} exceeds the {len(self.hidden)} "
                f"torso layers of hidden={self.hidden}"
            )
        base.check_choices(self, {"outer": OUTERS})
        if self.outer == "reptile" and self.num_inner_steps < 1:
            raise ConfigError("Config.outer='reptile' needs num_inner_steps >= 1 (0 gives g = 0)")
        if self.outer == "reptile" and self.frozen_layers:
            raise ConfigError(
                "Config.outer='reptile' cannot train frozen layers (θ − θ' is 0 there): "
                "use frozen_layers=0"
            )
        if not self.action_scale > 0:
            raise ConfigError(f"Config.action_scale must be > 0, got {self.action_scale!r}")


class HParams(struct.PyTreeNode):
    """Traced hyperparameters (float32 scalars).

    Attributes:
        inner_lr: adaptation step size α (0.1 in the paper, 0.5 in the released nav2d code).
        learning_rate: Adam step size of the outer update.
        max_grad_norm: global-norm clip of the outer gradient (Adam).
        discount: γ of the returns.
        baseline_reg: ridge coefficient of the linear feature baseline.
        max_kl: TRPO trust region (mean KL of the post-update policies).
        cg_damping: TRPO damping added to the Fisher-vector product.
        backtrack_ratio: TRPO line-search shrink factor.
    """

    inner_lr: jax.Array
    learning_rate: jax.Array
    max_grad_norm: jax.Array
    discount: jax.Array
    baseline_reg: jax.Array
    max_kl: jax.Array
    cg_damping: jax.Array
    backtrack_ratio: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        hp = base.make_hparams(cls, HPARAM_DEFAULTS, overrides)
        _check_hparams({**HPARAM_DEFAULTS, **overrides})
        return hp


HPARAM_DEFAULTS = dict(
    inner_lr=0.1,
    learning_rate=1e-3,
    max_grad_norm=10.0,
    discount=0.99,
    baseline_reg=1e-5,
    max_kl=0.01,
    cg_damping=1e-5,
    backtrack_ratio=0.8,
)
# name -> (lower bound, lower inclusive, upper bound); checked on concrete values only.
_HPARAM_RANGES = {
    "inner_lr": (0.0, True, float("inf")),
    "learning_rate": (0.0, False, float("inf")),
    "max_grad_norm": (0.0, False, float("inf")),
    "discount": (0.0, True, 1.0),
    "baseline_reg": (0.0, True, float("inf")),
    "max_kl": (0.0, False, float("inf")),
    "cg_damping": (0.0, True, float("inf")),
    "backtrack_ratio": (0.0, False, 1.0),
}


def _check_hparams(kw: dict) -> None:
    """Raises :class:`ConfigError` for an out-of-range concrete value (tracers pass)."""
    for name, value in kw.items():
        if isinstance(value, jax.core.Tracer):
            continue
        low, inclusive, high = _HPARAM_RANGES[name]
        v = float(value)
        ok = (v >= low if inclusive else v > low) and v <= high
        if not ok:
            bound = f"{'[' if inclusive else '('}{low}, {high}]"
            raise ConfigError(f"HParams.{name} must lie in {bound}, got {v!r}")


class State(struct.PyTreeNode):
    """Meta-learner state: policy params θ, Adam state, key and iteration counter."""

    params: dict
    opt_state: optax.OptState
    key: jax.Array
    step: jax.Array


class Trajectories(struct.PyTreeNode):
    """Trajectories of one task, batch-major.

    Attributes:
        obs: ``[N, T, O]`` policy inputs (with task features for the oracle).
        action: ``[N, T, A]`` raw policy samples (before ``action_scale`` and clipping).
        reward: ``[N, T]`` rewards, zero after the episode ended.
        mask: ``[N, T]`` 1.0 on steps inside the episode.
        log_prob: ``[N, T]`` log-probability under the sampling policy.
    """

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    mask: jax.Array
    log_prob: jax.Array

    def episode_returns(self) -> jax.Array:
        """``[N]`` undiscounted return of each trajectory."""
        return jnp.sum(self.reward * self.mask, axis=-1)


class GaussianMLPPolicy(nn.Module):
    """MLP (ReLU) torso and a diagonal Gaussian with a state-independent log-std.

    ``hidden=()`` is a linear Gaussian policy ``N(W s + b, diag(exp(log_std))^2)``.
    """

    action_dim: int
    hidden: tuple[int, ...] = (100, 100)
    ortho_init: bool = True

    @nn.compact
    def __call__(self, obs: jax.Array) -> distrax.Distribution:
        x = MLP(self.hidden, "relu", self.ortho_init)(obs) if self.hidden else obs
        return GaussianHead(self.action_dim, self.ortho_init)(x)


def _task_features(env_params) -> jax.Array:
    """The float leaves of ``env_params`` flattened into ``[F]`` (what the oracle sees)."""
    leaves = [
        jnp.ravel(x) for x in jax.tree.leaves(env_params) if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    if not leaves:
        raise ConfigError("oracle=True needs env params with at least one float leaf (the task)")
    return jnp.concatenate(leaves).astype(jnp.float32)


def policy_obs(cfg: Config, obs: jax.Array, env_params) -> jax.Array:
    """The policy input: ``obs [O]``, with the task features appended when ``cfg.oracle``."""
    if cfg.oracle:
        return jnp.concatenate([obs, _task_features(env_params)])
    return obs


def policy(cfg: Config, env: Env, env_params) -> GaussianMLPPolicy:
    """The policy module for ``env`` (continuous actions only)."""
    space = env.action_space(env_params)
    if not hasattr(space, "low") or len(space.shape) != 1:
        raise ConfigError(f"MAML needs a 1-D Box action space, got {space!r}")
    return GaussianMLPPolicy(space.shape[0], cfg.hidden, cfg.ortho_init)


def init_params(cfg: Config, env: Env, key: jax.Array, env_params) -> dict:
    """Random policy parameters θ (see ``Config.ortho_init``; log-std 0)."""
    obs, _ = env.reset(key, env_params)
    return policy(cfg, env, env_params).init(key, policy_obs(cfg, obs, env_params))


def collect(cfg: Config, env: Env, params: dict, env_params, key: jax.Array) -> Trajectories:
    """Samples ``cfg.num_traj`` episodes of one task, each cut at ``cfg.horizon`` steps.

    No auto-reset: after an episode ends the env keeps stepping, masked out by ``mask``.
    """
    pi = policy(cfg, env, env_params)

    def episode(key):
        key_reset, key_roll = jax.random.split(key)
        obs, env_state = env.reset(key_reset, env_params)

        def body(carry, key):
            obs, env_state, alive = carry
            key_act, key_env = jax.random.split(key)
            x = policy_obs(cfg, obs, env_params)
            dist = pi.apply(params, x)
            # Sampled by hand: distrax's sample_n broadcasts [1, A] + [A] (rank promotion).
            noise = jax.random.normal(key_act, dist.loc.shape, dist.loc.dtype)
            action = dist.loc + dist.scale_diag * noise
            log_prob = dist.log_prob(action)
            obs, env_state, step = env.step(
                key_env, env_state, cfg.action_scale * action, env_params
            )
            mask = alive.astype(jnp.float32)
            out = Trajectories(x, action, step.reward * mask, mask, log_prob)
            return (obs, env_state, jnp.logical_and(alive, jnp.logical_not(step.done))), out

        keys = jax.random.split(key_roll, cfg.horizon)
        _, traj = jax.lax.scan(body, (obs, env_state, jnp.ones((), bool)), keys)
        return traj

    return jax.vmap(episode)(jax.random.split(key, cfg.num_traj))


def baseline_features(obs: jax.Array) -> jax.Array:
    """rllab ``LinearFeatureBaseline`` features of one trajectory.

    Args:
        obs: ``[T, O]``.

    Returns:
        ``[T, 2 O + 4]``: ``[o, o², t, t², t³, 1]`` with ``o`` clipped to ±10 and
        ``t = step / 100``.
    """
    o = jnp.clip(obs, -10.0, 10.0)
    t = (jnp.arange(obs.shape[0], dtype=obs.dtype) / 100.0)[:, None]
    return jnp.concatenate([o, o**2, t, t**2, t**3, jnp.ones_like(t)], axis=-1)


def advantages(cfg: Config, traj: Trajectories, hp: HParams) -> jax.Array:
    """Per-task advantages ``[N, T]``: discounted returns minus a fitted linear baseline.

    The baseline solves the ridge problem ``min_w Σ m (F w − R)² + reg ‖w‖²`` over the
    task's valid steps (λ = 1, so GAE equals return − baseline). The result carries no
    gradient.
    """
    traj = jax.lax.stop_gradient(traj)
    discount_t = jnp.broadcast_to(hp.discount, traj.reward.shape[-1:])
    returns = jax.vmap(rlax.discounted_returns, in_axes=(0, None, None))(
        traj.reward, discount_t, jnp.zeros((), traj.reward.dtype)
    )
    feats = jax.vmap(baseline_features)(traj.obs)  # [N, T, F]
    f = feats.reshape(-1, feats.shape[-1])
    m = traj.mask.reshape(-1)
    # The ridge solution as least squares on [√m F; √reg I] w ≈ [√m R; 0] (SVD): the
    # condition number is the square root of the normal equations' one, and collinear
    # features (the oracle's constant task features and the 1 column) stay finite.
    sqrt_m = jnp.sqrt(m)[:, None]
    a = jnp.concatenate(
        [f * sqrt_m, jnp.sqrt(hp.baseline_reg) * jnp.eye(f.shape[-1], dtype=f.dtype)]
    )
    b = jnp.concatenate([returns.reshape(-1) * sqrt_m[:, 0], jnp.zeros(f.shape[-1], f.dtype)])
    w = jnp.linalg.lstsq(a, b, rcond=1e-6)[0]
    adv = (returns - feats @ w) * traj.mask
    if cfg.normalize_advantages:
        count = jnp.maximum(jnp.sum(traj.mask), 1.0)
        mean = jnp.sum(adv) / count
        std = jnp.sqrt(jnp.sum(jnp.square(adv - mean) * traj.mask) / count)
        adv = (adv - mean) / (std + 1e-8) * traj.mask
    return adv


def log_prob(cfg: Config, env: Env, params: dict, env_params, traj: Trajectories) -> jax.Array:
    """``[N, T]`` log π_params(a|s) of the stored actions."""
    return policy(cfg, env, env_params).apply(params, traj.obs).log_prob(traj.action)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def inner_loss(cfg, env, params, env_params, traj: Trajectories, adv: jax.Array) -> jax.Array:
    """REINFORCE surrogate ``−mean_t log π(a_t|s_t) Â_t`` over valid steps (a scalar)."""
    return -_masked_mean(log_prob(cfg, env, params, env_params, traj) * adv, traj.mask)


def frozen_layers_of(cfg: Config, params: dict) -> dict:
    """The first ``Config.frozen_layers`` torso layers of ``params``, the ones the inner
    steps leave alone: ``{"Dense_i": {"kernel", "bias"}}``."""
    torso = params["params"]["MLP_0"]
    return {f"Dense_{i}": torso[f"Dense_{i}"] for i in range(cfg.frozen_layers)}


def with_torso_layers(params: dict, layers: dict) -> dict:
    """``params`` with the torso layers named in ``layers`` (``{"Dense_i": ...}``) replaced."""
    torso = {**params["params"]["MLP_0"], **layers}
    return {**params, "params": {**params["params"], "MLP_0": torso}}


def adapt(cfg, env, params, env_params, traj: Trajectories, adv: jax.Array, step_size) -> dict:
    """One inner VPG step ``θ' = θ − α ∇θ L_in(θ)``, differentiable in ``params`` and ``α``.

    The first ``Config.frozen_layers`` torso layers keep their values."""
    grads = jax.grad(inner_loss, argnums=2)(cfg, env, params, env_params, traj, adv)
    adapted = jax.tree.map(lambda p, g: p - step_size * g, params, grads)
    if not cfg.frozen_layers:  # (a linear policy, hidden=(), has no torso)
        return adapted
    return with_torso_layers(adapted, frozen_layers_of(cfg, params))


def adapt_through(cfg, env, params, env_params, trajs, advs, step_sizes) -> dict:
    """θ_K after the inner steps on fixed data (``trajs``/``advs``/``step_sizes``: length K)."""
    for traj, adv, step_size in zip(trajs, advs, step_sizes, strict=True):
        params = adapt(cfg, env, params, env_params, traj, adv, step_size)
    return params


class TaskData(struct.PyTreeNode):
    """The data of one task for one meta-iteration (each field stacked over tasks outside).

    Attributes:
        inner: K trajectories batches (one per inner step); ``inner_adv`` their advantages.
        outer: trajectories of the adapted policy θ_K; ``outer_adv`` their advantages.
    """

    env_params: object
    inner: tuple
    inner_adv: tuple
    outer: Trajectories
    outer_adv: jax.Array


def step_sizes(hp: HParams, num_steps: int) -> tuple[jax.Array, ...]:
    """α for the first step, α/2 for every later one (the paper's test protocol)."""
    return tuple(hp.inner_lr if k == 0 else 0.5 * hp.inner_lr for k in range(num_steps))


def collect_task(
    cfg: Config, env: Env, params: dict, env_params, key: jax.Array, hp: HParams, num_steps: int
) -> TaskData:
    """Adapts ``num_steps`` times on fresh data, then samples the adapted policy (no gradient)."""
    params = jax.lax.stop_gradient(params)
    keys = jax.random.split(key, num_steps + 1)
    inner, inner_adv = [], []
    for k, alpha in enumerate(step_sizes(hp, num_steps)):
        traj = collect(cfg, env, params, env_params, keys[k])
        adv = advantages(cfg, traj, hp)
        params = adapt(cfg, env, params, env_params, traj, adv, alpha)
        inner.append(traj)
        inner_adv.append(adv)
    outer = collect(cfg, env, params, env_params, keys[-1])
    return TaskData(env_params, tuple(inner), tuple(inner_adv), outer, advantages(cfg, outer, hp))


def _adapted(cfg, env, params, data: TaskData, hp: HParams) -> dict:
    alphas = step_sizes(hp, len(data.inner))
    return adapt_through(cfg, env, params, data.env_params, data.inner, data.inner_adv, alphas)


def task_surrogate(cfg: Config, env: Env, params: dict, data: TaskData, hp: HParams) -> jax.Array:
    """Post-adaptation surrogate of one task: ``−mean ρ Â'`` with ``ρ = π_θ'(θ) / π_old``."""
    adapted = _adapted(cfg, env, params, data, hp)
    new_log_prob = log_prob(cfg, env, adapted, data.env_params, data.outer)
    ratio = jnp.exp(new_log_prob - data.outer.log_prob)
    return -_masked_mean(ratio * data.outer_adv, data.outer.mask)


def task_kl(
    cfg: Config, env: Env, params: dict, data: TaskData, hp: HParams, old_params: dict
) -> jax.Array:
    """Mean KL(π_θ'(old) ‖ π_θ'(θ)) over the valid outer states of one task (Gaussian, exact).

    ``old_params`` are the meta-parameters that sampled the data (held fixed).
    """
    pi = policy(cfg, env, data.env_params)
    old = pi.apply(jax.lax.stop_gradient(_adapted(cfg, env, old_params, data, hp)), data.outer.obs)
    old = distrax.MultivariateNormalDiag(
        jax.lax.stop_gradient(old.loc), jax.lax.stop_gradient(old.scale_diag)
    )
    new = pi.apply(_adapted(cfg, env, params, data, hp), data.outer.obs)
    return _masked_mean(old.kl_divergence(new), data.outer.mask)


def meta_loss(cfg: Config, env: Env, params: dict, data: TaskData, hp: HParams) -> jax.Array:
    """Mean over the meta-batch (``data`` stacked ``[M, ...]``) of the post-update surrogate."""
    per_task = jax.vmap(task_surrogate, in_axes=(None, None, None, 0, None))
    return jnp.mean(per_task(cfg, env, params, data, hp))


def reptile_grad(cfg: Config, env: Env, params: dict, data: TaskData, hp: HParams) -> dict:
    """Reptile's meta-"gradient" ``g = mean_i (θ − θ'_i)`` over the tasks of ``data`` ``[M, ...]``.

    ``θ'_i`` replays task ``i``'s inner steps on its fixed data (the steps that collected it):
    for ``k = 2``, ``θ − θ'_i = α₁ ∇L₁(θ) + α₂ ∇L₂(θ − α₁ ∇L₁(θ))``. First order: no gradient
    flows back through the inner steps.
    """
    params = jax.lax.stop_gradient(params)
    adapted = jax.vmap(_adapted, in_axes=(None, None, None, 0, None))(cfg, env, params, data, hp)
    return jax.tree.map(lambda p, a: jnp.mean(p[None] - a, axis=0), params, adapted)


def optimizer(hp: HParams) -> optax.GradientTransformation:
    """The outer Adam step (MAML's and Reptile's), rebuilt from traced hparams each update."""
    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), optax.adam(hp.learning_rate))


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params=None) -> State:
    """Random θ and a fresh Adam state."""
    env_params = env.default_params() if env_params is None else env_params
    key_params, key = jax.random.split(key)
    params = init_params(cfg, env, key_params, env_params)
    return State(params, optimizer(hp).init(params), key, jnp.zeros((), jnp.int32))


def conjugate_gradient(matvec, b: jax.Array, iters: int) -> jax.Array:
    """Solves ``A x = b`` for symmetric positive-definite ``A`` by ``iters`` CG steps."""

    def body(carry, _):
        x, r, p, rr = carry
        ap = matvec(p)
        alpha = rr / jnp.maximum(jnp.dot(p, ap), 1e-12)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = jnp.dot(r, r)
        p = r + (rr_new / jnp.maximum(rr, 1e-30)) * p
        return (x, r, p, rr_new), None

    x0 = jnp.zeros_like(b)
    (x, *_), _ = jax.lax.scan(body, (x0, b, b, jnp.dot(b, b)), None, iters)
    return x


def _post_update_dist(cfg: Config, env: Env, params: dict, data: TaskData, hp: HParams):
    """``(loc, log_std)``, each ``[N, T, A]``, of the adapted policy on the task's outer states."""
    dist = policy(cfg, env, data.env_params).apply(
        _adapted(cfg, env, params, data, hp), data.outer.obs
    )
    return dist.loc, jnp.log(dist.scale_diag)


def fisher_vector_product(cfg: Config, env: Env, params: dict, data: TaskData, hp: HParams):
    """``v ↦ F v``: Hessian at ``θ = params`` of the mean post-update KL (``data`` ``[M, ...]``).

    At ``θ = θ_old`` the KL and its gradient in the Gaussian's ``(loc, log_std)`` are zero, so
    its Hessian in θ is exactly the Gauss-Newton form ``Jᵀ H J`` with ``J`` the Jacobian of
    θ ↦ ``(loc, log_std)`` of the *adapted* policy (through the inner step) and ``H`` the
    per-state KL Hessian, ``diag(1/σ², 2)``, averaged over valid states and tasks. ``J`` is
    linearised once (``jax.linearize``) and transposed (``jax.linear_transpose``), so each
    product costs one forward and one backward linear pass (no third derivatives).

    Returns:
        ``(fvp, flat, unravel)``: ``fvp`` maps a flat ``[P]`` vector to ``[P]``; ``flat`` is
        ``params`` raveled.
    """
    flat, unravel = ravel_pytree(params)
    dist_fn = jax.vmap(_post_update_dist, in_axes=(None, None, None, 0, None))

    def f(x):
        return dist_fn(cfg, env, unravel(x), data, hp)

    (loc, log_std), f_jvp = jax.linearize(f, flat)
    f_vjp = jax.linear_transpose(f_jvp, flat)
    mask = data.outer.mask[..., None]  # [M, N, T, 1]
    count = jnp.maximum(jnp.sum(data.outer.mask, axis=(1, 2)), 1.0)[:, None, None, None]
    weight = jax.lax.stop_gradient(mask / count / mask.shape[0])
    w_loc = weight * jnp.exp(-2.0 * jax.lax.stop_gradient(log_std))

    def fvp(v):
        d_loc, d_log_std = f_jvp(v)
        (out,) = f_vjp((w_loc * d_loc, 2.0 * weight * d_log_std))
        return out

    return fvp, flat, unravel


def trpo_step(cfg: Config, env: Env, params: dict, data: TaskData, hp: HParams):
    """One TRPO step on the meta-objective; returns ``(new_params, metrics)``.

    Natural direction ``s = F⁻¹(−g)`` by CG with ``F`` from :func:`fisher_vector_product`
    (plus ``cg_damping``), scaled to the trust region ``½ sᵀFs = max_kl``, then backtracked by
    ``backtrack_ratio^k`` (``k < line_search_steps``) until the loss improves and the exact
    mean KL is within ``max_kl`` (else no step), as rllab's ``ConjugateGradientOptimizer``.
    """
    fvp_raw, flat, unravel = fisher_vector_product(cfg, env, params, data, hp)
    per_task_loss = jax.vmap(task_surrogate, in_axes=(None, None, None, 0, None))
    per_task_kl = jax.vmap(task_kl, in_axes=(None, None, None, 0, None, None))

    def loss_fn(x):
        return jnp.mean(per_task_loss(cfg, env, unravel(x), data, hp))

    def kl_fn(x):
        return jnp.mean(per_task_kl(cfg, env, unravel(x), data, hp, params))

    def fvp(v):
        return fvp_raw(v) + hp.cg_damping * v

    loss_before, g = jax.value_and_grad(loss_fn)(flat)
    direction = conjugate_gradient(fvp, -g, cfg.cg_iters)
    shs = jnp.dot(direction, fvp(direction))
    full_step = jnp.sqrt(2.0 * hp.max_kl / jnp.maximum(shs, 1e-12)) * direction

    # Backtracking: try frac = ratio^k, k = 0, 1, ..., stop at the first acceptable one.
    def cond(carry):
        k, _, _, _, accepted = carry
        return jnp.logical_and(k < cfg.line_search_steps, jnp.logical_not(accepted))

    def body(carry):
        k = carry[0]
        frac = hp.backtrack_ratio ** k.astype(jnp.float32)
        x = flat + frac * full_step
        loss, kl = loss_fn(x), kl_fn(x)
        ok = (loss < loss_before) & (kl <= hp.max_kl) & jnp.isfinite(loss) & jnp.isfinite(kl)
        return k + 1, frac, loss, kl, ok

    zero = jnp.zeros((), jnp.float32)
    num_tries, frac, loss, kl, accepted = jax.lax.while_loop(
        cond, body, (jnp.zeros((), jnp.int32), zero, loss_before, zero, jnp.zeros((), bool))
    )
    frac = jnp.where(accepted, frac, 0.0)
    metrics = {
        "train/loss": loss_before,
        "train/loss_after": jnp.where(accepted, loss, loss_before),
        "train/kl": jnp.where(accepted, kl, 0.0),
        "train/step_frac": frac,
        "train/line_search_tries": num_tries,
    }
    return unravel(flat + frac * full_step), metrics


def collect_meta_batch(cfg: Config, env: Env, params: dict, key: jax.Array, hp: HParams):
    """Samples ``cfg.meta_batch_size`` tasks and their data (stacked ``[M, ...]``)."""
    key_tasks, key_data = jax.random.split(key)
    tasks = jax.vmap(env.sample_params)(jax.random.split(key_tasks, cfg.meta_batch_size))
    keys = jax.random.split(key_data, cfg.meta_batch_size)
    return jax.vmap(collect_task, in_axes=(None, None, None, 0, 0, None, None))(
        cfg, env, params, tasks, keys, hp, cfg.num_inner_steps
    )


def annealed(cfg: Config, step: jax.Array, updates):
    """``updates`` scaled by ``max(1 − step / Config.anneal_steps, 0)`` (unchanged when
    ``anneal_steps = 0``): the outer step size's linear decay."""
    if not cfg.anneal_steps:
        return updates
    frac = jnp.maximum(1.0 - step.astype(jnp.float32) / cfg.anneal_steps, 0.0)
    return jax.tree.map(lambda u: frac * u, updates)


def update(cfg: Config, env: Env, state: State, hp: HParams) -> tuple[State, dict]:
    """One meta-iteration: sample tasks, adapt, sample adapted policies, one outer step.

    Metrics: ``train/pre_return`` (mean return of θ on its inner data; for
    ``num_inner_steps = 0`` the data the outer step uses) and ``train/post_return`` (of the
    adapted policies; Reptile does not use these trajectories otherwise).
    """
    key, key_batch = jax.random.split(state.key)
    data = collect_meta_batch(cfg, env, state.params, key_batch, hp)
    first = data.inner[0] if data.inner else data.outer
    metrics = {
        "train/pre_return": jnp.mean(first.episode_returns()),
        "train/post_return": jnp.mean(data.outer.episode_returns()),
    }
    if cfg.outer == "trpo":
        params, trpo_metrics = trpo_step(cfg, env, state.params, data, hp)
        opt_state = state.opt_state
        metrics |= trpo_metrics
    else:
        if cfg.outer == "adam":
            loss, grads = jax.value_and_grad(meta_loss, argnums=2)(cfg, env, state.params, data, hp)
            metrics["train/loss"] = loss
        else:
            grads = reptile_grad(cfg, env, state.params, data, hp)
        updates, opt_state = optimizer(hp).update(grads, state.opt_state, state.params)
        updates = annealed(cfg, state.step, updates)
        params = optax.apply_updates(state.params, updates)
        metrics["train/grad_norm"] = optax.global_norm(grads)
    return State(params, opt_state, key, state.step + 1), metrics


def train(cfg: Config, env: Env, state: State, hp: HParams, num_updates: int):
    """``num_updates`` meta-iterations in one ``lax.scan``; metrics stacked ``[num_updates]``."""
    return jax.lax.scan(lambda s, _: update(cfg, env, s, hp), state, None, num_updates)


def evaluate(
    cfg: Config,
    env: Env,
    params: dict,
    key: jax.Array,
    hp: HParams,
    num_tasks: int = 40,
    num_steps: int = 3,
) -> jax.Array:
    """Returns after 0..num_steps adaptation steps on fresh tasks (the paper's protocol).

    Each step uses ``cfg.num_traj`` fresh trajectories; step sizes α, then α/2.

    Returns:
        ``[num_tasks, num_steps + 1]`` mean return per trajectory; column ``k`` is the
        policy after ``k`` steps.
    """
    key_tasks, key_data = jax.random.split(key)
    tasks = jax.vmap(env.sample_params)(jax.random.split(key_tasks, num_tasks))

    def one_task(task, key):
        data = collect_task(cfg, env, params, task, key, hp, num_steps)
        rets = [jnp.mean(t.episode_returns()) for t in (*data.inner, data.outer)]
        return jnp.stack(rets)

    return jax.vmap(one_task)(tasks, jax.random.split(key_data, num_tasks))
