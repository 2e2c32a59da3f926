"""Decision Transformer (Chen et al. 2021, arXiv:2106.01345): offline RL as return-conditioned
sequence modelling.

A causal transformer reads the last ``K = cfg.context`` steps of an episode as tokens
``(R_1, s_1, a_1, ..., R_K, s_K, a_K)``, where ``R_t`` is the return-to-go (the
undiscounted sum of the rewards from step ``t`` to the episode's end), and predicts each
action ``a_t`` from the output at its state token ``s_t``, which sees ``R_t``, ``s_t`` and
everything before them but not ``a_t``. Each token is a linear embedding of its input
(an ``nn.Embed`` of a discrete action) plus a learned embedding of the step's timestep;
the blocks are pre-LayerNorm GPT blocks (causal multi-head self-attention, a GELU MLP
4x wide). Training is supervised: cross-entropy for discrete actions, squared error for
Box actions (predicted as ``tanh``, scaled into the bounds), on windows of ``K`` steps
ending at a uniformly drawn step of the dataset, left-padded and masked where the episode
is shorter. AdamW with a linear warm-up over ``cfg.warmup_steps`` and gradient clipping at
global norm ``hp.max_grad_norm``.

Acting (:func:`rollout`) conditions on a target return: the first ``R`` is the target,
and after every step ``R`` falls by the reward received, so the model is asked for the
return still to come. The context holds the last ``K`` steps; the action is the argmax
(discrete) or the predicted mean (Box). There is no value function, bootstrapping or
policy improvement: what the model can do is what the dataset's episodes, sorted by their
returns, did.

The dataset is a :class:`jaxrl.algorithms.demos.Demos` with whole episodes (``reward`` and
``last``; any :func:`jaxrl.algorithms.demos.record` file), read from ``cfg.demos`` into the
state. The Decision Transformer runs from Python, like CQL and behavioural cloning.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxrl.algorithms import base
from jaxrl.algorithms import demos as demos_lib
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.errors import ConfigError
from jaxrl.optim import EPS_ROOT
from jaxrl.types import Metrics


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings."""

    demos: str = ""  # path of an .npz of whole episodes (demos.record / demos.save)
    context: int = 20  # K: steps per window (3K tokens)
    embed_dim: int = 64
    num_layers: int = 2
    num_heads: int = 1
    batch_size: int = 64
    num_steps: int = 5_000  # AdamW steps in a run (train's default length)
    warmup_steps: int = 500  # linear learning-rate warm-up
    return_scale: float = 100.0  # returns-to-go are divided by this before the embedding
    max_timestep: int = 1_000  # timesteps embedded (longer episodes: ConfigError)

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(
            self,
            ("context", "embed_dim", "num_layers", "num_heads", "batch_size", "num_steps",
             "max_timestep"),
        )  # fmt: skip
        base.check_non_negative_ints(self, ("warmup_steps",))
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if not self.return_scale > 0:
            raise ConfigError(f"return_scale must be > 0, got {self.return_scale}")


HPARAM_DEFAULTS = dict(learning_rate=1e-3, weight_decay=1e-4, max_grad_norm=0.25)
HPARAM_RANGES = dict(learning_rate=(0.0, 1.0), weight_decay=(0.0, 1.0), max_grad_norm=(0.0, 1e6))


class HParams(struct.PyTreeNode):
    """Traced hyperparameters: AdamW's peak learning rate and weight decay, and the global
    gradient-norm clip."""

    learning_rate: jax.Array
    weight_decay: jax.Array
    max_grad_norm: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


class Sequences(struct.PyTreeNode):
    """The dataset, flat, after ``K - 1`` padding rows: ``obs [P, *obs_shape]``, ``action
    [P, ...]``, ``return_to_go [P]``, ``timestep [P]`` int32 and ``start [P]`` int32 (the
    row where the row's episode starts; padding rows: ``P``), with ``P = M + K - 1``."""

    obs: jax.Array
    action: jax.Array
    return_to_go: jax.Array
    timestep: jax.Array
    start: jax.Array


class Window(struct.PyTreeNode):
    """``K`` steps of one episode per row: ``return_to_go [B, K]``, ``obs [B, K, ...]``,
    ``action [B, K, ...]``, ``timestep [B, K]`` and ``valid [B, K]`` (False: left padding)."""

    return_to_go: jax.Array
    obs: jax.Array
    action: jax.Array
    timestep: jax.Array
    valid: jax.Array


def check(cfg: Config, hp: HParams) -> None:
    """ConfigError for out-of-range hyperparameters, or a dataset that is missing,
    unreadable or without whole episodes (before compiling)."""
    base.check_ranges(hp, HPARAM_RANGES)
    demos_lib.load(demos_lib.required(cfg.demos, "the Decision Transformer")).episodes(
        "the Decision Transformer"
    )


def sequences(cfg: Config, data: demos_lib.Demos) -> Sequences:
    """The dataset as :class:`Sequences`: returns-to-go and timesteps per step, and the
    ``K - 1`` padding rows in front. ConfigError for an episode longer than
    ``cfg.max_timestep``."""
    reward = np.asarray(data.reward, np.float64)
    starts, lengths = demos_lib.episode_bounds(np.asarray(data.last))
    if lengths.max() > cfg.max_timestep:
        raise ConfigError(
            f"an episode of {lengths.max()} steps is longer than max_timestep="
            f"{cfg.max_timestep}; raise max_timestep"
        )
    return_to_go = np.empty_like(reward)
    timestep = np.empty(reward.shape[0], np.int32)
    start = np.empty(reward.shape[0], np.int32)
    pad = cfg.context - 1
    for s, n in zip(starts, lengths, strict=True):
        return_to_go[s : s + n] = np.cumsum(reward[s : s + n][::-1])[::-1]
        timestep[s : s + n] = np.arange(n)
        start[s : s + n] = s + pad
    total = reward.shape[0] + pad

    def padded(x, fill=0):
        x = np.asarray(x)
        return jnp.asarray(np.concatenate([np.full((pad, *x.shape[1:]), fill, x.dtype), x]))

    return Sequences(
        obs=padded(np.asarray(data.obs, np.float32)),
        action=padded(np.asarray(data.action)),
        return_to_go=padded(return_to_go.astype(np.float32)),
        timestep=padded(timestep),
        start=padded(start, total),
    )


def window(cfg: Config, seq: Sequences, end: jax.Array) -> Window:
    """The ``K`` steps up to and including dataset step ``end`` (an int32 ``[B]`` of indices
    into the unpadded data), masked where they precede its episode."""
    rows = end[:, None] + jnp.arange(cfg.context)[None, :]  # padded rows end-K+1+pad .. end+pad
    last_row = end + cfg.context - 1
    valid = rows >= seq.start[last_row][:, None]
    take = lambda x: x[rows]  # noqa: E731
    return Window(
        return_to_go=jnp.where(valid, take(seq.return_to_go), 0.0),
        obs=jnp.where(valid.reshape(*valid.shape, *(1,) * (seq.obs.ndim - 1)), take(seq.obs), 0.0),
        action=jnp.where(
            valid.reshape(*valid.shape, *(1,) * (seq.action.ndim - 1)), take(seq.action), 0
        ).astype(seq.action.dtype),
        timestep=jnp.where(valid, take(seq.timestep), 0),
        valid=valid,
    )


class Block(nn.Module):
    """A pre-LayerNorm GPT block: masked self-attention, then a GELU MLP 4x wide."""

    embed_dim: int
    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(h, h, mask=mask)
        h = nn.LayerNorm()(x)
        h = nn.Dense(self.embed_dim)(nn.gelu(nn.Dense(4 * self.embed_dim)(h)))
        return x + h


class DecisionTransformer(nn.Module):
    """Maps a :class:`Window` to per-step action outputs ``[B, K, n]``: logits for
    ``Discrete(n)`` (``discrete``), or actions in ``[-1, 1]`` (``tanh``) for Box."""

    action_dim: int
    discrete: bool
    embed_dim: int
    num_layers: int
    num_heads: int
    max_timestep: int
    return_scale: float

    @nn.compact
    def __call__(self, w: Window) -> jax.Array:
        b, k = w.valid.shape
        time = nn.Embed(self.max_timestep, self.embed_dim)(w.timestep)
        ret = nn.Dense(self.embed_dim)(w.return_to_go[..., None] / self.return_scale)
        obs = nn.Dense(self.embed_dim)(w.obs.reshape(b, k, -1))
        if self.discrete:
            act = nn.Embed(self.action_dim, self.embed_dim)(w.action.astype(jnp.int32))
        else:
            act = nn.Dense(self.embed_dim)(w.action)
        tokens = jnp.stack([ret + time, obs + time, act + time], axis=2).reshape(b, 3 * k, -1)
        x = nn.LayerNorm()(tokens)
        token_valid = jnp.repeat(w.valid, 3, axis=1)
        mask = nn.combine_masks(
            nn.make_causal_mask(token_valid),
            nn.make_attention_mask(jnp.ones_like(token_valid), token_valid),
        )
        for _ in range(self.num_layers):
            x = Block(self.embed_dim, self.num_heads)(x, mask)
        x = nn.LayerNorm()(x)
        out = nn.Dense(self.action_dim)(x.reshape(b, k, 3, -1)[:, :, 1])  # the state tokens
        return out if self.discrete else jnp.tanh(out)


def network(cfg: Config, env: Env, env_params: Any = None) -> DecisionTransformer:
    space = env.action_space(env.default_params() if env_params is None else env_params)
    discrete = isinstance(space, spaces.Discrete)
    return DecisionTransformer(
        action_dim=int(space.n) if discrete else int(np.prod(space.shape)),
        discrete=discrete,
        embed_dim=cfg.embed_dim,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        max_timestep=cfg.max_timestep,
        return_scale=cfg.return_scale,
    )


def _bounds(env: Env, env_params: Any = None) -> tuple[jax.Array, jax.Array]:
    space = env.action_space(env.default_params() if env_params is None else env_params)
    return jnp.asarray(space.low, jnp.float32), jnp.asarray(space.high, jnp.float32)


def actions(cfg: Config, env: Env, params: dict, w: Window, env_params: Any = None) -> jax.Array:
    """The action the model takes at each step of ``w``: ``[B, K]`` argmax (Discrete) or
    ``[B, K, A]`` in the env's bounds (Box)."""
    net = network(cfg, env, env_params)
    out = net.apply(params, w)
    if net.discrete:
        return jnp.argmax(out, axis=-1)
    low, high = _bounds(env, env_params)
    return low + (out + 1.0) * (high - low) / 2.0


class State(struct.PyTreeNode):
    """Parameters, AdamW state, the dataset's :class:`Sequences`, the number of steps in
    it, key, step."""

    params: dict
    opt_state: optax.OptState
    data: Sequences
    size: int = struct.field(pytree_node=False)
    key: jax.Array
    step: jax.Array  # int32 scalar: gradient steps taken


def optimizer(cfg: Config, hp: HParams) -> optax.GradientTransformation:
    """Clip at ``hp.max_grad_norm``, then AdamW with a linear warm-up to ``hp.learning_rate``."""

    def schedule(count):
        warm = jnp.minimum(1.0, (count + 1.0) / max(cfg.warmup_steps, 1))
        return hp.learning_rate * warm

    return optax.chain(
        optax.clip_by_global_norm(hp.max_grad_norm),
        optax.adamw(schedule, weight_decay=hp.weight_decay, eps_root=EPS_ROOT),
    )


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: Any = None) -> State:
    """A fresh transformer, AdamW, and the dataset from ``cfg.demos`` (ConfigError if it
    is missing, lacks whole episodes, does not fit ``env``, or has an episode longer than
    ``cfg.max_timestep``)."""
    who = "the Decision Transformer"
    with jax.ensure_compile_time_eval():  # the dataset is prepared on the host, also under jit
        data = demos_lib.load_for(cfg.demos, who, env, env_params).episodes(who)
        seq = sequences(cfg, data)
    key, key_net = jax.random.split(key)
    w = window(cfg, seq, jnp.zeros((1,), jnp.int32))
    params = network(cfg, env, env_params).init(key_net, w)
    return State(
        params=params,
        opt_state=optimizer(cfg, hp).init(params),
        data=seq,
        size=data.size,
        key=key,
        step=jnp.zeros((), jnp.int32),
    )


def loss(
    cfg: Config, env: Env, params: dict, w: Window, env_params: Any = None
) -> tuple[jax.Array, Metrics]:
    """Mean over the valid steps of ``w``: cross-entropy of the data's action (Discrete), or
    squared error of the predicted action in ``[-1, 1]`` (Box, the data's action rescaled
    from the bounds). Metrics: the loss, and the accuracy of the argmax (Discrete)."""
    net = network(cfg, env, env_params)
    out = net.apply(params, w)
    weight = w.valid.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weight), 1.0)
    if net.discrete:
        logp = jax.nn.log_softmax(out)
        nll = -jnp.take_along_axis(logp, w.action[..., None].astype(jnp.int32), axis=-1)[..., 0]
        value = jnp.sum(weight * nll) / count
        hit = (jnp.argmax(out, axis=-1) == w.action).astype(jnp.float32)
        return value, {"train/loss": value, "train/accuracy": jnp.sum(weight * hit) / count}
    low, high = _bounds(env, env_params)
    target = 2.0 * (w.action - low) / (high - low) - 1.0
    value = jnp.sum(weight * jnp.sum(jnp.square(out - target), axis=-1)) / count
    return value, {"train/loss": value}


def update(
    cfg: Config, env: Env, state: State, hp: HParams, env_params: Any = None
) -> tuple[State, Metrics]:
    """One AdamW step on ``cfg.batch_size`` windows ending at uniformly drawn steps."""
    key, key_batch = jax.random.split(state.key)
    end = jax.random.randint(key_batch, (cfg.batch_size,), 0, state.size)
    w = window(cfg, state.data, end)
    grads, metrics = jax.grad(lambda p: loss(cfg, env, p, w, env_params), has_aux=True)(
        state.params
    )
    opt = optimizer(cfg, hp)
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(params=params, opt_state=opt_state, key=key, step=state.step + 1), metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_steps: int, env_params: Any = None
) -> tuple[State, Metrics]:
    """``num_steps`` updates as one scan; metrics stacked ``[num_steps]``."""
    return jax.lax.scan(lambda s, _: update(cfg, env, s, hp, env_params), state, None, num_steps)


def rollout(
    cfg: Config,
    env: Env,
    params: dict,
    target_return: jax.Array,
    key: jax.Array,
    num_episodes: int,
    max_steps: int = 1_000,
    env_params: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """``(returns [E], lengths [E])`` of ``num_episodes`` episodes played side by side,
    conditioned on ``target_return`` (a float, or ``[E]``), each for at most ``max_steps``
    steps. Episode ``i`` resets with ``split(key_reset, E)[i]``."""
    env_params = env.default_params() if env_params is None else env_params
    e, k = num_episodes, cfg.context
    key_reset, key = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(key_reset, e), env_params
    )
    space = env.action_space(env_params)
    action_shape = () if isinstance(space, spaces.Discrete) else tuple(space.shape)
    action_dtype = jnp.int32 if isinstance(space, spaces.Discrete) else jnp.float32
    context = Window(
        return_to_go=jnp.zeros((e, k)),
        obs=jnp.zeros((e, k, *obs.shape[1:])),
        action=jnp.zeros((e, k, *action_shape), action_dtype),
        timestep=jnp.zeros((e, k), jnp.int32),
        valid=jnp.zeros((e, k), bool),
    )

    def push(ctx: Window, ret, obs, t) -> Window:
        def shifted(x, new):
            return jnp.concatenate([x[:, 1:], new[:, None]], axis=1)

        return Window(
            return_to_go=shifted(ctx.return_to_go, ret),
            obs=shifted(ctx.obs, obs.astype(jnp.float32)),
            action=shifted(ctx.action, jnp.zeros((e, *action_shape), action_dtype)),
            timestep=shifted(ctx.timestep, jnp.full((e,), jnp.minimum(t, cfg.max_timestep - 1))),
            valid=shifted(ctx.valid, jnp.ones((e,), bool)),
        )

    def step(carry, xs):
        env_state, obs, ctx, to_go, alive, total, length = carry
        t, key = xs
        ctx = push(ctx, to_go, obs, t)
        action = actions(cfg, env, params, ctx, env_params)[:, -1]
        ctx = ctx.replace(action=ctx.action.at[:, -1].set(action.astype(action_dtype)))
        obs, env_state, out = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(key, e), env_state, action, env_params
        )
        reward = jnp.where(alive, out.reward.astype(jnp.float32), 0.0)
        total, length = total + reward, length + alive.astype(jnp.int32)
        alive = jnp.logical_and(alive, jnp.logical_not(out.done))
        return (env_state, obs, ctx, to_go - reward, alive, total, length), None

    to_go = jnp.broadcast_to(jnp.asarray(target_return, jnp.float32), (e,))
    init = (env_state, obs, context, to_go, jnp.ones((e,), bool), jnp.zeros((e,)),
            jnp.zeros((e,), jnp.int32))  # fmt: skip
    xs = (jnp.arange(max_steps), jax.random.split(key, max_steps))
    (_, _, _, _, _, total, length), _ = jax.lax.scan(step, init, xs)
    return total, length
