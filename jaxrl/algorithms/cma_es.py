"""CMA-ES policy search (Hansen & Ostermeier 2001; evosax's ``CMA_ES``), a classical
black-box baseline.

The search runs over the flat parameter vector ``theta`` of a small deterministic policy
network (:class:`Policy`), with no gradients, critic or replay. One ``update`` is one
generation:

1. evosax's CMA-ES draws ``cfg.population`` vectors from ``N(mean, sigma^2 C)``;
2. each member plays ``cfg.episodes`` whole episodes
   (:func:`jaxrl.runner.evaluate.evaluate_episodes`), all members from the same resets
   (common random numbers), and its fitness is its mean return;
3. CMA-ES updates the mean, step size ``sigma`` and covariance ``C`` from the ranks of
   the fitnesses (evosax minimises, so it is told the negated returns).

The policy is the distribution's mean: ``State.params``. Actions are the argmax of the
output for discrete spaces, and ``low + (tanh(x) + 1) (high - low) / 2`` for Box spaces.
The population's episodes run side by side (``vmap``) in one compiled program, so a
generation costs one batched episode loop. The metrics count the env steps the members
actually played (``es/env_steps``), which differ from generation to generation.

Full covariance costs ``O(n^2)`` memory and an ``O(n^3)`` eigendecomposition per
generation for ``n`` parameters: it suits the small policies of classic control (a 16-unit
hidden layer on CartPole is 114 parameters). CMA-ES takes no env steps between episodes,
has no loss and no traced hyperparameters, so it runs from Python, not ``jaxrl train``.
On jax 0.10.2's CPU backend, ``jit(vmap(train))`` with its runs sharded over several
devices, more than one per device, hangs (docs/classical_baselines.md); jax 0.11.2 runs it.
"""

from __future__ import annotations

import dataclasses
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
from evosax.algorithms import CMA_ES
from flax import struct

from jaxrl.algorithms import base
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.networks.torsos import MLP
from jaxrl.runner import evaluate
from jaxrl.types import Metrics


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings."""

    population: int = 32  # members per generation
    episodes: int = 1  # episodes per member per generation (common resets across members)
    hidden: tuple[int, ...] = (16,)  # the policy's hidden layers (tanh)
    sigma_init: float = 0.5  # CMA-ES's initial step size
    max_steps: int = 1_000  # bound on an episode's length; a longer one is a NaN fitness

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(self, ("population", "episodes", "max_steps"))
        if self.population < 2:
            raise base.ConfigError(f"population must be at least 2, got {self.population}")
        if not self.sigma_init > 0:
            raise base.ConfigError(f"sigma_init must be positive, got {self.sigma_init}")


class State(struct.PyTreeNode):
    """The search distribution (evosax's CMA-ES state) and the key."""

    es_state: object
    key: jax.Array

    @property
    def generation(self) -> jax.Array:
        return self.es_state.generation_counter


class Policy(nn.Module):
    """``obs [B, ...] -> actions [B]`` (discrete: argmax) or ``[B, A]`` (Box: tanh-squashed
    into the bounds)."""

    hidden: tuple[int, ...]
    space: object

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = MLP(self.hidden, "tanh")(obs.reshape(obs.shape[0], -1).astype(jnp.float32))
        if isinstance(self.space, spaces.Discrete):
            return jnp.argmax(nn.Dense(int(self.space.n))(x), axis=-1)
        low, high = (jnp.broadcast_to(b, self.space.shape)[None] for b in self.space.bounds())
        squashed = (jnp.tanh(nn.Dense(int(self.space.shape[-1]))(x)) + 1.0) / 2.0
        return low + squashed * (high - low)


def network(cfg: Config, env: Env) -> Policy:
    space = env.action_space(env.default_params())
    if not isinstance(space, spaces.Discrete | spaces.Box):
        raise base.ConfigError(f"CMA-ES needs a Discrete or Box action space, got {space}")
    return Policy(cfg.hidden, space)


def policy(cfg, env, params, obs, key, deterministic, hp=None):
    """The evaluator's policy: the network's action (deterministic either way)."""
    del key, deterministic, hp
    return network(cfg, env).apply(params, obs)


def _evosax():
    """evosax broadcasts ranks implicitly: allow it (where tests raise on it)."""
    return jax.numpy_rank_promotion("allow")


def _template(cfg: Config, env: Env, key: jax.Array) -> dict:
    obs, _ = env.reset(key, env.default_params())
    return network(cfg, env).init(key, obs[None])


def strategy(cfg: Config, env: Env) -> CMA_ES:
    """evosax's CMA-ES over the flat parameters of :func:`network` (shapes only)."""
    template = jax.eval_shape(lambda k: _template(cfg, env, k), jax.random.key(0))
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), template)
    return CMA_ES(population_size=cfg.population, solution=zeros)


def es_params(cfg: Config, env: Env):
    """CMA-ES's settings: evosax's defaults with ``sigma_init``."""
    defaults = strategy(cfg, env).default_params
    return defaults.replace(std_init=jnp.asarray(cfg.sigma_init, jnp.float32))


def init(cfg: Config, env: Env, key: jax.Array) -> State:
    """A search distribution centred on a freshly initialised network."""
    key, key_net, key_es = jax.random.split(key, 3)
    es = strategy(cfg, env)
    with _evosax():
        es_state = es.init(key_es, _template(cfg, env, key_net), es_params(cfg, env))
    return State(es_state=es_state, key=key)


def params(cfg: Config, env: Env, state: State) -> dict:
    """The network parameters at the distribution's mean (the policy CMA-ES returns)."""
    return strategy(cfg, env).get_mean(state.es_state)


def fitness(cfg: Config, env: Env, population: dict, key: jax.Array, env_params=None):
    """Mean return and total steps of ``cfg.episodes`` episodes per member, every member
    from the same ``cfg.episodes`` resets (``key``): ``([P], [P])``. A member with an
    episode still running after ``cfg.max_steps`` steps has return ``NaN``."""
    algo = sys.modules[__name__]

    def one(member):
        returns, lengths = evaluate.evaluate_episodes(
            algo, cfg, env, member, key, cfg.episodes, True, env_params, cfg.max_steps
        )
        return jnp.mean(returns), jnp.sum(lengths)

    return jax.vmap(one)(population)


def update(cfg: Config, env: Env, state: State, env_params=None) -> tuple[State, Metrics]:
    """One generation: ask, play, tell.

    Metrics: the population's mean, best and worst returns (``es/...``; ``NaN`` if a
    member's episode outlasted ``cfg.max_steps``: such a member ranks last), the env steps
    the members played, CMA-ES's step size ``sigma``, the best return so far, and the
    number of unfinished members.
    """
    es, hp = strategy(cfg, env), es_params(cfg, env)
    key, key_ask, key_eval, key_tell = jax.random.split(state.key, 4)
    with _evosax():
        population, es_state = es.ask(key_ask, state.es_state, hp)
    returns, steps = fitness(cfg, env, population, key_eval, env_params)
    unfinished = jnp.isnan(returns)
    ranked = jnp.where(unfinished, -jnp.inf, returns)  # an unfinished member ranks last
    with _evosax():
        es_state, _ = es.tell(key_tell, population, -ranked, es_state, hp)
    metrics = {
        "es/mean_return": jnp.mean(returns),
        "es/best_return": jnp.max(returns),
        "es/worst_return": jnp.min(returns),
        "es/best_return_so_far": -es_state.best_fitness,
        "es/env_steps": steps.sum(),
        "es/sigma": es_state.std,
        "es/unfinished": jnp.sum(unfinished),
    }
    return State(es_state=es_state, key=key), metrics


def train(
    cfg: Config, env: Env, state: State, num_generations: int, env_params=None
) -> tuple[State, Metrics]:
    """``num_generations`` generations as one scan; metrics stacked ``[num_generations]``."""
    return jax.lax.scan(lambda s, _: update(cfg, env, s, env_params), state, None, num_generations)
