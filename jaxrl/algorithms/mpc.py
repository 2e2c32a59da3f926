"""Model-predictive control by the cross-entropy method (CEM), planning with the env itself
as the model: a classical baseline that needs no learning at all.

A jaxrl env is a pure function of its state, so the planner can copy the true state and
roll candidate action sequences forward through ``env.step``. At every real step:

1. ``cfg.iterations`` CEM rounds over action sequences of length ``cfg.horizon``: draw
   ``cfg.samples`` sequences, score each by its undiscounted return over the horizon from
   a copy of the current state (rewards after the sequence's episode ends do not count),
   and refit the sampling distribution to the ``cfg.elites`` best;
2. execute the first action of the final distribution's mean (Box) or mode (Discrete);
3. shift the plan one step for the next real step (warm start).

Box actions: a Gaussian per step and dimension, started at ``cfg.init_std`` half-ranges
and clipped to the bounds; the refit is the elites' mean and standard deviation.
Discrete actions: a categorical per step, started uniform; the refit is the elites'
action frequencies mixed with ``cfg.smoothing`` of the uniform distribution.

A step costs ``iterations * samples * horizon`` model steps. The planner sees only
``horizon`` steps ahead: a reward further away than that (Acrobot's, MountainCar's) gives
it no signal. It runs from Python (:func:`episode`), not from ``jaxrl train``: there is
nothing to train.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.algorithms import base
from jaxrl.envs import spaces
from jaxrl.envs.base import Env


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings."""

    horizon: int = 40  # planning horizon H (model steps per candidate sequence)
    samples: int = 512  # candidate sequences per CEM round
    elites: int = 64  # the best sequences the distribution is refitted to
    iterations: int = 8  # CEM rounds per real step
    init_std: float = 0.5  # Box: the initial std, in half-ranges of each action dimension
    smoothing: float = 0.1  # Discrete: weight of the uniform distribution in each refit
    max_steps: int = 1_000  # bound on an episode's length; a longer one returns NaN

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(self, ("horizon", "samples", "elites", "iterations", "max_steps"))
        if self.elites > self.samples:
            raise base.ConfigError(
                f"elites = {self.elites} must be at most samples = {self.samples}"
            )
        if not self.init_std > 0:
            raise base.ConfigError(f"init_std must be positive, got {self.init_std}")
        base.check_ranges(self, {"smoothing": (0.0, 1.0)})


class Plan(struct.PyTreeNode):
    """The sampling distribution over action sequences: Box ``mean``/``std`` ``[H, A]``;
    Discrete ``probs`` ``[H, n]`` (``std`` unused)."""

    mean: jax.Array
    std: jax.Array


def _space(env: Env, env_params):
    space = env.action_space(env_params)
    if not isinstance(space, spaces.Discrete | spaces.Box):
        raise base.ConfigError(f"MPC needs a Discrete or Box action space, got {space}")
    return space


def _bounds(space) -> tuple[jax.Array, jax.Array]:
    return tuple(jnp.broadcast_to(b, space.shape).astype(jnp.float32) for b in space.bounds())


def initial_plan(cfg: Config, env: Env, env_params) -> Plan:
    """The distribution before any planning: Box centred in the bounds with ``init_std``
    half-ranges; Discrete uniform."""
    space = _space(env, env_params)
    if isinstance(space, spaces.Discrete):
        probs = jnp.full((cfg.horizon, int(space.n)), 1.0 / int(space.n))
        return Plan(probs, jnp.zeros_like(probs))
    low, high = _bounds(space)
    mean = jnp.broadcast_to((low + high) / 2.0, (cfg.horizon,) + space.shape)
    std = jnp.broadcast_to(cfg.init_std * (high - low) / 2.0, mean.shape)
    return Plan(mean, std)


def sequence_returns(
    env: Env, env_params, env_state, actions: jax.Array, key: jax.Array
) -> jax.Array:
    """Undiscounted returns ``[N]`` of action sequences ``actions [N, H, ...]`` from copies
    of ``env_state``; rewards after a sequence's episode ends do not count."""

    def one(sequence, key):
        def step(carry, inputs):
            state, done, total = carry
            action, key = inputs
            _, state, out = env.step(key, state, action, env_params)
            total = total + jnp.where(done, 0.0, out.reward.astype(jnp.float32))
            return (state, jnp.logical_or(done, out.done), total), None

        keys = jax.random.split(key, sequence.shape[0])
        init = (env_state, jnp.zeros((), bool), jnp.zeros((), jnp.float32))
        (_, _, total), _ = jax.lax.scan(step, init, (sequence, keys))
        return total

    return jax.vmap(one)(actions, jax.random.split(key, actions.shape[0]))


def _sample(cfg: Config, space, plan: Plan, key: jax.Array) -> jax.Array:
    if isinstance(space, spaces.Discrete):
        logits = jnp.log(plan.mean)
        return jax.random.categorical(key, logits, shape=(cfg.samples,) + plan.mean.shape[:1])
    low, high = _bounds(space)
    noise = jax.random.normal(key, (cfg.samples,) + plan.mean.shape)
    x = plan.mean[None] + plan.std[None] * noise
    return jnp.clip(x, jnp.broadcast_to(low, x.shape), jnp.broadcast_to(high, x.shape))


def _refit(cfg: Config, space, elites: jax.Array) -> Plan:
    if isinstance(space, spaces.Discrete):
        n = int(space.n)
        freq = jnp.mean(jax.nn.one_hot(elites, n), axis=0)  # [H, n]
        probs = (1.0 - cfg.smoothing) * freq + cfg.smoothing / n
        return Plan(probs, jnp.zeros_like(probs))
    return Plan(jnp.mean(elites, axis=0), jnp.std(elites, axis=0))


def plan_action(
    cfg: Config, env: Env, env_params, env_state, plan: Plan, key: jax.Array
) -> tuple[jax.Array, Plan, jax.Array]:
    """CEM from ``plan`` at ``env_state``: ``(action, refitted plan, best sequence return)``.

    The action is the first step's mean (Box) or most likely action (Discrete)."""
    space = _space(env, env_params)

    def round_(plan, key):
        key_sample, key_model = jax.random.split(key)
        actions = _sample(cfg, space, plan, key_sample)
        returns = sequence_returns(env, env_params, env_state, actions, key_model)
        _, best = jax.lax.top_k(returns, cfg.elites)
        return _refit(cfg, space, actions[best]), returns[best[0]]

    plan, best = jax.lax.scan(round_, plan, jax.random.split(key, cfg.iterations))
    if isinstance(space, spaces.Discrete):
        action = jnp.argmax(plan.mean[0]).astype(space.dtype)
    else:
        action = plan.mean[0]
    return action, plan, best[-1]


def shift(cfg: Config, env: Env, env_params, plan: Plan) -> Plan:
    """The plan one step on: drop the first step, append the initial distribution's."""
    fresh = initial_plan(cfg, env, env_params)
    return jax.tree.map(lambda p, f: jnp.concatenate([p[1:], f[:1]]), plan, fresh)


def episode(cfg: Config, env: Env, key: jax.Array, env_params=None) -> tuple[jax.Array, jax.Array]:
    """One episode of CEM-MPC from a reset drawn with ``key``: ``(return, length)``, the
    return ``NaN`` if the episode outlasts ``cfg.max_steps``."""
    env_params = env.default_params() if env_params is None else env_params
    key_reset, key = jax.random.split(key)
    _, env_state = env.reset(key_reset, env_params)
    _space(env, env_params)

    def cond(carry):
        t, _, _, _, _, done = carry
        return jnp.logical_and(t < cfg.max_steps, jnp.logical_not(done))

    def body(carry):
        t, key, env_state, plan, total, _ = carry
        key, key_plan, key_env = jax.random.split(key, 3)
        action, plan, _ = plan_action(cfg, env, env_params, env_state, plan, key_plan)
        _, env_state, out = env.step(key_env, env_state, action, env_params)
        plan = shift(cfg, env, env_params, plan)
        return t + 1, key, env_state, plan, total + out.reward.astype(jnp.float32), out.done

    init = (
        jnp.zeros((), jnp.int32),
        key,
        env_state,
        initial_plan(cfg, env, env_params),
        jnp.zeros((), jnp.float32),
        jnp.zeros((), bool),
    )
    t, *_, total, done = jax.lax.while_loop(cond, body, init)
    return jnp.where(done, total, jnp.nan), t
