"""SimPLe: PPO trained inside a learned world model (Kaiser et al. 2020, arXiv:1903.00374).

The paper's loop, each of ``cfg.iterations`` times:

1. **collect**: the current policy acts in the real env for ``real_envs x real_steps``
   steps (the first iteration's policy is the freshly initialised one); the transitions
   join a dataset that only grows;
2. **fit**: the world model takes ``model_steps`` Adam steps on minibatches of the whole
   dataset (warm-started from the last iteration: it is one model trained all along);
3. **imagine**: PPO (:mod:`jaxrl.algorithms.ppo`, unchanged) runs ``ppo_updates`` updates
   in :class:`LearnedEnv`, the model as a jaxrl env, whose episodes start from real
   observations drawn from the dataset and are cut after ``model_horizon`` steps (a
   truncation, so PPO's GAE bootstraps there with its value function);
4. **evaluate**: the policy plays ``eval_episodes`` real episodes (stochastic policy, as
   trained); these steps are not added to the dataset nor counted as its budget.

The paper's model is a video predictor with a discrete stochastic latent, for Atari
frames. Here observations are state vectors (gymnax classic control), so the model is an
MLP from ``(obs, action)`` to the normalised change of the observation, the reward and a
termination logit, fitted by squared error and cross-entropy (single-step loss; the
paper's multi-step training and stochastic latent are not built). The model predicts
termination; an imagined episode ends where ``sigmoid(logit) > 1/2``.

Because the model is an :class:`~jaxrl.envs.base.Env` whose parameters are traced
``EnvParams``, the whole loop (real rollouts, model fitting, PPO inside the model, real
evaluation) is one pure function: ``jax.jit(train)`` compiles it once and ``jax.vmap``
runs seeds side by side. Python API::

    cfg = simple.Config()
    hp = simple.HParams.make()
    simple.check(cfg, hp)
    state = simple.init(cfg, env, key, hp)
    state, metrics = jax.jit(lambda s: simple.train(cfg, env, s, hp))(state)
    metrics["eval/return"]  # [iterations]: mean real return after each iteration
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base, ppo
from jaxrl.algorithms import rollout as rollout_lib
from jaxrl.envs import spaces, wrappers
from jaxrl.envs.base import Env, Step
from jaxrl.errors import ConfigError
from jaxrl.runner import evaluate as evaluate_lib
from jaxrl.types import Metrics

# PPO inside the model: short imagined episodes, no learning-rate annealing (the updates
# are spread over iterations), otherwise PPO's CartPole defaults.
IMAGINED_PPO = ppo.Config(
    total_timesteps=1_000_000, num_envs=16, rollout_len=64, anneal_lr=False, hidden=(64, 64)
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings. The real-env budget is ``iterations * real_envs * real_steps``."""

    iterations: int = 10
    real_envs: int = 4  # parallel real envs while collecting
    real_steps: int = 128  # steps of every real env per iteration
    model_hidden: tuple[int, ...] = (128, 128)
    model_steps: int = 500  # Adam steps on the world model per iteration
    model_batch: int = 256
    model_horizon: int = 50  # steps of an imagined episode before it is cut (truncated)
    ppo: ppo.Config = IMAGINED_PPO  # PPO's settings inside the model
    ppo_updates: int = 25  # PPO updates inside the model per iteration
    eval_episodes: int = 8

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(
            self,
            ("iterations", "real_envs", "real_steps", "model_steps", "model_batch",
             "model_horizon", "ppo_updates", "eval_episodes"),
        )  # fmt: skip
        if not isinstance(self.ppo, ppo.Config):
            raise ConfigError(f"ppo must be a ppo.Config, got {type(self.ppo).__name__}")
        unsupported = [
            name for name in ("normalize_obs", "scale_reward") if getattr(self.ppo, name)
        ]
        if self.ppo.data_shards != 1:
            unsupported.append("data_shards")
        if unsupported:
            raise ConfigError(
                f"SimPLe's PPO runs on one shard without wrappers that keep statistics of "
                f"the imagined data; turn off {', '.join(unsupported)} in ppo"
            )
        if self.ppo.torso != "mlp":
            raise ConfigError(
                f"SimPLe's world model is an MLP on state vectors; ppo.torso "
                f"must be 'mlp', got {self.ppo.torso!r}"
            )

    @property
    def steps_per_iteration(self) -> int:
        """Real env steps collected per iteration."""
        return self.real_envs * self.real_steps

    @property
    def capacity(self) -> int:
        """Real transitions the dataset holds at the end of training."""
        return self.iterations * self.steps_per_iteration


HPARAM_DEFAULTS = dict(model_learning_rate=1e-3)
HPARAM_RANGES = dict(model_learning_rate=(0.0, 1.0))


class HParams(struct.PyTreeNode):
    """Traced hyperparameters: the world model's learning rate and PPO's own ``HParams``."""

    model_learning_rate: jax.Array
    ppo: ppo.HParams

    @classmethod
    def make(cls, **overrides) -> HParams:
        """``model_learning_rate`` here; every other name goes to ``ppo.HParams.make``."""
        mine = {k: v for k, v in overrides.items() if k in HPARAM_DEFAULTS}
        rest = {k: v for k, v in overrides.items() if k not in HPARAM_DEFAULTS}
        model = base.make_hparams(_ModelHParams, HPARAM_DEFAULTS, mine)
        return cls(model_learning_rate=model.model_learning_rate, ppo=ppo.HParams.make(**rest))


class _ModelHParams(struct.PyTreeNode):
    model_learning_rate: jax.Array


def check(cfg: Config, hp: HParams) -> None:
    """Raises ``ConfigError`` for out-of-range concrete hyperparameters (before compiling)."""
    base.check_ranges(_ModelHParams(hp.model_learning_rate), HPARAM_RANGES)
    ppo.check(cfg.ppo, hp.ppo)


# --- the world model ---------------------------------------------------------------------


class Normalizer(struct.PyTreeNode):
    """Per-dimension statistics of the dataset; every leaf float32.

    ``obs_*`` ``[obs_dim]`` of observations, ``delta_*`` ``[obs_dim]`` of ``next_obs - obs``,
    ``reward_*`` ``[]`` of rewards. Standard deviations are floored at ``1e-3``.
    """

    obs_mean: jax.Array
    obs_std: jax.Array
    delta_mean: jax.Array
    delta_std: jax.Array
    reward_mean: jax.Array
    reward_std: jax.Array


class WorldModel(nn.Module):
    """MLP ``(normalised obs [..., D], action features [..., A]) -> (normalised delta
    [..., D], normalised reward [...], termination logit [...])``."""

    obs_dim: int
    hidden: Sequence[int]

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array):
        x = jnp.concatenate([obs, action], axis=-1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        out = nn.Dense(self.obs_dim + 2)(x)
        return out[..., : self.obs_dim], out[..., self.obs_dim], out[..., self.obs_dim + 1]


def action_features(action_space: spaces.Space, action: jax.Array) -> jax.Array:
    """What the model sees of an action: one-hot ``[..., n]`` for ``Discrete(n)``, else the
    action clipped to the box, flattened to ``[..., prod(shape)]``."""
    if isinstance(action_space, spaces.Discrete):
        return jax.nn.one_hot(action, action_space.n)
    clipped = wrappers.clip_to_space(action_space, action)
    return clipped.reshape(clipped.shape[: clipped.ndim - len(action_space.shape)] + (-1,))


def _lead(stat: jax.Array, x: jax.Array) -> jax.Array:
    """``stat`` ``[D]`` with leading unit axes to broadcast against ``x`` ``[..., D]``."""
    return stat.reshape((1,) * (x.ndim - stat.ndim) + stat.shape)


def predict(
    model: WorldModel,
    model_params: dict,
    norm: Normalizer,
    action_space: spaces.Space,
    obs: jax.Array,
    action: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One imagined step: ``(next_obs [..., D], reward [...], termination logit [...])``."""
    x = (obs - _lead(norm.obs_mean, obs)) / _lead(norm.obs_std, obs)
    delta, reward, logit = model.apply(model_params, x, action_features(action_space, action))
    next_obs = obs + delta * _lead(norm.delta_std, obs) + _lead(norm.delta_mean, obs)
    return next_obs, reward * norm.reward_std + norm.reward_mean, logit


class LearnedEnvParams(struct.PyTreeNode):
    """The traced part of :class:`LearnedEnv`: the model's parameters and statistics, and
    the real observations imagined episodes start from (``start_obs[:num_start]``)."""

    model_params: dict
    norm: Normalizer
    start_obs: jax.Array  # [M, D]
    num_start: jax.Array  # int32 scalar, 1 <= num_start <= M


class LearnedEnvState(struct.PyTreeNode):
    """An imagined episode's current observation and its step count."""

    obs: jax.Array  # [D]
    time: jax.Array  # int32 scalar: steps taken in this episode


@dataclasses.dataclass(frozen=True)
class LearnedEnv(Env):
    """A world model as a raw jaxrl env (no auto-reset): ``reset`` draws a start
    observation from the dataset, ``step`` applies the model; an episode terminates where
    the model predicts it and is truncated after ``horizon`` steps.

    ``real`` provides the spaces; ``default_params`` are those of an untrained model
    (shapes only: pass the fitted :class:`LearnedEnvParams` to reset and step).
    """

    real: Env
    model: WorldModel
    horizon: int

    @property
    def name(self) -> str:
        return f"Learned({self.real.name})"

    def default_params(self) -> LearnedEnvParams:
        real_params = self.real.default_params()
        obs_dim = self.model.obs_dim
        with jax.ensure_compile_time_eval():  # constants, not ops staged into a caller's jit
            action = self.real.action_space(real_params).sample(jax.random.key(0))
            feats = action_features(self.real.action_space(real_params), action)
            model_params = self.model.init(jax.random.key(0), jnp.zeros(obs_dim), feats)
            start = jnp.zeros((1, obs_dim))
            norm = unit_normalizer(obs_dim)
            return LearnedEnvParams(model_params, norm, start, jnp.ones((), jnp.int32))

    def reset(self, key, params: LearnedEnvParams):
        index = jax.random.randint(key, (), 0, params.num_start)
        obs = params.start_obs[index]
        return obs, LearnedEnvState(obs, jnp.zeros((), jnp.int32))

    def step(self, key, state: LearnedEnvState, action, params: LearnedEnvParams):
        del key
        action_space = self.real.action_space(self.real.default_params())
        next_obs, reward, logit = predict(
            self.model, params.model_params, params.norm, action_space, state.obs, action
        )
        time = state.time + 1
        terminated = logit > 0.0
        truncated = jnp.logical_and(time >= self.horizon, jnp.logical_not(terminated))
        step = Step(reward=reward, terminated=terminated, truncated=truncated, final_obs=next_obs)
        return next_obs, LearnedEnvState(next_obs, time), step

    def observation_space(self, params):
        return self.real.observation_space(self.real.default_params())

    def action_space(self, params):
        return self.real.action_space(self.real.default_params())


# --- the dataset of real transitions ----------------------------------------------------


class Dataset(struct.PyTreeNode):
    """Real transitions ``[capacity, ...]``; the first ``size`` rows are filled.

    ``next_obs`` is the observation each step reached (before any auto-reset), so a cut
    episode's last transition is still a true transition; ``terminated`` marks real ends.
    """

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    next_obs: jax.Array
    size: jax.Array  # int32 scalar


def normalizer(data: Dataset) -> Normalizer:
    """Statistics of the filled rows of ``data`` (a masked mean over the static capacity)."""
    weight = (jnp.arange(data.obs.shape[0]) < data.size).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weight), 1.0)

    def mean_std(x):
        w = weight.reshape(weight.shape + (1,) * (x.ndim - 1))
        mean = jnp.sum(w * x, axis=0) / count
        var = jnp.sum(w * (x - mean[None]) ** 2, axis=0) / count
        return mean, jnp.maximum(jnp.sqrt(var), 1e-3)

    obs_mean, obs_std = mean_std(data.obs)
    delta_mean, delta_std = mean_std(data.next_obs - data.obs)
    reward_mean, reward_std = mean_std(data.reward)
    return Normalizer(obs_mean, obs_std, delta_mean, delta_std, reward_mean, reward_std)


def model_loss(
    model: WorldModel,
    model_params: dict,
    norm: Normalizer,
    action_space: spaces.Space,
    batch: Dataset,
) -> tuple[jax.Array, Metrics]:
    """Squared error of the normalised delta (summed over dimensions) and reward, plus the
    termination cross-entropy, each averaged over the batch ``[B, ...]``."""
    obs = batch.obs
    x = (obs - _lead(norm.obs_mean, obs)) / _lead(norm.obs_std, obs)
    delta, reward, logit = model.apply(model_params, x, action_features(action_space, batch.action))
    delta_target = (batch.next_obs - obs - _lead(norm.delta_mean, obs)) / _lead(norm.delta_std, obs)
    reward_target = (batch.reward - norm.reward_mean) / norm.reward_std
    delta_loss = jnp.mean(jnp.sum((delta - delta_target) ** 2, axis=-1))
    reward_loss = jnp.mean((reward - reward_target) ** 2)
    done_loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logit, batch.terminated))
    total = delta_loss + reward_loss + done_loss
    metrics = {
        "model/loss": total,
        "model/delta_loss": delta_loss,
        "model/reward_loss": reward_loss,
        "model/done_loss": done_loss,
    }
    return total, metrics


# --- the loop -----------------------------------------------------------------------------


class RealActor(struct.PyTreeNode):
    """What :func:`jaxrl.algorithms.rollout.collect` needs to act in the real env."""

    params: dict
    env_state: object
    obs: jax.Array  # [real_envs, D]
    env_params: object
    key: jax.Array


class State(struct.PyTreeNode):
    """One SimPLe run: the PPO agent (whose env fields are the imagined envs'), the world
    model and its optimiser, the real envs, the dataset, a key and the iteration count."""

    agent: ppo.State
    model_params: dict
    model_opt_state: optax.OptState
    real_env_state: object
    real_obs: jax.Array
    real_env_params: object
    data: Dataset
    key: jax.Array
    iteration: jax.Array  # int32 scalar


def world_model(cfg: Config, env: Env) -> WorldModel:
    """The world model for ``env``'s observation space."""
    obs_space = env.observation_space(env.default_params())
    if len(obs_space.shape) != 1:
        raise ConfigError(
            f"SimPLe's world model takes observation vectors; {env.name} observes "
            f"shape {obs_space.shape}"
        )
    return WorldModel(obs_dim=obs_space.shape[0], hidden=cfg.model_hidden)


def learned_env(cfg: Config, env: Env) -> LearnedEnv:
    """The imagined env PPO trains in (static: equal configs give equal envs)."""
    return LearnedEnv(real=env, model=world_model(cfg, env), horizon=cfg.model_horizon)


def real_vec_env(cfg: Config, env: Env) -> Env:
    """``cfg.real_envs`` auto-reset copies of the real env, with episode statistics."""
    return wrappers.make_vec_env(env, cfg.real_envs)


def model_optimizer(hp: HParams) -> optax.GradientTransformation:
    """The world model's Adam, at the traced ``hp.model_learning_rate``."""
    return optim.adam(hp.model_learning_rate)


def unit_normalizer(obs_dim: int) -> Normalizer:
    """Zero means and unit deviations: the statistics before there is data."""
    zeros, ones = jnp.zeros(obs_dim), jnp.ones(obs_dim)
    return Normalizer(zeros, ones, zeros, ones, jnp.zeros(()), jnp.ones(()))


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams) -> State:
    """Fresh PPO agent and world model, reset real envs, an empty dataset."""
    key, key_agent, key_model, key_real = jax.random.split(key, 4)
    real_params = env.default_params()
    real_obs, real_env_state = real_vec_env(cfg, env).reset(key_real, real_params)
    model = world_model(cfg, env)
    action_space = env.action_space(real_params)
    example_action = action_space.sample(jax.random.key(0))
    model_params = model.init(key_model, real_obs[0], action_features(action_space, example_action))

    def empty(x):
        x = jnp.asarray(x)
        return jnp.zeros((cfg.capacity,) + x.shape, x.dtype)

    data = Dataset(
        obs=empty(real_obs[0]),
        action=empty(example_action),
        reward=jnp.zeros((cfg.capacity,), jnp.float32),
        terminated=jnp.zeros((cfg.capacity,), jnp.float32),
        next_obs=empty(real_obs[0]),
        size=jnp.zeros((), jnp.int32),
    )
    # Until the first fit, imagined episodes start from the all-zero row of the dataset.
    env_params = LearnedEnvParams(
        model_params, unit_normalizer(model.obs_dim), data.obs, jnp.ones((), jnp.int32)
    )
    agent = ppo.init(cfg.ppo, learned_env(cfg, env), key_agent, hp.ppo, env_params)
    return State(
        agent=agent,
        model_params=model_params,
        model_opt_state=model_optimizer(hp).init(model_params),
        real_env_state=real_env_state,
        real_obs=real_obs,
        real_env_params=real_params,
        data=data,
        key=key,
        iteration=jnp.zeros((), jnp.int32),
    )


def collect_real(cfg: Config, env: Env, state: State) -> tuple[State, rollout_lib.Rollout]:
    """The policy's ``[real_steps, real_envs]`` rollout in the real env, added to the data."""
    key, key_collect = jax.random.split(state.key)
    actor = RealActor(
        state.agent.params, state.real_env_state, state.real_obs, state.real_env_params,
        key_collect,
    )  # fmt: skip
    actor, rollout = rollout_lib.collect(
        real_vec_env(cfg, env), ppo.network(cfg.ppo, env), actor, cfg.real_steps
    )
    n = cfg.steps_per_iteration
    flat = rollout_lib.flatten(rollout, n)
    new = Dataset(
        obs=flat.obs,
        action=flat.action,
        reward=flat.reward.astype(jnp.float32),
        terminated=flat.terminated.astype(jnp.float32),
        next_obs=flat.final_obs,
        size=jnp.zeros((), jnp.int32),
    )
    start = state.data.size
    data = jax.tree.map(
        lambda old, x: jax.lax.dynamic_update_slice_in_dim(old, x.astype(old.dtype), start, 0),
        state.data.replace(size=None),
        new.replace(size=None),
    ).replace(size=start + n)
    state = state.replace(real_env_state=actor.env_state, real_obs=actor.obs, data=data, key=key)
    return state, rollout


def fit_model(
    cfg: Config, env: Env, state: State, hp: HParams, norm: Normalizer
) -> tuple[State, Metrics]:
    """``cfg.model_steps`` Adam steps on minibatches drawn uniformly from the dataset,
    inputs and targets standardised by ``norm`` (:func:`normalizer` of the dataset)."""
    model = world_model(cfg, env)
    action_space = env.action_space(state.real_env_params)
    tx = model_optimizer(hp)
    grad_fn = jax.grad(lambda p, b: model_loss(model, p, norm, action_space, b), has_aux=True)

    def sgd_step(carry, key):
        params, opt_state = carry
        index = jax.random.randint(key, (cfg.model_batch,), 0, state.data.size)
        batch = jax.tree.map(lambda x: x[index], state.data.replace(size=None))
        grads, metrics = grad_fn(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), metrics

    key, key_fit = jax.random.split(state.key)
    (params, opt_state), metrics = jax.lax.scan(
        sgd_step,
        (state.model_params, state.model_opt_state),
        jax.random.split(key_fit, cfg.model_steps),
    )
    metrics = jax.tree.map(lambda x: x[-1], metrics)  # the last step's losses
    state = state.replace(model_params=params, model_opt_state=opt_state, key=key)
    return state, metrics


def learned_env_params(state: State, norm: Normalizer) -> LearnedEnvParams:
    """The fitted model as env params; imagined episodes start from every real obs so far."""
    return LearnedEnvParams(state.model_params, norm, state.data.obs, state.data.size)


def model_error(cfg: Config, env: Env, state: State, rollout: rollout_lib.Rollout) -> Metrics:
    """The current model's one-step errors on ``rollout`` (fresh data it has not fitted):
    RMS of the next-observation error per dimension, RMS reward error, and the fraction
    of transitions whose termination it gets right.

    The model reads its inputs standardised as when it was fitted: by the statistics in
    the imagined env's params (``state.agent.env_params.norm``; unit ones before the first
    fit), not by those of the dataset that now includes ``rollout``.
    """
    flat = rollout_lib.flatten(rollout, cfg.steps_per_iteration)
    action_space = env.action_space(state.real_env_params)
    norm = state.agent.env_params.norm
    next_obs, reward, logit = predict(
        world_model(cfg, env), state.model_params, norm, action_space, flat.obs, flat.action
    )
    return {
        "model/heldout_obs_rmse": jnp.sqrt(jnp.mean((next_obs - flat.final_obs) ** 2)),
        "model/heldout_reward_rmse": jnp.sqrt(jnp.mean((reward - flat.reward) ** 2)),
        "model/heldout_done_accuracy": jnp.mean((logit > 0) == flat.terminated),
    }


def iteration(cfg: Config, env: Env, state: State, hp: HParams) -> tuple[State, Metrics]:
    """One turn of the loop: collect, fit, imagine, evaluate (see the module docstring).

    Returns ``(state, metrics)``: ``real/steps`` (the dataset's size), ``real/return``
    (episodes that ended while collecting), ``model/*`` (the model's held-out error on the
    fresh rollout before fitting, and its losses after), ``imagined/return`` (PPO's
    imagined episodes, last update), ``ppo/*`` (last update) and ``eval/return`` (mean
    over ``eval_episodes`` real episodes after the iteration).

    Call it at most ``cfg.iterations`` times from :func:`init`: the dataset has room for
    that many (beyond it JAX would clamp the writes onto the last rows).
    """
    state, rollout = collect_real(cfg, env, state)
    heldout = model_error(cfg, env, state, rollout)
    norm = normalizer(state.data)
    state, fit_metrics = fit_model(cfg, env, state, hp, norm)
    imagined = learned_env(cfg, env)
    env_params = learned_env_params(state, norm)
    key, key_reset, key_eval = jax.random.split(state.key, 3)
    obs, env_state = ppo.vec_env(cfg.ppo, imagined).reset(key_reset, env_params)
    agent = state.agent.replace(env_params=env_params, env_state=env_state, obs=obs)
    agent, ppo_metrics = ppo.train(cfg.ppo, imagined, agent, hp.ppo, cfg.ppo_updates)
    returns = evaluate_lib.evaluate(
        ppo, cfg.ppo, env, agent.params, key_eval, cfg.eval_episodes, False,
        state.real_env_params,
    )  # fmt: skip
    episodes = rollout_lib.episode_metrics(rollout)
    last = jax.tree.map(lambda x: x[-1], ppo_metrics)
    metrics = {
        "real/steps": state.data.size,
        "real/return": episodes["episode/return"],
        "imagined/return": last["episode/return"],
        "ppo/entropy": last["train/entropy"],
        "ppo/value_loss": last["train/value_loss"],
        "eval/return": jnp.mean(returns),
        **heldout,
        **fit_metrics,
    }
    state = state.replace(agent=agent, key=key, iteration=state.iteration + 1)
    return state, metrics


def train(cfg: Config, env: Env, state: State, hp: HParams) -> tuple[State, Metrics]:
    """All ``cfg.iterations`` iterations as one scan; metrics stacked ``[iterations]``.

    ``state`` must be fresh from :func:`init` (the dataset has room for exactly
    ``cfg.iterations`` iterations).
    """
    return jax.lax.scan(lambda s, _: iteration(cfg, env, s, hp), state, None, cfg.iterations)
