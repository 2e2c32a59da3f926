"""Soft Actor-Critic (Haarnoja et al. 2018, arXiv:1812.05905) and its discrete-action
variant (Christodoulou 2019, arXiv:1910.07207), as pure functions.

The variant follows the env's action space: a Box gives continuous SAC, a Discrete one
discrete SAC. One ``update`` steps ``cfg.num_envs`` auto-reset envs ``cfg.train_freq``
times with the stochastic policy (uniform random actions for the first
``cfg.learning_starts`` env steps), adds the transitions to TD3's flat replay buffer
(:func:`jaxrl.algorithms.td3.buffer`), then takes ``cfg.gradient_steps`` gradient steps
(the update-to-data ratio is ``gradient_steps / (num_envs * train_freq)``). Each step

* fits ``cfg.num_critics`` soft Q critics to the clipped double-Q soft target
  ``y = r + gamma (1 - terminated) V(s')`` with
  ``V(s') = E_{a'~pi}[min_i Q_targ_i(s', a') - alpha log pi(a'|s')]`` (one reparameterised
  sample for Box actions, the exact sum over actions for Discrete ones);
* moves the actor down ``E_{a~pi}[alpha log pi(a|s) - min_i Q_i(s, a)]``
  (reparameterised tanh-Gaussian, or the exact expectation under the categorical policy);
* moves ``log alpha`` down ``alpha (H(pi(.|s)) - H_target)`` (if ``cfg.autotune``): alpha
  grows while the policy's entropy is below the target and shrinks above it; the entropy
  estimate is the actor step's own (``-log pi`` of its policy sample, before the actor
  moves; the exact entropy for Discrete actions), as in SB3 and Rejax;
* moves the target critics towards the online ones by Polyak averaging with rate ``tau``.

The continuous actor is a tanh-squashed diagonal Gaussian
(:class:`jaxrl.networks.heads.TanhGaussianHead`, distrax ``Transformed`` + ``Tanh``), so
``log pi(a|s) = log N(u; mu, sigma) - sum log(1 - tanh(u)^2)`` with ``a = tanh(u)``.
The target entropy is ``-target_entropy_scale * A`` for ``A`` action dimensions
(default ``-A``) and ``target_entropy_scale * log |A|`` for ``|A|`` discrete actions.

TD3's replay buffer, vectorised env, collection loop and Polyak update are reused, and so
are its branches (:func:`jaxrl.utils.branch.run_if`): no learning work is computed before
``cfg.learning_starts`` (metrics NaN), nor actor and temperature steps between delayed steps.

``Config.data_shards = D > 1`` trains the one agent data-parallel
(:mod:`jaxrl.distributed.data_parallel`): each shard steps ``num_envs / D`` envs into its
own replay of ``buffer_size / D`` transitions and samples ``batch_size / D`` of them; the
critic, actor and temperature gradients and the metrics are averaged over shards, so
parameters, optimiser states and counters stay replicated. ``State.buffer``,
``State.env_state`` and ``State.obs`` then carry a leading shard axis ``[D, ...]``.
``D = 1`` is the single-device program, unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base, td3
from jaxrl.algorithms.td3 import Transition  # noqa: F401  (re-exported)
from jaxrl.distributed import data_parallel as dp
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.networks.continuous import scale_action
from jaxrl.networks.heads import CategoricalHead, TanhGaussianHead
from jaxrl.networks.torsos import MLP
from jaxrl.types import Metrics
from jaxrl.utils.branch import run_if


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings. Defaults follow Haarnoja et al. (256-256 ReLU nets, batch 256)."""

    total_timesteps: int = 20_000  # env steps per run, over all envs
    num_envs: int = 1
    train_freq: int = 1  # env steps per env per update
    gradient_steps: int = 1  # gradient steps per update
    buffer_size: int = 100_000
    batch_size: int = 256
    learning_starts: int = 1_000  # env steps of uniform random actions before learning
    policy_delay: int = 1  # actor and temperature step every policy_delay-th gradient step
    num_critics: int = 2
    hidden: tuple[int, ...] = (256, 256)
    autotune: bool = True  # learn alpha towards the target entropy; else alpha = init_alpha
    data_shards: int = 1  # data-parallel shards of the envs, the replay and every batch

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(
            self,
            (
                "total_timesteps", "num_envs", "train_freq", "gradient_steps", "buffer_size",
                "batch_size", "policy_delay", "num_critics",
            ),
        )  # fmt: skip
        base.check_non_negative_ints(self, ("learning_starts",))
        base.check_batch_fits(self)
        base.check_budget(self, "num_envs * train_freq")
        dp.check_divides(
            self.data_shards,
            {
                "num_envs": self.num_envs,
                "batch_size": self.batch_size,
                "buffer_size": self.buffer_size,
            },
        )

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.train_freq

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


HPARAM_DEFAULTS = dict(
    learning_rate=3e-4,  # actor, critics and temperature Adam
    discount=0.99,
    tau=0.005,
    init_alpha=1.0,  # initial temperature (the fixed one without autotune)
    target_entropy_scale=1.0,  # target entropy: -scale * A (Box) or scale * log|A| (Discrete)
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    discount=(0.0, 1.0),
    tau=(0.0, 1.0),
    init_alpha=(1e-8, 1e3),
    target_entropy_scale=(-100.0, 100.0),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, each a float32 array (scalar, or ``[R]`` for a sweep)."""

    learning_rate: jax.Array
    discount: jax.Array
    tau: jax.Array
    init_alpha: jax.Array
    target_entropy_scale: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


# State fields with a leading shard axis [data_shards, ...] when data_shards > 1:
DATA_SHARDED = ("buffer", "env_state", "obs")


def check(cfg: Config, hp: HParams) -> None:
    """Raises ``ConfigError`` for out-of-range concrete hyperparameters (before compiling)."""
    del cfg
    base.check_ranges(hp, HPARAM_RANGES)


class Params(struct.PyTreeNode):
    """Online networks, target critics and the log temperature (a scalar)."""

    actor: dict
    critic: dict
    target_critic: dict
    log_alpha: jax.Array


class Batch(struct.PyTreeNode):
    """A sampled minibatch ``[B, ...]`` and the key for the policy samples in the losses."""

    transition: Transition
    key: jax.Array


class State(struct.PyTreeNode):
    """Everything one SAC run carries between updates (arrays only)."""

    params: Params
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    alpha_opt_state: optax.OptState
    buffer: object  # flashbax buffer state of Transition items
    env_state: object
    obs: jax.Array  # [num_envs, D]
    env_params: object
    key: jax.Array
    env_steps: jax.Array  # int32: env steps taken so far (all envs)
    grad_steps: jax.Array  # int32: gradient steps taken so far
    update_count: jax.Array  # int32


# ---------------------------------------------------------------- networks


def is_discrete(env: Env) -> bool:
    """True for a Discrete action space, False for a Box; ConfigError otherwise."""
    space = env.action_space(env.default_params())
    if isinstance(space, spaces.Discrete):
        return True
    if isinstance(space, spaces.Box):
        return False
    raise base.ConfigError(f"SAC needs a Box or Discrete action space; {env.name} has {space}")


def num_actions(env: Env) -> int:
    """``A``: action dimensions (Box) or number of actions (Discrete)."""
    space = env.action_space(env.default_params())
    return int(space.n) if is_discrete(env) else math.prod(space.shape)


class Actor(nn.Module):
    """``obs [..., D] ->`` tanh-Gaussian over ``(-1, 1)^A``, or Categorical over ``A``."""

    num_actions: int
    discrete: bool
    hidden: tuple[int, ...] = (256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array) -> distrax.Distribution:
        x = MLP(self.hidden, "relu", ortho_init=False)(obs)
        if self.discrete:
            return CategoricalHead(self.num_actions, ortho_init=False)(x)
        return TanhGaussianHead(self.num_actions, ortho_init=False)(x)


class QValues(nn.Module):
    """``obs [..., D] -> Q(s, .) [..., A]`` (the discrete critic)."""

    num_actions: int
    hidden: tuple[int, ...] = (256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return nn.Dense(self.num_actions)(MLP(self.hidden, "relu", ortho_init=False)(obs))


class QValuesEnsemble(nn.Module):
    """``num`` independent :class:`QValues`: ``obs -> q [num, ..., A]``."""

    num_actions: int
    hidden: tuple[int, ...] = (256, 256)
    num: int = 2

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            QValues,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num,
        )
        return ensemble(self.num_actions, self.hidden)(obs)


def networks(cfg: Config, env: Env) -> tuple[Actor, nn.Module]:
    """``(actor, critics)``: critics map ``(obs, action) -> q [K, ...]`` (Box) or
    ``obs -> q [K, ..., A]`` (Discrete), ``K = cfg.num_critics``."""
    n, discrete = num_actions(env), is_discrete(env)
    actor = Actor(n, discrete, cfg.hidden)
    if discrete:
        return actor, QValuesEnsemble(n, cfg.hidden, cfg.num_critics)
    return actor, td3.QEnsemble(n, cfg.hidden, cfg.num_critics)


def network(cfg: Config, env: Env) -> Actor:
    """The policy network."""
    return networks(cfg, env)[0]


def target_entropy(env: Env, hp: HParams) -> jax.Array:
    """``-scale * A`` (Box) or ``scale * log |A|`` (Discrete); ``scale`` is
    ``hp.target_entropy_scale``."""
    n = num_actions(env)
    if is_discrete(env):
        return hp.target_entropy_scale * math.log(n)
    return -hp.target_entropy_scale * n


def optimizer(hp: HParams) -> optax.GradientTransformation:
    """Adam at ``hp.learning_rate`` (actor, critics and temperature keep separate states),
    on the parameters raveled into one vector (``optax.flatten``): Adam's numbers, in a few
    large ops instead of several per parameter array."""
    return optax.flatten(optim.adam(hp.learning_rate))


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """Initial state: fresh networks (target critics equal to them), ``log alpha =
    log hp.init_alpha``, optimisers, empty buffer, envs (every shard's)."""
    env_params = env.default_params() if env_params is None else env_params
    key, key_actor, key_critic, key_env = jax.random.split(key, 4)
    obs, env_state = dp.reset(td3.vec_env(cfg, env), key_env, env_params, cfg.data_shards)
    obs_0 = dp.first_shard(obs, cfg.data_shards)
    actor, critic = networks(cfg, env)
    n = num_actions(env)
    actor_params = actor.init(key_actor, obs_0)
    if is_discrete(env):
        critic_params = critic.init(key_critic, obs_0)
        action = jnp.zeros((), jnp.int32)
    else:
        critic_params = critic.init(key_critic, obs_0, jnp.zeros((obs_0.shape[0], n)))
        action = jnp.zeros(n)
    log_alpha = jnp.log(hp.init_alpha)
    params = Params(actor_params, critic_params, critic_params, log_alpha)
    item = Transition(obs_0[0], action, jnp.zeros(()), jnp.zeros(()), obs_0[0])
    tx = optimizer(hp)
    zero = jnp.zeros((), jnp.int32)
    replay = td3.buffer(cfg).init(item)
    return State(
        params=params,
        actor_opt_state=tx.init(actor_params),
        critic_opt_state=tx.init(critic_params),
        alpha_opt_state=tx.init(log_alpha),
        buffer=replay if cfg.data_shards == 1 else dp.stack_shards(replay, cfg.data_shards),
        env_state=env_state,
        obs=obs,
        env_params=env_params,
        key=key,
        env_steps=zero,
        grad_steps=zero,
        update_count=zero,
    )


# ---------------------------------------------------------------- acting


def explore(
    cfg: Config, env: Env, state: State, obs: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array, State]:
    """``(action, env action, state)`` for ``obs [N, D]``: a policy sample, or uniform
    while ``state.env_steps < cfg.learning_starts``. Box actions ``[N, A]`` are in
    ``[-1, 1]`` (the env action scaled to its bounds); Discrete ones are ints ``[N]``."""
    actor, _ = networks(cfg, env)
    key_pi, key_uniform = jax.random.split(key)
    dist = actor.apply(state.params.actor, obs)
    warm = state.env_steps < cfg.learning_starts
    if is_discrete(env):
        sample = dist.sample(seed=key_pi)
        uniform = jax.random.randint(key_uniform, sample.shape, 0, num_actions(env))
        action = jnp.where(warm, uniform, sample).astype(jnp.int32)
        return action, action, state
    sample = tanh_sample_and_log_prob(dist, key_pi)[0]
    uniform = jax.random.uniform(key_uniform, sample.shape, minval=-1.0, maxval=1.0)
    action = jnp.where(warm, uniform, sample)
    low, high = env.action_space(env.default_params()).bounds()
    return action, scale_action(action, low, high), state


def act(cfg: Config, env: Env, params: Params, obs: jax.Array) -> jax.Array:
    """The greedy action for ``obs [..., D]``: ``tanh(mean)`` scaled to the env's bounds,
    or the most probable discrete action."""
    actor, _ = networks(cfg, env)
    dist = actor.apply(params.actor, obs)
    if is_discrete(env):
        return jnp.argmax(dist.logits, axis=-1)
    low, high = env.action_space(env.default_params()).bounds()
    return scale_action(jnp.tanh(dist.distribution.mean()), low, high)


def policy(
    cfg: Config,
    env: Env,
    params: Params,
    obs: jax.Array,
    key: jax.Array,
    deterministic: bool,
    hp: HParams | None = None,
) -> jax.Array:
    """Evaluation policy for ``obs [E, D]``: greedy (:func:`act`) or a policy sample."""
    del hp
    if deterministic:
        return act(cfg, env, params, obs)
    actor, _ = networks(cfg, env)
    dist = actor.apply(params.actor, obs)
    if is_discrete(env):
        return dist.sample(seed=key)
    sample = tanh_sample_and_log_prob(dist, key)[0]
    low, high = env.action_space(env.default_params()).bounds()
    return scale_action(sample, low, high)


# ---------------------------------------------------------------- losses


def tanh_sample_and_log_prob(
    dist: distrax.Transformed, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """A reparameterised sample ``a = tanh(mu + sigma eps) [..., A]`` of the tanh-Gaussian
    and ``log pi(a) = log N(u; mu, sigma) - sum log(1 - tanh(u)^2) [...]``, the Jacobian
    term from distrax's ``Tanh`` bijector (evaluated at ``u``, stable near the bounds)."""
    base = dist.distribution
    u = base.loc + base.scale_diag * jax.random.normal(key, base.loc.shape)
    action, log_det = dist.bijector.forward_and_log_det(u)
    return action, base.log_prob(u) - log_det


def _alpha(params: Params) -> jax.Array:
    return jnp.exp(jax.lax.stop_gradient(params.log_alpha))


def _policy_terms(actor: Actor, actor_params: dict, obs: jax.Array, key: jax.Array, discrete):
    """Box: a reparameterised sample ``a [B, A]`` and ``log pi(a|s) [B]``. Discrete: the
    probabilities and log-probabilities of every action ``[B, A]``."""
    dist = actor.apply(actor_params, obs)
    if discrete:
        logp = jax.nn.log_softmax(dist.logits, axis=-1)
        return jnp.exp(logp), logp
    return tanh_sample_and_log_prob(dist, key)


def critic_loss(
    cfg: Config, env: Env, critic_params: dict, params: Params, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """Sum over the critics of the mean squared error to the soft clipped double-Q target."""
    actor, critic = networks(cfg, env)
    tr, alpha = batch.transition, _alpha(params)
    key = jax.random.fold_in(batch.key, 0)
    if is_discrete(env):
        probs, logp = _policy_terms(actor, params.actor, tr.next_obs, key, True)
        next_q = jnp.min(critic.apply(params.target_critic, tr.next_obs), axis=0)  # [B, A]
        next_v = jnp.sum(probs * (next_q - alpha * logp), axis=-1)
        q_all = critic.apply(critic_params, tr.obs)  # [K, B, A]
        index = jnp.broadcast_to(tr.action[None, :, None], (q_all.shape[0], q_all.shape[1], 1))
        q = jnp.take_along_axis(q_all, index.astype(jnp.int32), axis=-1)[..., 0]
    else:
        next_a, next_logp = _policy_terms(actor, params.actor, tr.next_obs, key, False)
        next_q = jnp.min(critic.apply(params.target_critic, tr.next_obs, next_a), axis=0)
        next_v = next_q - alpha * next_logp
        q = critic.apply(critic_params, tr.obs, tr.action)  # [K, B]
    target = tr.reward + hp.discount * (1.0 - tr.terminated) * jax.lax.stop_gradient(next_v)
    loss = jnp.sum(jnp.mean(jnp.square(q - target[None]), axis=-1))
    return loss, {"train/critic_loss": loss, "train/q": jnp.mean(q)}


def actor_loss(
    cfg: Config, env: Env, actor_params: dict, params: Params, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """``mean E_{a~pi}[alpha log pi(a|s) - min_i Q_i(s, a)]``, critics and alpha held
    fixed; metrics include the policy entropy estimate ``train/entropy``."""
    del hp
    actor, critic = networks(cfg, env)
    obs, alpha = batch.transition.obs, _alpha(params)
    critic_params = jax.lax.stop_gradient(params.critic)
    key = jax.random.fold_in(batch.key, 1)
    if is_discrete(env):
        probs, logp = _policy_terms(actor, actor_params, obs, key, True)
        q = jnp.min(critic.apply(critic_params, obs), axis=0)  # [B, A]
        per_state = jnp.sum(probs * (alpha * logp - q), axis=-1)
        entropy = -jnp.sum(probs * logp, axis=-1)
    else:
        action, logp = _policy_terms(actor, actor_params, obs, key, False)
        q = jnp.min(critic.apply(critic_params, obs, action), axis=0)
        per_state = alpha * logp - q
        entropy = -logp
    loss = jnp.mean(per_state)
    return loss, {"train/actor_loss": loss, "train/entropy": jnp.mean(entropy)}


def temperature_loss(
    log_alpha: jax.Array, entropy: jax.Array, target: jax.Array
) -> tuple[jax.Array, Metrics]:
    """``alpha * sg(mean(H) - H_target)`` for entropy estimates ``[B]`` (or their mean
    ``[]``): its gradient in ``log alpha`` is negative (alpha grows) while the entropy is
    below the target. The mean is taken first, so the estimates ``[B]`` and their mean
    give the same number (:func:`alpha_loss` and :func:`gradient_step`)."""
    alpha = jnp.exp(log_alpha)
    loss = alpha * jax.lax.stop_gradient(jnp.mean(entropy) - target)
    return loss, {"train/alpha_loss": loss, "train/alpha": alpha}


def policy_entropy(cfg: Config, env: Env, actor_params: dict, obs: jax.Array, key: jax.Array):
    """Per-state entropy estimates ``[B]``: ``-log pi(a|s)`` of one sample (Box) or the
    exact categorical entropy (Discrete)."""
    actor, _ = networks(cfg, env)
    if is_discrete(env):
        probs, logp = _policy_terms(actor, actor_params, obs, key, True)
        return -jnp.sum(probs * logp, axis=-1)
    return -_policy_terms(actor, actor_params, obs, key, False)[1]


def alpha_loss(
    cfg: Config, env: Env, log_alpha: jax.Array, params: Params, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """:func:`temperature_loss` on the entropy estimate of :func:`actor_loss` (the same
    policy sample: same key), as :func:`gradient_step` takes it from the actor step."""
    key = jax.random.fold_in(batch.key, 1)
    entropy = policy_entropy(cfg, env, params.actor, batch.transition.obs, key)
    return temperature_loss(log_alpha, entropy, target_entropy(env, hp))


def loss(
    cfg: Config, env: Env, params: Params, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """Critic + actor + temperature losses; each gradient reaches only its own parameters."""
    c_loss, c_metrics = critic_loss(cfg, env, params.critic, params, batch, hp)
    a_loss, a_metrics = actor_loss(cfg, env, params.actor, params, batch, hp)
    t_loss, t_metrics = alpha_loss(cfg, env, params.log_alpha, params, batch, hp)
    return c_loss + a_loss + t_loss, c_metrics | a_metrics | t_metrics


# ---------------------------------------------------------------- learning


def sample_batch(cfg: Config, buffer_state, key: jax.Array) -> Batch:
    """A uniform replay minibatch ``[B, ...]`` and a key for the policy samples."""
    key_sample, key_pi = jax.random.split(key)
    return Batch(td3.buffer(cfg).sample(buffer_state, key_sample).experience, key_pi)


def _adam_step(objective, params, opt_state, hp: HParams, shards: int):
    """One Adam step on ``objective(params) -> (scalar, metrics)``, its gradient averaged
    over ``shards``."""
    grads, metrics = jax.grad(objective, has_aux=True)(dp.local_grad_params(params, shards))
    grads = dp.pmean(grads, shards)
    updates, opt_state = optimizer(hp).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics


# State fields a gradient step changes (the replay and the envs stay out of its branches).
LEARNER_FIELDS = (*td3.LEARNER_FIELDS, "alpha_opt_state")


LossFn = Callable[[Config, Env, Params, Batch, HParams], tuple[jax.Array, Metrics]]


def gradient_step(
    cfg: Config,
    env: Env,
    state: State,
    batch: Batch,
    hp: HParams,
    ready: jax.Array | bool,
    loss_fn: LossFn = loss,
) -> tuple[State, Metrics]:
    """Critics, then (every ``policy_delay``-th step) actor and temperature, then the
    Polyak target update; a no-op where ``ready`` is false. With ``cfg.data_shards > 1``
    every gradient is averaged over shards; ``metrics`` are this shard's.

    Every gradient is ``loss_fn``'s (:func:`loss`'s signature, e.g. a learned loss) in one
    block of the parameters, the others held: the critics step down its gradient in
    ``params.critic``; then the actor and the temperature down its gradients in
    ``params.actor`` and ``params.log_alpha``, both at the parameters after the critic
    step. For :func:`loss` these are the gradients of :func:`critic_loss`,
    :func:`actor_loss` and :func:`alpha_loss` (each stops the other blocks). The metrics
    are SAC's own losses' whatever ``loss_fn`` is.

    The temperature loss takes the entropy estimate of the actor step's own policy sample
    (before the actor moves), as SB3 and Rejax do, so the actor is evaluated once.
    ``ready`` and the policy delay gate branches (:func:`jaxrl.utils.branch.run_if`):
    skipped work is not computed, also under ``vmap``; skipped metrics are NaN.
    """
    shards = cfg.data_shards

    def block(p: Params, field: str, metrics_fn):
        """``x -> (loss_fn at p with p.<field> = x, metrics_fn(x))``."""
        return lambda x: (loss_fn(cfg, env, p.replace(**{field: x}), batch, hp)[0], metrics_fn(x))

    def actor_and_temperature(st: State) -> tuple[State, Metrics]:
        p = st.params
        actor, a_opt, a_metrics = _adam_step(
            block(p, "actor", lambda a: actor_loss(cfg, env, a, p, batch, hp)[1]),
            p.actor,
            st.actor_opt_state,
            hp,
            shards,
        )
        entropy, target = a_metrics["train/entropy"], target_entropy(env, hp)
        alpha_metrics = lambda la: temperature_loss(la, entropy, target)[1]
        if cfg.autotune:
            log_alpha, t_opt, t_metrics = _adam_step(
                block(p, "log_alpha", alpha_metrics), p.log_alpha, st.alpha_opt_state, hp, shards
            )
        else:
            log_alpha, t_opt = p.log_alpha, st.alpha_opt_state
            t_metrics = alpha_metrics(p.log_alpha)
        params = p.replace(actor=actor, log_alpha=log_alpha)
        new = st.replace(params=params, actor_opt_state=a_opt, alpha_opt_state=t_opt)
        return new, a_metrics | t_metrics

    def step(st: State) -> tuple[State, Metrics]:
        p = st.params
        critic, c_opt, c_metrics = _adam_step(
            block(p, "critic", lambda c: critic_loss(cfg, env, c, p, batch, hp)[1]),
            p.critic,
            st.critic_opt_state,
            hp,
            shards,
        )
        new = st.replace(params=p.replace(critic=critic), critic_opt_state=c_opt)
        if cfg.policy_delay == 1:
            new, at_metrics = actor_and_temperature(new)
        else:
            delayed = (st.grad_steps + 1) % cfg.policy_delay == 0
            fields = ("params", "actor_opt_state", "alpha_opt_state")
            new, at_metrics = run_if(delayed, actor_and_temperature, new, fields)
        p = new.params
        p = p.replace(target_critic=optax.incremental_update(p.critic, p.target_critic, hp.tau))
        return new.replace(params=p, grad_steps=st.grad_steps + 1), c_metrics | at_metrics

    return run_if(ready, step, state, LEARNER_FIELDS)


def learn(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``cfg.gradient_steps`` :func:`gradient_step` s on ``loss_fn`` and uniform replay
    batches, skipped (no sampling, no gradients; NaN metrics) before ``learning_starts``.
    Metrics are averaged over shards and over the steps that computed them."""
    ready = jnp.logical_and(
        state.env_steps >= cfg.learning_starts, td3.buffer(cfg).can_sample(state.buffer)
    )
    ready = dp.all_shards(ready, cfg.data_shards)
    key, key_steps = jax.random.split(state.key)

    def steps(st: State) -> tuple[State, Metrics]:
        def step(s, key):
            return gradient_step(cfg, env, s, sample_batch(cfg, s.buffer, key), hp, True, loss_fn)

        st, metrics = jax.lax.scan(step, st, jax.random.split(key_steps, cfg.gradient_steps))
        mean = jnp.mean if cfg.policy_delay == 1 else jnp.nanmean
        return st, dp.pmean(jax.tree.map(mean, metrics), cfg.data_shards)

    return run_if(ready, steps, state.replace(key=key), LEARNER_FIELDS)


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One iteration: collect ``train_freq`` steps per env, store them, learn.

    ``loss_fn`` (same signature as :func:`loss`, e.g. a learned loss) sets the gradients
    of the critic, actor and temperature steps (:func:`gradient_step`). With
    ``cfg.data_shards > 1`` every shard runs :func:`shard_update`
    (:func:`jaxrl.distributed.data_parallel.run_update`).
    """
    step = lambda s, h: shard_update(cfg, env, s, h, loss_fn)
    return dp.run_update(step, state, hp, cfg.data_shards, DATA_SHARDED)


def shard_update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """:func:`update` as one shard sees it (all of it when ``cfg.data_shards == 1``)."""
    state, transitions, info = td3.collect_with(
        cfg, env, state, lambda s, o, k: explore(cfg, env, s, o, k)
    )
    state = td3.store(cfg, state, transitions)
    state, metrics = learn(cfg, env, state, hp, loss_fn)
    if cfg.data_shards == 1:
        metrics |= td3.episode_metrics(info)
    else:
        metrics |= dp.episode_metrics(info, info["done"], cfg.data_shards)
    return state.replace(update_count=state.update_count + 1), metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` SAC iterations as one scan; metrics stacked ``[num_updates]``."""
    step = lambda s, h: shard_update(cfg, env, s, h, loss_fn)
    return dp.run_train(step, state, hp, num_updates, cfg.data_shards, DATA_SHARDED)
