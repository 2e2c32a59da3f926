"""HIRO: data-efficient hierarchical RL (Nachum, Gu, Lee & Levine 2018, arXiv:1805.08296).

Two TD3 learners (:mod:`jaxrl.algorithms.td3`'s losses and gradient steps, unchanged):

* the **high level** ``mu_hi(s_t)`` picks a goal ``g_t`` every ``c = cfg.goal_interval`` env
  steps: a desired *change* of the first ``cfg.goal_dims`` observation entries, in the box
  ``[-goal_range, goal_range]``. Between its decisions the goal follows the fixed-target
  transition ``g_{t+1} = s_t + g_t - s_{t+1}`` (on the goal entries), so it keeps pointing
  at the same absolute state ``s_t + g_t``. Its reward is ``high_reward_scale`` times the
  env's reward summed over the ``c`` steps, and its transition is ``(s_t, g_t, R, s_{t+c})``;
* the **low level** ``mu_lo(s_t, g_t)`` acts in the env and is rewarded for reaching the
  goal: ``r_lo = -||s_t + g_t - s_{t+1}||_2`` (goal entries), from transitions
  ``([s_t, g_t], a_t, r_lo, [s_{t+1}, g_{t+1}])``.

**Off-policy correction.** A stored high-level transition's goal was chosen for a low level
that has since changed. When it is replayed, its goal is relabelled with the candidate
``g~`` that makes the low level's stored actions most likely under the current low policy:
``argmax -1/2 sum_i ||a_{t+i} - mu_lo(s_{t+i}, g~_{t+i})||^2`` over the segment, the
candidates ``g~_{t+i}`` following the goal transition. The candidates are the original goal,
the change ``s_{t+c} - s_t`` that happened, and ``cfg.num_candidates`` draws from a Gaussian
around it (std ``candidate_std`` times ``goal_range``), all clipped to the goal box.
``cfg.correction = False`` replays the original goals (the paper's ablation).

One :func:`update` is one high-level decision for every env: ``c`` steps of each of
``cfg.num_envs`` auto-reset envs, their ``c N`` low transitions and ``N`` high transitions
stored in two flat replays, then ``c`` low-level and one high-level TD3 gradient steps (one
gradient step per stored transition at each level). An env whose episode ends inside a
segment closes that segment there (its relabelling sees only the steps before the end),
and the high level picks a fresh goal for the new episode's remaining steps of the update;
that partial segment trains the low level only. Before ``cfg.learning_starts`` env steps
both levels act uniformly at random and nothing learns.

Python API::

    env, _ = registry.make("hrl/point_maze")
    cfg, hp = hiro.Config(goal_dims=2, goal_range=(1.0, 1.0)), hiro.HParams.make()
    hiro.check(cfg, env, hp)
    state = hiro.init(cfg, env, key, hp)
    state, metrics = jax.jit(lambda s: hiro.train(cfg, env, s, hp, cfg.num_updates))(state)
    hiro.evaluate(cfg, env, state, key, env.evaluation_params(), num_episodes=10, steps=200)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl.algorithms import base, td3
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.errors import ConfigError
from jaxrl.networks.continuous import scale_action
from jaxrl.types import Metrics
from jaxrl.utils.branch import run_if


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings.

    The paper's values: ``c = 10``, TD3 at both levels, 10 candidate goals (8 drawn).
    ``hidden``, ``batch_size`` and ``learning_starts`` are ours (smaller nets than the
    paper's 300-300, for CPU runs)."""

    total_timesteps: int = 200_000  # env steps per run, over all envs
    num_envs: int = 1
    goal_interval: int = 10  # c: env steps per high-level decision
    goal_dims: int = 2  # goals live on the first goal_dims observation entries
    goal_range: tuple[float, ...] = (1.0, 1.0)  # [goal_dims] half-widths of the goal box
    buffer_size: int = 200_000  # low-level transitions; the high level keeps 1/c as many
    batch_size: int = 100
    learning_starts: int = 5_000  # env steps of uniform random goals and actions
    hidden: tuple[int, ...] = (64, 64)
    policy_delay: int = 2
    correction: bool = True  # relabel replayed goals (False: the no-correction ablation)
    num_candidates: int = 8  # Gaussian candidate goals, besides the original and the reached

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(
            self,
            ("total_timesteps", "num_envs", "goal_interval", "goal_dims", "buffer_size",
             "batch_size", "policy_delay", "num_candidates"),
        )  # fmt: skip
        base.check_non_negative_ints(self, ("learning_starts",))
        if len(self.goal_range) != self.goal_dims or not all(r > 0 for r in self.goal_range):
            raise ConfigError(
                f"goal_range must be {self.goal_dims} (goal_dims) numbers > 0, "
                f"got {self.goal_range!r}"
            )
        if self.batch_size > self.buffer_size // self.goal_interval:
            raise ConfigError(
                f"batch_size = {self.batch_size} exceeds the high level's buffer "
                f"(buffer_size // goal_interval = {self.buffer_size // self.goal_interval})"
            )
        base.check_budget(self, "num_envs * goal_interval")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.goal_interval

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


HPARAM_DEFAULTS = dict(high_reward_scale=0.1, candidate_std=0.5)  # the paper's values
HPARAM_RANGES = dict(high_reward_scale=(0.0, 1e6), candidate_std=(0.0, 1e6))


class HParams(struct.PyTreeNode):
    """Traced hyperparameters: each level's TD3 ones, and two of HIRO's own.

    ``high_reward_scale`` multiplies the high level's summed reward; ``candidate_std`` is
    the std of the drawn candidate goals, in units of ``goal_range``."""

    low: td3.HParams
    high: td3.HParams
    high_reward_scale: jax.Array
    candidate_std: jax.Array

    @classmethod
    def make(
        cls, low: td3.HParams | None = None, high: td3.HParams | None = None, **overrides
    ) -> HParams:
        plain = base.make_hparams(_Plain, HPARAM_DEFAULTS, overrides)
        low = td3.HParams.make() if low is None else low
        high = td3.HParams.make() if high is None else high
        return cls(low=low, high=high, **dataclasses.asdict(plain))


@dataclasses.dataclass
class _Plain:
    high_reward_scale: Any
    candidate_std: Any


class Learner(struct.PyTreeNode):
    """One level's TD3 learner: the fields :func:`td3.gradient_step` reads and writes."""

    params: td3.Params
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    grad_steps: jax.Array  # [] int32


class Segment(struct.PyTreeNode):
    """One high-level transition and the low-level steps it spans (``[...]`` per item).

    ``transition`` is ``(s_t [D], goal [G] in [-1, 1], R, terminated, s_{t+c} [D])``;
    ``states [c, D]`` and ``actions [c, A]`` (in ``[-1, 1]``) are the low level's steps
    ``t .. t+c-1``, ``valid [c]`` marks those inside the segment (an episode end cuts it).
    """

    transition: td3.Transition
    states: jax.Array
    actions: jax.Array
    valid: jax.Array


class State(struct.PyTreeNode):
    """Everything one HIRO run carries between updates (arrays only)."""

    low: Learner
    high: Learner
    low_buffer: object  # flashbax state of td3.Transition on [s, g]
    high_buffer: object  # flashbax state of Segment
    env_state: object
    obs: jax.Array  # [num_envs, D]
    env_params: object
    key: jax.Array
    env_steps: jax.Array  # [] int32
    update_count: jax.Array  # [] int32


@dataclasses.dataclass(frozen=True)
class GoalProposer(Env):
    """The high level as TD3 sees it: an env whose actions are goals.

    Its actions are ``[G]`` in ``[-1, 1]`` (times ``goal_range`` in env units). Only its
    action space is used."""

    goal_dims: int

    def default_params(self) -> None:
        return None

    def action_space(self, params: None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (self.goal_dims,))


def level_configs(cfg: Config) -> tuple[td3.Config, td3.Config]:
    """The low and high levels' ``td3.Config`` (networks, batch, policy delay)."""
    shared = dict(
        num_envs=cfg.num_envs,
        hidden=cfg.hidden,
        batch_size=cfg.batch_size,
        policy_delay=cfg.policy_delay,
    )
    low = td3.Config(total_timesteps=cfg.total_timesteps, buffer_size=cfg.buffer_size, **shared)
    high = td3.Config(
        total_timesteps=cfg.total_timesteps,
        buffer_size=cfg.buffer_size // cfg.goal_interval,
        **shared,
    )
    return low, high


def check(cfg: Config, env: Env, hp: HParams) -> None:
    """ConfigError (before compiling) for an env HIRO cannot drive or bad hyperparameters."""
    obs_space = env.observation_space(env.default_params())
    td3.action_space(env)
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise ConfigError(f"HIRO needs flat Box observations; {env.name} has {obs_space}")
    if cfg.goal_dims > obs_space.shape[0]:
        raise ConfigError(
            f"goal_dims = {cfg.goal_dims} exceeds {env.name}'s {obs_space.shape[0]} observation "
            "entries"
        )
    low_cfg, high_cfg = level_configs(cfg)
    td3.check(low_cfg, hp.low)
    td3.check(high_cfg, hp.high)
    base.check_ranges(hp, HPARAM_RANGES)


def goal_scale(cfg: Config, like: jax.Array | None = None) -> jax.Array:
    """The goal box's half-widths ``[G]``, broadcast to ``like [..., G]`` if given."""
    scale = jnp.asarray(cfg.goal_range, jnp.float32)
    return scale if like is None else jnp.broadcast_to(scale, like.shape)


def low_input(cfg: Config, obs: jax.Array, goal: jax.Array) -> jax.Array:
    """The low level's input ``[..., D + G]``: the observation and the scaled goal.

    ``obs [..., D]`` as it is, ``goal [..., G]`` (env units) divided by ``goal_range``."""
    return jnp.concatenate([obs, goal / goal_scale(cfg, goal)], axis=-1)


def goal_transition(cfg: Config, obs: jax.Array, goal: jax.Array, next_obs: jax.Array) -> jax.Array:
    """``s + g - s'`` on the goal entries: the goal that still points at ``s + g``."""
    return obs[..., : cfg.goal_dims] + goal - next_obs[..., : cfg.goal_dims]


def low_reward(cfg: Config, obs: jax.Array, goal: jax.Array, next_obs: jax.Array) -> jax.Array:
    """``-||s + g - s'||_2`` over the goal entries ``[...]``."""
    return -jnp.linalg.norm(goal_transition(cfg, obs, goal, next_obs), axis=-1)


def propose(
    cfg: Config, state: State, obs: jax.Array, key: jax.Array, hp: HParams, warm
) -> jax.Array:
    """Exploring high-level goals ``[N, G]`` (env units) for observations ``[N, D]``."""
    actor, _ = td3.networks(level_configs(cfg)[1], GoalProposer(cfg.goal_dims))
    mean = actor.apply(state.high.params.actor, obs)
    action = td3.exploring_action(mean, key, hp.high.exploration_noise, warm)
    return action * goal_scale(cfg, action)


def _learner(cfg: td3.Config, env: Env, key: jax.Array, obs: jax.Array, hp: td3.HParams) -> Learner:
    actor, critic = td3.networks(cfg, env)
    key_actor, key_critic = jax.random.split(key)
    actor_params = actor.init(key_actor, obs)
    action = jnp.zeros((obs.shape[0], td3.action_dim(env)))
    critic_params = critic.init(key_critic, obs, action)
    tx = td3.optimizer(hp)
    return Learner(
        params=td3.Params(actor_params, critic_params, actor_params, critic_params),
        actor_opt_state=tx.init(actor_params),
        critic_opt_state=tx.init(critic_params),
        grad_steps=jnp.zeros((), jnp.int32),
    )


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """The initial state: fresh networks at both levels, empty replays, reset envs.

    Targets equal the networks; there are ``cfg.num_envs`` envs."""
    env_params = env.default_params() if env_params is None else env_params
    low_cfg, high_cfg = level_configs(cfg)
    key, key_low, key_high, key_env = jax.random.split(key, 4)
    obs, env_state = td3.vec_env(low_cfg, env).reset(key_env, env_params)
    goal = jnp.zeros((cfg.num_envs, cfg.goal_dims))
    low_obs = low_input(cfg, obs, goal)
    dim, c = td3.action_dim(env), cfg.goal_interval
    low_item = td3.Transition(low_obs[0], jnp.zeros(dim), jnp.zeros(()), jnp.zeros(()), low_obs[0])
    high_item = Segment(
        td3.Transition(obs[0], goal[0], jnp.zeros(()), jnp.zeros(()), obs[0]),
        states=jnp.zeros((c, obs.shape[-1])),
        actions=jnp.zeros((c, dim)),
        valid=jnp.zeros((c,)),
    )
    zero = jnp.zeros((), jnp.int32)
    return State(
        low=_learner(low_cfg, env, key_low, low_obs, hp.low),
        high=_learner(high_cfg, GoalProposer(cfg.goal_dims), key_high, obs, hp.high),
        low_buffer=td3.buffer(low_cfg).init(low_item),
        high_buffer=td3.buffer(high_cfg).init(high_item),
        env_state=env_state,
        obs=obs,
        env_params=env_params,
        key=key,
        env_steps=zero,
        update_count=zero,
    )


def collect(
    cfg: Config, env: Env, state: State, hp: HParams
) -> tuple[State, td3.Transition, Segment, dict]:
    """One high-level decision per env and ``c`` env steps under it.

    Returns the low transitions ``[c, N, ...]``, one :class:`Segment` per env ``[N, ...]``
    and the per-step info ``[c, N]`` (with ``done``).
    """
    low_cfg, _ = level_configs(cfg)
    venv = td3.vec_env(low_cfg, env)
    actor, _ = td3.networks(low_cfg, env)
    low, high = td3.action_space(env).bounds()
    warm = state.env_steps < cfg.learning_starts
    key, key_goal, key_steps = jax.random.split(state.key, 3)
    goal = propose(cfg, state, state.obs, key_goal, hp, warm)
    n = cfg.num_envs
    start = (state.obs, goal, jnp.zeros(n), jnp.ones(n, bool), state.obs, jnp.zeros(n))

    def env_step(carry, key):
        st, goal, seg_reward, open_, end_obs, terminated = carry
        key_act, key_env, key_goal = jax.random.split(key, 3)
        inputs = low_input(cfg, st.obs, goal)
        mean = actor.apply(st.low.params.actor, inputs)
        action = td3.exploring_action(mean, key_act, hp.low.exploration_noise, warm)
        next_obs, env_state, step = venv.step(
            key_env, st.env_state, scale_action(action, low, high), st.env_params
        )
        reached = step.final_obs
        next_goal = goal_transition(cfg, st.obs, goal, reached)
        done_f = step.terminated.astype(jnp.float32)
        transition = td3.Transition(
            inputs,
            action,
            low_reward(cfg, st.obs, goal, reached),
            done_f,
            low_input(cfg, reached, next_goal),
        )
        seg_reward = seg_reward + jnp.where(open_, step.reward, 0.0)
        end_obs = jnp.where(open_[:, None], reached, end_obs)
        terminated = jnp.where(open_, done_f, terminated)
        fresh = propose(cfg, st, next_obs, key_goal, hp, warm)  # a new episode's first goal
        new_goal = jnp.where(step.done[:, None], fresh, next_goal)
        out = (transition, st.obs, action, open_, step.done, step.info)
        st = st.replace(env_state=env_state, obs=next_obs, env_steps=st.env_steps + n)
        open_ = jnp.logical_and(open_, jnp.logical_not(step.done))
        return (st, new_goal, seg_reward, open_, end_obs, terminated), out

    carry, outs = jax.lax.scan(
        env_step, (state, *start[1:]), jax.random.split(key_steps, cfg.goal_interval)
    )
    state, _, seg_reward, _, end_obs, terminated = carry
    transitions, states, actions, valid, done, info = outs
    segment = Segment(
        td3.Transition(
            start[0],
            goal / goal_scale(cfg, goal),
            hp.high_reward_scale * seg_reward,
            terminated,
            end_obs,
        ),
        states=jnp.swapaxes(states, 0, 1),
        actions=jnp.swapaxes(actions, 0, 1),
        valid=jnp.swapaxes(valid, 0, 1).astype(jnp.float32),
    )
    return state.replace(key=key), transitions, segment, dict(info, done=done)


def relabel(cfg: Config, env: Env, low_actor: dict, segment: Segment, key: jax.Array, hp: HParams):
    """The off-policy correction: the goals that best explain the stored low actions.

    For segments ``[B, ...]``, returns the candidate goals ``[B, G]`` (in ``[-1, 1]``)
    under which the low actor ``low_actor`` makes the stored actions most likely, and the
    index ``[B]`` of each choice (0: the original goal, 1: the reached change
    ``s_{t+c} - s_t``, then the Gaussian draws)."""
    actor, _ = td3.networks(level_configs(cfg)[0], env)
    tr = segment.transition
    g = cfg.goal_dims
    origin = tr.obs[:, :g]  # [B, G]
    reached = tr.next_obs[:, :g] - origin
    noise = jax.random.normal(key, (origin.shape[0], cfg.num_candidates, g))
    drawn = reached[:, None] + hp.candidate_std * goal_scale(cfg, noise) * noise
    original = tr.action * goal_scale(cfg, tr.action)
    candidates = jnp.concatenate([original[:, None], reached[:, None], drawn], axis=1)
    scale = goal_scale(cfg, candidates)
    candidates = jnp.clip(candidates, -scale, scale)  # [B, K, G]
    k, c = candidates.shape[1], cfg.goal_interval
    # the goal at step i of the segment: g + s_t - s_{t+i}
    goals = candidates[:, :, None] + (origin[:, None] - segment.states[:, :, :g])[:, None]
    states = jnp.broadcast_to(segment.states[:, None], (tr.obs.shape[0], k, c, tr.obs.shape[-1]))
    mean = actor.apply(low_actor, low_input(cfg, states, goals))  # [B, K, c, A]
    squared = jnp.sum(jnp.square(segment.actions[:, None] - mean), axis=-1)
    log_prob = -0.5 * jnp.sum(segment.valid[:, None] * squared, axis=-1)  # [B, K]
    best = jnp.argmax(log_prob, axis=1)
    chosen = jnp.take_along_axis(candidates, best[:, None, None], axis=1)[:, 0]
    return chosen / goal_scale(cfg, chosen), best


def learn(cfg: Config, env: Env, state: State, hp: HParams) -> tuple[State, Metrics]:
    """Takes ``c`` low-level TD3 gradient steps and one high-level one.

    The high level's replayed goals are relabelled when ``cfg.correction``. Both are
    skipped (NaN metrics) before ``learning_starts``."""
    low_cfg, high_cfg = level_configs(cfg)
    proposer = GoalProposer(cfg.goal_dims)
    ready = jnp.logical_and(
        state.env_steps >= cfg.learning_starts,
        td3.buffer(high_cfg).can_sample(state.high_buffer),
    )
    key, key_low, key_high, key_relabel, key_noise = jax.random.split(state.key, 5)

    def steps(st: State) -> tuple[State, Metrics]:
        def low_step(learner, key):
            batch = td3.sample_batch(low_cfg, env, st.low_buffer, key)
            return td3.gradient_step(low_cfg, env, learner, batch, batch, hp.low, True)

        low, low_metrics = jax.lax.scan(
            low_step, st.low, jax.random.split(key_low, cfg.goal_interval)
        )
        segment = td3.buffer(high_cfg).sample(st.high_buffer, key_high).experience
        tr = segment.transition
        if cfg.correction:
            goal, choice = relabel(cfg, env, st.low.params.actor, segment, key_relabel, hp)
            tr = tr.replace(action=goal)
            kept = jnp.mean((choice == 0).astype(jnp.float32))
        else:
            kept = jnp.asarray(1.0)
        batch = td3.Batch(tr, jax.random.normal(key_noise, tr.action.shape))
        high, high_metrics = td3.gradient_step(
            high_cfg, proposer, st.high, batch, batch, hp.high, True
        )
        metrics = {
            f"low/{k.removeprefix('train/')}": jnp.nanmean(v) for k, v in low_metrics.items()
        }
        metrics |= {f"high/{k.removeprefix('train/')}": v for k, v in high_metrics.items()}
        return st.replace(low=low, high=high), metrics | {"high/original_goal_kept": kept}

    return run_if(ready, steps, state.replace(key=key), ("low", "high"))


def update(cfg: Config, env: Env, state: State, hp: HParams) -> tuple[State, Metrics]:
    """One high-level decision: :func:`collect`, store both levels' transitions, :func:`learn`."""
    low_cfg, high_cfg = level_configs(cfg)
    state, transitions, segment, info = collect(cfg, env, state, hp)
    flat = jax.tree.map(lambda x: x.reshape((-1, *x.shape[2:])), transitions)
    state = state.replace(
        low_buffer=td3.buffer(low_cfg).add(state.low_buffer, flat),
        high_buffer=td3.buffer(high_cfg).add(state.high_buffer, segment),
    )
    state, metrics = learn(cfg, env, state, hp)
    metrics |= td3.episode_metrics(info)
    metrics["low/reward"] = jnp.mean(transitions.reward)
    return state.replace(update_count=state.update_count + 1), metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int
) -> tuple[State, Metrics]:
    """``num_updates`` HIRO updates as one scan; metrics stacked ``[num_updates]``."""
    return jax.lax.scan(lambda s, _: update(cfg, env, s, hp), state, None, num_updates)


def evaluate(
    cfg: Config,
    env: Env,
    state: State,
    key: jax.Array,
    env_params: object,
    num_episodes: int,
    steps: int,
) -> dict[str, jax.Array]:
    """Plays ``num_episodes`` greedy episodes (no noise) of at most ``steps`` steps.

    Returns ``return [E]`` (the env's reward summed until the episode ends), ``final_obs
    [E, D]`` (the observation the episode ended on, or the last one) and ``length [E]``.
    """
    low_cfg, high_cfg = level_configs(cfg)
    low_actor, _ = td3.networks(low_cfg, env)
    high_actor, _ = td3.networks(high_cfg, GoalProposer(cfg.goal_dims))
    low, high = td3.action_space(env).bounds()

    def episode(key):
        key_reset, key_steps = jax.random.split(key)
        obs, env_state = env.reset(key_reset, env_params)

        def step(carry, inputs):
            obs, env_state, goal, total, running, length, final = carry
            t, key = inputs
            proposed = high_actor.apply(state.high.params.actor, obs) * goal_scale(cfg, goal)
            goal = jnp.where(t % cfg.goal_interval == 0, proposed, goal)
            action = low_actor.apply(state.low.params.actor, low_input(cfg, obs, goal))
            next_obs, env_state, out = env.step(
                key, env_state, scale_action(action, low, high), env_params
            )
            total = total + jnp.where(running, out.reward, 0.0)
            length = length + running.astype(jnp.int32)
            final = jnp.where(running, out.final_obs, final)
            goal = goal_transition(cfg, obs, goal, next_obs)
            running = jnp.logical_and(running, jnp.logical_not(out.done))
            return (next_obs, env_state, goal, total, running, length, final), None

        start = (obs, env_state, jnp.zeros(cfg.goal_dims), jnp.zeros(()), jnp.asarray(True),
                 jnp.zeros((), jnp.int32), obs)  # fmt: skip
        ts = jnp.arange(steps)
        (_, _, _, total, _, length, final), _ = jax.lax.scan(
            step, start, (ts, jax.random.split(key_steps, steps))
        )
        return {"return": total, "final_obs": final, "length": length}

    return jax.vmap(episode)(jax.random.split(key, num_episodes))
