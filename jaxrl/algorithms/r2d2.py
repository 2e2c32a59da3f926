"""R2D2: recurrent replay distributed DQN (Kapturowski et al. 2019) as pure functions.

https://openreview.net/forum?id=r1lyTjAqYX. One ``update`` steps ``cfg.num_envs`` auto-reset
envs ``cfg.train_freq`` times with epsilon-greedy actors that carry an LSTM state, stores
the steps in a prioritised sequence replay (:mod:`jaxrl.replay.buffers`, a pytree in the
state) and takes ``cfg.gradient_steps`` gradient steps.

What is stored and sampled (fixed windows of per-env streams):

* Every step of env ``i`` is appended to stream ``i`` with the observation, action, reward,
  ``terminated``, ``done``, the pre-reset ``next_obs``, ``reset`` (the obs starts an
  episode: the previous step's ``done``) and ``carry``: the LSTM state the actor read at
  that step (already zeroed where ``reset``). Windows of ``sequence_length`` steps start
  every ``period`` steps of a stream (defaults 80 and 40: overlapping by 40) and carry one
  priority each.
* A window may span episode ends; it is learned from exactly as if cut there: the LSTM
  starts from the stored ``carry`` of its first step and is zeroed before every step whose
  ``reset`` is set; no n-step return runs past a ``done``; a terminated step does not
  bootstrap, a truncated one bootstraps from its pre-reset ``next_obs``, read by the LSTM
  state of the episode it ends. The bootstrap value after step ``j`` is always
  ``Q(next_obs_j)`` one LSTM step on from the state after ``j`` (so no step lacks a target,
  the last one of a window included) and every step after the burn-in is in the loss with
  weight 1: the loss mask is exact, nothing is padded.
* Burn-in: the first ``burn_in`` steps (default 40) only unroll the online and the target
  network from the window's start state (its first stored ``carry``, or zeros with
  ``start_state="zero"``: the paper's two strategies); the online state after them is a
  constant (``stop_gradient``) and those steps have no loss or priority.

Learning: n-step (``n_step = 5``) double Q-learning with the invertible value rescaling
``h(x) = sign(x)(sqrt(|x| + 1) - 1) + eps x`` (rlax ``signed_hyperbolic`` /
``signed_parabolic``) instead of reward clipping,

    y_t = h( sum_{k<=m} gamma^k r_{t+k} + gamma^{m+1} (1 - term_{t+m})
             h^-1( Q_target(s'_{t+m}, argmax_a Q_online(s'_{t+m}, a)) ) ),

with ``m = min(n - 1, first k with done_{t+k}, steps left in the window)``; the TD error
``y_t - Q_online(s_t, a_t)`` is in rescaled units. Per window the loss is the mean over its
learned steps of ``0.5 td^2`` (or Huber) weighted by the importance weight
``(N P(i))^-beta / max`` (beta = ``hp.per_beta``, fixed as in the paper), and its new priority
``eta max_t |td_t| + (1 - eta) mean_t |td_t|`` (``hp.priority_eta``, 0.9). The target
network moves to ``(1 - tau) target + tau online`` every ``target_update_period`` gradient
steps (``tau = 1``: a periodic copy).

Exploration: before ``learning_starts`` env steps all actions are uniform; after it,
``exploration="per_env"`` (default) gives env ``i`` of ``N`` the fixed epsilon
``eps_base^(1 + eps_alpha i / (N - 1))`` (0.4 and 7 in the paper, ``eps_base`` for ``N = 1``);
``"linear"`` decays one epsilon for all envs as in :mod:`jaxrl.algorithms.dqn`.
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

from jaxrl.algorithms import base, dqn
from jaxrl.envs.base import Env
from jaxrl.losses import q as qloss
from jaxrl.networks import recurrent
from jaxrl.networks.q import TORSOS, RecurrentQNetwork
from jaxrl.replay import buffers
from jaxrl.types import Metrics
from jaxrl.utils import tree

LOSSES = ("l2", "huber")
PRIORITY_EPS = 1e-6  # added to new priorities, so no window's drops to 0
EXPLORATION = ("per_env", "linear")
START_STATES = ("stored", "zero")


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings. Sequence layout as in the paper; sizes scaled for small tasks."""

    total_timesteps: int = 100_000  # env steps per run, over all envs
    num_envs: int = 16
    train_freq: int = 10  # env steps per env per update
    gradient_steps: int = 1  # gradient steps per update
    buffer_size: int = 50_000  # env steps kept, over all envs
    batch_size: int = 32  # sequences per gradient step
    sequence_length: int = 80  # steps per replayed sequence, burn-in included
    burn_in: int = 40
    period: int = 40  # sequences start every `period` steps: overlap = length - period
    n_step: int = 5
    learning_starts: int = 5_000  # env steps of uniform random actions before learning
    target_update_period: int = 500  # gradient steps between target updates
    hidden: tuple[int, ...] = (64,)
    lstm_features: int = 64
    torso: str = "mlp"
    dueling: bool = True
    double: bool = True
    loss: str = "l2"
    value_rescaling: bool = True
    priority_exponent: float = 0.9  # alpha of proportional prioritisation
    exploration: str = "per_env"  # "per_env" | "linear"
    start_state: str = "stored"  # a replayed window's first LSTM state: "stored" | "zero"

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(
            self,
            (
                "total_timesteps", "num_envs", "train_freq", "gradient_steps", "buffer_size",
                "batch_size", "sequence_length", "period", "n_step", "target_update_period",
                "lstm_features",
            ),
        )  # fmt: skip
        base.check_choices(
            self,
            {
                "torso": TORSOS, "loss": LOSSES, "exploration": EXPLORATION,
                "start_state": START_STATES,
            },
        )  # fmt: skip
        if not isinstance(self.burn_in, int) or not 0 <= self.burn_in < self.sequence_length:
            raise base.ConfigError(
                f"burn_in must be an int in [0, sequence_length = {self.sequence_length}), "
                f"got {self.burn_in!r}"
            )
        if self.period > self.sequence_length:
            raise base.ConfigError(
                f"period = {self.period} exceeds sequence_length = {self.sequence_length} "
                "(steps between sequences would never be learned from)"
            )
        base.check_non_negative_ints(self, ("learning_starts",))
        if not 0 <= self.priority_exponent <= 1:
            raise base.ConfigError(
                f"priority_exponent must be in [0, 1], got {self.priority_exponent}"
            )
        per_env = self.buffer_size // self.num_envs // self.period * self.period
        if per_env < self.sequence_length:
            raise base.ConfigError(
                f"buffer_size // num_envs (rounded down to a multiple of period) = {per_env} "
                f"steps per env is shorter than sequence_length = {self.sequence_length}"
            )
        base.check_budget(self, "num_envs * train_freq")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.train_freq

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


HPARAM_DEFAULTS = dict(
    learning_rate=1e-4,  # the paper's Adam
    adam_eps=1e-3,
    discount=0.997,
    tau=1.0,  # 1: periodic copy; small with target_update_period=1: Polyak
    priority_eta=0.9,  # priority = eta max|td| + (1 - eta) mean|td|
    per_beta=0.6,  # importance-weight exponent (fixed)
    rescale_eps=1e-3,  # eps of h(x)
    eps_base=0.4,  # per_env epsilons eps_base^(1 + eps_alpha i / (N - 1))
    eps_alpha=7.0,
    eps_start=1.0,  # linear exploration
    eps_end=0.01,
    eps_fraction=0.5,
    max_grad_norm=40.0,
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    adam_eps=(1e-12, 1.0),  # > 0: 0 gives 0/0 for a zero gradient
    discount=(0.0, 1.0),
    tau=(0.0, 1.0),
    priority_eta=(0.0, 1.0),
    per_beta=(0.0, 1.0),
    rescale_eps=(1e-8, 1.0),  # h^-1 divides by eps
    eps_base=(0.0, 1.0),
    eps_alpha=(0.0, 100.0),
    eps_start=(0.0, 1.0),
    eps_end=(0.0, 1.0),
    eps_fraction=(1e-6, 1.0),
    max_grad_norm=(1e-6, 1e9),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, each a float32 array (scalar, or ``[R]`` for a sweep)."""

    learning_rate: jax.Array
    adam_eps: jax.Array
    discount: jax.Array
    tau: jax.Array
    priority_eta: jax.Array
    per_beta: jax.Array
    rescale_eps: jax.Array
    eps_base: jax.Array
    eps_alpha: jax.Array
    eps_start: jax.Array
    eps_end: jax.Array
    eps_fraction: jax.Array
    max_grad_norm: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """Raises ConfigError for hyperparameters outside their ranges (before compiling)."""
    del cfg
    base.check_ranges(hp, HPARAM_RANGES)


Params = dqn.Params  # online and target network parameters


class Transition(struct.PyTreeNode):
    """One env step as stored in replay (per env; ``[T, N, ...]`` when collected)."""

    obs: jax.Array
    action: jax.Array  # int32
    reward: jax.Array
    terminated: jax.Array  # float 0/1: no bootstrap
    done: jax.Array  # float 0/1: the episode ended here (terminated or truncated)
    next_obs: jax.Array  # the observation reached, before any auto-reset
    reset: jax.Array  # bool: obs is the first of an episode (the previous step's done)
    carry: tuple[jax.Array, jax.Array]  # LSTM (c, h) read at this step, zero where reset


class Batch(struct.PyTreeNode):
    """A learner minibatch: time-major sequences ``[L, B, ...]``, importance weights
    ``[B]`` and buffer indices ``[B]``."""

    seq: Transition
    weights: jax.Array
    indices: jax.Array


class State(struct.PyTreeNode):
    """Everything one run carries between updates (arrays only)."""

    params: Params
    opt_state: optax.OptState
    buffer: object  # flashbax prioritised trajectory-buffer state of Transition items
    env_state: object
    obs: jax.Array  # [N, *obs_shape]
    reset: jax.Array  # [N] bool: obs starts an episode
    carry: tuple[jax.Array, jax.Array]  # actors' LSTM state, [N, lstm_features] each
    env_params: object
    key: jax.Array
    env_steps: jax.Array  # int32: env steps taken so far (all envs)
    grad_steps: jax.Array  # int32
    update_count: jax.Array  # int32


def network(cfg: Config, env: Env) -> RecurrentQNetwork:
    """``(carry, obs [T, B, ...], reset [T, B]) -> (carry, q [T, B, A])``."""
    base.check_torso_fits(cfg.torso, env)
    return RecurrentQNetwork(
        num_actions=dqn.num_actions(env),
        hidden=cfg.hidden,
        lstm_features=cfg.lstm_features,
        torso=cfg.torso,
        dueling=cfg.dueling,
    )


def initial_carry(cfg: Config, batch_shape: tuple[int, ...]):
    """Zero LSTM state ``(c, h)``, each ``[*batch_shape, lstm_features]``."""
    return recurrent.initial_carry("lstm", batch_shape, cfg.lstm_features)


def unroll(cfg: Config, env: Env, params: dict, carry, obs: jax.Array, reset: jax.Array):
    """Runs the network over ``obs [T, B, ...]`` from ``carry``, zeroing it where ``reset
    [T, B]``.

    Returns ``(q [T, B, A], carries)``: ``carries`` leaves ``[T, B, H]``, the LSTM state
    after each step (what the next step would read before any reset).
    """
    net = network(cfg, env)

    def step(c, xs):
        o, r = xs
        c, q = net.apply(params, c, o[None], r[None])
        return c, (q[0], c)

    _, (q, carries) = jax.lax.scan(step, carry, (obs, reset))
    return q, carries


def next_q(cfg: Config, env: Env, params: dict, carries, next_obs: jax.Array) -> jax.Array:
    """``Q(next_obs_t)`` ``[T, B, A]``: one LSTM step from ``carries`` (leaves ``[T, B, H]``,
    the state after step ``t``) on ``next_obs [T, B, ...]``, all ``T * B`` at once."""
    t, b = next_obs.shape[:2]
    flat = jax.tree.map(lambda x: x.reshape(t * b, *x.shape[2:]), carries)
    obs = next_obs.reshape(1, t * b, *next_obs.shape[2:])
    _, q = network(cfg, env).apply(params, flat, obs, jnp.zeros((1, t * b), bool))
    return q[0].reshape(t, b, -1)


def value_transform(cfg: Config, hp: HParams):
    """``(h, h^-1)``: rlax's signed hyperbolic pair with ``eps = hp.rescale_eps``, or
    identities without value rescaling."""
    if not cfg.value_rescaling:
        return (lambda x: x), (lambda x: x)
    return (
        lambda x: rlax.signed_hyperbolic(x, hp.rescale_eps),
        lambda x: rlax.signed_parabolic(x, hp.rescale_eps),
    )


def n_step_targets(
    reward: jax.Array,
    terminated: jax.Array,
    done: jax.Array,
    v_next: jax.Array,
    discount: jax.Array,
    n: int,
) -> jax.Array:
    """n-step returns at every step of one sequence, cut at episode ends (untransformed).

    ``G_t = sum_{k<=m} discount^k r_{t+k} + discount^(m+1) (1 - term_{t+m}) v_next_{t+m}``
    with ``m = min(n - 1, T - 1 - t, first k >= 0 with done_{t+k})``. ``v_next_j`` is the
    value of the state reached by step ``j`` (before any auto-reset), so a truncated
    episode bootstraps and a terminated one does not. Without truncations it equals
    rlax's ``n_step_bootstrapped_returns(r, discount (1 - term), v_next, n)``.

    Args:
        reward, terminated, done, v_next: ``[T]`` (flags as 0/1 floats or bools).
        discount: scalar.
        n: static horizon.

    Returns:
        ``[T]`` returns.
    """
    chex.assert_rank([reward, terminated, done, v_next], 1)
    chex.assert_equal_shape([reward, terminated, done, v_next])
    length = reward.shape[0]
    k = jnp.arange(n)
    idx = jnp.arange(length)[:, None] + k[None, :]  # [T, n]
    valid = idx < length
    idx = jnp.minimum(idx, length - 1)
    ends = jnp.where(valid, done.astype(jnp.int32)[idx], 0)
    ended_before = jnp.cumsum(ends, axis=1) - ends  # episode ends strictly before k
    included = jnp.logical_and(valid, ended_before == 0)
    last = jnp.sum(included, axis=1) - 1  # m
    powers = discount ** k.astype(reward.dtype)
    returns = jnp.sum(jnp.where(included, powers[None, :] * reward[idx], 0.0), axis=1)
    j = jnp.arange(length) + last
    boot = discount ** (last + 1).astype(reward.dtype) * (1.0 - terminated.astype(reward.dtype)[j])
    return returns + boot * v_next[j]


def sequence_priorities(td: jax.Array, eta: jax.Array) -> jax.Array:
    """R2D2 priorities ``[B]``: ``eta max_t |td| + (1 - eta) mean_t |td|`` for ``td [T, B]``."""
    chex.assert_rank(td, 2)
    abs_td = jnp.abs(td)
    return eta * jnp.max(abs_td, axis=0) + (1.0 - eta) * jnp.mean(abs_td, axis=0)


def td_errors(
    cfg: Config, env: Env, online: dict, target: dict, seq: Transition, hp: HParams
) -> tuple[jax.Array, jax.Array]:
    """Rescaled n-step double-Q TD errors of the steps after the burn-in.

    Args:
        seq: time-major ``[L, B, ...]`` sequences (``carry`` leaves ``[L, B, H]``).

    Returns:
        ``(td [L - burn_in, B], q_taken [L - burn_in, B])``; gradients reach ``online``
        only through ``Q_online(s_t, a_t)`` of the learned steps.
    """
    chex.assert_rank([seq.reward, seq.done, seq.terminated, seq.action], 2)
    chex.assert_equal_shape([seq.reward, seq.done, seq.terminated, seq.action, seq.reset])
    b = cfg.burn_in
    carry = jax.tree.map(lambda x: x[0], seq.carry)
    if cfg.start_state == "zero":
        carry = jax.tree.map(jnp.zeros_like, carry)
    online_carry, target_carry = carry, carry
    if b > 0:
        net = network(cfg, env)
        online_carry, _ = net.apply(online, carry, seq.obs[:b], seq.reset[:b])
        online_carry = jax.lax.stop_gradient(online_carry)
        target_carry, _ = net.apply(target, carry, seq.obs[:b], seq.reset[:b])
    learn = jax.tree.map(lambda x: x[b:], seq)
    q, carries = unroll(cfg, env, online, online_carry, learn.obs, learn.reset)
    _, target_carries = unroll(cfg, env, target, target_carry, learn.obs, learn.reset)
    q_value = jax.lax.stop_gradient(next_q(cfg, env, target, target_carries, learn.next_obs))
    q_select = next_q(cfg, env, online, carries, learn.next_obs) if cfg.double else q_value
    a_next = jnp.argmax(jax.lax.stop_gradient(q_select), axis=-1)
    v_next = jnp.take_along_axis(q_value, a_next[..., None], axis=-1)[..., 0]
    h, h_inv = value_transform(cfg, hp)
    returns = jax.vmap(n_step_targets, in_axes=(1, 1, 1, 1, None, None), out_axes=1)(
        learn.reward, learn.terminated, learn.done, h_inv(v_next), hp.discount, cfg.n_step
    )
    q_taken = jnp.take_along_axis(q, learn.action[..., None], axis=-1)[..., 0]
    return h(returns) - q_taken, q_taken


def weighted_loss(
    cfg: Config, env: Env, online: dict, target: dict, batch: Batch, hp: HParams
) -> tuple[jax.Array, tuple[jax.Array, Metrics]]:
    """Importance-weighted mean over sequences of the per-step regression loss, averaged
    over each sequence's learned steps. Returns ``(loss, (priorities [B], metrics))``."""
    td, q = td_errors(cfg, env, online, jax.lax.stop_gradient(target), batch.seq, hp)
    per_seq = jnp.mean(qloss.regression(td, cfg.loss), axis=0)
    value = jnp.mean(batch.weights * per_seq)
    priorities = sequence_priorities(jax.lax.stop_gradient(td), hp.priority_eta)
    metrics = {"train/loss": value, "train/q": jnp.mean(q), "train/priority": jnp.mean(priorities)}
    return value, (priorities, metrics)


def loss(
    cfg: Config, env: Env, params: Params, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """The contract's loss: :func:`weighted_loss` of the online net against the target."""
    value, (_, metrics) = weighted_loss(cfg, env, params.online, params.target, batch, hp)
    return value, metrics


def buffer(cfg: Config):
    """Prioritised per-env streams sampled as ``sequence_length`` windows every ``period``."""
    return buffers.prioritised_sequence_buffer(
        num_envs=cfg.num_envs,
        capacity=cfg.buffer_size,
        batch_size=cfg.batch_size,
        sequence_length=cfg.sequence_length,
        period=cfg.period,
        priority_exponent=cfg.priority_exponent,
    )


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """Initial state: a fresh network (target equal to it), Adam, empty replay, reset envs
    and zero actor LSTM states."""
    env_params = env.default_params() if env_params is None else env_params
    key, key_net, key_env = jax.random.split(key, 3)
    obs, env_state = dqn.vec_env(cfg, env).reset(key_env, env_params)
    n = cfg.num_envs
    carry = initial_carry(cfg, (n,))
    online = network(cfg, env).init(key_net, carry, obs[None], jnp.ones((1, n), bool))
    zero_f = jnp.zeros(())
    item = Transition(
        obs[0], jnp.zeros((), jnp.int32), zero_f, zero_f, zero_f, obs[0],
        jnp.zeros((), bool), jax.tree.map(lambda x: x[0], carry),
    )  # fmt: skip
    zero = jnp.zeros((), jnp.int32)
    return State(
        params=Params(online, online),
        opt_state=dqn.optimizer(hp).init(online),
        buffer=buffer(cfg).init(item),
        env_state=env_state,
        obs=obs,
        reset=jnp.ones((n,), bool),
        carry=carry,
        env_params=env_params,
        key=key,
        env_steps=zero,
        grad_steps=zero,
        update_count=zero,
    )


def epsilons(cfg: Config, hp: HParams, env_steps: jax.Array) -> jax.Array:
    """Per-env exploration rates ``[N]``: 1 before ``learning_starts``; then Ape-X's
    ``eps_base^(1 + eps_alpha i / (N - 1))`` (``per_env``) or DQN's linear decay."""
    n = cfg.num_envs
    if cfg.exploration == "per_env":
        frac = jnp.arange(n, dtype=jnp.float32) / max(n - 1, 1)
        eps = hp.eps_base ** (1.0 + hp.eps_alpha * frac)
    else:
        frac = env_steps.astype(jnp.float32) / (hp.eps_fraction * cfg.total_timesteps)
        eps = hp.eps_end + (hp.eps_start - hp.eps_end) * jnp.clip(1.0 - frac, 0.0, 1.0)
        eps = jnp.broadcast_to(eps, (n,))
    return jnp.where(env_steps < cfg.learning_starts, 1.0, eps)


def act(
    cfg: Config, env: Env, params: Params, carry, obs: jax.Array, reset: jax.Array
) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """Greedy actions ``[B]`` for ``obs [B, ...]`` and ``reset [B]``; returns
    ``(carry, action)`` with the LSTM state after the step."""
    carry, q = network(cfg, env).apply(params.online, carry, obs[None], reset[None])
    return carry, jnp.argmax(q[0], axis=-1).astype(jnp.int32)


def policy_carry(cfg: Config, num_episodes: int):
    """The zero LSTM state of ``num_episodes`` evaluation episodes (``jaxrl.runner.evaluate``)."""
    return initial_carry(cfg, (num_episodes,))


def recurrent_policy(
    cfg: Config,
    env: Env,
    params: Params,
    carry,
    obs: jax.Array,
    key: jax.Array,
    deterministic: bool,
    hp: HParams | None = None,
) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """Evaluation policy for ``obs [E, ...]`` from the LSTM ``carry``: greedy, or
    (``deterministic=False``) epsilon-greedy at ``hp.eps_end``; returns ``(carry, action [E])``.

    Each evaluation episode starts from :func:`policy_carry` and is played to its end, so no
    step resets the carry.
    """
    carry, greedy = act(cfg, env, params, carry, obs, jnp.zeros(obs.shape[:1], bool))
    if deterministic:
        return carry, greedy
    if hp is None:
        raise base.ConfigError("stochastic evaluation of R2D2 needs hp.eps_end")
    key_explore, key_action = jax.random.split(key)
    num_actions = env.action_space(env.default_params()).n
    random_action = jax.random.randint(key_action, greedy.shape, 0, num_actions, jnp.int32)
    explore = jax.random.uniform(key_explore, greedy.shape) < hp.eps_end
    return carry, jnp.where(explore, random_action, greedy)


def collect(
    cfg: Config, env: Env, state: State, hp: HParams, params: dict | None = None
) -> tuple[State, Transition, dict]:
    """Steps every env ``cfg.train_freq`` times epsilon-greedily with recurrent actors.

    ``params`` defaults to the online network. Returns transitions ``[T, N, ...]`` (with
    the LSTM state each step read) and env info.
    """
    venv = dqn.vec_env(cfg, env)
    params = state.params.online if params is None else params
    net = network(cfg, env)

    def env_step(carry, _):
        st, key = carry
        key, key_coin, key_random, key_env = jax.random.split(key, 4)
        lstm_in = recurrent.reset_carry(st.carry, st.reset)
        lstm_out, q = net.apply(params, lstm_in, st.obs[None], st.reset[None])
        greedy = jnp.argmax(q[0], axis=-1).astype(jnp.int32)
        random = jax.random.randint(key_random, greedy.shape, 0, q.shape[-1], jnp.int32)
        coin = jax.random.uniform(key_coin, greedy.shape) < epsilons(cfg, hp, st.env_steps)
        action = jnp.where(coin, random, greedy)
        next_obs, env_state, step = venv.step(key_env, st.env_state, action, st.env_params)
        out = Transition(
            st.obs, action, step.reward, step.terminated.astype(jnp.float32),
            step.done.astype(jnp.float32), step.final_obs, st.reset, lstm_in,
        )  # fmt: skip
        st = st.replace(
            env_state=env_state, obs=next_obs, reset=step.done, carry=lstm_out,
            env_steps=st.env_steps + cfg.num_envs,
        )  # fmt: skip
        return (st, key), (out, step.done, step.info)

    (state, key), (transitions, done, info) = jax.lax.scan(
        env_step, (state, state.key), None, cfg.train_freq
    )
    return state.replace(key=key), transitions, dict(info, done=done)


def store(cfg: Config, buffer_state, transitions: Transition):
    """Appends transitions ``[T, N, ...]`` to the per-env streams."""
    return buffer(cfg).add(buffer_state, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), transitions))


def sample_windows(buf, buffer_state, key: jax.Array, hp: HParams) -> Batch:
    """Prioritised windows of the sequence buffer ``buf``, time-major ``[L, B, ...]``, with
    their importance weights ``(N P(i))^-per_beta / max``."""
    sample = buf.sample(buffer_state, key)
    weights = buffers.importance_weights(
        sample.probabilities, buffers.num_items(buffer_state), hp.per_beta
    )
    seq = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), sample.experience)
    return Batch(seq, weights, sample.indices)


def sample_batch(cfg: Config, buffer_state, key: jax.Array, hp: HParams) -> Batch:
    """:func:`sample_windows` of the replay: ``batch_size`` windows ``[L, B, ...]``."""
    return sample_windows(buffer(cfg), buffer_state, key, hp)


LossFn = Callable[[Config, Env, Params, Batch, HParams], tuple[jax.Array, Metrics]]


def priorities(cfg: Config, env: Env, params: Params, batch: Batch, hp: HParams) -> jax.Array:
    """New priorities ``[B]`` of the sampled sequences: :func:`sequence_priorities` of the
    (stopped) TD errors of :func:`td_errors`, as :func:`weighted_loss` computes them."""
    td, _ = td_errors(cfg, env, params.online, jax.lax.stop_gradient(params.target), batch.seq, hp)
    return sequence_priorities(jax.lax.stop_gradient(td), hp.priority_eta)


def optimise(
    cfg: Config, env: Env, state: State, batch: Batch, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics, jax.Array]:
    """One Adam step on ``loss_fn`` and the periodic target update; the replay untouched.

    ``loss_fn`` (:func:`loss`'s signature, e.g. a learned loss) is differentiated in
    ``params.online`` only; its metrics are returned. The new priorities of the sampled
    sequences stay R2D2's own, whatever ``loss_fn`` is: for :func:`loss` they come out of
    its forward pass (:func:`weighted_loss`), for another loss from a pass of their own
    (:func:`priorities`). Returns ``(state, metrics, priorities [B])``.
    """

    def objective(online):
        if loss_fn is loss:
            return weighted_loss(cfg, env, online, state.params.target, batch, hp)
        params = state.params.replace(online=online)
        value, metrics = loss_fn(cfg, env, params, batch, hp)
        return value, (priorities(cfg, env, params, batch, hp), metrics)

    grads, (new_priorities, metrics) = jax.grad(objective, has_aux=True)(state.params.online)
    updates, opt_state = dqn.optimizer(hp).update(grads, state.opt_state, state.params.online)
    online = optax.apply_updates(state.params.online, updates)
    grad_steps = state.grad_steps + 1
    target = tree.select(
        grad_steps % cfg.target_update_period == 0,
        optax.incremental_update(online, state.params.target, hp.tau),
        state.params.target,
    )
    new = state.replace(params=Params(online, target), opt_state=opt_state, grad_steps=grad_steps)
    return new, metrics | {"train/grad_norm": optax.global_norm(grads)}, new_priorities


def gradient_step(
    cfg: Config,
    env: Env,
    state: State,
    batch: Batch,
    hp: HParams,
    ready: jax.Array,
    loss_fn: LossFn = loss,
) -> tuple[State, Metrics, jax.Array]:
    """:func:`optimise` and the new priorities of the sampled sequences written to the
    replay; a no-op where ``ready`` is false. Returns ``(state, metrics, priorities)``."""
    new, metrics, new_priorities = optimise(cfg, env, state, batch, hp, loss_fn)
    buffer_state = buffer(cfg).set_priorities(
        state.buffer, batch.indices, new_priorities + PRIORITY_EPS
    )
    return tree.select(ready, new.replace(buffer=buffer_state), state), metrics, new_priorities


def learn(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``cfg.gradient_steps`` :func:`gradient_step` s on ``loss_fn`` (no-ops before
    ``learning_starts``)."""
    ready = jnp.logical_and(
        state.env_steps >= cfg.learning_starts, buffer(cfg).can_sample(state.buffer)
    )

    def step(st, key):
        batch = sample_batch(cfg, st.buffer, key, hp)
        st, metrics, _ = gradient_step(cfg, env, st, batch, hp, ready, loss_fn)
        return st, metrics

    key, key_steps = jax.random.split(state.key)
    state, metrics = jax.lax.scan(
        step, state.replace(key=key), jax.random.split(key_steps, cfg.gradient_steps)
    )
    return state, jax.tree.map(jnp.mean, metrics)


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One iteration: collect ``train_freq`` steps per env, store them, learn.

    ``loss_fn`` (same signature as :func:`loss`, e.g. a learned loss) replaces the loss
    whose gradient every step takes (:func:`gradient_step`)."""
    eps = jnp.mean(epsilons(cfg, hp, state.env_steps))
    state, transitions, info = collect(cfg, env, state, hp)
    state = state.replace(buffer=store(cfg, state.buffer, transitions))
    state, metrics = learn(cfg, env, state, hp, loss_fn)
    metrics |= dqn.episode_metrics(info) | {"train/epsilon": eps}
    return state.replace(update_count=state.update_count + 1), metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` iterations as one scan; metrics stacked ``[num_updates]``."""
    step = lambda s, _: update(cfg, env, s, hp, loss_fn)
    return jax.lax.scan(step, state, None, num_updates)


def evaluate(
    cfg: Config,
    env: Env,
    params: Params,
    key: jax.Array,
    num_envs: int,
    num_steps: int,
    env_params: object = None,
) -> tuple[jax.Array, jax.Array]:
    """Greedy recurrent play in ``num_envs`` auto-reset envs for ``num_steps`` steps.

    Returns ``(mean return of the episodes that ended (NaN if none), their count)``.
    (``jaxrl.runner.evaluate`` plays exact episodes through :func:`recurrent_policy`.)
    """
    env_params = env.default_params() if env_params is None else env_params
    venv = dqn.vec_env(dataclasses.replace(cfg, num_envs=num_envs), env)
    key_reset, key = jax.random.split(key)
    obs, env_state = venv.reset(key_reset, env_params)

    def step(c, key_env):
        lstm, o, reset, es = c
        lstm, action = act(cfg, env, params, lstm, o, reset)
        o, es, s = venv.step(key_env, es, action, env_params)
        return (lstm, o, s.done, es), (s.info["episode_return"], s.done.astype(jnp.float32))

    init_c = (initial_carry(cfg, (num_envs,)), obs, jnp.ones((num_envs,), bool), env_state)
    _, (returns, done) = jax.lax.scan(step, init_c, jax.random.split(key, num_steps))
    return base.nan_mean(returns, done), jnp.sum(done)
