"""Critical states (Rupprecht, Ibrahim & Pal 2020, "Finding and Visualizing Weaknesses of
Deep Reinforcement Learning Agents"): states that a trained agent finds extreme, generated
from a model of the states it visits rather than searched for in a replay.

1. A variational autoencoder (:class:`VAE`: MLP encoder to a Gaussian ``q(z|x)``, MLP
   decoder to the mean of a Gaussian ``p(x|z)`` with a learned variance per dimension,
   prior ``N(0, I)``) learns
   the distribution of a set of observed states ``[N, *obs_shape]``, standardised by their
   mean and standard deviation (:func:`fit`).
2. Latent codes ``z`` are optimised with Adam to maximise a score of the decoded states,
   ``score_fn(decode(z)) [B]``, each step projected back into the ball
   ``||z|| <= latent_radius`` where the prior has its mass, so that the decoded states
   resemble the data (:func:`search`). A ball rather than the paper's penalty on ``z``:
   then the score's scale (a return, a logit) does not set how far the search strays.

The paper's scores of action values ``q = q_fn(obs) [B, A]`` (:func:`q_scores`):

* ``"best"`` (T+): ``max_a q``, states the agent values most;
* ``"worst"`` (T-): ``-max_a q``, states it values least;
* ``"decisive"`` (T+-): ``max_a q - min_a q``, states where one action is far better than
  another.

An actor-critic agent gives the same three from its value (``V``, ``-V``) and its logits
(the gap between the most and least preferred action). Everything is pure and jit-able.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl.errors import ConfigError

Score = Callable[[jax.Array], jax.Array]  # observations [B, *obs_shape] -> [B]


def q_scores(q_fn: Callable[[jax.Array], jax.Array]) -> dict[str, Score]:
    """The paper's targets from action values ``q_fn(obs) -> [B, A]``: ``best`` (T+),
    ``worst`` (T-) and ``decisive`` (T+-)."""
    return {
        "best": lambda obs: jnp.max(q_fn(obs), axis=-1),
        "worst": lambda obs: -jnp.max(q_fn(obs), axis=-1),
        "decisive": lambda obs: jnp.max(q_fn(obs), axis=-1) - jnp.min(q_fn(obs), axis=-1),
    }


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings of the state model and of the search."""

    latent_dim: int = 4
    hidden: tuple[int, ...] = (64, 64)
    beta: float = 1.0  # weight of the ELBO's KL term
    vae_steps: int = 5_000  # Adam steps fitting the VAE
    vae_batch: int = 256
    vae_learning_rate: float = 1e-3
    search_steps: int = 500  # Adam steps per latent search
    search_learning_rate: float = 0.05
    latent_radius: float = 3.0  # the search keeps ||z|| <= this

    def __post_init__(self):
        for name in ("latent_dim", "vae_steps", "vae_batch", "search_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError(f"hidden must be positive layer sizes, got {self.hidden!r}")
        for name in ("beta", "vae_learning_rate", "search_learning_rate", "latent_radius"):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (ok and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


class VAE(nn.Module):
    """``encode(x [B, D]) -> (mean, log_var) [B, latent]`` and ``decode(z) -> [B, D]`` (the
    mean of ``p(x|z)``); the parameter ``log_var_x [D]`` is its log-variance. The variance
    is learned: fixed at the data's variance, the likelihood gains too little from ``z``
    to pay for its KL, and the code collapses to the prior."""

    latent_dim: int
    hidden: tuple[int, ...]
    obs_dim: int

    def setup(self):
        self.encoder = [nn.Dense(h) for h in self.hidden]
        self.to_stats = nn.Dense(2 * self.latent_dim)
        self.decoder = [nn.Dense(h) for h in reversed(self.hidden)]
        self.to_obs = nn.Dense(self.obs_dim)
        self.log_var_x = self.param("log_var_x", nn.initializers.zeros, (self.obs_dim,))

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for layer in self.encoder:
            x = nn.elu(layer(x))
        mean, log_var = jnp.split(self.to_stats(x), 2, axis=-1)
        return mean, log_var

    def decode(self, z: jax.Array) -> jax.Array:
        for layer in self.decoder:
            z = nn.elu(layer(z))
        return self.to_obs(z)

    def __call__(
        self, x: jax.Array, noise: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """``(reconstruction, log_var_x, mean, log_var)`` with
        ``z = mean + exp(log_var / 2) noise``."""
        mean, log_var = self.encode(x)
        x_hat = self.decode(mean + jnp.exp(0.5 * log_var) * noise)
        return x_hat, self.log_var_x, mean, log_var


class StateModel(struct.PyTreeNode):
    """A fitted VAE: its parameters and the data's ``mean``, ``std`` ``[*obs_shape]``."""

    params: dict
    mean: jax.Array
    std: jax.Array


def network(cfg: Config, obs_shape: tuple[int, ...]) -> VAE:
    return VAE(cfg.latent_dim, cfg.hidden, math.prod(obs_shape))


def elbo_loss(
    cfg: Config, params: dict, x: jax.Array, noise: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """The negative ELBO per state, averaged over ``x [B, D]`` (standardised), with the
    reparametrisation ``noise [B, latent]``: ``(loss, (reconstruction, kl))`` where
    reconstruction is ``-log p(x|z)``, ``0.5 sum_d ((x - x_hat)^2 / var_x + log var_x)``,
    and kl is ``KL(q(z|x) || N(0, I))``, so that ``loss = reconstruction + beta kl``
    (constants dropped)."""
    x_hat, log_var_x, mean, log_var = network(cfg, x.shape[1:]).apply(params, x, noise)
    squared = jnp.square(x - x_hat) * jnp.exp(-log_var_x)[None]
    reconstruction = jnp.mean(0.5 * jnp.sum(squared + log_var_x[None], axis=-1))
    kl = jnp.mean(0.5 * jnp.sum(jnp.exp(log_var) + jnp.square(mean) - 1.0 - log_var, axis=-1))
    return reconstruction + cfg.beta * kl, (reconstruction, kl)


def check(states: jax.Array) -> None:
    """ConfigError unless ``states`` is ``[N >= 2, *obs_shape]`` (before compiling)."""
    if states.ndim < 2 or states.shape[0] < 2:
        raise ConfigError(f"states must be [N >= 2, *obs_shape], got shape {tuple(states.shape)}")


def fit(cfg: Config, states: jax.Array, key: jax.Array) -> tuple[StateModel, jax.Array]:
    """``(model, losses [vae_steps])``: the VAE fitted to ``states [N, *obs_shape]`` by Adam
    on minibatches drawn uniformly."""
    n, obs_shape = states.shape[0], tuple(states.shape[1:])
    flat = states.reshape(n, -1).astype(jnp.float32)
    mean, std = jnp.mean(flat, axis=0), jnp.std(flat, axis=0) + 1e-6
    data = (flat - mean[None]) / std[None]
    key_init, key = jax.random.split(key)
    params = network(cfg, obs_shape).init(key_init, data[:1], jnp.zeros((1, cfg.latent_dim)))
    opt = optax.adam(cfg.vae_learning_rate)

    def step(carry, key):
        params, opt_state = carry
        key_batch, key_noise = jax.random.split(key)
        batch = data[jax.random.randint(key_batch, (cfg.vae_batch,), 0, n)]
        noise = jax.random.normal(key_noise, (cfg.vae_batch, cfg.latent_dim))
        (loss, _), grads = jax.value_and_grad(
            lambda p: elbo_loss(cfg, p, batch, noise), has_aux=True
        )(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(
        step, (params, opt.init(params)), jax.random.split(key, cfg.vae_steps)
    )
    return StateModel(params, mean.reshape(obs_shape), std.reshape(obs_shape)), losses


def decode(cfg: Config, model: StateModel, z: jax.Array) -> jax.Array:
    """States ``[B, *obs_shape]`` (in the data's units) from latent codes ``z [B, latent]``."""
    obs_shape = model.mean.shape
    x = network(cfg, obs_shape).apply(model.params, z, method=VAE.decode)
    return x.reshape(z.shape[0], *obs_shape) * model.std[None] + model.mean[None]


def project(cfg: Config, z: jax.Array) -> jax.Array:
    """``z [B, latent]`` scaled into the ball ``||z|| <= cfg.latent_radius`` (rows inside it
    unchanged)."""
    norm = jnp.linalg.norm(z, axis=-1, keepdims=True)
    return z * jnp.minimum(1.0, cfg.latent_radius / jnp.maximum(norm, 1e-12))


def search(
    cfg: Config, model: StateModel, score_fn: Score, key: jax.Array, num: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(states [num, *obs_shape], scores [num], z [num, latent])``: ``num`` searches from
    ``z ~ N(0, I)`` (projected into the ball), each maximising ``score_fn(decode(z))`` for
    ``cfg.search_steps`` Adam steps, each step followed by :func:`project`."""

    def objective(z):
        return -jnp.sum(score_fn(decode(cfg, model, z)))

    opt = optax.adam(cfg.search_learning_rate)
    z0 = project(cfg, jax.random.normal(key, (num, cfg.latent_dim)))

    def step(carry, _):
        z, opt_state = carry
        updates, opt_state = opt.update(jax.grad(objective)(z), opt_state, z)
        return (project(cfg, optax.apply_updates(z, updates)), opt_state), None

    (z, _), _ = jax.lax.scan(step, (z0, opt.init(z0)), None, length=cfg.search_steps)
    states = decode(cfg, model, z)
    return states, score_fn(states), z
