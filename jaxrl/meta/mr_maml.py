"""Meta-regularised MAML on weights, MR-MAML(W), for MAML-RL.

Yin, Tucker, Zhou, Levine, Finn, ICLR 2020, "Meta-Learning without Memorization",
https://arxiv.org/abs/1912.03820.

When every meta-training task can be told from the observation alone (non-mutually-exclusive
tasks, e.g. :class:`jaxrl.envs.nav2d.CuedNav2D`), MAML can store a solution of every task in
its meta-parameters and ignore the adaptation data: it "memorises", and then does not adapt
to a novel task. MR-MAML(W) limits the information the meta-parameters that are *not*
adapted can hold. The first ``Config.frozen_layers`` torso layers ``θ`` (which read the
observation) get a Gaussian posterior ``q(θ) = N(μ, σ²)`` per weight and a KL penalty to
the prior ``N(0, I)``; the remaining parameters ``φ`` adapt as in MAML::

    min_{μ, σ, φ}  mean_i E_{θ ~ q} [ L_i(θ, φ'_i(θ)) ]  +  β KL(q(θ) ‖ N(0, I)),
    φ'_i(θ) = φ − α ∇_φ L_in,i(θ, φ)

with one reparameterised sample ``θ = μ + σ ε`` per task per meta-iteration, the same that
collects the task's data (so the post-update surrogate stays on-policy).
``L_i`` is :func:`jaxrl.meta.maml.task_surrogate`. With ``β = 0`` the posterior is free to
shrink to a point and the method is MAML with its first layers frozen in the inner loop.

jaxrl's choices, where the paper (supervised few-shot regression and classification) gives
none for RL: the outer optimiser is MAML's Adam (``maml.Config.outer = "adam"``); the
weights' standard deviations start at ``Config.init_std``; evaluation adapts the mean
weights ``μ`` (:func:`evaluate`). Adam moves each ``log σ`` by about one step size per
iteration, so ``init_std`` bounds where ``σ`` can get in a short run, whatever ``β``
(``experiments/meta/RESULTS_mr_maml.md``).

Shapes as :mod:`jaxrl.meta.maml`; no function here calls ``jit``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl.algorithms import base
from jaxrl.envs.base import Env
from jaxrl.errors import ConfigError
from jaxrl.meta import maml


@dataclasses.dataclass(frozen=True)
class Config(maml.Config):
    """:class:`jaxrl.meta.maml.Config` with the stochastic layers' initial spread.

    ``frozen_layers`` (at least 1) names the stochastic, non-adapted layers; ``outer`` must
    be ``"adam"``.

    Attributes:
        init_std: every stochastic weight's initial standard deviation ``σ``.
    """

    frozen_layers: int = 1
    init_std: float = 1e-2

    def __post_init__(self):
        super().__post_init__()
        if self.frozen_layers < 1:
            raise ConfigError("MR-MAML needs Config.frozen_layers >= 1 (the stochastic layers)")
        if self.outer != "adam":
            raise ConfigError(
                f"MR-MAML's outer step is Adam: Config.outer='adam', got {self.outer!r}"
            )
        if not 0 < self.init_std:
            raise ConfigError(f"Config.init_std must be > 0, got {self.init_std!r}")


class HParams(maml.HParams):
    """MAML's traced hyperparameters and ``beta`` (default 1e-3), the KL term's weight."""

    beta: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        maml.HParams.make(**{k: v for k, v in overrides.items() if k != "beta"})  # its checks
        hp = base.make_hparams(cls, {**maml.HPARAM_DEFAULTS, "beta": 1e-3}, overrides)
        base.check_ranges(hp, {"beta": (0.0, float("inf"))})
        return hp


class State(struct.PyTreeNode):
    """Meta-learner state.

    Attributes:
        params: the policy's parameters: the means ``μ`` in the stochastic layers, ``φ``
            elsewhere (what :func:`evaluate` and ``maml.evaluate`` use).
        log_std: ``log σ`` of the stochastic layers (``{"Dense_i": {"kernel", "bias"}}``).
        opt_state: the state of MAML's Adam (``maml.optimizer``) over ``(params, log_std)``.
        key: PRNG key; ``step``: meta-iterations done.
    """

    params: dict
    log_std: dict
    opt_state: optax.OptState
    key: jax.Array
    step: jax.Array


def sample_weights(cfg: Config, params: dict, log_std: dict, noise: dict) -> dict:
    """``params`` with ``θ = μ + σ ε`` in the stochastic layers (``noise`` is ``ε``)."""
    mean = maml.frozen_layers_of(cfg, params)
    theta = jax.tree.map(lambda m, s, e: m + jnp.exp(s) * e, mean, log_std, noise)
    return maml.with_torso_layers(params, theta)


def kl_to_prior(cfg: Config, params: dict, log_std: dict) -> jax.Array:
    """``KL(N(μ, σ²) ‖ N(0, 1))`` summed over every stochastic weight (a scalar).

    Per weight ``½ (μ² + σ² − 1) − log σ``."""
    mean = maml.frozen_layers_of(cfg, params)
    per_leaf = jax.tree.map(
        lambda m, s: jnp.sum(0.5 * (jnp.square(m) + jnp.exp(2.0 * s) - 1.0) - s), mean, log_std
    )
    return sum(jax.tree.leaves(per_leaf))


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params=None) -> State:
    """MAML's random ``θ`` as the means, ``σ = Config.init_std`` and a fresh Adam state."""
    env_params = env.default_params() if env_params is None else env_params
    key_params, key = jax.random.split(key)
    params = maml.init_params(cfg, env, key_params, env_params)
    log_std = jax.tree.map(
        lambda m: jnp.full_like(m, jnp.log(cfg.init_std)), maml.frozen_layers_of(cfg, params)
    )
    opt_state = maml.optimizer(hp).init((params, log_std))
    return State(params, log_std, opt_state, key, jnp.zeros((), jnp.int32))


def _noise_like(tree: dict, key: jax.Array) -> dict:
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noise = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, noise)


def collect_meta_batch(cfg: Config, env: Env, state: State, key: jax.Array, hp: HParams):
    """Samples tasks, a weight sample ``ε`` for each, and the data collected with it.

    ``cfg.meta_batch_size`` tasks, each collected by ``maml.collect_task`` with
    ``θ = μ + σ ε``. Returns ``(data, noise)``, both stacked ``[M, ...]``."""
    key_tasks, key_noise, key_data = jax.random.split(key, 3)
    tasks = jax.vmap(env.sample_params)(jax.random.split(key_tasks, cfg.meta_batch_size))
    noise = jax.vmap(_noise_like, in_axes=(None, 0))(
        state.log_std, jax.random.split(key_noise, cfg.meta_batch_size)
    )

    def one_task(task, eps, key):
        params = sample_weights(cfg, state.params, state.log_std, eps)
        return maml.collect_task(cfg, env, params, task, key, hp, cfg.num_inner_steps)

    keys = jax.random.split(key_data, cfg.meta_batch_size)
    return jax.vmap(one_task)(tasks, noise, keys), noise


def meta_loss(
    cfg: Config, env: Env, params: dict, log_std: dict, data, noise: dict, hp: HParams
) -> tuple[jax.Array, dict]:
    """The meta-objective: mean post-update surrogate with sampled weights, plus ``β KL``.

    Returns ``(loss, {"surrogate", "kl"})``."""

    def per_task(task_data, eps):
        sampled = sample_weights(cfg, params, log_std, eps)
        return maml.task_surrogate(cfg, env, sampled, task_data, hp)

    surrogate = jnp.mean(jax.vmap(per_task)(data, noise))
    kl = kl_to_prior(cfg, params, log_std)
    return surrogate + hp.beta * kl, {"surrogate": surrogate, "kl": kl}


def update(cfg: Config, env: Env, state: State, hp: HParams) -> tuple[State, dict]:
    """One meta-iteration: tasks and weights sampled, adapted, one Adam step on μ, φ, log σ.

    Metrics as MAML's, and ``train/surrogate``, ``train/kl``, ``train/mean_std``."""
    key, key_batch = jax.random.split(state.key)
    data, noise = collect_meta_batch(cfg, env, state, key_batch, hp)
    first = data.inner[0] if data.inner else data.outer
    grad_fn = jax.value_and_grad(meta_loss, argnums=(2, 3), has_aux=True)
    (loss, parts), grads = grad_fn(cfg, env, state.params, state.log_std, data, noise, hp)
    variables = (state.params, state.log_std)
    updates, opt_state = maml.optimizer(hp).update(grads, state.opt_state, variables)
    updates = maml.annealed(cfg, state.step, updates)
    params, log_std = optax.apply_updates(variables, updates)
    stds = jnp.concatenate([jnp.ravel(jnp.exp(s)) for s in jax.tree.leaves(state.log_std)])
    metrics = {
        "train/pre_return": jnp.mean(first.episode_returns()),
        "train/post_return": jnp.mean(data.outer.episode_returns()),
        "train/loss": loss,
        "train/surrogate": parts["surrogate"],
        "train/kl": parts["kl"],
        "train/mean_std": jnp.mean(stds),
        "train/grad_norm": optax.global_norm(grads),
    }
    return State(params, log_std, opt_state, key, state.step + 1), metrics


def train(cfg: Config, env: Env, state: State, hp: HParams, num_updates: int):
    """``num_updates`` meta-iterations in one ``lax.scan``; metrics stacked ``[num_updates]``."""
    return jax.lax.scan(lambda s, _: update(cfg, env, s, hp), state, None, num_updates)


def evaluate(
    cfg: Config,
    env: Env,
    state: State,
    key: jax.Array,
    hp: HParams,
    num_tasks: int = 40,
    num_steps: int = 3,
) -> jax.Array:
    """Returns after 0..num_steps adaptation steps on ``env``'s tasks, with the mean weights.

    ``maml.evaluate`` on ``state.params`` (``μ`` in the stochastic layers, which stay
    frozen): ``[num_tasks, num_steps + 1]``."""
    return maml.evaluate(cfg, env, state.params, key, hp, num_tasks, num_steps)
