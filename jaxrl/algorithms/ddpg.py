"""Deep Deterministic Policy Gradient (Lillicrap et al. 2016, arXiv:1509.02971).

DDPG is TD3 (:mod:`jaxrl.algorithms.td3`) with its three additions switched off: one
critic (``num_critics = 1``), no target-policy smoothing and no policy delay
(``policy_delay = 1``). Every gradient step fits the critic to

    y = r + gamma (1 - terminated) Q_targ(s', mu_targ(s')),

moves the actor up ``Q(s, mu(s))`` and both target networks towards the online ones by
Polyak averaging with rate ``tau``. The critic, actor, replay, warm-up and learning
functions are TD3's; this module adds the exploration noise:

* ``noise = "gaussian"`` (default): ``a = clip(mu(s) + sigma eps, -1, 1)``, ``eps ~ N(0, I)``;
* ``noise = "ou"``: an Ornstein-Uhlenbeck process per env, carried in ``State.noise``,
  ``x_{t+1} = (1 - theta) x_t + sigma eps_t`` (unit time step, mean 0), reset to 0 when
  the env's episode ends; ``a = clip(mu(s) + x, -1, 1)``.

``sigma`` is ``hp.exploration_noise`` and ``theta`` is ``hp.ou_theta`` (both traced).
Actions are in ``[-1, 1]`` inside the agent and scaled to the env's bounds when stepping.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.algorithms import base, td3
from jaxrl.algorithms.td3 import (  # noqa: F401  (the algorithm contract, re-exported)
    Batch,
    Params,
    Transition,
    act,
    action_space,
    actor_loss,
    critic_loss,
    loss,
    networks,
    policy,
    sample_batch,
)
from jaxrl.envs.base import Env
from jaxrl.networks.continuous import scale_action
from jaxrl.types import Metrics

NOISES = ("gaussian", "ou")


@dataclasses.dataclass(frozen=True)
class Config(td3.Config):
    """:class:`jaxrl.algorithms.td3.Config` with one critic, no smoothing and no delay."""

    policy_delay: int = 1
    num_critics: int = 1
    target_smoothing: bool = False
    noise: str = "gaussian"  # "gaussian" or "ou" (Ornstein-Uhlenbeck, per env)

    def __post_init__(self):
        super().__post_init__()
        base.check_choices(self, {"noise": NOISES})
        if self.target_smoothing:
            raise base.ConfigError(
                "target_smoothing=True needs TD3's policy_noise and noise_clip, which DDPG's "
                "HParams lack: train td3 for target-policy smoothing"
            )


HPARAM_DEFAULTS = dict(
    learning_rate=1e-3,  # actor and critic Adam
    discount=0.99,
    tau=0.005,
    exploration_noise=0.1,  # sigma: Gaussian std, or the OU step std, in [-1, 1] units
    ou_theta=0.15,  # OU mean-reversion rate per env step
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    discount=(0.0, 1.0),
    tau=(0.0, 1.0),
    exploration_noise=(0.0, 10.0),
    ou_theta=(0.0, 1.0),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, each a float32 array (scalar, or ``[R]`` for a sweep)."""

    learning_rate: jax.Array
    discount: jax.Array
    tau: jax.Array
    exploration_noise: jax.Array
    ou_theta: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """Raises ``ConfigError`` for out-of-range concrete hyperparameters (before compiling)."""
    del cfg
    base.check_ranges(hp, HPARAM_RANGES)


class State(td3.State):
    """TD3's state plus the exploration noise ``[num_envs, A]`` (OU; zeros for Gaussian)."""

    noise: jax.Array


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """TD3's initial state (one critic) with zero OU noise."""
    state = td3.init(cfg, env, key, hp, env_params)
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return State(**fields, noise=jnp.zeros((cfg.num_envs, td3.action_dim(env))))


def ou_step(x: jax.Array, eps: jax.Array, theta: jax.Array, sigma: jax.Array) -> jax.Array:
    """One Ornstein-Uhlenbeck step with mean 0 and unit time step: ``(1 - theta) x + sigma
    eps``; ``x, eps [..., A]``. Stationary variance ``sigma^2 / (1 - (1 - theta)^2)``."""
    return (1.0 - theta) * x + sigma * eps


def explore(
    cfg: Config, env: Env, state: State, obs: jax.Array, key: jax.Array, hp: HParams
) -> tuple[jax.Array, jax.Array, State]:
    """``(action [N, A] in [-1, 1], env action [N, A] in the env's bounds, state)``: the
    noisy actor, or uniform while ``state.env_steps < cfg.learning_starts``. OU noise
    advances in ``state.noise``."""
    actor, _ = networks(cfg, env)
    key_noise, key_uniform = jax.random.split(key)
    mean = actor.apply(state.params.actor, obs)
    eps = jax.random.normal(key_noise, mean.shape)
    if cfg.noise == "ou":
        noise = ou_step(state.noise, eps, hp.ou_theta, hp.exploration_noise)
        state = state.replace(noise=noise)
    else:
        noise = hp.exploration_noise * eps
    uniform = jax.random.uniform(key_uniform, mean.shape, minval=-1.0, maxval=1.0)
    action = jnp.where(
        state.env_steps < cfg.learning_starts, uniform, jnp.clip(mean + noise, -1.0, 1.0)
    )
    low, high = action_space(env).bounds()
    return action, scale_action(action, low, high), state


def reset_noise(state: State, done: jax.Array) -> State:
    """Zeroes the noise of the envs whose episode ended (``done [N]``)."""
    return state.replace(noise=jnp.where(done[:, None], 0.0, state.noise))


def update(
    cfg: Config, env: Env, state: State, hp: HParams, loss_fn: td3.LossFn = loss
) -> tuple[State, Metrics]:
    """One iteration: collect ``train_freq`` steps per env, store them, then
    ``cfg.gradient_steps`` TD3 gradient steps (here DDPG's) on ``loss_fn`` (same signature
    as :func:`loss`, e.g. a learned loss: its gradients in the critic and in the actor are
    the two steps', :func:`jaxrl.algorithms.td3.learn`)."""
    state, transitions, info = td3.collect_with(
        cfg, env, state, lambda s, o, k: explore(cfg, env, s, o, k, hp), reset_noise
    )
    state = td3.store(cfg, state, transitions)
    state, metrics = td3.learn(cfg, env, state, hp, loss_fn)
    metrics |= td3.episode_metrics(info)
    return state.replace(update_count=state.update_count + 1), metrics


def train(
    cfg: Config,
    env: Env,
    state: State,
    hp: HParams,
    num_updates: int,
    loss_fn: td3.LossFn = loss,
) -> tuple[State, Metrics]:
    """``num_updates`` DDPG iterations as one scan; metrics stacked ``[num_updates]``."""
    step = lambda s, _: update(cfg, env, s, hp, loss_fn)
    return jax.lax.scan(step, state, None, num_updates)
