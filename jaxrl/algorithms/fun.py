"""FeUdal Networks: a Manager sets directions in a learned state space, a Worker follows.

FuN (Vezhnevets, Osindero, Schaul, Heess, Jaderberg, Silver & Kavukcuoglu 2017,
arXiv:1703.01161): the Manager sets directional goals in a latent state space, and the
Worker is paid for moving along them.

The network (:class:`FeudalNet`), one step for a batch ``B`` of envs:

- **Perception.** ``z = f_percept(x)``: an MLP (vectors) or MinAtar's conv torso (images),
  ReLU, ``[B, Z]``.
- **Manager.** ``s = relu(W_s z)`` ``[B, d]`` is its latent state. A *dilated* LSTM
  (``cfg.dilation = r`` cores with shared weights; at episode step ``t`` only core
  ``t mod r`` is stepped, and the output is the mean of the cores' outputs, so the
  Manager's memory spans ``r`` times more steps) maps ``s`` to ``g_hat``; the goal is
  ``g = g_hat / ||g_hat||`` ``[B, d]``, the value ``V^M`` a linear head on the output.
  With probability ``goal_epsilon`` the goal the Worker gets is a random Gaussian
  direction instead (the paper's goal exploration).
- **Worker.** An LSTM of ``cfg.worker_hidden`` units on ``z``, its output mapped
  linearly to the matrix ``U [B, |A|, k]`` (the paper's LSTM has ``|A| k`` units and
  outputs ``U`` itself; the map keeps the carry's shape independent of the env). The
  goals of the last ``c = cfg.horizon`` steps and this one are summed and embedded
  without bias, ``w = phi(sum_{i=t-c}^{t} g_i)`` ``[B, k]``, and the policy is
  ``softmax(U w)``; ``V^D`` is a linear head on the LSTM output. No gradient flows from
  the Worker into the goals.

Training is advantage actor-critic on ``cfg.rollout_len``-step rollouts of ``num_envs``
auto-reset envs, one gradient step per rollout, the network re-run from the rollout's
initial carry:

- **Transition policy gradient** for the Manager:
  ``-A^M_t d_cos(s_{t+c} - s_t, g_t)`` with ``A^M_t = R^M_t - V^M_t`` (env reward,
  discount ``manager_discount``). ``s_{t+c} - s_t`` is a constant; when the episode ends
  before ``t + c``, its last state stands in for ``s_{t+c}``. Steps whose ``t + c`` lies
  beyond the rollout (and in an unfinished episode) are left out of this term.
- **Intrinsic reward** for the Worker: the move into ``s_{t+1}`` earns
  ``r^I_{t+1} = 1/c sum_{i=1}^{c} d_cos(s_{t+1} - s_{t+1-i}, g_{t+1-i})`` (the mean over
  the ``i`` inside the episode). The Worker's return uses ``r_t + intrinsic_weight
  r^I_{t+1}`` and ``worker_discount``; its loss is ``-A^D_t log pi(a_t)`` with an entropy
  bonus.
- Both critics regress on their returns (``episode_gae`` with ``gae_lambda``; 1 is A3C's
  n-step return): terminations cut, truncations bootstrap from the final observation.

``cfg.dilation = 1`` makes the Manager a plain LSTM (the paper's ablation), and
``intrinsic_weight = 0`` turns the Worker into an LSTM actor-critic on the env's reward
that merely reads the goals.

Static ``Config``, traced ``HParams``, a ``State`` of arrays; nothing here calls ``jit``.
:func:`recurrent_policy` and :func:`policy_carry` make it evaluable by
``jaxrl.runner.evaluate``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl.algorithms import base
from jaxrl.algorithms.recurrent_ppo import optimizer  # clipping then Adam (eps 1e-5)
from jaxrl.envs import spaces, wrappers
from jaxrl.envs.base import Env
from jaxrl.losses.returns import episode_gae
from jaxrl.networks.init import orthogonal
from jaxrl.networks.torsos import CNN, MLP
from jaxrl.types import Metrics

TORSOS = ("mlp", "minatar")
COS_EPS = 1e-8  # d_cos(a, b) = a.b / max(|a| |b|, COS_EPS): 0 for a zero vector


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings: shapes and loop lengths."""

    total_timesteps: int = 1_000_000  # per run
    num_envs: int = 16
    rollout_len: int = 40  # must exceed the horizon (the Manager's targets lie c ahead)
    horizon: int = 10  # c: the Manager's look-ahead; the intrinsic reward's window
    dilation: int = 10  # r: cores of the Manager's dilated LSTM (1: a plain LSTM)
    state_dim: int = 64  # d: the Manager's latent state and goals
    goal_embed: int = 16  # k: the Worker's goal embedding
    worker_hidden: int = 64  # units of the Worker's LSTM
    torso: str = "mlp"
    torso_hidden: tuple[int, ...] = (64,)  # ReLU layers of the perception torso

    def __post_init__(self):
        base.check_fields(self)
        names = ("total_timesteps", "num_envs", "rollout_len", "horizon", "dilation",
                 "state_dim", "goal_embed", "worker_hidden")  # fmt: skip
        base.check_positive_ints(self, names)
        base.check_choices(self, {"torso": TORSOS})
        if self.rollout_len <= self.horizon:
            raise base.ConfigError(
                f"rollout_len = {self.rollout_len} must exceed horizon = {self.horizon}: the "
                "Manager learns from s_(t+c) - s_t inside a rollout"
            )
        base.check_budget(self, "num_envs * rollout_len")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.rollout_len

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


HPARAM_DEFAULTS = dict(
    learning_rate=1e-3,
    manager_discount=0.99,
    worker_discount=0.95,
    intrinsic_weight=0.5,  # alpha
    gae_lambda=0.95,
    goal_epsilon=0.05,
    ent_coef=0.01,
    vf_coef=0.5,
    max_grad_norm=0.5,
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    manager_discount=(0.0, 1.0),
    worker_discount=(0.0, 1.0),
    intrinsic_weight=(0.0, 1e3),
    gae_lambda=(0.0, 1.0),
    goal_epsilon=(0.0, 1.0),
    ent_coef=(0.0, 1e3),
    vf_coef=(0.0, 1e3),
    max_grad_norm=(0.0, 1e9),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, each a float32 array (scalar, or ``[R]`` for a sweep)."""

    learning_rate: jax.Array
    manager_discount: jax.Array
    worker_discount: jax.Array
    intrinsic_weight: jax.Array
    gae_lambda: jax.Array
    goal_epsilon: jax.Array
    ent_coef: jax.Array
    vf_coef: jax.Array
    max_grad_norm: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """Raises ``ConfigError`` for hyperparameters out of range. An env FuN cannot act in
    is refused by :func:`network`, which :func:`init` calls before anything compiles."""
    del cfg
    base.check_ranges(hp, HPARAM_RANGES)


class Carry(struct.PyTreeNode):
    """Everything one step hands the next, for a batch ``B``; zeroed at episode starts."""

    manager: tuple  # dilated LSTM (c, h), each [B, r, d]
    worker: tuple  # LSTM (c, h), each [B, worker_hidden]
    states: jax.Array  # [B, c, d] s_{t-1}, ..., s_{t-c} (no gradient)
    goals: jax.Array  # [B, c, d] the goals the Worker got at t-1, ..., t-c
    filled: jax.Array  # [B, c] bool: that history entry lies inside this episode
    step: jax.Array  # [B] int32 steps since the episode began


class Output(struct.PyTreeNode):
    """One step's outputs, leaves ``[B, ...]``."""

    logits: jax.Array  # [B, |A|]
    worker_value: jax.Array  # [B] V^D
    manager_value: jax.Array  # [B] V^M
    state: jax.Array  # [B, d] s_t
    goal: jax.Array  # [B, d] the Manager's unit goal g_t (differentiable)


def zero_where(reset: jax.Array, tree):
    """Zeroes every ``[B, ...]`` leaf of ``tree`` where ``reset [B]`` (bool) is set."""

    def zero(x):
        mask = reset.reshape(reset.shape + (1,) * (x.ndim - 1))
        return jnp.where(mask, jnp.zeros_like(x), x)

    return jax.tree.map(zero, tree)


def norm(x: jax.Array) -> jax.Array:
    """The Euclidean norm over the last axis, ``[..., d] -> [...]``, whose gradient is 0 at
    a zero vector (``jnp.linalg.norm``'s is NaN there, and NaN survives a ``maximum``)."""
    nonzero = jnp.any(x != 0, axis=-1)
    safe = jnp.where(nonzero[..., None], x, jnp.ones_like(x))
    return jnp.where(nonzero, jnp.linalg.norm(safe, axis=-1), 0.0)


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """``d_cos`` over the last axis: ``[..., d] x [..., d] -> [...]``; 0 if either is 0."""
    return jnp.sum(a * b, axis=-1) / jnp.maximum(norm(a) * norm(b), COS_EPS)


def intrinsic_reward(state: jax.Array, carry: Carry) -> jax.Array:
    """``1/n sum_i d_cos(s - carry.states_i, carry.goals_i)`` over the ``n`` filled
    history entries (0 if none): ``state [B, d]`` -> ``[B]``. With the carry after step
    ``t`` and ``s_{t+1}``, this is the Worker's intrinsic reward for the move."""
    cos = cosine(state[:, None, :] - carry.states, carry.goals)  # [B, c]
    filled = carry.filled.astype(cos.dtype)
    return jnp.sum(cos * filled, axis=1) / jnp.maximum(jnp.sum(filled, axis=1), 1.0)


class FeudalNet(nn.Module):
    """FuN's Manager and Worker; see the module docstring.

    ``__call__(carry, obs [B, *O], reset [B], explore [B] bool, noise [B, d])
    -> (carry, Output)``: one step. Where ``reset`` is set the carry is zeroed first; where
    ``explore`` is set the Worker gets ``noise`` (normalised) instead of the Manager's goal.
    """

    num_actions: int
    dilation: int
    state_dim: int
    goal_embed: int
    worker_hidden: int
    torso: str
    torso_hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, carry: Carry, obs, reset, explore, noise):
        carry = zero_where(reset, carry)
        x = obs.astype(jnp.float32)
        if self.torso == "mlp":
            z = MLP(self.torso_hidden, "relu", name="percept")(x)
        else:
            z = CNN(hidden=self.torso_hidden, activation="relu", name="percept")(x)
        state = nn.relu(nn.Dense(self.state_dim, kernel_init=orthogonal(), name="space")(z))

        # The dilated LSTM: step core (t mod r) of each env, pool the cores' outputs.
        core = jax.nn.one_hot(carry.step % self.dilation, self.dilation)[..., None]  # [B, r, 1]
        cell_c, cell_h = (jnp.sum(m * core, axis=1) for m in carry.manager)  # [B, d] each
        manager_lstm = nn.OptimizedLSTMCell(
            self.state_dim, recurrent_kernel_init=orthogonal(), name="manager"
        )
        (cell_c, cell_h), _ = manager_lstm((cell_c, cell_h), state)
        manager = tuple(
            m * (1.0 - core) + new[:, None, :] * core
            for m, new in zip(carry.manager, (cell_c, cell_h), strict=True)
        )
        pooled = jnp.mean(manager[1], axis=1)  # [B, d]
        goal = pooled / jnp.maximum(norm(pooled), COS_EPS)[:, None]
        manager_value = nn.Dense(1, kernel_init=orthogonal(1.0), name="manager_value")(pooled)

        random_goal = noise / jnp.maximum(norm(noise), COS_EPS)[:, None]
        given = jax.lax.stop_gradient(jnp.where(explore[:, None], random_goal, goal))
        history = jnp.sum(carry.goals * carry.filled[..., None].astype(given.dtype), axis=1)
        w = nn.Dense(self.goal_embed, use_bias=False, name="goal_embed")(given + history)

        worker_lstm = nn.OptimizedLSTMCell(
            self.worker_hidden, recurrent_kernel_init=orthogonal(), name="worker"
        )
        worker, y = worker_lstm(carry.worker, z)
        u = nn.Dense(self.num_actions * self.goal_embed, use_bias=False, name="worker_u")(y)
        u = u.reshape(y.shape[0], self.num_actions, self.goal_embed)  # [B, |A|, k]
        logits = jnp.einsum("bak,bk->ba", u, w)
        worker_value = nn.Dense(1, kernel_init=orthogonal(1.0), name="worker_value")(y)

        def push(history, new):
            return jnp.concatenate([new[:, None], history[:, :-1]], axis=1)

        carry = Carry(
            manager=manager,
            worker=worker,
            states=push(carry.states, jax.lax.stop_gradient(state)),
            goals=push(carry.goals, given),
            filled=push(carry.filled, jnp.ones_like(carry.filled[:, 0])),
            step=carry.step + 1,
        )
        out = Output(logits, worker_value[:, 0], manager_value[:, 0], state, goal)
        return carry, out


def network(cfg: Config, env: Env) -> FeudalNet:
    """FuN for ``env``'s Discrete actions; a ``ConfigError`` for other actions or a torso
    that does not fit the observations."""
    params = env.default_params()
    space = env.action_space(params)
    if not isinstance(space, spaces.Discrete):
        raise base.ConfigError(f"FuN needs Discrete actions; {env.name} has {space}")
    base.check_torso_fits(cfg.torso, env)
    shape = tuple(env.observation_space(params).shape)
    if cfg.torso == "mlp" and len(shape) != 1:
        raise base.ConfigError(
            f"torso='mlp' needs vector observations; {env.name}'s have shape {shape} "
            "(use torso='minatar' for images)"
        )
    return FeudalNet(space.n, cfg.dilation, cfg.state_dim, cfg.goal_embed,
                     cfg.worker_hidden, cfg.torso, cfg.torso_hidden)  # fmt: skip


def policy_carry(cfg: Config, num_episodes: int) -> Carry:
    """The zero carry of ``num_episodes`` sequences (envs, or evaluation episodes for
    ``jaxrl.runner.evaluate``)."""
    batch, d, c = num_episodes, cfg.state_dim, cfg.horizon
    manager = jnp.zeros((batch, cfg.dilation, d), jnp.float32)
    worker = jnp.zeros((batch, cfg.worker_hidden), jnp.float32)
    history = jnp.zeros((batch, c, d), jnp.float32)
    return Carry((manager, manager), (worker, worker), history, history,
                 jnp.zeros((batch, c), bool), jnp.zeros((batch,), jnp.int32))  # fmt: skip


class State(struct.PyTreeNode):
    """Everything one run carries between updates (arrays only)."""

    params: dict
    opt_state: optax.OptState
    env_state: object
    obs: jax.Array  # [N, *O] observation to act on next
    carry: Carry  # [N, ...]
    reset: jax.Array  # [N] bool: the next step starts a new episode
    env_params: object
    key: jax.Array
    update_count: jax.Array  # int32 scalar


class Rollout(struct.PyTreeNode):
    """Time-major rollout; leaves ``[T, N, ...]`` except ``carry0`` (``[N, ...]``)."""

    obs: jax.Array
    reset: jax.Array  # the carry was zeroed before this step
    explore: jax.Array  # [T, N] bool: the Worker got a random goal
    noise: jax.Array  # [T, N, d] that random goal (unnormalised)
    action: jax.Array
    reward: jax.Array
    intrinsic: jax.Array  # [T, N] r^I of the move
    terminated: jax.Array
    truncated: jax.Array
    worker_value: jax.Array
    manager_value: jax.Array
    state: jax.Array  # [T, N, d] s_t
    next_state: jax.Array  # [T, N, d] s of the observation the step reached (pre-reset)
    worker_bootstrap: jax.Array  # V^D and V^M of that observation
    manager_bootstrap: jax.Array
    info: dict
    carry0: Carry


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """Fresh network, optimiser and envs; every env starts a new episode."""
    if env_params is None:
        env_params = env.default_params()
    key, key_net, key_env = jax.random.split(key, 3)
    obs, env_state = vec_env(cfg, env).reset(key_env, env_params)
    carry = policy_carry(cfg, cfg.num_envs)
    reset = jnp.ones((cfg.num_envs,), bool)
    explore = jnp.zeros((cfg.num_envs,), bool)
    noise = jnp.zeros((cfg.num_envs, cfg.state_dim), jnp.float32)
    params = network(cfg, env).init(key_net, carry, obs, reset, explore, noise)
    opt_state = optimizer(hp, hp.learning_rate).init(params)
    return State(params, opt_state, env_state, obs, carry, reset, env_params, key,
                 jnp.zeros((), jnp.int32))  # fmt: skip


def vec_env(cfg: Config, env: Env) -> Env:
    """``num_envs`` auto-reset copies with episode statistics in ``Step.info``."""
    return wrappers.make_vec_env(env, cfg.num_envs)


def collect(cfg: Config, env: Env, state: State, hp: HParams) -> tuple[State, Rollout]:
    """Rolls the current policy out for ``cfg.rollout_len`` steps of every env.

    Each step also runs the network on the observation it reached (``final_obs``, before
    an auto-reset) from the carry after the step: that gives ``s_{t+1}`` for the intrinsic
    reward and the Manager's target, and both bootstrap values.
    """
    venv, net = vec_env(cfg, env), network(cfg, env)
    num_envs, d = cfg.num_envs, cfg.state_dim
    off = jnp.zeros((num_envs,), bool)

    def env_step(loop, _):
        env_state, obs, carry, reset, key = loop
        key, key_explore, key_noise, key_act, key_env = jax.random.split(key, 5)
        explore = jax.random.uniform(key_explore, (num_envs,)) < hp.goal_epsilon
        noise = jax.random.normal(key_noise, (num_envs, d))
        carry, out = net.apply(state.params, carry, obs, reset, explore, noise)
        action = jax.random.categorical(key_act, out.logits)
        next_obs, env_state, step = venv.step(key_env, env_state, action, state.env_params)
        _, reached = net.apply(state.params, carry, step.final_obs, off, off, noise)
        out = Rollout(
            obs=obs, reset=reset, explore=explore, noise=noise, action=action,
            reward=step.reward, intrinsic=intrinsic_reward(reached.state, carry),
            terminated=step.terminated, truncated=step.truncated,
            worker_value=out.worker_value, manager_value=out.manager_value, state=out.state,
            next_state=reached.state, worker_bootstrap=reached.worker_value,
            manager_bootstrap=reached.manager_value, info=step.info, carry0=None,
        )  # fmt: skip
        return (env_state, next_obs, carry, step.done, key), out

    loop = (state.env_state, state.obs, state.carry, state.reset, state.key)
    (env_state, obs, carry, reset, key), rollout = jax.lax.scan(
        env_step, loop, None, cfg.rollout_len
    )
    rollout = rollout.replace(carry0=state.carry)
    state = state.replace(env_state=env_state, obs=obs, carry=carry, reset=reset, key=key)
    return state, rollout


def manager_targets(
    state: jax.Array, next_state: jax.Array, done: jax.Array, horizon: int
) -> tuple[jax.Array, jax.Array]:
    """The Manager's direction ``s_{t+c} - s_t`` and where it is known.

    Args:
        state: ``[T, N, d]`` ``s_t``.
        next_state: ``[T, N, d]`` ``s`` of the observation step ``t`` reached (pre-reset).
        done: ``[T, N]`` bool, step ``t`` ended its episode.
        horizon: ``c``.

    Returns:
        ``delta [T, N, d]``: ``next_state[j] - state[t]`` with ``j`` the first step in
        ``t .. t+c-1`` that ends the episode, else ``t + c - 1``; and ``valid [T, N]``:
        ``j`` lies inside the rollout.
    """
    length, num_envs = done.shape
    t = jnp.arange(length)[:, None]  # [T, 1]
    ahead = t + jnp.arange(horizon)[None, :]  # [T, c]
    ends = done[jnp.minimum(ahead, length - 1)] & (ahead < length)[:, :, None]  # [T, c, N]
    any_end = jnp.any(ends, axis=1)  # [T, N]
    offset = jnp.where(any_end, jnp.argmax(ends, axis=1), horizon - 1)  # [T, N]
    j = t + offset
    valid = any_end | (j < length)
    target = next_state[jnp.minimum(j, length - 1), jnp.arange(num_envs)[None, :]]
    return target - state, valid


class Batch(struct.PyTreeNode):
    """What the loss needs: leaves ``[T, N, ...]``; ``carry0`` ``[N, ...]``."""

    obs: jax.Array
    reset: jax.Array
    explore: jax.Array
    noise: jax.Array
    action: jax.Array
    worker_advantage: jax.Array
    worker_target: jax.Array
    manager_advantage: jax.Array
    manager_target: jax.Array
    delta: jax.Array  # [T, N, d] s_{t+c} - s_t
    delta_valid: jax.Array  # [T, N] bool
    carry0: Carry


def make_batch(cfg: Config, rollout: Rollout, hp: HParams) -> Batch:
    """Both levels' advantages and value targets, and the Manager's directions."""
    worker_reward = rollout.reward + hp.intrinsic_weight * rollout.intrinsic
    worker_advantage, worker_target = episode_gae(
        worker_reward, rollout.worker_value, rollout.worker_bootstrap, rollout.terminated,
        rollout.truncated, hp.worker_discount, hp.gae_lambda,
    )  # fmt: skip
    manager_advantage, manager_target = episode_gae(
        rollout.reward, rollout.manager_value, rollout.manager_bootstrap, rollout.terminated,
        rollout.truncated, hp.manager_discount, hp.gae_lambda,
    )  # fmt: skip
    done = jnp.logical_or(rollout.terminated, rollout.truncated)
    delta, valid = manager_targets(rollout.state, rollout.next_state, done, cfg.horizon)
    return Batch(rollout.obs, rollout.reset, rollout.explore, rollout.noise, rollout.action,
                 worker_advantage, worker_target, manager_advantage, manager_target, delta,
                 valid, rollout.carry0)  # fmt: skip


def unroll(cfg: Config, env: Env, params: dict, batch: Batch) -> Output:
    """The network re-run over the rollout from ``batch.carry0``: ``Output`` leaves
    ``[T, N, ...]``."""
    net = network(cfg, env)

    def step(carry, inputs):
        return net.apply(params, carry, *inputs)

    inputs = (batch.obs, batch.reset, batch.explore, batch.noise)
    return jax.lax.scan(step, batch.carry0, inputs)[1]


def loss(
    cfg: Config, env: Env, params: dict, batch: Batch, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """``worker + manager + vf_coef (value_D + value_M) - ent_coef entropy``.

    ``worker = -mean(A^D log pi(a))``; ``manager = -mean_valid(A^M d_cos(delta, g))`` (the
    transition policy gradient); the value terms are ``0.5 mean((V - target)^2)``.
    """
    chex.assert_rank([batch.reset, batch.worker_advantage, batch.delta], [2, 2, 3])
    out = unroll(cfg, env, params, batch)
    dist = distrax.Categorical(logits=out.logits)
    worker_loss = -jnp.mean(dist.log_prob(batch.action) * batch.worker_advantage)
    alignment = cosine(batch.delta, out.goal)  # [T, N]
    valid = batch.delta_valid.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(valid), 1.0)
    manager_loss = -jnp.sum(valid * batch.manager_advantage * alignment) / count
    worker_value_loss = 0.5 * jnp.mean(jnp.square(out.worker_value - batch.worker_target))
    manager_value_loss = 0.5 * jnp.mean(jnp.square(out.manager_value - batch.manager_target))
    entropy = jnp.mean(dist.entropy())
    total = (
        worker_loss + manager_loss + hp.vf_coef * (worker_value_loss + manager_value_loss)
        - hp.ent_coef * entropy
    )  # fmt: skip
    metrics = {
        "train/total_loss": total,
        "train/worker_loss": worker_loss,
        "train/manager_loss": manager_loss,
        "train/worker_value_loss": worker_value_loss,
        "train/manager_value_loss": manager_value_loss,
        "train/entropy": entropy,
        "train/goal_alignment": jnp.sum(valid * alignment) / count,
    }
    return total, metrics


LossFn = Callable[[Config, Env, dict, Batch, HParams], tuple[jax.Array, Metrics]]


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """One iteration: collect a rollout, then one gradient step on ``loss_fn`` (:func:`loss`,
    or e.g. a learned loss for ``jaxrl.meta.metagrad``'s ``wrt="loss"``)."""
    state, rollout = collect(cfg, env, state, hp)
    batch = make_batch(cfg, rollout, hp)
    grad_fn = jax.grad(lambda p: loss_fn(cfg, env, p, batch, hp), has_aux=True)
    grads, metrics = grad_fn(state.params)
    tx = optimizer(hp, hp.learning_rate)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    done = jnp.logical_or(rollout.terminated, rollout.truncated).astype(jnp.float32)
    metrics |= {
        "train/intrinsic_reward": jnp.mean(rollout.intrinsic),
        "episode/return": base.nan_mean(rollout.info["episode_return"], done),
        "episode/length": base.nan_mean(rollout.info["episode_length"], done),
        "episode/count": jnp.sum(done),
    }
    state = state.replace(params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state, update_count=state.update_count + 1)  # fmt: skip
    return state, metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int, loss_fn: LossFn = loss
) -> tuple[State, Metrics]:
    """``num_updates`` iterations of :func:`update` on ``loss_fn`` as one scan; metrics
    stacked ``[num_updates]``."""
    step = lambda s, _: update(cfg, env, s, hp, loss_fn)  # noqa: E731
    return jax.lax.scan(step, state, None, num_updates)


def recurrent_policy(
    cfg: Config,
    env: Env,
    params: dict,
    carry: Carry,
    obs: jax.Array,
    key: jax.Array,
    deterministic: bool,
    hp: HParams | None = None,
) -> tuple[Carry, jax.Array]:
    """Evaluation policy for ``obs [E, ...]`` from ``carry``: the Worker's most likely
    action, or (``deterministic=False``) a sample; the Worker always gets the Manager's
    goals. Returns ``(carry, action [E])``; episodes start from :func:`policy_carry`."""
    del hp
    off = jnp.zeros((obs.shape[0],), bool)
    noise = jnp.zeros((obs.shape[0], cfg.state_dim), jnp.float32)
    carry, out = network(cfg, env).apply(params, carry, obs, off, off, noise)
    action = (
        jnp.argmax(out.logits, -1) if deterministic else jax.random.categorical(key, out.logits)
    )
    return carry, action.astype(jnp.int32)
