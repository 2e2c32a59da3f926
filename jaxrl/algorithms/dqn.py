"""The DQN family as one Q-learning core whose options compose (DQN .. Rainbow).

DQN (Mnih et al. 2015) with a target network; each switch in :class:`Config` adds one
published improvement, and Rainbow (Hessel et al. 2018) is all of them at once:

* ``double``: Double DQN, the online network picks the next action, the target net rates it.
* ``dueling``: a value and a centred advantage stream (Wang et al. 2016).
* ``n_step``: n-step returns, cut at the first episode end inside the window.
* ``prioritised``: proportional prioritised replay with importance weights whose exponent
  ``beta`` anneals from ``hp.per_beta`` to 1 over the run (Schaul et al. 2016).
* ``distribution="c51"``: categorical returns on ``num_atoms`` fixed atoms in
  ``[v_min, v_max]`` with rlax's projection (Bellemare et al. 2017); ``"qr"``: quantile
  regression with ``num_atoms`` quantiles (Dabney et al. 2018).
* ``noisy``: factorised Gaussian noisy layers in the head replace epsilon-greedy
  exploration (Fortunato et al. 2018).

Replay holds per-env streams of transitions; learning samples windows of ``n_step``
consecutive steps (:mod:`jaxrl.replay.buffers`, a pytree in the state), so 1-step and
n-step learning share one path. The target network moves to
``(1 - tau) target + tau online`` every ``target_update_period`` gradient steps:
``tau = 1`` is DQN's periodic copy, a small ``tau`` with period 1 is Polyak averaging.
Truncated episodes bootstrap from the pre-reset observation, terminated ones do not.

The pieces (:func:`collect`, :func:`sample_batch`, :func:`per_example_loss`,
:func:`gradient_step`, :func:`learn`, :func:`store_and_learn`) are public: Ape-X drives
:func:`collect` with one epsilon per actor and stale actor parameters; Sebulba's learner
(:mod:`jaxrl.sebulba`) feeds host actors' transitions to :func:`store_and_learn`.

``Config.data_shards = D > 1`` trains the one agent data-parallel
(:mod:`jaxrl.distributed.data_parallel`): each shard steps ``num_envs / D`` envs into its
own replay of ``buffer_size / D`` steps and samples ``batch_size / D`` windows from it;
gradients and metrics are averaged over shards (importance weights are normalised by the
largest weight of the whole batch), so parameters, optimiser state and counters stay
replicated. ``State.buffer``, ``State.env_state`` and ``State.obs`` then carry a leading
shard axis ``[D, ...]``. ``D = 1`` is the single-device program, unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base
from jaxrl.distributed import data_parallel as dp
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.envs.wrappers import make_vec_env
from jaxrl.losses import q as qloss
from jaxrl.networks.q import QNetwork
from jaxrl.networks.torsos import ACTIVATIONS
from jaxrl.replay import buffers
from jaxrl.types import Metrics
from jaxrl.utils import tree

TORSOS = ("mlp", "minatar")
LOSSES = ("huber", "l2")
# State fields with a leading shard axis [data_shards, ...] when data_shards > 1:
DATA_SHARDED = ("buffer", "env_state", "obs")


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings: sizes, counts and the switches that pick the variant."""

    total_timesteps: int = 100_000  # env steps per run, over all envs
    num_envs: int = 10
    train_freq: int = 1  # env steps per env per update
    gradient_steps: int = 1  # gradient steps per update
    buffer_size: int = 50_000
    batch_size: int = 64
    learning_starts: int = 1_000  # env steps of uniform random actions before learning
    target_update_period: int = 500  # gradient steps between target updates
    hidden: tuple[int, ...] = (64, 64)
    torso: str = "mlp"
    activation: str = "relu"
    loss: str = "huber"  # TD-error regression for distribution="none"
    double: bool = False
    dueling: bool = False
    n_step: int = 1
    prioritised: bool = False
    priority_exponent: float = 0.6  # alpha of proportional prioritisation
    distribution: str = "none"  # "none" | "c51" | "qr"
    num_atoms: int = 51  # C51 atoms or QR quantiles
    v_min: float = -10.0  # C51 support
    v_max: float = 10.0
    noisy: bool = False
    noisy_sigma0: float = 0.5  # initial noise scale sigma0 of the noisy layers (Fortunato et al.)
    anneal_lr: bool = False  # linear decay of the learning rate to 0 over total_timesteps
    data_shards: int = 1  # data-parallel shards of the envs, the replay and every batch

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(
            self,
            (
                "total_timesteps", "num_envs", "train_freq", "gradient_steps", "buffer_size",
                "batch_size", "target_update_period", "n_step", "num_atoms",
            ),
        )  # fmt: skip
        base.check_choices(
            self,
            {
                "torso": TORSOS,
                "activation": ACTIVATIONS,
                "loss": LOSSES,
                "distribution": qloss.DISTRIBUTIONS,
            },
        )
        base.check_non_negative_ints(self, ("learning_starts",))
        if self.noisy_sigma0 < 0:
            raise base.ConfigError(f"noisy_sigma0 must be >= 0, got {self.noisy_sigma0}")
        if not 0 <= self.priority_exponent <= 1:  # as the prioritised buffers require
            raise base.ConfigError(
                f"priority_exponent must be in [0, 1], got {self.priority_exponent}"
            )
        if self.distribution == "c51" and not self.v_min < self.v_max:
            raise base.ConfigError(f"need v_min < v_max, got {self.v_min} and {self.v_max}")
        if self.distribution == "c51" and self.num_atoms < 2:
            raise base.ConfigError("c51 needs num_atoms >= 2")
        per_env = self.buffer_size // self.num_envs
        if per_env < max(self.n_step, 2):
            raise base.ConfigError(
                f"buffer_size // num_envs = {per_env} steps per env is too short for "
                f"n_step = {self.n_step}"
            )
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
    learning_rate=1e-3,
    discount=0.99,
    tau=1.0,  # 1: periodic copy; small with target_update_period=1: Polyak
    eps_start=1.0,
    eps_end=0.05,
    eps_fraction=0.5,  # of total_timesteps over which epsilon decays linearly
    per_beta=0.4,  # initial importance-weight exponent, annealed to 1
    max_grad_norm=10.0,
    adam_eps=1e-8,
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    discount=(0.0, 1.0),
    tau=(0.0, 1.0),
    eps_start=(0.0, 1.0),
    eps_end=(0.0, 1.0),
    eps_fraction=(1e-6, 1.0),
    per_beta=(0.0, 1.0),
    max_grad_norm=(1e-6, 1e9),
    adam_eps=(1e-12, 1.0),  # > 0: 0 gives 0/0 for a zero gradient
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, each a float32 array (scalar, or ``[R]`` for a sweep)."""

    learning_rate: jax.Array
    discount: jax.Array
    tau: jax.Array
    eps_start: jax.Array
    eps_end: jax.Array
    eps_fraction: jax.Array
    per_beta: jax.Array
    max_grad_norm: jax.Array
    adam_eps: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """Raises ConfigError for hyperparameters outside their ranges (before compiling)."""
    base.check_ranges(hp, HPARAM_RANGES)


class Params(struct.PyTreeNode):
    """Online and target network parameters."""

    online: dict
    target: dict


class Transition(struct.PyTreeNode):
    """One env step as stored in replay (per env; batched ``[N, ...]`` when collected)."""

    obs: jax.Array
    action: jax.Array  # int32
    reward: jax.Array
    terminated: jax.Array  # float 0/1: no bootstrap
    done: jax.Array  # float 0/1: the episode ended here (terminated or truncated)
    next_obs: jax.Array  # the observation reached, before any auto-reset


class Batch(struct.PyTreeNode):
    """A learner minibatch: windows ``[B, n_step]`` of transitions, importance weights
    ``[B]`` (ones without prioritisation), their buffer indices ``[B]`` and a key for the
    noisy layers."""

    window: Transition
    weights: jax.Array
    indices: jax.Array
    noise_key: jax.Array


class State(struct.PyTreeNode):
    """Everything one run carries between updates (arrays only)."""

    params: Params
    opt_state: optax.OptState
    buffer: object  # flashbax trajectory-buffer state of Transition items
    env_state: object
    obs: jax.Array  # [num_envs, *obs_shape]
    env_params: object
    key: jax.Array
    env_steps: jax.Array  # int32: env steps taken so far (all envs)
    grad_steps: jax.Array  # int32: gradient steps taken so far
    update_count: jax.Array  # int32


def num_actions(env: Env) -> int:
    """The number of discrete actions; ConfigError for other action spaces."""
    space = env.action_space(env.default_params())
    if not isinstance(space, spaces.Discrete):
        raise base.ConfigError(f"the DQN family needs discrete actions; {env.name} has {space}")
    return int(space.n)


def atoms(cfg: Config) -> jax.Array:
    """The C51 support ``[num_atoms]`` (linearly spaced in ``[v_min, v_max]``)."""
    return jnp.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms)


def network(cfg: Config, env: Env) -> QNetwork:
    """The Q-network: ``[..., A]`` values, or ``[..., A, num_atoms]`` for c51/qr."""
    base.check_torso_fits(cfg.torso, env)
    return QNetwork(
        num_actions=num_actions(env),
        hidden=cfg.hidden,
        torso=cfg.torso,
        activation=cfg.activation,
        dueling=cfg.dueling,
        noisy=cfg.noisy,
        num_atoms=1 if cfg.distribution == "none" else cfg.num_atoms,
        noisy_sigma0=cfg.noisy_sigma0,
    )


def apply(cfg: Config, env: Env, params: dict, obs: jax.Array, key: jax.Array | None):
    """Network output for ``obs [..., *obs_shape]``; noisy layers draw noise from ``key``
    (``None``: their mean weights)."""
    rngs = {"noise": key} if (cfg.noisy and key is not None) else {}
    return network(cfg, env).apply(params, obs, rngs=rngs)


def q_values(cfg: Config, env: Env, params: dict, obs: jax.Array, key: jax.Array | None):
    """Expected action values ``[..., A]``."""
    return qloss.expected_q(apply(cfg, env, params, obs, key), cfg.distribution, atoms(cfg))


def buffer(cfg: Config):
    """Per-env streams of transitions, sampled as windows of ``n_step`` steps (one shard's:
    ``num_envs``, ``buffer_size`` and ``batch_size`` over ``data_shards``)."""
    shards = dp.shards(cfg)
    sizes = dict(
        num_envs=cfg.num_envs // shards,
        capacity=cfg.buffer_size // shards,
        batch_size=cfg.batch_size // shards,
        sequence_length=cfg.n_step,
        period=1,
    )
    if cfg.prioritised:
        return buffers.prioritised_sequence_buffer(**sizes, priority_exponent=cfg.priority_exponent)
    return buffers.sequence_buffer(**sizes)


def vec_env(cfg: Config, env: Env) -> Env:
    """The training env stack: ``num_envs`` auto-reset copies with episode statistics
    (one shard's ``num_envs / data_shards``)."""
    return make_vec_env(env, cfg.num_envs // dp.shards(cfg))


def learning_rate(cfg: Config, hp: HParams, env_steps: jax.Array) -> jax.Array:
    """``hp.learning_rate``, linearly annealed to 0 over ``total_timesteps`` if enabled."""
    if not cfg.anneal_lr:
        return hp.learning_rate
    frac = 1.0 - env_steps.astype(jnp.float32) / cfg.total_timesteps
    return hp.learning_rate * jnp.maximum(frac, 0.0)


def optimizer(hp: HParams, lr: jax.Array | None = None) -> optax.GradientTransformation:
    """Adam at ``lr`` (default ``hp.learning_rate``) after clipping the global gradient norm."""
    return optax.chain(
        optax.clip_by_global_norm(hp.max_grad_norm),
        optim.adam(hp.learning_rate if lr is None else lr, eps=hp.adam_eps),
    )


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """Initial state: a fresh network (target equal to it), Adam, empty replay, reset envs
    (every shard's)."""
    env_params = env.default_params() if env_params is None else env_params
    key, key_net, key_noise, key_env = jax.random.split(key, 4)
    obs, env_state = dp.reset(vec_env(cfg, env), key_env, env_params, cfg.data_shards)
    obs_0 = dp.first_shard(obs, cfg.data_shards)
    rngs = {"params": key_net, "noise": key_noise}
    online = network(cfg, env).init(rngs, obs_0)
    item = Transition(
        obs_0[0], jnp.zeros((), jnp.int32), jnp.zeros(()), jnp.zeros(()), jnp.zeros(()), obs_0[0]
    )
    zero = jnp.zeros((), jnp.int32)
    replay = buffer(cfg).init(item)
    return State(
        params=Params(online, online),
        opt_state=optimizer(hp).init(online),
        buffer=replay if cfg.data_shards == 1 else dp.stack_shards(replay, cfg.data_shards),
        env_state=env_state,
        obs=obs,
        env_params=env_params,
        key=key,
        env_steps=zero,
        grad_steps=zero,
        update_count=zero,
    )


def epsilon(cfg: Config, hp: HParams, env_steps: jax.Array) -> jax.Array:
    """Exploration rate: 1 before ``learning_starts``, then linear from ``eps_start`` to
    ``eps_end`` over ``eps_fraction * total_timesteps`` env steps; 0 with noisy nets."""
    frac = env_steps.astype(jnp.float32) / (hp.eps_fraction * cfg.total_timesteps)
    eps = hp.eps_end + (hp.eps_start - hp.eps_end) * jnp.clip(1.0 - frac, 0.0, 1.0)
    eps = jnp.zeros_like(eps) if cfg.noisy else eps
    return jnp.where(env_steps < cfg.learning_starts, 1.0, eps)


def explore(
    cfg: Config, env: Env, params: dict, obs: jax.Array, eps: jax.Array, key: jax.Array
) -> jax.Array:
    """Epsilon-greedy actions ``[N]`` for ``obs [N, ...]`` with ``eps`` scalar or ``[N]``
    (noisy nets act on freshly drawn noise)."""
    key_noise, key_coin, key_random = jax.random.split(key, 3)
    q = q_values(cfg, env, params, obs, key_noise)
    n = obs.shape[0]
    greedy = jnp.argmax(q, axis=-1).astype(jnp.int32)
    random = jax.random.randint(key_random, (n,), 0, q.shape[-1], jnp.int32)
    explore_here = jax.random.uniform(key_coin, (n,)) < jnp.broadcast_to(eps, (n,))
    return jnp.where(explore_here, random, greedy)


def collect(
    cfg: Config,
    env: Env,
    state: State,
    hp: HParams,
    params: dict | None = None,
    eps: jax.Array | None = None,
) -> tuple[State, Transition, dict]:
    """Steps every env ``cfg.train_freq`` times epsilon-greedily.

    ``params`` (default: the online network) and ``eps`` (default: :func:`epsilon`,
    scalar or one per env ``[N]``) let a caller act with stale parameters or per-actor
    exploration (Ape-X). Returns transitions ``[T, N, ...]`` and env info.
    """
    venv = vec_env(cfg, env)
    params = state.params.online if params is None else params

    def env_step(carry, _):
        st, key = carry
        key, key_act, key_env = jax.random.split(key, 3)
        e = epsilon(cfg, hp, st.env_steps) if eps is None else eps
        action = explore(cfg, env, params, st.obs, e, key_act)
        next_obs, env_state, step = venv.step(key_env, st.env_state, action, st.env_params)
        out = Transition(
            st.obs,
            action,
            step.reward,
            step.terminated.astype(jnp.float32),
            step.done.astype(jnp.float32),
            step.final_obs,
        )
        st = st.replace(env_state=env_state, obs=next_obs, env_steps=st.env_steps + cfg.num_envs)
        return (st, key), (out, step.done, step.info)

    (state, key), (transitions, done, info) = jax.lax.scan(
        env_step, (state, state.key), None, cfg.train_freq
    )
    return state.replace(key=key), transitions, dict(info, done=done)


def store(cfg: Config, buffer_state, transitions: Transition):
    """Adds transitions ``[T, N, ...]`` to the per-env streams."""
    return buffer(cfg).add(buffer_state, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), transitions))


def per_beta(cfg: Config, hp: HParams, env_steps: jax.Array) -> jax.Array:
    """Importance-weight exponent, linear from ``hp.per_beta`` to 1 over the run."""
    frac = jnp.minimum(env_steps.astype(jnp.float32) / cfg.total_timesteps, 1.0)
    return hp.per_beta + (1.0 - hp.per_beta) * frac


def sample_batch(cfg: Config, env: Env, buffer_state, key: jax.Array, beta: jax.Array) -> Batch:
    """A minibatch of ``[B, n_step]`` windows, with importance weights if prioritised.

    With ``data_shards = D > 1``: this shard's ``B / D`` windows of its own replay; the
    weights ``(N P(i))^-beta`` (``N`` and ``P`` this shard's) are normalised by the largest
    one of all shards.
    """
    del env
    shards = dp.shards(cfg)
    key_sample, key_noise = jax.random.split(key)
    sample = buffer(cfg).sample(buffer_state, key_sample)
    if cfg.prioritised and shards == 1:
        weights = buffers.importance_weights(
            sample.probabilities, buffers.num_items(buffer_state), beta
        )
        indices = sample.indices
    elif cfg.prioritised:
        w = jnp.power(buffers.num_items(buffer_state) * sample.probabilities, -beta)
        weights = w / dp.pmax(jnp.max(w), shards)
        indices = sample.indices
    else:
        weights = jnp.ones((cfg.batch_size // shards,))
        indices = jnp.zeros((cfg.batch_size // shards,), jnp.int32)
    return Batch(sample.experience, weights, indices, key_noise)


def per_example_loss(
    cfg: Config, env: Env, online: dict, target: dict, batch: Batch, hp: HParams
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-window losses ``[B]``, new priorities ``[B]`` and the mean Q of taken actions.

    The target is the n-step return of each window plus the discounted value of its
    bootstrap state; the variant's loss is rlax's (Huber/L2 TD, C51 cross-entropy, or QR
    quantile Huber). Priorities are ``|TD|`` (scalar) or the distributional loss.
    """
    w = batch.window
    returns, boot, last = qloss.n_step_bootstrap(w.reward, w.done, w.terminated, hp.discount)
    obs, action = w.obs[:, 0], w.action[:, 0]
    next_obs = qloss.take_last(w.next_obs, last)
    key_tm1, key_t, key_sel = jax.random.split(batch.noise_key, 3)
    out_tm1 = apply(cfg, env, online, obs, key_tm1)
    out_t = apply(cfg, env, target, next_obs, key_t)
    out_sel = apply(cfg, env, online, next_obs, key_sel) if cfg.double else out_t
    out_sel = jax.lax.stop_gradient(out_sel)
    support = atoms(cfg)
    q_tm1 = qloss.expected_q(out_tm1, cfg.distribution, support)
    q_taken = jnp.take_along_axis(q_tm1, action[:, None], axis=1)[:, 0]
    if cfg.distribution == "none":
        td = qloss.scalar_td_error(out_tm1, action, returns, boot, out_t, out_sel)
        return qloss.regression(td, cfg.loss), jnp.abs(td), q_taken
    if cfg.distribution == "c51":
        selector = qloss.expected_q(out_sel, "c51", support)
        losses = qloss.categorical_loss(support, out_tm1, action, returns, boot, out_t, selector)
    else:
        losses = qloss.quantile_loss(out_tm1, action, returns, boot, out_t, out_sel)
    return losses, jax.lax.stop_gradient(losses), q_taken


def weighted_loss(
    cfg: Config, env: Env, online: dict, target: dict, batch: Batch, hp: HParams
) -> tuple[jax.Array, tuple[jax.Array, Metrics]]:
    """Importance-weighted mean of :func:`per_example_loss`, differentiable in ``online``
    only. Returns ``(loss, (priorities [B], metrics))``."""
    losses, priorities, q = per_example_loss(
        cfg, env, online, jax.lax.stop_gradient(target), batch, hp
    )
    value = jnp.mean(batch.weights * losses)
    return value, (priorities, {"train/loss": value, "train/q": jnp.mean(q)})


def loss(
    cfg: Config, env: Env, params: Params, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """The contract's loss: :func:`weighted_loss` of the online net against the target."""
    value, (_, metrics) = weighted_loss(cfg, env, params.online, params.target, batch, hp)
    return value, metrics


LossFn = Callable[[Config, Env, Params, Batch, HParams], tuple[jax.Array, Metrics]]


def priorities(cfg: Config, env: Env, params: Params, batch: Batch, hp: HParams) -> jax.Array:
    """New replay priorities ``[B]`` of the sampled windows: ``|TD|`` (scalar Q) or the
    distributional loss (c51/qr) of :func:`per_example_loss`, the target network stopped
    as in :func:`weighted_loss`."""
    target = jax.lax.stop_gradient(params.target)
    return per_example_loss(cfg, env, params.online, target, batch, hp)[1]


def gradient_step(
    cfg: Config,
    env: Env,
    state: State,
    batch: Batch,
    hp: HParams,
    ready: jax.Array,
    loss_fn: LossFn = loss,
) -> tuple[State, Metrics, jax.Array]:
    """One Adam step on ``loss_fn``, the periodic target update and, if prioritised, the
    new priorities of the sampled windows; a no-op where ``ready`` is false.

    ``loss_fn`` (:func:`loss`'s signature, e.g. a learned loss) is differentiated in
    ``params.online`` only, the target network held at ``state.params.target``; its
    metrics are returned. The priorities stay the algorithm's own, whatever ``loss_fn``
    is: for :func:`loss` they come out of its forward pass (:func:`weighted_loss`), for
    another loss from a pass of their own (:func:`priorities`; a second pass would cost
    Rainbow half again its step time).

    Returns ``(state, metrics, priorities [B])``. With ``data_shards > 1`` the gradient is
    averaged over shards; ``metrics`` and ``priorities`` are this shard's.
    """
    shards = dp.shards(cfg)
    online = dp.local_grad_params(state.params.online, shards)

    def objective(o):
        if loss_fn is loss:
            return weighted_loss(cfg, env, o, state.params.target, batch, hp)
        params = state.params.replace(online=o)
        value, metrics = loss_fn(cfg, env, params, batch, hp)
        return value, (priorities(cfg, env, params, batch, hp), metrics)

    grads, (new_priorities, metrics) = jax.grad(objective, has_aux=True)(online)
    grads = dp.pmean(grads, shards)
    lr = learning_rate(cfg, hp, state.env_steps)
    updates, opt_state = optimizer(hp, lr).update(grads, state.opt_state, state.params.online)
    online = optax.apply_updates(state.params.online, updates)
    grad_steps = state.grad_steps + 1
    target = tree.select(
        grad_steps % cfg.target_update_period == 0,
        optax.incremental_update(online, state.params.target, hp.tau),
        state.params.target,
    )
    # Select only what a step changes: selecting the whole state would copy the replay
    # storage on every gradient step.
    learned = (Params(online, target), opt_state, grad_steps)
    params, opt_state, grad_steps = tree.select(
        ready, learned, (state.params, state.opt_state, state.grad_steps)
    )
    buffer_state = state.buffer
    if cfg.prioritised:
        updated = buffer(cfg).set_priorities(buffer_state, batch.indices, new_priorities + 1e-6)
        buffer_state = buffer_state.replace(
            sum_tree_state=tree.select(ready, updated.sum_tree_state, buffer_state.sum_tree_state)
        )
    new = state.replace(
        params=params, opt_state=opt_state, buffer=buffer_state, grad_steps=grad_steps
    )
    metrics = metrics | {"train/grad_norm": optax.global_norm(grads)}
    return new, metrics, new_priorities


def learn(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``cfg.gradient_steps`` :func:`gradient_step` s on ``loss_fn`` (no-ops before
    ``learning_starts``); metrics averaged over steps and shards."""
    shards = dp.shards(cfg)
    ready = jnp.logical_and(
        state.env_steps >= cfg.learning_starts, buffer(cfg).can_sample(state.buffer)
    )
    ready = dp.all_shards(ready, shards)
    beta = per_beta(cfg, hp, state.env_steps)

    def step(st, key):
        batch = sample_batch(cfg, env, st.buffer, key, beta)
        st, metrics, _ = gradient_step(cfg, env, st, batch, hp, ready, loss_fn)
        return st, metrics

    key, key_steps = jax.random.split(state.key)
    state, metrics = jax.lax.scan(
        step, state.replace(key=key), jax.random.split(key_steps, cfg.gradient_steps)
    )
    return state, dp.pmean(jax.tree.map(jnp.mean, metrics), shards)


def episode_metrics(info: dict) -> Metrics:
    """Mean return and length of the episodes that ended (NaN if none) and their count."""
    done = info["done"].astype(jnp.float32)
    return {
        "episode/return": base.nan_mean(info["episode_return"], done),
        "episode/length": base.nan_mean(info["episode_length"], done),
        "episode/count": jnp.sum(done),
    }


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One iteration: collect ``train_freq`` steps per env, store them, learn.

    ``loss_fn`` (same signature as :func:`loss`, e.g. a learned loss) replaces the loss
    whose gradient every step takes (:func:`gradient_step`). With ``cfg.data_shards > 1``
    every shard runs :func:`shard_update`
    (:func:`jaxrl.distributed.data_parallel.run_update`).
    """
    step = lambda s, h: shard_update(cfg, env, s, h, loss_fn)
    return dp.run_update(step, state, hp, cfg.data_shards, DATA_SHARDED)


def shard_update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """:func:`update` as one shard sees it (all of it when ``cfg.data_shards == 1``)."""
    eps = epsilon(cfg, hp, state.env_steps)
    state, transitions, info = collect(cfg, env, state, hp)
    state, metrics = store_and_learn(cfg, env, state, transitions, info, hp, loss_fn)
    return state, metrics | {"train/epsilon": eps}


def store_and_learn(
    cfg: Config,
    env: Env,
    state: State,
    transitions: Transition,
    info: dict,
    hp: HParams,
    loss_fn: LossFn = loss,
) -> tuple[State, Metrics]:
    """The learning half of :func:`shard_update`: :func:`store` the shard's transitions
    ``[T, N / D, ...]``, :func:`learn`, count the update.

    ``info`` (``done``, ``episode_return``, ``episode_length``, each ``[T, N / D]``) gives the
    episode metrics. ``state.env_steps`` is not advanced here (:func:`collect` does it) and
    the env fields are not read, so host actors' transitions train through it too
    (:mod:`jaxrl.sebulba`).
    """
    state = state.replace(buffer=store(cfg, state.buffer, transitions))
    state, metrics = learn(cfg, env, state, hp, loss_fn)
    if cfg.data_shards == 1:
        episodes = episode_metrics(info)
    else:
        episodes = dp.episode_metrics(info, info["done"], cfg.data_shards)
    return state.replace(update_count=state.update_count + 1), metrics | episodes


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` iterations as one scan; metrics stacked ``[num_updates]``."""
    step = lambda s, h: shard_update(cfg, env, s, h, loss_fn)
    return dp.run_train(step, state, hp, num_updates, cfg.data_shards, DATA_SHARDED)


def act(cfg: Config, env: Env, params: Params, obs: jax.Array) -> jax.Array:
    """Greedy actions ``[...]`` for observations ``[..., *obs_shape]`` (noisy layers at
    their mean weights)."""
    return jnp.argmax(q_values(cfg, env, params.online, obs, None), axis=-1).astype(jnp.int32)


def policy(
    cfg: Config,
    env: Env,
    params: Params,
    obs: jax.Array,
    key: jax.Array,
    deterministic: bool,
    hp: HParams | None = None,
) -> jax.Array:
    """Evaluation policy for ``obs [E, ...]``: greedy, or (``deterministic=False``)
    epsilon-greedy at the final rate ``hp.eps_end`` (noisy nets: fresh noise, no epsilon)."""
    if deterministic:
        return act(cfg, env, params, obs)
    if hp is None:
        raise base.ConfigError("stochastic evaluation of the DQN family needs hp.eps_end")
    eps = jnp.zeros(()) if cfg.noisy else hp.eps_end
    return explore(cfg, env, params.online, obs, eps, key)
