"""ACER: actor-critic with experience replay, discrete actions (Wang et al. 2017).

"Sample Efficient Actor-Critic with Experience Replay", https://arxiv.org/abs/1611.01224,
Algorithm 2 (discrete ACER). One network (``jaxrl.networks.policy_q.PolicyQNetwork``): a
shared torso, a policy head ``pi(.|s)`` and a Q head ``Q(s, .)``, with
``V(s) = sum_a pi(a|s) Q(s, a)``.

One ``update``:

1. rolls the current policy out for ``rollout_len`` (``T``) steps of ``num_envs`` (``N``)
   auto-reset envs (:func:`jaxrl.algorithms.rollout.collect`) and keeps the behaviour
   probabilities ``mu(.|x_t)`` of every step;
2. adds the ``N`` segments ``[T]`` (obs, action, ``mu``, reward, terminated, truncated,
   pre-reset next obs) to a uniform replay of segments (:func:`jaxrl.replay.buffers.flat_buffer`,
   one item per segment);
3. takes ``1 + replay_ratio`` gradient steps: the first on the fresh segments (on-policy),
   then ``replay_ratio`` on ``N`` segments sampled from replay each (the paper draws the
   count from Poisson(4); here it is a static int). Replay steps are no-ops until
   ``replay_start`` env steps are stored. After every step the average network moves:
   ``theta_avg <- alpha theta_avg + (1 - alpha) theta`` (``alpha = hp.avg_decay``).

Per segment, with ``rho_t(a) = pi(a|x_t) / mu(a|x_t)`` under the current network:

* Retrace target (lambda = 1), backwards from the end:
  ``Q_ret_t = r_t + gamma (1 - term_t) [V(x'_t) + (1 - done_t) cbar_{t+1} (Q_ret_{t+1} -
  Q(x_{t+1}, a_{t+1}))]`` with ``cbar = min(1, rho(a))`` and ``x'_t`` the pre-reset next
  obs: it resets at terminations, bootstraps from ``V`` at truncations and at the segment end
  (:func:`retrace_targets`, on ``rlax.general_off_policy_returns_from_q_and_v``).
* Policy gradient w.r.t. the distribution statistics ``phi`` (probabilities, or logits):
  ``g = min(c, rho(a_t)) d log f(a_t)(Q_ret - V) + sum_a [1 - c/rho(a)]_+ f(a) d log f(a)
  (Q(x_t, a) - V) + ent_coef d H(f)`` (:func:`policy_statistics_gradient`);
* efficient trust region: ``z = g - max(0, (k.g - delta) / |k|^2) k`` with
  ``k = d KL(f_avg || f) / d phi`` (:func:`trust_region_projection`); the network gets
  ``(d phi / d theta)^T z`` through the surrogate ``-mean(z . phi)``;
* critic: ``q_coef * 0.5 (Q_ret - Q(x_t, a_t))^2``.

Targets stop gradients on network outputs only (never on ``hp``), so meta-gradients reach
``discount``, ``truncation_c``, ``trust_region_delta`` and ``ent_coef`` through ``z``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import optax
import rlax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base
from jaxrl.algorithms import rollout as rollout_lib
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.envs.wrappers import make_vec_env
from jaxrl.networks.policy_q import PolicyQNetwork
from jaxrl.networks.torsos import ACTIVATIONS
from jaxrl.replay import buffers
from jaxrl.types import Metrics
from jaxrl.utils import tree

OPTIMIZERS = ("adam", "rmsprop")
STATISTICS = ("probs", "logits")
TORSOS = ("mlp", "cnn")
_TINY = 1e-20  # floor for probabilities under log / division


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings; shapes as in the paper's discrete ACER (T = 20, replay ratio 4)."""

    total_timesteps: int = 500_000  # env steps per run, over all envs
    num_envs: int = 8  # N: segments per rollout and per replay batch
    rollout_len: int = 20  # T: steps per segment
    replay_ratio: int = 4  # off-policy gradient steps per on-policy one (0: on-policy only)
    buffer_size: int = 50_000  # env steps kept (buffer_size // rollout_len segments)
    replay_start: int = 1_000  # env steps stored before replay steps begin
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    torso: str = "mlp"  # "mlp" or "cnn"
    ortho_init: bool = True
    optimizer: str = "adam"  # "adam" or "rmsprop" (decay 0.99, eps 1e-5, as the paper)
    anneal_lr: bool = False  # linear decay of the learning rate to 0 over num_updates
    trust_region: bool = True  # False: g unprojected (the average is still tracked)
    statistics: str = "probs"  # what the trust region projects: "probs" (paper) or "logits"

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(
            self, ("total_timesteps", "num_envs", "rollout_len", "buffer_size")
        )
        base.check_non_negative_ints(self, ("replay_ratio", "replay_start"))
        base.check_choices(
            self,
            {
                "optimizer": OPTIMIZERS,
                "statistics": STATISTICS,
                "torso": TORSOS,
                "activation": ACTIVATIONS,
            },
        )
        if self.buffer_segments < self.num_envs:
            raise base.ConfigError(
                f"buffer_size // rollout_len = {self.buffer_segments} segments is fewer than "
                f"num_envs = {self.num_envs} (one rollout)"
            )
        base.check_budget(self, "num_envs * rollout_len")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.rollout_len

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update

    @property
    def buffer_segments(self) -> int:
        return self.buffer_size // self.rollout_len


HPARAM_DEFAULTS = dict(
    learning_rate=7e-4,
    discount=0.99,
    ent_coef=0.01,
    q_coef=0.5,
    trust_region_delta=1.0,  # delta
    avg_decay=0.99,  # alpha of the average policy network
    truncation_c=10.0,  # c of the truncated importance weight
    max_grad_norm=10.0,
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    discount=(0.0, 1.0),
    ent_coef=(0.0, 1e3),
    q_coef=(0.0, 1e3),
    trust_region_delta=(0.0, 1e9),
    avg_decay=(0.0, 1.0),
    truncation_c=(0.0, 1e9),
    max_grad_norm=(1e-6, 1e9),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, each a float32 array (scalar, or ``[R]`` for a sweep)."""

    learning_rate: jax.Array
    discount: jax.Array
    ent_coef: jax.Array
    q_coef: jax.Array
    trust_region_delta: jax.Array
    avg_decay: jax.Array
    truncation_c: jax.Array
    max_grad_norm: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """Raises ``ConfigError`` for out-of-range concrete hyperparameters (before compiling)."""
    del cfg
    base.check_ranges(hp, HPARAM_RANGES)


class Params(struct.PyTreeNode):
    """The online network and its Polyak average (the trust region's anchor)."""

    online: dict
    average: dict


class Segment(struct.PyTreeNode):
    """``T`` consecutive steps of one env as stored in replay (``[T, ...]`` leaves); the
    learner takes them time-major, ``[T, B, ...]``.

    ``mu`` is the behaviour policy's full distribution ``[T, A]``; ``final_obs`` the obs
    each step reached, before auto-reset; flags are float 0/1.
    """

    obs: jax.Array
    action: jax.Array  # int32
    mu: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_obs: jax.Array


class State(struct.PyTreeNode):
    """Everything one ACER run carries between updates (arrays only)."""

    params: Params
    opt_state: optax.OptState
    buffer: object  # flashbax item-buffer state of Segment items
    env_state: object
    obs: jax.Array  # [N, *obs_shape]
    env_params: object
    key: jax.Array
    env_steps: jax.Array  # int32: env steps taken so far (all envs)
    grad_steps: jax.Array  # int32: gradient steps taken (replay no-ops excluded)
    update_count: jax.Array  # int32


def network(cfg: Config, env: Env) -> PolicyQNetwork:
    """The shared-torso policy + Q network for ``env``'s spaces (discrete actions only)."""
    params = env.default_params()
    space = env.action_space(params)
    if not isinstance(space, spaces.Discrete):
        raise base.ConfigError(f"ACER needs discrete actions; {env.name} has {space}")
    base.check_torso_fits(cfg.torso, env)
    return PolicyQNetwork(
        num_actions=int(space.n),
        hidden=cfg.hidden,
        activation=cfg.activation,
        ortho_init=cfg.ortho_init,
        torso=cfg.torso,
        obs_ndim=max(len(env.observation_space(params).shape), 1),
    )


def vec_env(cfg: Config, env: Env) -> Env:
    """``num_envs`` auto-reset copies with episode statistics."""
    return make_vec_env(env, cfg.num_envs)


def buffer(cfg: Config):
    """Uniform replay of whole segments: ``add`` takes ``[N, T, ...]``, ``sample`` ``N`` of them."""
    return buffers.flat_buffer(cfg.buffer_segments, cfg.num_envs, min_size=cfg.num_envs)


def learning_rate(cfg: Config, hp: HParams, update_count: jax.Array) -> jax.Array:
    """``hp.learning_rate``, linearly annealed to 0 over ``cfg.num_updates`` if enabled."""
    if not cfg.anneal_lr:
        return hp.learning_rate
    frac = 1.0 - update_count.astype(jnp.float32) / cfg.num_updates
    return hp.learning_rate * jnp.maximum(frac, 0.0)


def optimizer(cfg: Config, hp: HParams, lr: jax.Array) -> optax.GradientTransformation:
    """Global-norm clipping at ``hp.max_grad_norm``, then Adam or RMSProp (traced values)."""
    if cfg.optimizer == "adam":
        opt = optim.adam(lr, eps=1e-5)
    else:
        opt = optax.rmsprop(lr, decay=0.99, eps=1e-5)
    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), opt)


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """Initial state: fresh network (average equal to it), optimiser, empty replay, reset envs."""
    env_params = env.default_params() if env_params is None else env_params
    key, key_net, key_env = jax.random.split(key, 3)
    obs, env_state = vec_env(cfg, env).reset(key_env, env_params)
    net = network(cfg, env)
    online = net.init(key_net, obs)
    t, a = cfg.rollout_len, net.num_actions
    zeros = jnp.zeros((t,), jnp.float32)
    obs_t = jnp.zeros((t, *obs.shape[1:]), obs.dtype)
    item = Segment(
        obs_t, jnp.zeros((t,), jnp.int32), jnp.ones((t, a)) / a, zeros, zeros, zeros, obs_t
    )
    zero = jnp.zeros((), jnp.int32)
    return State(
        params=Params(online, online),
        opt_state=optimizer(cfg, hp, hp.learning_rate).init(online),
        buffer=buffer(cfg).init(item),
        env_state=env_state,
        obs=obs,
        env_params=env_params,
        key=key,
        env_steps=zero,
        grad_steps=zero,
        update_count=zero,
    )


# ---------------------------------------------------------------- the pieces of the loss


def retrace_targets(
    q_a: jax.Array,
    v_next: jax.Array,
    reward: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    c: jax.Array,
    discount: chex.Numeric,
) -> jax.Array:
    """Retrace targets ``Q_ret`` ``[T]`` of one segment (ACER Algorithm 2, lambda = 1).

    ``Q_ret_t = r_t + gamma (1 - term_t) [v_next_t + (1 - done_t) c_{t+1} (Q_ret_{t+1} -
    q_a_{t+1})]`` with ``done = term or trunc``: no bootstrap after a termination, a
    bootstrap from ``V`` of the pre-reset obs after a truncation and at the segment end, and
    otherwise the paper's ``c (Q_ret - Q(x, a)) + V(x)`` carried back (where the episode
    goes on, ``v_next_t = V(x_{t+1})``). Computed by
    ``rlax.general_off_policy_returns_from_q_and_v`` with ``c`` zeroed across episode ends.

    Args:
        q_a: ``[T]`` ``Q(x_t, a_t)``.
        v_next: ``[T]`` ``V(x'_t)``, the value of the obs step ``t`` reached (pre-reset).
        reward, terminated, truncated: ``[T]`` (flags as 0/1 floats).
        c: ``[T]`` trace coefficients, ``min(1, rho_t(a_t))``; ``c_0`` is unused.
        discount: ``gamma``.

    Returns:
        ``[T]`` targets; gradients reach the inputs (stop them on network outputs).
    """
    chex.assert_rank([q_a, v_next, reward, terminated, truncated, c], 1)
    chex.assert_equal_shape([q_a, v_next, reward, terminated, truncated, c])
    done = jnp.maximum(terminated, truncated)
    return rlax.general_off_policy_returns_from_q_and_v(
        q_t=q_a[1:],
        v_t=v_next,
        r_t=reward,
        discount_t=discount * (1.0 - terminated),
        c_t=c[1:] * (1.0 - done[:-1]),
    )


def log_f(stats: jax.Array, statistics: str) -> jax.Array:
    """``log f(.|phi)`` ``[..., A]`` from the statistics ``phi``: probabilities or logits."""
    if statistics == "probs":
        return jnp.log(jnp.maximum(stats, _TINY))
    return jax.nn.log_softmax(stats, axis=-1)


def policy_objective(
    stats: jax.Array,
    statistics: str,
    action: jax.Array,
    q: jax.Array,
    q_ret: jax.Array,
    mu: jax.Array,
    truncation_c: chex.Numeric,
    ent_coef: chex.Numeric,
) -> jax.Array:
    """ACER's per-state policy objective ``J [...]``, whose gradient w.r.t. ``stats`` is g.

    ``J = rhobar log f(a) (Q_ret - V) + sum_b [1 - c/rho(b)]_+ f(b) (Q(b) - V) log f(b)
    + ent_coef H(f)`` with ``rho = f / mu``, ``rhobar = min(c, rho(a))``, ``V = sum f Q``;
    every weight is a constant w.r.t. ``stats`` (``f`` in them is stopped; ``q``, ``q_ret``
    and ``mu`` must not depend on ``stats``), so only ``log f`` and ``H`` carry gradients and
    ``d J / d stats`` is the paper's truncated-importance-sampling gradient with bias
    correction (eq. 9) plus the entropy bonus.

    Args:
        stats: ``[..., A]`` the statistics ``phi`` (probabilities or logits).
        statistics: ``"probs"`` or ``"logits"`` (static).
        action: ``[...]`` int actions taken.
        q: ``[..., A]`` ``Q(x, .)``; q_ret: ``[...]``; mu: ``[..., A]`` behaviour probabilities.
        truncation_c, ent_coef: scalars.
    """
    chex.assert_equal_shape([stats, q, mu])
    chex.assert_equal_shape([action, q_ret])
    logp = log_f(stats, statistics)
    f = jax.lax.stop_gradient(jnp.exp(logp))
    v = jnp.sum(f * q, axis=-1)
    rho = f / jnp.maximum(mu, _TINY)
    rho_a = jnp.take_along_axis(rho, action[..., None], axis=-1)[..., 0]
    logp_a = jnp.take_along_axis(logp, action[..., None], axis=-1)[..., 0]
    # The weights depend on stats only through f, whose gradient is stopped; they keep their
    # dependence on hp (c, and gamma through Q_ret), so meta-gradients pass through g.
    pg = jnp.minimum(truncation_c, rho_a) * (q_ret - v) * logp_a
    # [1 - c / rho]_+ written as [1 - c mu / f]_+, which is 0 (not NaN) where f = 0.
    weight = jax.nn.relu(1.0 - truncation_c * mu / jnp.maximum(f, _TINY))
    bc = jnp.sum(weight * f * (q - v[..., None]) * logp, axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return pg + bc + ent_coef * entropy


def policy_statistics_gradient(stats: jax.Array, statistics: str, *args) -> jax.Array:
    """``g = d J / d stats`` ``[..., A]`` per state (:func:`policy_objective`'s arguments)."""
    objective = lambda s: jnp.sum(policy_objective(s, statistics, *args))
    return jax.grad(objective)(stats)


def kl_gradient(stats: jax.Array, f_avg: jax.Array, statistics: str) -> jax.Array:
    """``k = d KL(f_avg || f(stats)) / d stats`` ``[..., A]``: ``-f_avg / f`` for
    probabilities, ``f - f_avg`` for logits."""

    def kl(s):
        logp = log_f(s, statistics)
        return jnp.sum(f_avg * (jnp.log(jnp.maximum(f_avg, _TINY)) - logp))

    return jax.grad(kl)(stats)


def trust_region_projection(
    g: jax.Array, k: jax.Array, delta: chex.Numeric
) -> tuple[jax.Array, jax.Array]:
    """ACER's efficient trust region (eq. 12), per state.

    ``z* = g - max(0, (k.g - delta) / |k|^2) k``: the closest ``z`` to ``g`` with
    ``k.z <= delta``; ``z = g`` when ``k.g <= delta`` already.

    Args:
        g, k: ``[..., A]``.
        delta: scalar ``>= 0``.

    Returns:
        ``(z [..., A], scale [...])``: ``scale > 0`` where the constraint was active.
    """
    chex.assert_equal_shape([g, k])
    kg = jnp.sum(k * g, axis=-1)
    kk = jnp.sum(k * k, axis=-1)
    scale = jnp.maximum(0.0, (kg - delta) / jnp.maximum(kk, _TINY))
    return g - scale[..., None] * k, scale


# ---------------------------------------------------------------- loss and updates


def loss(
    cfg: Config, env: Env, params: Params, batch: Segment, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """ACER loss of ``params.online`` on time-major segments ``[T, B, ...]``.

    ``-mean_t(z_t . phi_t) + q_coef mean_t 0.5 (Q_ret_t - Q(x_t, a_t))^2``: its gradient is
    the trust-region-projected policy gradient plus the critic's. ``z`` depends on ``hp``
    and on constants only, so ``d loss / d theta`` is ``-(d phi / d theta)^T z``.
    """
    chex.assert_rank([batch.reward, batch.terminated, batch.truncated, batch.action], 2)
    chex.assert_rank(batch.mu, 3)
    net = network(cfg, env)
    sg = jax.lax.stop_gradient
    dist, q = net.apply(params.online, batch.obs)  # [T, B, A] each
    logits = dist.logits
    v_next = sg(net.apply(params.online, batch.final_obs, method="value"))  # [T, B]
    pi = sg(jax.nn.softmax(logits, axis=-1))
    q_a = jnp.take_along_axis(q, batch.action[..., None], axis=-1)[..., 0]
    rho_a = jnp.take_along_axis(pi / jnp.maximum(batch.mu, _TINY), batch.action[..., None], -1)
    rho_a = rho_a[..., 0]
    q_ret = jax.vmap(retrace_targets, in_axes=(1, 1, 1, 1, 1, 1, None), out_axes=1)(
        sg(q_a), v_next, batch.reward, batch.terminated, batch.truncated,
        jnp.minimum(1.0, rho_a), hp.discount,
    )  # fmt: skip

    stats = jax.nn.softmax(logits, axis=-1) if cfg.statistics == "probs" else logits
    args = (batch.action, sg(q), q_ret, batch.mu, hp.truncation_c, hp.ent_coef)
    g = policy_statistics_gradient(sg(stats), cfg.statistics, *args)
    pi_avg = jax.nn.softmax(sg(net.apply(params.average, batch.obs, method="policy").logits), -1)
    k = kl_gradient(sg(stats), pi_avg, cfg.statistics)
    if cfg.trust_region:
        z, scale = trust_region_projection(g, k, hp.trust_region_delta)
    else:
        z, scale = g, jnp.zeros(g.shape[:-1])
    policy_loss = -jnp.mean(jnp.sum(z * stats, axis=-1))
    q_loss = 0.5 * jnp.mean(jnp.square(q_ret - q_a))
    total = policy_loss + hp.q_coef * q_loss

    logp = jax.nn.log_softmax(logits, axis=-1)
    entropy = -jnp.sum(pi * logp, axis=-1)
    kl_avg = jnp.sum(pi_avg * (jnp.log(jnp.maximum(pi_avg, _TINY)) - logp), axis=-1)
    metrics = {
        "train/loss": total,
        "train/q_loss": q_loss,
        "train/objective": jnp.mean(policy_objective(sg(stats), cfg.statistics, *args)),
        "train/entropy": jnp.mean(entropy),
        "train/q": jnp.mean(q_a),
        "train/q_ret": jnp.mean(q_ret),
        "train/rho": jnp.mean(rho_a),
        "train/rho_truncated": jnp.mean((rho_a > hp.truncation_c).astype(jnp.float32)),
        "train/kl_average": jnp.mean(sg(kl_avg)),
        "train/trust_region_active": jnp.mean((scale > 0).astype(jnp.float32)),
    }
    return total, metrics


LossFn = Callable[[Config, Env, Params, Segment, HParams], tuple[jax.Array, Metrics]]


def gradient_step(
    cfg: Config,
    env: Env,
    state: State,
    batch: Segment,
    hp: HParams,
    lr: jax.Array,
    loss_fn: LossFn = loss,
) -> tuple[State, Metrics]:
    """One optimiser step on ``loss_fn`` (default :func:`loss`), differentiated in
    ``params.online`` only, then the Polyak move of the average network."""
    grads, metrics = jax.grad(
        lambda online: loss_fn(cfg, env, state.params.replace(online=online), batch, hp),
        has_aux=True,
    )(state.params.online)
    updates, opt_state = optimizer(cfg, hp, lr).update(grads, state.opt_state, state.params.online)
    online = optax.apply_updates(state.params.online, updates)
    average = optax.incremental_update(online, state.params.average, 1.0 - hp.avg_decay)
    metrics = metrics | {"train/grad_norm": optax.global_norm(grads)}
    state = state.replace(
        params=Params(online, average), opt_state=opt_state, grad_steps=state.grad_steps + 1
    )
    return state, metrics


def collect(cfg: Config, env: Env, state: State) -> tuple[State, Segment, rollout_lib.Rollout]:
    """Rolls the online policy out; returns the segments ``[T, N, ...]`` and the rollout."""
    net = network(cfg, env)
    state, ro = rollout_lib.collect(
        vec_env(cfg, env), net, state, cfg.rollout_len, params=state.params.online
    )
    # The behaviour distribution, recomputed in one batched pass (same parameters).
    mu = jax.nn.softmax(net.apply(state.params.online, ro.obs, method="policy").logits, -1)
    flag = lambda x: x.astype(jnp.float32)
    segment = Segment(
        ro.obs, ro.action.astype(jnp.int32), jax.lax.stop_gradient(mu),
        ro.reward.astype(jnp.float32), flag(ro.terminated), flag(ro.truncated), ro.final_obs,
    )  # fmt: skip
    return state.replace(env_steps=state.env_steps + cfg.steps_per_update), segment, ro


def sample_batches(cfg: Config, buffer_state, key: jax.Array) -> Segment:
    """``replay_ratio`` batches of ``N`` uniformly drawn segments: ``[K, T, N, ...]``."""
    keys = jax.random.split(key, cfg.replay_ratio)
    sampled = jax.vmap(lambda k: buffer(cfg).sample(buffer_state, k).experience)(keys)
    return jax.tree.map(lambda x: jnp.swapaxes(x, 1, 2), sampled)


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One iteration: collect ``T x N`` steps, store them, one on-policy step on them and
    ``replay_ratio`` steps on replayed segments (no-ops before ``replay_start``).

    ``loss_fn`` (same signature as :func:`loss`, e.g. a learned loss) replaces the loss
    whose gradient every step takes (:func:`gradient_step`); its metrics are returned."""
    state, segment, ro = collect(cfg, env, state)
    buf = buffer(cfg)
    state = state.replace(
        buffer=buf.add(state.buffer, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), segment))
    )
    ready = jnp.logical_and(state.env_steps >= cfg.replay_start, buf.can_sample(state.buffer))
    key, key_sample = jax.random.split(state.key)
    batches = jax.tree.map(lambda x: x[None], segment)
    if cfg.replay_ratio:
        replayed = sample_batches(cfg, state.buffer, key_sample)
        batches = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), batches, replayed)
    valid = jnp.concatenate([jnp.ones((1,), bool), jnp.broadcast_to(ready, (cfg.replay_ratio,))])
    lr = learning_rate(cfg, hp, state.update_count)

    def step(st, xs):
        batch, ok = xs
        new, metrics = gradient_step(cfg, env, st, batch, hp, lr, loss_fn)
        return tree.select(ok, new, st), metrics

    state, metrics = jax.lax.scan(step, state.replace(key=key), (batches, valid))
    weights = valid.astype(jnp.float32)
    metrics = jax.tree.map(lambda m: jnp.sum(m * weights) / jnp.sum(weights), metrics)
    metrics |= {
        "train/learning_rate": lr,
        "train/replay_steps": jnp.sum(weights) - 1.0,
    } | rollout_lib.episode_metrics(ro)
    return state.replace(update_count=state.update_count + 1), metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` iterations as one scan; metrics stacked ``[num_updates]``."""
    step = lambda s, _: update(cfg, env, s, hp, loss_fn)
    return jax.lax.scan(step, state, None, num_updates)


def act(cfg: Config, env: Env, params: Params, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Actions ``[...]`` sampled from the online policy for ``obs [..., *obs_shape]``."""
    return network(cfg, env).apply(params.online, obs, method="policy").sample(seed=key)


def policy(
    cfg: Config,
    env: Env,
    params: Params,
    obs: jax.Array,
    key: jax.Array,
    deterministic: bool,
    hp: HParams | None = None,
) -> jax.Array:
    """Evaluation policy (``jaxrl.runner.evaluate``): the online policy's mode or a sample."""
    del hp
    dist = network(cfg, env).apply(params.online, obs, method="policy")
    return dist.mode() if deterministic else dist.sample(seed=key)
