"""Conservative Q-learning (Kumar et al. 2020, arXiv:2006.04779) for discrete actions:
offline RL from a fixed dataset of transitions, with no env steps.

Q-learning from a fixed dataset bootstraps from ``max_a Q(s', a)``, and nothing in the data
corrects the actions it never took: their values can only drift up, and the greedy policy
follows them. CQL adds to the TD loss a term that pushes every action's value down (a
soft maximum, ``logsumexp``) and the dataset's action back up::

    L = mean 0.5 (Q(s, a) - y)^2 + alpha * mean(logsumexp_b Q(s, b) - Q(s, a)),
    y = r + gamma (1 - terminated) max_b Q_target(s', b)

(the paper's CQL(H), Eq. 4, with its discrete-action form). ``hp.cql_alpha = 0`` is plain
offline DQN. Each ``update`` is one Adam step on a minibatch drawn uniformly from the
dataset; the target network is copied every ``cfg.target_update_period`` steps. The policy
is greedy in ``Q``.

The dataset is a :class:`jaxrl.algorithms.demos.Demos` with its transition fields (any
:func:`jaxrl.algorithms.demos.record` file), read from ``cfg.demos`` into the state. CQL
runs from Python, like behavioural cloning: it takes no env steps.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base
from jaxrl.algorithms import demos as demos_lib
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.networks.q import QNetwork
from jaxrl.types import Metrics


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings."""

    demos: str = ""  # path of an .npz of transitions (demos.record / demos.save)
    hidden: tuple[int, ...] = (64, 64)
    batch_size: int = 256
    num_steps: int = 20_000  # Adam steps in a run (train's default length)
    target_update_period: int = 100  # gradient steps between target-network copies

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(self, ("batch_size", "num_steps", "target_update_period"))


HPARAM_DEFAULTS = dict(learning_rate=3e-4, discount=0.99, cql_alpha=1.0)
HPARAM_RANGES = dict(learning_rate=(0.0, 1.0), discount=(0.0, 1.0), cql_alpha=(0.0, 1e6))


class HParams(struct.PyTreeNode):
    """Traced hyperparameters: Adam's learning rate, the discount, and CQL's ``alpha``
    (0: offline DQN)."""

    learning_rate: jax.Array
    discount: jax.Array
    cql_alpha: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """ConfigError for out-of-range hyperparameters, or a dataset that is missing,
    unreadable or without transitions (before compiling)."""
    base.check_ranges(hp, HPARAM_RANGES)
    demos_lib.load(demos_lib.required(cfg.demos, "CQL")).transitions("CQL")


class State(struct.PyTreeNode):
    """Online and target Q parameters, Adam state, the dataset ``[M, ...]``, key, step."""

    params: dict
    target_params: dict
    opt_state: optax.OptState
    data: demos_lib.Demos
    key: jax.Array
    step: jax.Array  # int32 scalar: gradient steps taken


def network(cfg: Config, env: Env) -> QNetwork:
    space = env.action_space(env.default_params())
    if not isinstance(space, spaces.Discrete):
        raise base.ConfigError(f"CQL here is for discrete actions; {env.name}'s are {space}")
    return QNetwork(num_actions=int(space.n), hidden=cfg.hidden)


def q_values(cfg: Config, env: Env, params: dict, obs: jax.Array) -> jax.Array:
    """``Q(s, .) [B, n]`` for observations ``[B, ...]``."""
    return network(cfg, env).apply(params, obs.reshape(obs.shape[0], -1))


def optimizer(hp: HParams) -> optax.GradientTransformation:
    return optim.adam(hp.learning_rate)


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """A fresh Q-network (its copy as the target), Adam, and the dataset from ``cfg.demos``
    (ConfigError if missing, without transitions, or not fitting ``env``)."""
    data = demos_lib.load_for(cfg.demos, "CQL", env, env_params).transitions("CQL")
    key, key_net = jax.random.split(key)
    params = network(cfg, env).init(key_net, data.obs[:1].reshape(1, -1))
    return State(params, params, optimizer(hp).init(params), data, key, jnp.zeros((), jnp.int32))


def loss(
    cfg: Config, env: Env, params: dict, target_params: dict, batch: demos_lib.Demos, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """TD loss plus ``alpha`` times the conservative term, on a batch of transitions
    ``[B, ...]``. Metrics: both terms, the mean ``Q(s, a)`` of the data's actions and the
    mean ``max_b Q(s, b)``."""
    q = q_values(cfg, env, params, batch.obs)
    q_data = jnp.take_along_axis(q, batch.action[:, None].astype(jnp.int32), axis=1)[:, 0]
    next_q = q_values(cfg, env, target_params, batch.next_obs)
    bootstrap = jnp.where(batch.terminated, 0.0, hp.discount * jnp.max(next_q, axis=-1))
    target = jax.lax.stop_gradient(batch.reward + bootstrap)
    td = jnp.mean(0.5 * jnp.square(q_data - target))
    conservative = jnp.mean(jax.nn.logsumexp(q, axis=-1) - q_data)
    return td + hp.cql_alpha * conservative, {
        "train/td_loss": td,
        "train/cql_term": conservative,
        "train/q_data": jnp.mean(q_data),
        "train/q_max": jnp.mean(jnp.max(q, axis=-1)),
    }


def update(cfg: Config, env: Env, state: State, hp: HParams) -> tuple[State, Metrics]:
    """One Adam step on a uniform minibatch; the target copies the online network every
    ``cfg.target_update_period`` steps."""
    key, key_batch = jax.random.split(state.key)
    index = jax.random.randint(key_batch, (cfg.batch_size,), 0, state.data.obs.shape[0])
    batch = jax.tree.map(lambda x: x[index], state.data)
    grads, metrics = jax.grad(
        lambda p: loss(cfg, env, p, state.target_params, batch, hp), has_aux=True
    )(state.params)
    updates, opt_state = optimizer(hp).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    copy = step % cfg.target_update_period == 0
    target = jax.tree.map(lambda p, t: jnp.where(copy, p, t), params, state.target_params)
    return state.replace(
        params=params, target_params=target, opt_state=opt_state, key=key, step=step
    ), metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_steps: int
) -> tuple[State, Metrics]:
    """``num_steps`` updates as one scan; metrics stacked ``[num_steps]``."""
    return jax.lax.scan(lambda s, _: update(cfg, env, s, hp), state, None, num_steps)


def policy(cfg, env, params, obs, key, deterministic, hp=None):
    """The evaluator's policy: greedy in ``Q`` (deterministic either way)."""
    del key, deterministic, hp
    return jnp.argmax(q_values(cfg, env, params, obs), axis=-1)
