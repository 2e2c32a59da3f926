"""Behavioural cloning: maximum likelihood of the expert's actions, as supervised learning.

The imitation baseline of Ho & Ermon 2016 (arXiv:1606.03476): minimise
``-mean log pi(a_E | s_E)`` over expert pairs (:mod:`jaxrl.algorithms.demos`) with Adam on
minibatches drawn uniformly (with replacement). The policy is PPO's actor-critic
(:func:`jaxrl.algorithms.ppo.network` with ``cfg.hidden`` and ``cfg.activation``; the
critic is left untrained), so a cloned policy evaluates as a PPO one does
(:func:`jaxrl.runner.evaluate.evaluate` with ``algo=bc``) and its parameters can start
PPO or GAIL.

BC takes no env steps, so it is not one of the runner's algorithms (``jaxrl train``);
it runs from Python::

    cfg = bc.Config(demos="expert.npz", num_steps=2_000)
    state = bc.init(cfg, env, key, bc.HParams.make())
    state, metrics = jax.jit(lambda s: bc.train(cfg, env, s, hp, cfg.num_steps))(state)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base, ppo
from jaxrl.algorithms import demos as demos_lib
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.networks import ActorCritic
from jaxrl.networks.torsos import ACTIVATIONS
from jaxrl.types import Metrics


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings: the demonstrations, the network, the minibatch and step count."""

    demos: str = ""  # path of an .npz of expert (obs, action) pairs: demos.save
    num_steps: int = 2_000  # Adam steps
    batch_size: int = 256
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(self, ("num_steps", "batch_size"))
        base.check_choices(self, {"activation": ACTIVATIONS})


HPARAM_DEFAULTS = dict(learning_rate=1e-3)
HPARAM_RANGES = dict(learning_rate=(0.0, 1.0))


class HParams(struct.PyTreeNode):
    """Traced hyperparameters (float32 arrays)."""

    learning_rate: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """ConfigError for out-of-range hyperparameters or missing/unreadable demonstrations."""
    base.check_ranges(hp, HPARAM_RANGES)
    demos_lib.load(demos_lib.required(cfg.demos, "behavioural cloning"))


class State(struct.PyTreeNode):
    """Policy parameters, Adam state, key, the demonstrations ``[M, ...]``, steps taken."""

    params: dict
    opt_state: optax.OptState
    key: jax.Array
    demos: demos_lib.Demos
    step: jax.Array  # int32


def network(cfg: Config, env: Env) -> ActorCritic:
    """PPO's actor-critic with ``cfg.hidden`` and ``cfg.activation`` (separate torsos)."""
    return ppo.network(ppo.Config(hidden=cfg.hidden, activation=cfg.activation), env)


def optimizer(hp: HParams) -> optax.GradientTransformation:
    return optim.adam(hp.learning_rate)


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """Fresh network and Adam state; the demonstrations read from ``cfg.demos``
    (ConfigError if missing or not fitting ``env``)."""
    del env_params
    demos = demos_lib.load_for(cfg.demos, "behavioural cloning", env).pairs()
    key, key_net = jax.random.split(key)
    params = network(cfg, env).init(key_net, demos.obs[:1])
    return State(params, optimizer(hp).init(params), key, demos, jnp.zeros((), jnp.int32))


def loss(
    cfg: Config, env: Env, params: dict, batch: demos_lib.Demos, hp: HParams
) -> tuple[jax.Array, Metrics]:
    """``-mean log pi(a|s)`` over expert pairs ``[B, ...]``; metrics: the loss, and the
    share of greedy actions equal to the expert's (Discrete) or their mean squared error
    (Box)."""
    del hp
    dist, _ = network(cfg, env).apply(params, batch.obs)
    nll = -jnp.mean(dist.log_prob(batch.action))
    if isinstance(env.action_space(env.default_params()), spaces.Discrete):
        fit = {"train/accuracy": jnp.mean(jnp.argmax(dist.logits, -1) == batch.action)}
    else:
        fit = {"train/action_mse": jnp.mean(jnp.square(dist.mean() - batch.action))}
    return nll, {"train/nll": nll} | fit


def update(cfg: Config, env: Env, state: State, hp: HParams) -> tuple[State, Metrics]:
    """One Adam step on a uniform minibatch of ``cfg.batch_size`` expert pairs."""
    key, key_batch = jax.random.split(state.key)
    index = jax.random.randint(key_batch, (cfg.batch_size,), 0, state.demos.obs.shape[0])
    batch = jax.tree.map(lambda x: x[index], state.demos)
    grads, metrics = jax.grad(lambda p: loss(cfg, env, p, batch, hp), has_aux=True)(state.params)
    updates, opt_state = optimizer(hp).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(params=params, opt_state=opt_state, key=key, step=state.step + 1), metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_steps: int
) -> tuple[State, Metrics]:
    """``num_steps`` :func:`update` s as one scan; metrics stacked ``[num_steps]``."""
    return jax.lax.scan(lambda s, _: update(cfg, env, s, hp), state, None, num_steps)
