"""MetaGenRL: a meta-learned objective for off-policy agents (Kirsch, van Steenkiste &
Schmidhuber, ICLR 2020, arXiv:1910.04098).

A neural objective ``L_α`` replaces TD3's actor loss. A population of agents (each a TD3
agent, :mod:`jaxrl.algorithms.td3`: twin critics, target networks, replay) trains its
critics by TD3's critic loss and its actor by Adam on ``L_α``. ``α`` is meta-trained by
differentiating the critic's value of the policy after one plain gradient step on ``L_α``
(second order, off-policy)::

    φ'_i   = φ_i − η_in ∇_φ L_α(φ_i; window_i)
    L_meta = Σ_i −mean_{s ∈ window_i} Q_1^i(s, π_φ'_i(s))      (critic held fixed)
    α     ← Adam(∇_α L_meta)

**The objective** (what this module chose). A replay window ``[B, L]`` of consecutive
steps of one env is read by an LSTM run *backwards* in time (``t = L−1 … 0``) whose carry is
zeroed where an episode ends (:func:`jaxrl.meta.lpg.backward_scan`), so the output at ``t``
sees steps ``t..`` of its own episode only. It runs once per action dimension ``i`` with
shared weights, so one ``α`` serves any action dimensionality. Per step and dimension the
input is the 7-vector::

    x_t^i = [r̂_t, d_t, V̂_t, Q̂_t, Â_t, a_t^i, π_φ(s_t)^i]

* ``r̂``: the reward standardised by the window's mean and std;
* ``d``: 1 where the episode ended at ``t`` (terminated or truncated);
* ``V = Q_1(s_t, π_φ(s_t))`` and ``Q = Q_1(s_t, a_t)`` from the agent's critic, both
  standardised with one shared mean/std (so their difference keeps its sign and order);
* ``Â = (Q − V) / std(Q − V)``: the replayed action's advantage over the policy's, given
  separately because it is small next to the spread of values across states;
* ``a_t^i`` the replayed action and ``π_φ(s_t)^i`` the policy's, both in ``[-1, 1]``.

All statistics are over the whole window batch and gradient-stopped, so the objective is
invariant to an affine change of the reward and values (Pendulum's rewards lie in
``[-16, 0]``, nav2d's in about ``[-0.7, 0]``). ``V``, ``Q`` are gradient-stopped;
``π_φ(s_t)^i`` is the only path to the policy parameters. The output is
``y_t^i = w·tanh(W [h_t^i, x_t^i] + b)`` (``h`` the LSTM state, 32 units, LPG's LSTM
cell) and ``L_α = mean_{b,t,i} y``.

**Several env types** (the paper's setting: one objective shared by agents on different
environments). The population is made of *groups*, one per env type: pass a tuple of envs
``(env_1, …, env_G)`` wherever an ``env`` is taken by :func:`init`, :func:`update`,
:func:`train` and :func:`meta_loss`, and the population (``MetaState.agents``) is then a
tuple of ``G`` stacked agent states, each with its env's obs/action shapes. ``α`` fits every
group because the objective runs per action dimension. One meta-step takes every group's
agent update and one Adam step on ``α`` from the summed meta-loss
``L_meta = Σ_g Σ_{i ∈ g} L_meta^i`` (every group has ``num_agents`` agents, so each env type
weighs the same). A single env is the case ``G = 1`` (same code; the population is then one
stacked state, not a 1-tuple). The critics' values differ in scale between env types
(Pendulum's ``Q`` reach the hundreds, MountainCarContinuous's stay below one) and the
meta-gradient scales with them (Pendulum's group gave 3.5-19x the other's in a 2000-update
pilot with MountainCarContinuous-v0), so one env type steers ``α``.
``Config.normalise_meta_loss`` divides each agent's meta-loss by the gradient-stopped std of
its critic's values on the window so every env type contributes on one scale; beware that it
also amplifies the noise of a nearly flat critic (MountainCarContinuous agents that learned to
stand still: that run's meta-gradient blew up and the Pendulum agents stopped learning, see
experiments/meta/RESULTS_metagenrl.md), so it is off by default.

**Annealing** (``Config.anneal_steps``, off by default). The paper's code trains its
meta-training agents on ``p L_α − (1 − p) Q_1(s, π(s))`` with ``p`` rising linearly from 0
to 1 (:func:`annealed_actor_loss`), so a young, still random ``α`` cannot drive the
population into a corner before its meta-gradient means anything; fresh agents and the
meta-loss's look-ahead step use ``L_α`` alone. It is not enough everywhere: on brax
``inverted_pendulum`` the agents' tanh actions saturate within 1 000 updates with or without
a 5 000-step anneal (``L_α``'s gradient outweighs DPG's there, whose critic values are
small), after which the meta-gradient through the saturated ``tanh`` vanishes; and with the
agents kept on DPG for the whole run (an anneal longer than the run) ``α`` on brax
``reacher`` learned a transferable rule for one seed of three with 4 agents, and for every
seed with 16 (its meta-gradient is weak: the population size sets its noise). With 16
agents that follow ``L_α`` after a 10 000-step anneal, the actions shrink towards 0 instead
and ``α`` transfers barely above a random objective. See experiments/meta/RESULTS_metagenrl.md.

Conventions: windows are batch-major ``[B, L, ...]`` as the sequence buffer returns them;
a group is a leading ``[N]`` axis on a stacked :class:`jaxrl.algorithms.td3.State` whose
``buffer`` holds a :func:`jaxrl.replay.buffers.sequence_buffer` of :class:`Item`. Every
agent of a group shares the env type; its ``EnvParams`` may differ. ``Config`` is static,
``HParams`` traced, nothing here calls ``jit``. One meta-step follows every population
update once all agents of all groups are past ``learning_starts``; ``meta/dpg_cosine``
(cosine between ``∇_φ L_α`` and DPG's gradient) is logged as a diagnostic only. Metrics are
means over groups of the per-group means over agents, plus each group's own under
``"<key>/group<g>"``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax
from flax import serialization, struct

from jaxrl.algorithms import base, td3
from jaxrl.envs.base import Env
from jaxrl.envs.wrappers import make_vec_env
from jaxrl.errors import ConfigError
from jaxrl.logger.writers import atomic_write_bytes
from jaxrl.meta.lpg import backward_scan
from jaxrl.networks.functional import dense, dense_init, lstm_step
from jaxrl.replay import buffers
from jaxrl.utils import tree

Params = Any
Metrics = dict[str, jax.Array]
NUM_INPUTS = 7
_FORMAT = "jaxrl.metagenrl/1"


def _default_agent() -> td3.Config:
    return td3.Config(hidden=(64, 64), batch_size=16, buffer_size=50_000, learning_starts=1_000)


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings.

    ``agent.batch_size`` counts replay *windows* of ``seq_len`` steps (the critic fits all
    ``batch_size * seq_len`` transitions); ``num_agents`` is the meta-training population of
    each env type (group). ``normalise_meta_loss`` divides each agent's meta-loss by the
    (gradient-stopped) std of its critic's values on the window, which puts env types with
    different reward scales on one footing (off: the plain sum, as in the paper's code).
    ``anneal_steps`` blends the meta-training agents' actor loss from DPG's to ``L_α`` over
    their first ``anneal_steps`` env steps after ``agent.learning_starts``
    (:func:`annealed_actor_loss`; 0: ``L_α`` from the start).
    """

    agent: td3.Config = dataclasses.field(default_factory=_default_agent)
    seq_len: int = 8
    lstm_size: int = 32
    head_hidden: int = 32
    num_agents: int = 4
    normalise_meta_loss: bool = False
    anneal_steps: int = 0

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(self, ("seq_len", "lstm_size", "head_hidden", "num_agents"))
        base.check_non_negative_ints(self, ("anneal_steps",))
        seq_buffer(self)  # raises ConfigError for a window longer than the per-env capacity


HPARAM_DEFAULTS = dict(inner_lr=1e-3, meta_learning_rate=1e-2, max_grad_norm=1.0)  # 1e-3 stalled


class HParams(struct.PyTreeNode):
    """Traced hyperparameters: the agents' TD3 ones plus the meta-step's.

    ``inner_lr`` is the plain-SGD step ``η_in`` of the look-ahead ``φ'``;
    ``meta_learning_rate`` and ``max_grad_norm`` drive Adam on ``α``.
    """

    agent: td3.HParams
    inner_lr: jax.Array
    meta_learning_rate: jax.Array
    max_grad_norm: jax.Array

    @classmethod
    def make(cls, agent: td3.HParams | None = None, **overrides) -> HParams:
        agent = td3.HParams.make() if agent is None else agent
        plain = base.make_hparams(_Plain, HPARAM_DEFAULTS, overrides)
        return cls(agent=agent, **dataclasses.asdict(plain))


@dataclasses.dataclass
class _Plain:
    inner_lr: Any
    meta_learning_rate: Any
    max_grad_norm: Any


class Item(struct.PyTreeNode):
    """One replayed step (``[...]``; ``[N, T, ...]`` when added, ``[B, L, ...]`` sampled)."""

    obs: jax.Array
    action: jax.Array  # normalised to [-1, 1]
    reward: jax.Array
    terminated: jax.Array  # float 0/1: no bootstrap
    done: jax.Array  # float 0/1: the episode ended here (terminated or truncated)
    next_obs: jax.Array


class ObjectiveInputs(struct.PyTreeNode):
    """Raw per-step inputs of ``L_α`` for windows ``[B, L]`` (normalised inside).

    ``reward``, ``done``, ``value`` (``Q_1(s, π(s))``), ``q`` (``Q_1(s, a)``) are
    ``[B, L]``; ``action`` (replayed) and ``policy_action`` (``π_φ(s)``) are ``[B, L, A]``.
    """

    reward: jax.Array
    done: jax.Array
    value: jax.Array
    q: jax.Array
    action: jax.Array
    policy_action: jax.Array


class MetaState(struct.PyTreeNode):
    """Objective params ``alpha``, its Adam state, the population, the meta key and the
    number of meta-steps taken. ``agents`` is a :class:`td3.State` with a leading ``[N]`` axis
    for a single env, a tuple of ``G`` of them for a tuple of ``G`` envs (one per group)."""

    alpha: Params
    meta_opt: Any
    agents: td3.State | tuple[td3.State, ...]
    key: jax.Array
    meta_steps: jax.Array


# ----------------------------------------------------------------------------- objective


def init_objective(cfg: Config, key: jax.Array) -> Params:
    """``α``: ``lstm`` (one linear on ``[x, h]`` for gates i, g, f, o) and a two-layer head
    on ``[h, x]``. LeCun-normal weights, zero biases. The last layer has no bias: a constant
    added to ``L_α`` changes no update, so it would get no meta-gradient."""
    k = jax.random.split(key, 3)
    h = cfg.lstm_size
    return {
        "lstm": dense_init(k[0], NUM_INPUTS + h, 4 * h),
        "head1": dense_init(k[1], h + NUM_INPUTS, cfg.head_hidden),
        "head2": {"w": dense_init(k[2], cfg.head_hidden, 1)["w"]},
    }


def _standardise(x: jax.Array, ref: jax.Array) -> jax.Array:
    ref = jax.lax.stop_gradient(ref)
    return (x - jnp.mean(ref)) / (jnp.std(ref) + 1e-6)


def objective_apply(cfg: Config, alpha: Params, inputs: ObjectiveInputs) -> jax.Array:
    """Per-step, per-dimension objective values ``y [B, L, A]`` (``L_α`` is their mean).

    See the module docstring for the inputs and their normalisation. The LSTM runs from
    ``t = L−1`` down to 0 and is reset where ``done[t]`` (outputs at ``t`` never see the next
    episode); each of the ``A`` action dimensions is a separate sequence with shared weights.
    """
    chex.assert_rank([inputs.reward, inputs.done, inputs.value, inputs.q], 2)
    chex.assert_rank([inputs.action, inputs.policy_action], 3)
    chex.assert_equal_shape([inputs.reward, inputs.done, inputs.value, inputs.q])
    chex.assert_equal_shape([inputs.action, inputs.policy_action])
    batch, length, dims = inputs.action.shape
    values = jnp.concatenate([inputs.value, inputs.q])
    adv = jax.lax.stop_gradient(inputs.q - inputs.value)
    per_step = jnp.stack(
        [
            _standardise(inputs.reward, inputs.reward),
            inputs.done,
            _standardise(jax.lax.stop_gradient(inputs.value), values),
            _standardise(jax.lax.stop_gradient(inputs.q), values),
            adv / (jnp.std(adv) + 1e-6),
        ],
        axis=-1,
    )  # [B, L, 5]
    per_step = jnp.broadcast_to(per_step[:, :, None, :], (batch, length, dims, 5))
    x = jnp.concatenate(
        [per_step, inputs.action[..., None], inputs.policy_action[..., None]], axis=-1
    )  # [B, L, A, F]
    x = jnp.transpose(x, (1, 0, 2, 3)).reshape((length, batch * dims, NUM_INPUTS))
    done = jnp.broadcast_to(inputs.done.T[:, :, None], (length, batch, dims))
    zeros = jnp.zeros((batch * dims, cfg.lstm_size), x.dtype)
    h = backward_scan(
        lambda c, x_t: lstm_step(alpha["lstm"], c, x_t),
        (zeros, zeros),
        x,
        done.reshape((length, batch * dims)),
    )  # [L, B * A, H]
    z = jnp.tanh(dense(alpha["head1"], jnp.concatenate([h, x], axis=-1)))
    y = jnp.einsum("...i,io->...o", z, alpha["head2"]["w"])[..., 0]  # [L, B * A]
    return jnp.transpose(y.reshape((length, batch, dims)), (1, 0, 2))


def make_inputs(
    cfg: Config, env: Env, actor_params: Params, params: td3.Params, window: Item
) -> ObjectiveInputs:
    """Builds :class:`ObjectiveInputs` for windows ``[B, L]`` from the agent's networks;
    the critic is gradient-stopped, ``π_φ(s)`` stays differentiable in ``actor_params``."""
    actor, critic = td3.networks(cfg.agent, env)
    critic_params = jax.lax.stop_gradient(params.critic)
    policy_action = actor.apply(actor_params, window.obs)  # [B, L, A]
    value = critic.apply(critic_params, window.obs, jax.lax.stop_gradient(policy_action))[0]
    q = critic.apply(critic_params, window.obs, window.action)[0]
    return ObjectiveInputs(
        reward=window.reward,
        done=window.done,
        value=value,
        q=q,
        action=window.action,
        policy_action=policy_action,
    )


def objective_loss(
    cfg: Config, env: Env, alpha: Params, actor_params: Params, params: td3.Params, window: Item
) -> tuple[jax.Array, Metrics]:
    """``L_α(φ; window) = mean_{b,t,i} y`` for windows ``[B, L]``."""
    inputs = make_inputs(cfg, env, actor_params, params, window)
    loss = jnp.mean(objective_apply(cfg, alpha, inputs))
    abs_action = jnp.mean(jnp.abs(jax.lax.stop_gradient(inputs.policy_action)))
    return loss, {"train/actor_loss": loss, "train/abs_policy_action": abs_action}


def learned_actor_loss(cfg: Config, alpha: Params) -> td3.ActorLossFn:
    """``L_α`` with ``α`` fixed, in the signature :func:`td3.actor_step` takes."""

    def loss_fn(agent_cfg, env, actor_params, params, batch, hp):
        del agent_cfg, hp
        return objective_loss(cfg, env, alpha, actor_params, params, batch.transition)

    return loss_fn


def anneal_progress(cfg: Config, state: td3.State) -> jax.Array:
    """``p = clip((env_steps − learning_starts) / anneal_steps, 0, 1)`` (1 when
    ``cfg.anneal_steps`` is 0): the weight of ``L_α`` in :func:`annealed_actor_loss`."""
    if cfg.anneal_steps == 0:
        return jnp.ones(())
    after = (state.env_steps - cfg.agent.learning_starts).astype(jnp.float32)
    return jnp.clip(after / cfg.anneal_steps, 0.0, 1.0)


def annealed_actor_loss(cfg: Config, alpha: Params, progress: jax.Array) -> td3.ActorLossFn:
    """``p L_α − (1 − p) mean Q_1(s, π_φ(s))`` on the windows: a meta-training agent's
    actor loss, moving from DPG's to the learned one as ``p`` goes from 0 to 1 (the paper's
    code anneals this way, so that early ``α`` cannot wreck the population whose critics
    give its meta-gradient). Only the agents' own updates use it; the meta-loss's
    look-ahead step and fresh agents use ``L_α`` alone."""
    learned = learned_actor_loss(cfg, alpha)

    def loss_fn(agent_cfg, env, actor_params, params, batch, hp):
        loss, metrics = learned(agent_cfg, env, actor_params, params, batch, hp)
        if cfg.anneal_steps == 0:
            return loss, metrics
        q_loss = td3.actor_loss(agent_cfg, env, actor_params, params, batch, hp)[0]
        return progress * loss + (1.0 - progress) * q_loss, metrics

    return loss_fn


# ----------------------------------------------------------------------------- agents


def seq_buffer(cfg: Config):
    """The agents' replay: ``batch_size`` windows of ``seq_len`` steps per sample."""
    a = cfg.agent
    return buffers.sequence_buffer(a.num_envs, a.buffer_size, a.batch_size, cfg.seq_len)


def init_agent(
    cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: Any = None
) -> td3.State:
    """A fresh TD3 agent whose ``buffer`` is a sequence buffer of :class:`Item`."""
    state = td3.init(cfg.agent, env, key, hp.agent, env_params)
    obs = state.obs[0]
    zero = jnp.zeros(())
    item = Item(obs, jnp.zeros(td3.action_dim(env)), zero, zero, zero, obs)
    return state.replace(buffer=seq_buffer(cfg).init(item))


def sample_window(cfg: Config, env: Env, buffer_state, key: jax.Array) -> td3.Batch:
    """Windows ``[B, L]`` plus target-smoothing noise ``[B, L, A]``."""
    key_sample, key_noise = jax.random.split(key)
    window = seq_buffer(cfg).sample(buffer_state, key_sample).experience
    return td3.Batch(window, jax.random.normal(key_noise, window.action.shape))


def _flat(batch: td3.Batch) -> td3.Batch:
    return jax.tree.map(lambda x: x.reshape((-1, *x.shape[2:])), batch)


def ready(cfg: Config, state: td3.State) -> jax.Array:
    """Whether the agent learns yet: past ``learning_starts`` with a full window stored."""
    return jnp.logical_and(
        state.env_steps >= cfg.agent.learning_starts, seq_buffer(cfg).can_sample(state.buffer)
    )


def agent_update(
    cfg: Config,
    env: Env,
    state: td3.State,
    hp: HParams,
    actor_loss_fn: td3.ActorLossFn = td3.actor_loss,
) -> tuple[td3.State, Metrics]:
    """Collect ``train_freq`` steps per env, store them, take ``gradient_steps`` TD3 steps
    (critic on all ``B L`` transitions of sampled windows; every ``policy_delay``-th step the
    actor on ``actor_loss_fn`` of the windows ``[B, L]``)."""
    state, tr, info = td3.collect(cfg.agent, env, state, hp.agent)
    done = info["done"].astype(jnp.float32)
    items = Item(tr.obs, tr.action, tr.reward, tr.terminated, done, tr.next_obs)
    items = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), items)  # [T, N] -> [N, T]
    state = state.replace(buffer=seq_buffer(cfg).add(state.buffer, items))
    is_ready = ready(cfg, state)

    def grad_step(st, key):
        batch = sample_window(cfg, env, st.buffer, key)
        return td3.gradient_step(
            cfg.agent, env, st, _flat(batch), batch, hp.agent, is_ready, actor_loss_fn
        )

    key, key_steps = jax.random.split(state.key)
    state, metrics = jax.lax.scan(
        grad_step, state.replace(key=key), jax.random.split(key_steps, cfg.agent.gradient_steps)
    )
    metrics = jax.tree.map(jnp.mean, metrics) | {
        "episode/return": base.nan_mean(info["episode_return"], done),
        "episode/count": jnp.sum(done),
    }
    return state.replace(update_count=state.update_count + 1), metrics


def train_agent(
    cfg: Config,
    env: Env,
    state: td3.State,
    hp: HParams,
    num_updates: int,
    alpha: Params | None = None,
) -> tuple[td3.State, Metrics]:
    """Trains one agent with the frozen objective ``alpha`` (TD3's DPG loss if ``None``) for
    ``num_updates`` iterations as one scan; metrics stacked ``[num_updates]``."""
    fn = td3.actor_loss if alpha is None else learned_actor_loss(cfg, alpha)
    return jax.lax.scan(lambda s, _: agent_update(cfg, env, s, hp, fn), state, None, num_updates)


def train_fresh_agent(
    cfg: Config,
    env: Env,
    key: jax.Array,
    hp: HParams,
    num_updates: int,
    alpha: Params | None = None,
    env_params: Any = None,
) -> tuple[td3.State, Metrics]:
    """The "use the learned objective" path: a new agent (:func:`init_agent`) on ``env``
    trained by :func:`train_agent` with ``α`` frozen (DPG if ``alpha`` is ``None``)."""
    state = init_agent(cfg, env, key, hp, env_params)
    return train_agent(cfg, env, state, hp, num_updates, alpha)


def evaluate(
    cfg: Config, env: Env, params: td3.Params, key: jax.Array, env_params: Any, num_steps: int
) -> jax.Array:
    """Mean return of the episodes the greedy policy finishes in ``num_steps`` steps of
    ``cfg.agent.num_envs`` fresh envs (NaN if none finishes)."""
    venv = make_vec_env(env, cfg.agent.num_envs)
    key_reset, key_steps = jax.random.split(key)
    obs, env_state = venv.reset(key_reset, env_params)

    def step(carry, key_t):
        obs, env_state = carry
        action = td3.act(cfg.agent, env, params, obs)
        obs, env_state, out = venv.step(key_t, env_state, action, env_params)
        return (obs, env_state), (out.info["episode_return"], out.done.astype(jnp.float32))

    _, (ret, done) = jax.lax.scan(step, (obs, env_state), jax.random.split(key_steps, num_steps))
    return base.nan_mean(ret, done)


# ----------------------------------------------------------------------------- meta-training


def meta_tx(hp: HParams) -> optax.GradientTransformation:
    """The objective's optimiser: global-norm clipping then Adam, from traced ``hp``."""
    return optax.chain(
        optax.clip_by_global_norm(hp.max_grad_norm), optax.adam(hp.meta_learning_rate)
    )


def meta_loss_one(
    cfg: Config, env: Env, alpha: Params, params: td3.Params, window: Item, hp: HParams
) -> jax.Array:
    """``−mean Q_1(s, π_φ'(s))`` over the window's states with ``φ' = φ − η_in ∇_φ L_α``;
    divided by ``sg(std)`` of the critic's ``[Q_1(s, π_φ(s)), Q_1(s, a)]`` on the window if
    ``cfg.normalise_meta_loss``."""
    grads = jax.grad(lambda a: objective_loss(cfg, env, alpha, a, params, window)[0])(params.actor)
    actor_new = jax.tree.map(lambda p, g: p - hp.inner_lr * g, params.actor, grads)
    actor, critic = td3.networks(cfg.agent, env)
    critic_params = jax.lax.stop_gradient(params.critic)
    q = critic.apply(critic_params, window.obs, actor.apply(actor_new, window.obs))[0]
    loss = -jnp.mean(q)
    if cfg.normalise_meta_loss:
        inputs = make_inputs(cfg, env, params.actor, params, window)
        scale = jnp.std(jnp.concatenate([inputs.value, inputs.q]))
        loss = loss / jax.lax.stop_gradient(scale + 1e-6)
    return loss


def gradient_cosine(
    cfg: Config, env: Env, alpha: Params, params: td3.Params, window: Item
) -> jax.Array:
    """Cosine between ``∇_φ L_α`` and ``∇_φ (−mean Q_1(s, π_φ(s)))`` (DPG's loss): 1 when the
    learned objective moves the actor the way DPG would (a diagnostic)."""
    g_l = jax.grad(lambda a: objective_loss(cfg, env, alpha, a, params, window)[0])(params.actor)
    dpg = td3.Batch(window, jnp.zeros_like(window.action))
    g_q = jax.grad(lambda a: td3.actor_loss(cfg.agent, env, a, params, dpg, None)[0])(params.actor)
    dot = sum(
        jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(g_l), jax.tree.leaves(g_q), strict=True)
    )
    return dot / (optax.global_norm(g_l) * optax.global_norm(g_q) + 1e-12)


def as_groups(env: Env | Sequence[Env], *data: Any) -> tuple[tuple, ...]:
    """``(envs, *data)`` as tuples over groups: a single env is one group, so its data
    (a population's params, windows, states, …) are wrapped in 1-tuples; a tuple/list of envs
    is returned as is, with each of ``data`` a tuple of the same length (``None`` for
    "no value for any group").

    Raises:
        ConfigError: no env, or data whose length differs from the number of envs.
    """
    if not isinstance(env, (tuple, list)):
        return (env,), *((d,) for d in data)
    envs = tuple(env)
    if not envs:
        raise ConfigError("MetaGenRL needs at least one env")
    out = []
    for d in data:
        d = (None,) * len(envs) if d is None else tuple(d)
        if len(d) != len(envs):
            raise ConfigError(f"got {len(envs)} envs but {len(d)} groups of data")
        out.append(d)
    return envs, *out


def _ungroup(env: Env | Sequence[Env], groups: tuple) -> Any:
    """The inverse of :func:`as_groups` for one datum: unwrap the 1-tuple of a single env."""
    return groups if isinstance(env, (tuple, list)) else groups[0]


def group_meta_loss(
    cfg: Config, env: Env, alpha: Params, params: td3.Params, windows: Item, hp: HParams
) -> jax.Array:
    """Sum of :func:`meta_loss_one` over one group (``params``, ``windows`` ``[N, ...]``)."""
    losses = jax.vmap(lambda p, w: meta_loss_one(cfg, env, alpha, p, w, hp))(params, windows)
    return jnp.sum(losses)


def meta_loss(
    cfg: Config,
    env: Env | Sequence[Env],
    alpha: Params,
    params: td3.Params | Sequence[td3.Params],
    windows: Item | Sequence[Item],
    hp: HParams,
) -> jax.Array:
    """``L_meta``: :func:`group_meta_loss` summed over groups. For a single ``env``,
    ``params`` and ``windows`` are one group's ``[N, ...]``; for a tuple of ``G`` envs, tuples
    of ``G`` such (each with its env's shapes)."""
    envs, params, windows = as_groups(env, params, windows)
    losses = [
        group_meta_loss(cfg, e, alpha, p, w, hp)
        for e, p, w in zip(envs, params, windows, strict=True)
    ]
    return functools.reduce(jnp.add, losses)


def init(
    cfg: Config,
    env: Env | Sequence[Env],
    key: jax.Array,
    hp: HParams,
    env_params: Any = None,
) -> MetaState:
    """A fresh objective and ``num_agents`` fresh agents per env (group).

    Args:
        env: one env, or a tuple of ``G`` envs (one group each).
        env_params: for one env, its params stacked ``[N]`` to give each agent its own task
            (the env's defaults for all if ``None``); for ``G`` envs, a tuple of ``G`` such
            (``None`` entries, or ``None`` for all, mean defaults).
    """
    envs, env_params = as_groups(env, env_params)
    n = cfg.num_agents
    key_alpha, key_agents, key = jax.random.split(key, 3)
    keys = jax.random.split(key_agents, len(envs) * n)
    groups = []
    for g, (e, p) in enumerate(zip(envs, env_params, strict=True)):
        keys_g = keys[g * n : (g + 1) * n]
        if p is None:
            groups.append(jax.vmap(lambda k, e=e: init_agent(cfg, e, k, hp))(keys_g))
        else:
            groups.append(jax.vmap(lambda k, p, e=e: init_agent(cfg, e, k, hp, p))(keys_g, p))
    alpha = init_objective(cfg, key_alpha)
    return MetaState(
        alpha=alpha,
        meta_opt=meta_tx(hp).init(alpha),
        agents=_ungroup(env, tuple(groups)),
        key=key,
        meta_steps=jnp.zeros((), jnp.int32),
    )


def _mean_over_groups(rows: list[Metrics]) -> Metrics:
    """Each key's mean over groups (NaN-skipping: a group without finished episodes)."""
    return {k: jnp.nanmean(jnp.stack([r[k] for r in rows])) for k in rows[0]}


def update(
    cfg: Config, env: Env | Sequence[Env], state: MetaState, hp: HParams
) -> tuple[MetaState, Metrics]:
    """One iteration: every agent of every group does :func:`agent_update` with the current
    ``L_α``, then one meta-step on ``α`` from a fresh window per agent: Adam on the sum of
    the groups' meta-gradients (skipped until every agent of every group is ready)."""
    envs, agents_in = as_groups(env, state.agents)
    n = cfg.num_agents
    fn = lambda s: annealed_actor_loss(cfg, state.alpha, anneal_progress(cfg, s))
    key, key_sample = jax.random.split(state.key)
    keys = jax.random.split(key_sample, len(envs) * n)
    agents, rows, grads, total, ready_g = [], [], [], [], []
    for g, (e, agents_g) in enumerate(zip(envs, agents_in, strict=True)):
        agents_g, metrics = jax.vmap(lambda s, e=e: agent_update(cfg, e, s, hp, fn(s)))(agents_g)
        batches = jax.vmap(lambda b, k, e=e: sample_window(cfg, e, b, k))(
            agents_g.buffer, keys[g * n : (g + 1) * n]
        )
        windows = batches.transition
        loss, grads_g = jax.value_and_grad(
            lambda a, e=e, p=agents_g.params, w=windows: group_meta_loss(cfg, e, a, p, w, hp)
        )(state.alpha)
        cosine = jax.vmap(lambda p, w, e=e: gradient_cosine(cfg, e, state.alpha, p, w))(
            agents_g.params, windows
        )
        agents.append(agents_g)
        grads.append(grads_g)
        total.append(loss)
        ready_g.append(jnp.all(jax.vmap(lambda s: ready(cfg, s))(agents_g)))
        rows.append(
            jax.tree.map(jnp.nanmean, metrics)
            | {
                "meta/loss": loss / n,
                "meta/dpg_cosine": jnp.mean(cosine),
                "meta/grad_norm": optax.global_norm(grads_g),
            }
        )
    grads = functools.reduce(lambda x, y: jax.tree.map(jnp.add, x, y), grads)
    updates, meta_opt = meta_tx(hp).update(grads, state.meta_opt, state.alpha)
    alpha = optax.apply_updates(state.alpha, updates)
    all_ready = functools.reduce(jnp.logical_and, ready_g)
    alpha, meta_opt = tree.select(all_ready, (alpha, meta_opt), (state.alpha, state.meta_opt))
    metrics = _mean_over_groups(rows) | {
        "meta/loss": functools.reduce(jnp.add, total) / (len(envs) * n),
        "meta/grad_norm": optax.global_norm(grads),
    }
    for g, row in enumerate(rows):
        metrics |= {f"{k}/group{g}": v for k, v in row.items()}
    new = MetaState(
        alpha,
        meta_opt,
        _ungroup(env, tuple(agents)),
        key,
        state.meta_steps + all_ready.astype(jnp.int32),
    )
    return new, metrics


def train(
    cfg: Config, env: Env | Sequence[Env], state: MetaState, hp: HParams, num_updates: int
) -> tuple[MetaState, Metrics]:
    """``num_updates`` meta-training iterations as one scan; metrics stacked ``[num_updates]``.
    ``env`` is one env or a tuple of envs (see :func:`update`)."""
    return jax.lax.scan(lambda s, _: update(cfg, env, s, hp), state, None, num_updates)


# ----------------------------------------------------------------------------- save / load


def save(path: str, alpha: Params, cfg: Config) -> None:
    """Writes ``path + ".json"`` (format and the objective's sizes) and ``path + ".msgpack"``
    (``α``, flax serialization), each atomically."""
    meta = {"format": _FORMAT, "lstm_size": cfg.lstm_size, "head_hidden": cfg.head_hidden}
    atomic_write_bytes(path + ".json", json.dumps(meta, indent=1).encode())
    atomic_write_bytes(path + ".msgpack", serialization.to_bytes(jax.device_get(alpha)))


def load(path: str, cfg: Config) -> Params:
    """Reads ``α`` written by :func:`save` for an objective of ``cfg``'s sizes.

    Raises:
        ConfigError: a missing or corrupt file, another format, or sizes that differ from
            ``cfg`` (``lstm_size``, ``head_hidden``).
    """
    try:
        with open(path + ".json") as f:
            meta = json.load(f)
        with open(path + ".msgpack", "rb") as f:
            data = f.read()
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read saved MetaGenRL objective {path!r}: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ConfigError(f"{path}.json is not a saved MetaGenRL objective ({_FORMAT})")
    for name in ("lstm_size", "head_hidden"):
        if meta.get(name) != getattr(cfg, name):
            raise ConfigError(
                f"{path} was saved with {name} = {meta.get(name)!r}, config has "
                f"{getattr(cfg, name)}"
            )
    template = init_objective(cfg, jax.random.key(0))
    try:
        alpha = serialization.from_bytes(template, data)
    except Exception as err:  # msgpack and flax raise several types for bad bytes
        raise ConfigError(f"{path}.msgpack is corrupt or does not match its config: {err}") from err
    if jax.tree.structure(alpha) != jax.tree.structure(template) or jax.tree.map(
        jnp.shape, alpha
    ) != jax.tree.map(jnp.shape, template):
        raise ConfigError(f"{path}.msgpack parameter shapes do not match the config")
    return alpha
