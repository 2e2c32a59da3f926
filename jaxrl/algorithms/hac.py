"""Hierarchical Actor-Critic (Levy, Konidaris, Platt & Saenko 2019, arXiv:1712.00948).

A hierarchy of ``cfg.levels`` goal-conditioned deterministic policies. The top level gets
the task's end goal; every level ``i > 0`` acts by proposing a *subgoal* (a point of the
goal space) to the level below, which has ``cfg.horizon`` (``H``) attempts to reach it;
level 0 acts in the env. An episode is at most ``H ** levels`` env steps. Each level
learns, as DDPG does, from transitions that make the levels below look optimal:

* **hindsight action** transitions: a missed subgoal is replaced by the state the level
  below did reach, so a level learns as if its subgoals had been met;
* **hindsight goal** transitions (HER): after a level's attempts, ``cfg.her_goals`` of
  the states it reached (the last one and ones drawn at random) relabel every
  transition of that run as its goal;
* **subgoal testing**: with probability ``subgoal_test_rate`` a level's subgoal is tested
  (every level below acts greedily); a tested subgoal missed after the level below ran out
  of attempts gets reward ``-H`` and no bootstrap, which keeps subgoals reachable.

Every level's reward is ``-1`` per attempt, ``0`` (and the end of the bootstrap) when its
goal is reached within the goal's thresholds. Critics are bounded to ``[-H, 0]`` by a
scaled sigmoid initialised near 0, and their targets are clipped to that range; there are
no target networks (the paper's and the authors' code's choice). ``levels=1`` is the
paper's flat baseline: DDPG with HER and an ``H``-step episode.

An env enters through a :class:`GoalTask`: the map from observations to the goal space,
the subgoal space's bounds, the end-goal box and the thresholds. :data:`TASKS` has the
paper's inverted pendulum (here gymnax's ``Pendulum-v1``) and mountain car, whose end goal
is the env's own success region. The env's own reward is not used; an env's termination
ends the episode; its time limit does not (the hierarchy's horizon does).

Because every level's attempt loop is a ``lax.scan`` of fixed length ``H`` whose attempts
after a level stopped change nothing, the whole run (episodes, relabelling, replay, updates,
greedy evaluation) is one jitted, vmappable function. Python API::

    cfg, task = hac.Config(levels=2, horizon=20), hac.make_task("MountainCarContinuous-v0")
    hp = hac.HParams.make()
    hac.check(cfg, task, hp)
    state = hac.init(cfg, task, key, hp)
    state, metrics = jax.jit(lambda s: hac.train(cfg, task, s, hp))(state)
    metrics["eval/success"]  # [episodes // eval_every]: greedy success rate on the test goal
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base
from jaxrl.envs import registry, spaces
from jaxrl.envs.base import Env
from jaxrl.errors import ConfigError
from jaxrl.networks.torsos import MLP
from jaxrl.types import Metrics

# ------------------------------------------------------------------ goal tasks


def _position_velocity(obs: jax.Array) -> jax.Array:
    """MountainCar's observation is already ``[position, velocity]``."""
    return obs


def _angle_velocity(obs: jax.Array) -> jax.Array:
    """Pendulum's ``[cos θ, sin θ, θ']`` as ``[θ, θ']`` with ``θ`` in ``[-π, π]``."""
    return jnp.stack([jnp.arctan2(obs[..., 1], obs[..., 0]), obs[..., 2]], axis=-1)


@dataclasses.dataclass(frozen=True)
class GoalTask:
    """How an env's observations map to goals, for every level of the hierarchy.

    Attributes:
        env: the env (its default params are used).
        project: observation ``[obs_dim]`` to the goal space ``[goal_dim]``; a module-level
            function, so the task stays hashable.
        subgoal_low, subgoal_high: the box of subgoals levels ``i > 0`` propose.
        end_goal_low, end_goal_high: training end goals are drawn uniformly from this box.
        test_end_goal: the end goal of the greedy evaluation episodes.
        end_threshold: the top level's goal is reached when every goal dimension is within
            this distance of it.
        subgoal_threshold: the same for the subgoals of every lower level.
        angles: per goal dimension, whether it is an angle (differences wrap to ``[-π, π)``).
    """

    env: Env
    project: Callable[[jax.Array], jax.Array]
    subgoal_low: tuple[float, ...]
    subgoal_high: tuple[float, ...]
    end_goal_low: tuple[float, ...]
    end_goal_high: tuple[float, ...]
    test_end_goal: tuple[float, ...]
    end_threshold: tuple[float, ...]
    subgoal_threshold: tuple[float, ...]
    angles: tuple[bool, ...]

    def __post_init__(self):
        dim = len(self.subgoal_low)
        for name in ("subgoal_high", "end_goal_low", "end_goal_high", "test_end_goal",
                     "end_threshold", "subgoal_threshold", "angles"):  # fmt: skip
            if len(getattr(self, name)) != dim:
                raise ConfigError(
                    f"GoalTask.{name} has {len(getattr(self, name))} dimensions; the goal "
                    f"space (subgoal_low) has {dim}"
                )
        if not all(lo < hi for lo, hi in zip(self.subgoal_low, self.subgoal_high, strict=True)):
            raise ConfigError("GoalTask.subgoal_low must lie below subgoal_high in every dimension")
        if not all(lo <= hi for lo, hi in zip(self.end_goal_low, self.end_goal_high, strict=True)):
            raise ConfigError("GoalTask.end_goal_low must not exceed end_goal_high")
        if not all(t > 0 for t in self.end_threshold + self.subgoal_threshold):
            raise ConfigError("GoalTask thresholds must be > 0")

    @property
    def goal_dim(self) -> int:
        return len(self.subgoal_low)


def _mountain_car() -> GoalTask:
    # The end goal is gymnax's success region (position >= 0.45, velocity >= 0), which
    # also terminates the env; subgoals must be met within 0.01 and 0.02 (of ranges 1.8
    # and 0.14), as in the PyTorch reimplementation of HAC's mountain-car demo.
    env, _ = registry.make("MountainCarContinuous-v0")
    return GoalTask(
        env=env,
        project=_position_velocity,
        subgoal_low=(-1.2, -0.07),
        subgoal_high=(0.6, 0.07),
        end_goal_low=(0.525, 0.035),
        end_goal_high=(0.525, 0.035),
        test_end_goal=(0.525, 0.035),
        end_threshold=(0.075, 0.035),
        subgoal_threshold=(0.01, 0.02),
        angles=(False, False),
    )


def _pendulum() -> GoalTask:
    # The paper's inverted pendulum (the authors' design file): end goals within 16° and
    # 0.6 rad/s of upright and still, reached within 9.5° and 0.6 rad/s; subgoals within
    # 6.5° and 0.6 rad/s. gymnax's pendulum caps the speed at 8 rad/s (MuJoCo's at 15).
    env, _ = registry.make("Pendulum-v1")
    return GoalTask(
        env=env,
        project=_angle_velocity,
        subgoal_low=(-math.pi, -8.0),
        subgoal_high=(math.pi, 8.0),
        end_goal_low=(-math.radians(16), -0.6),
        end_goal_high=(math.radians(16), 0.6),
        test_end_goal=(0.0, 0.0),
        end_threshold=(math.radians(9.5), 0.6),
        subgoal_threshold=(math.radians(6.5), 0.6),
        angles=(True, False),
    )


TASKS: dict[str, Callable[[], GoalTask]] = {
    "MountainCarContinuous-v0": _mountain_car,
    "Pendulum-v1": _pendulum,
}


def make_task(name: str) -> GoalTask:
    """The :class:`GoalTask` for ``name``; ``ConfigError`` lists the valid names."""
    if name not in TASKS:
        raise ConfigError(f"HAC has no goal task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]()


def reached(task: GoalTask, achieved: jax.Array, goal: jax.Array, threshold) -> jax.Array:
    """Whether ``achieved [..., G]`` is within ``threshold [G]`` of ``goal [..., G]`` in every
    dimension (angle dimensions compare on the circle). Returns bool ``[...]``."""
    diff = achieved - goal
    lead = (1,) * (diff.ndim - 1)
    angles = jnp.asarray(task.angles).reshape(*lead, -1)
    diff = jnp.where(angles, jnp.mod(diff + jnp.pi, 2 * jnp.pi) - jnp.pi, diff)
    threshold = jnp.asarray(threshold, jnp.float32).reshape(*lead, -1)
    return jnp.all(jnp.abs(diff) <= threshold, axis=-1)


# ------------------------------------------------------------------ settings


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings. Defaults follow the authors' code where it fits a CPU (their batch
    is 1,024; their networks are three 64-unit layers, as here)."""

    levels: int = 2
    horizon: int = 20  # H: attempts of every level; an episode is at most H ** levels steps
    episodes: int = 500  # training episodes
    updates_per_episode: int = 40  # gradient steps of every level after each episode
    batch_size: int = 256
    hidden: tuple[int, ...] = (64, 64, 64)
    her_goals: int = 3  # hindsight goals per run of a level (the last state and random ones)
    buffer_episodes: int = 200  # episodes of transitions every level's replay holds
    eval_every: int = 25  # training episodes between greedy evaluations
    eval_episodes: int = 10  # greedy episodes on the test end goal per evaluation

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(
            self,
            ("levels", "horizon", "episodes", "updates_per_episode", "batch_size", "her_goals",
             "buffer_episodes", "eval_every", "eval_episodes"),
        )  # fmt: skip
        if self.episodes % self.eval_every:
            raise ConfigError(
                f"episodes ({self.episodes}) must be a multiple of eval_every ({self.eval_every})"
            )
        if self.max_steps > 100_000:
            raise ConfigError(
                f"horizon ** levels = {self.max_steps} env steps per episode; at most 100,000 "
                f"(every level's loop runs its full horizon, masked after it stops)"
            )
        if self.batch_size > self.capacity(self.levels - 1):
            raise ConfigError(
                f"batch_size ({self.batch_size}) exceeds the top level's replay capacity "
                f"({self.capacity(self.levels - 1)}); raise buffer_episodes"
            )

    @property
    def max_steps(self) -> int:
        """Env steps of an episode in which no level ever reaches its goal."""
        return self.horizon**self.levels

    def per_run(self, level: int) -> int:
        """Transition slots one run of ``level`` writes: its hindsight actions, its subgoal
        tests (levels > 0) and ``her_goals`` relabelled copies, ``H`` of each."""
        return (1 + (level > 0) + self.her_goals) * self.horizon

    def per_episode(self, level: int) -> int:
        """Transition slots ``level`` writes per episode (it runs ``H ** (levels-1-level)``
        times); the valid ones are written to its replay."""
        return self.per_run(level) * self.horizon ** (self.levels - 1 - level)

    def capacity(self, level: int) -> int:
        """``level``'s replay capacity: ``buffer_episodes`` episodes of slots."""
        return self.per_episode(level) * self.buffer_episodes


HPARAM_DEFAULTS = dict(
    learning_rate=1e-3,  # Adam, actors and critics
    gamma=0.98,
    subgoal_test_rate=0.3,  # the paper's λ
    random_action_rate=0.2,  # an exploring level acts uniformly at random this often
    action_noise=0.1,  # Gaussian noise, as a fraction of the half-range of a level's actions
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    gamma=(0.0, 1.0),
    subgoal_test_rate=(0.0, 1.0),
    random_action_rate=(0.0, 1.0),
    action_noise=(0.0, 10.0),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters (vmappable for sweeps); defaults in :data:`HPARAM_DEFAULTS`."""

    learning_rate: jax.Array
    gamma: jax.Array
    subgoal_test_rate: jax.Array
    random_action_rate: jax.Array
    action_noise: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, task: GoalTask, hp: HParams) -> None:
    """Raises ``ConfigError`` before compiling: out-of-range hyperparameters, or an env
    whose action space is not a box."""
    base.check_ranges(hp, HPARAM_RANGES)
    if not isinstance(task.env.action_space(task.env.default_params()), spaces.Box):
        raise ConfigError(f"HAC acts in continuous action spaces; {task.env.name}'s is not a Box")


# ------------------------------------------------------------------ networks and state


Box = tuple[tuple[float, ...], tuple[float, ...]]  # (low, high) per dimension


def to_unit(x: jax.Array, box: Box) -> jax.Array:
    """``x [..., N]`` mapped from ``box`` to ``[-1, 1]`` per dimension (unchanged where the
    box is unbounded): the networks' inputs, so a velocity of range 0.14 and a position of
    range 1.8 weigh alike."""
    low, high = np.asarray(box[0], np.float64), np.asarray(box[1], np.float64)
    finite = np.isfinite(low) & np.isfinite(high)
    centre = np.where(finite, (low + high) / 2, 0.0).astype(np.float32)
    half = np.where(finite, (high - low) / 2, 1.0).astype(np.float32)
    lead = (1,) * (x.ndim - 1)
    return (x - centre.reshape(*lead, -1)) / half.reshape(*lead, -1)


class Actor(nn.Module):
    """``(obs [..., D], goal [..., G]) -> action [..., A]`` in ``action_box``; its inputs are
    scaled to ``[-1, 1]`` by ``obs_box`` and ``goal_box`` (:func:`to_unit`)."""

    hidden: tuple[int, ...]
    obs_box: Box
    goal_box: Box
    action_box: Box

    @nn.compact
    def __call__(self, obs: jax.Array, goal: jax.Array) -> jax.Array:
        x = jnp.concatenate([to_unit(obs, self.obs_box), to_unit(goal, self.goal_box)], -1)
        x = MLP(self.hidden, activation="relu", ortho_init=False)(x)
        squashed = jnp.tanh(nn.Dense(len(self.action_box[0]))(x))
        lead = (1,) * (squashed.ndim - 1)
        low, high = (jnp.asarray(b).reshape(*lead, -1) for b in self.action_box)
        return low + (squashed + 1) * (high - low) / 2


# The critic starts near this value (the authors' optimistic initialisation).
Q_INIT = -0.067


class Critic(nn.Module):
    """``(obs, goal, action) -> Q [...]`` in ``[-horizon, 0]``: ``-H * sigmoid(x + c)``, with
    ``c`` chosen so that ``x = 0`` gives :data:`Q_INIT`; inputs scaled as the actor's."""

    hidden: tuple[int, ...]
    horizon: int
    obs_box: Box
    goal_box: Box
    action_box: Box

    @nn.compact
    def __call__(self, obs: jax.Array, goal: jax.Array, action: jax.Array) -> jax.Array:
        x = jnp.concatenate(
            [to_unit(obs, self.obs_box), to_unit(goal, self.goal_box),
             to_unit(action, self.action_box)], -1,
        )  # fmt: skip
        x = MLP(self.hidden, activation="relu", ortho_init=False)(x)
        offset = -math.log(self.horizon / -Q_INIT - 1)
        return -self.horizon * jax.nn.sigmoid(nn.Dense(1)(x)[..., 0] + offset)


class Transitions(struct.PyTreeNode):
    """Goal-conditioned transitions (leading dims ``[...]``)."""

    obs: jax.Array  # [..., D]
    action: jax.Array  # [..., A] (a level's action: env action or subgoal)
    reward: jax.Array  # [...] 0, -1 or -H
    next_obs: jax.Array  # [..., D]
    goal: jax.Array  # [..., G]
    terminal: jax.Array  # [...] bool: the target does not bootstrap


class Replay(struct.PyTreeNode):
    """A ring buffer of ``Transitions`` ``[capacity, ...]``; ``size`` filled, ``ptr`` next slot.

    Not flashbax: a run of a level writes a traced number of valid transitions (its
    attempts end when a goal is reached), which :func:`replay_add` writes compactly.
    """

    data: Transitions
    size: jax.Array  # [] int32
    ptr: jax.Array  # [] int32


def replay_add(replay: Replay, items: Transitions, valid: jax.Array) -> Replay:
    """Writes the ``valid [M]`` rows of ``items [M, ...]`` in order at ``ptr`` (wrapping);
    the others are dropped. ``M`` must not exceed the capacity."""
    capacity = replay.data.reward.shape[0]
    offset = jnp.cumsum(valid.astype(jnp.int32)) - 1
    index = jnp.where(valid, (replay.ptr + offset) % capacity, capacity)  # capacity: dropped
    data = jax.tree.map(lambda b, x: b.at[index].set(x, mode="drop"), replay.data, items)
    count = jnp.sum(valid.astype(jnp.int32))
    return Replay(data, jnp.minimum(replay.size + count, capacity), (replay.ptr + count) % capacity)


def replay_sample(replay: Replay, key: jax.Array, batch_size: int) -> Transitions:
    """``batch_size`` rows drawn uniformly from the filled ones (``[batch_size, ...]``)."""
    index = jax.random.randint(key, (batch_size,), 0, jnp.maximum(replay.size, 1))
    return jax.tree.map(lambda x: x[index], replay.data)


class Level(struct.PyTreeNode):
    """One level's learner: actor, critic, their Adam states and its replay."""

    actor: dict
    critic: dict
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    replay: Replay


class State(struct.PyTreeNode):
    levels: tuple[Level, ...]  # level 0 (acts in the env) first
    key: jax.Array
    episode: jax.Array  # [] int32: training episodes so far


def _flat_box(space: spaces.Box) -> Box:
    low, high = (np.broadcast_to(np.asarray(b, np.float32), space.shape).reshape(-1)
                 for b in (space.low, space.high))  # fmt: skip
    return tuple(float(v) for v in low), tuple(float(v) for v in high)


def _action_box(task: GoalTask, level: int) -> Box:
    """The box a level acts in: the env's actions for level 0, subgoals above."""
    if level > 0:
        return task.subgoal_low, task.subgoal_high
    return _flat_box(task.env.action_space(task.env.default_params()))


def _boxes(task: GoalTask, level: int) -> tuple[Box, Box, Box]:
    """The observation, goal and action boxes of ``level``'s networks."""
    obs_space = task.env.observation_space(task.env.default_params())
    obs_box = _flat_box(obs_space) if isinstance(obs_space, spaces.Box) else None
    if obs_box is None:
        dim = math.prod(obs_space.shape)
        obs_box = ((-math.inf,) * dim, (math.inf,) * dim)
    return obs_box, (task.subgoal_low, task.subgoal_high), _action_box(task, level)


def actor_net(cfg: Config, task: GoalTask, level: int) -> Actor:
    return Actor(cfg.hidden, *_boxes(task, level))


def critic_net(cfg: Config, task: GoalTask, level: int) -> Critic:
    return Critic(cfg.hidden, cfg.horizon, *_boxes(task, level))


def _threshold(cfg: Config, task: GoalTask, level: int) -> tuple[float, ...]:
    return task.end_threshold if level == cfg.levels - 1 else task.subgoal_threshold


def _adam(hp: HParams) -> optax.GradientTransformation:
    return optim.adam(hp.learning_rate)


def init(cfg: Config, task: GoalTask, key: jax.Array, hp: HParams) -> State:
    """Fresh networks and empty replays for every level."""
    params = task.env.default_params()
    obs_dim = math.prod(task.env.observation_space(params).shape)
    obs, goal = jnp.zeros((obs_dim,)), jnp.zeros((task.goal_dim,))
    levels = []
    for level in range(cfg.levels):
        key, k_actor, k_critic = jax.random.split(key, 3)
        low, _ = _action_box(task, level)
        action = jnp.zeros((len(low),))
        actor = actor_net(cfg, task, level).init(k_actor, obs, goal)
        critic = critic_net(cfg, task, level).init(k_critic, obs, goal, action)
        example = Transitions(obs, action, jnp.zeros(()), obs, goal, jnp.zeros((), bool))
        capacity = cfg.capacity(level)
        data = jax.tree.map(lambda x, c=capacity: jnp.zeros((c, *x.shape), x.dtype), example)
        zero = jnp.zeros((), jnp.int32)
        levels.append(
            Level(actor, critic, _adam(hp).init(actor), _adam(hp).init(critic),
                  Replay(data, zero, zero))
        )  # fmt: skip
    return State(tuple(levels), key, jnp.zeros((), jnp.int32))


# ------------------------------------------------------------------ acting


class _Carry(struct.PyTreeNode):
    obs: jax.Array  # [D]
    env_state: object
    terminated: jax.Array  # [] bool
    steps: jax.Array  # [] int32


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every level's loop reads (closed over, not carried)."""

    cfg: Config
    task: GoalTask
    actors: tuple  # per level params
    hp: HParams
    explore: bool  # False: greedy evaluation, every level as under a subgoal test


def _stopped(ctx: _Context, level: int, carry: _Carry, goals: tuple) -> jax.Array:
    """Whether ``level``'s loop must stop: the env terminated or the goal of ``level`` or of
    a level above it is reached."""
    achieved = ctx.task.project(carry.obs)
    hit = [reached(ctx.task, achieved, goals[j], _threshold(ctx.cfg, ctx.task, j))
           for j in range(level, ctx.cfg.levels)]  # fmt: skip
    return carry.terminated | jnp.any(jnp.stack(hit))


def _act(ctx: _Context, level: int, obs, goal, testing, key) -> jax.Array:
    """A level's action: greedy when testing (or evaluating), else uniformly random with
    probability ``random_action_rate`` and otherwise greedy plus clipped Gaussian noise."""
    low, high = (jnp.asarray(b, jnp.float32) for b in _action_box(ctx.task, level))
    greedy = actor_net(ctx.cfg, ctx.task, level).apply(ctx.actors[level], obs, goal)
    if not ctx.explore:
        return greedy
    k_coin, k_uniform, k_noise = jax.random.split(key, 3)
    noise = ctx.hp.action_noise * (high - low) / 2 * jax.random.normal(k_noise, low.shape)
    noisy = jnp.clip(greedy + noise, low, high)
    uniform = jax.random.uniform(k_uniform, low.shape, minval=low, maxval=high)
    exploring = jnp.where(jax.random.uniform(k_coin) < ctx.hp.random_action_rate, uniform, noisy)
    return jnp.where(testing, greedy, exploring)


def _run_level(ctx: _Context, level: int, carry: _Carry, goals: tuple, testing, alive, key):
    """``level``'s ``H`` attempts at ``goals[level]`` (a ``lax.scan``; attempts after it
    stopped, or all of them when not ``alive``, change nothing).

    Returns the carry and, for every level ``j <= level``, the ``(Transitions [M_j], valid
    [M_j])`` this run wrote (``M_j = cfg.per_run(j) * H ** (level - j)``).
    """
    cfg, task, horizon = ctx.cfg, ctx.task, ctx.cfg.horizon
    threshold = _threshold(cfg, task, level)

    def attempt(carry: _Carry, key):
        k_act, k_test, k_below = jax.random.split(key, 3)
        active = alive & ~_stopped(ctx, level, carry, goals)
        action = _act(ctx, level, carry.obs, goals[level], testing, k_act)
        if level > 0:
            test_below = testing | (jax.random.uniform(k_test) < ctx.hp.subgoal_test_rate)
            if not ctx.explore:
                test_below = jnp.ones((), bool)
            below_goals = goals[: level - 1] + (action,) + goals[level:]
            new, below = _run_level(ctx, level - 1, carry, below_goals, test_below, active, k_below)
        else:
            env = task.env
            obs, env_state, step = env.step(k_below, carry.env_state, action, env.default_params())
            stepped = _Carry(obs, env_state, step.terminated, carry.steps + 1)
            new = jax.tree.map(lambda a, b: jnp.where(active, a, b), stepped, carry)
            below = ()
        achieved = task.project(new.obs)
        hit = reached(task, achieved, goals[level], threshold)
        hindsight_action, items, valid = action, [], []
        if level > 0:
            sub_hit = reached(task, achieved, action, _threshold(cfg, task, level - 1))
            hindsight_action = jnp.where(sub_hit, action, achieved)
            # A tested subgoal is penalised if missed after the level below ran out of
            # attempts (not when it stopped because the env ended or a goal above was hit).
            stopped_above = _stopped(ctx, level, new, goals)
            penalty = jnp.asarray(-float(horizon))
            items.append(Transitions(carry.obs, action, penalty, new.obs, goals[level], True))
            valid.append(active & test_below & ~sub_hit & ~stopped_above)
        reward = jnp.where(hit, 0.0, -1.0)
        own = Transitions(carry.obs, hindsight_action, reward, new.obs, goals[level], hit)
        items, valid = [own, *items], [active, *valid]
        her = Attempts(carry.obs, hindsight_action, new.obs, achieved, active)
        return new, (_stack(items), jnp.stack(valid), her, below)

    carry, (items, valid, her, below) = jax.lax.scan(attempt, carry, jax.random.split(key, horizon))
    k_her = jax.random.fold_in(key, horizon)
    her_items, her_valid = hindsight_goals(cfg, task, level, her, k_her)
    # items: [H, 1 or 2, ...] -> [H * (1 or 2)]; HER: [her_goals, H] -> [her_goals * H]
    mine = (
        _concat([_flatten(items, 2), _flatten(her_items, 2)]),
        jnp.concatenate([valid.reshape(-1), her_valid.reshape(-1)]),
    )
    lower = tuple((_flatten(t, 2), v.reshape(-1)) for t, v in below)
    return carry, (*lower, mine)


class Attempts(struct.PyTreeNode):
    """One run of a level, ``[H, ...]``: what hindsight-goal relabelling reads."""

    obs: jax.Array  # [H, D] before each attempt
    action: jax.Array  # [H, A] the hindsight action
    next_obs: jax.Array  # [H, D]
    achieved: jax.Array  # [H, G] next_obs in the goal space
    active: jax.Array  # [H] bool: the attempt was made (a prefix)


def hindsight_goals(
    cfg: Config, task: GoalTask, level: int, run: Attempts, key: jax.Array
) -> tuple[Transitions, jax.Array]:
    """HER for one run of a level: ``cfg.her_goals`` goals (the last state reached and
    states drawn uniformly from those reached), each relabelling every attempt made, with
    reward 0 and no bootstrap where the attempt reached it. Returns
    ``Transitions [her_goals, H]`` and their validity ``[her_goals, H]``."""
    count = jnp.sum(run.active.astype(jnp.int32))
    n, h = cfg.her_goals, cfg.horizon
    drawn = jax.random.randint(key, (n - 1,), 0, jnp.maximum(count, 1))
    picks = jnp.concatenate([drawn, jnp.maximum(count - 1, 0)[None]])
    goals = run.achieved[picks]  # [n, G]
    hit = reached(task, run.achieved[None], goals[:, None], _threshold(cfg, task, level))
    items = Transitions(
        obs=jnp.broadcast_to(run.obs, (n, *run.obs.shape)),
        action=jnp.broadcast_to(run.action, (n, *run.action.shape)),
        reward=jnp.where(hit, 0.0, -1.0),
        next_obs=jnp.broadcast_to(run.next_obs, (n, *run.next_obs.shape)),
        goal=jnp.broadcast_to(goals[:, None], (n, h, goals.shape[-1])),
        terminal=hit,
    )
    return items, jnp.broadcast_to(run.active, (n, h))


def _stack(items: list[Transitions]) -> Transitions:
    return jax.tree.map(lambda *x: jnp.stack(x), *items)


def _concat(items: list[Transitions]) -> Transitions:
    return jax.tree.map(lambda *x: jnp.concatenate(x), *items)


def _flatten(items: Transitions, dims: int) -> Transitions:
    """Merges the leading ``dims`` axes of every leaf."""
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[dims:]), items)


def episode(
    cfg: Config, task: GoalTask, actors: tuple, hp: HParams, key: jax.Array, end_goal,
    explore: bool = True,
):  # fmt: skip
    """One episode from the env's reset towards ``end_goal [G]``.

    Returns ``(success, steps, transitions)``: whether the end goal was reached, the env
    steps taken and, per level, the ``(Transitions [cfg.per_episode(j)], valid)`` it wrote.
    With ``explore=False`` every level acts greedily, as under a subgoal test.
    """
    k_reset, k_run = jax.random.split(key)
    obs, env_state = task.env.reset(k_reset, task.env.default_params())
    carry = _Carry(obs, env_state, jnp.zeros((), bool), jnp.zeros((), jnp.int32))
    ctx = _Context(cfg, task, actors, hp, explore)
    goals = tuple(jnp.zeros((task.goal_dim,)) for _ in range(cfg.levels - 1)) + (end_goal,)
    top = cfg.levels - 1
    carry, transitions = _run_level(
        ctx, top, carry, goals, jnp.asarray(not explore), jnp.ones((), bool), k_run
    )
    success = reached(task, task.project(carry.obs), end_goal, task.end_threshold)
    return success, carry.steps, transitions


def sample_end_goal(task: GoalTask, key: jax.Array) -> jax.Array:
    """A training end goal ``[G]``, uniform in the task's end-goal box."""
    low, high = jnp.asarray(task.end_goal_low), jnp.asarray(task.end_goal_high)
    return low + (high - low) * jax.random.uniform(key, low.shape)


# ------------------------------------------------------------------ learning


def critic_loss(
    cfg: Config, critic: dict, actor: dict, task: GoalTask, level: int, batch: Transitions, hp
) -> jax.Array:
    """Mean squared error to ``clip(r + γ (1 - terminal) Q(s', π(s', g), g), -H, 0)``,
    computed with the current networks (no target networks; the target is not
    differentiated)."""
    next_action = actor_net(cfg, task, level).apply(actor, batch.next_obs, batch.goal)
    next_q = critic_net(cfg, task, level).apply(critic, batch.next_obs, batch.goal, next_action)
    target = batch.reward + hp.gamma * jnp.where(batch.terminal, 0.0, next_q)
    target = jax.lax.stop_gradient(jnp.clip(target, -cfg.horizon, 0.0))
    q = critic_net(cfg, task, level).apply(critic, batch.obs, batch.goal, batch.action)
    return jnp.mean(jnp.square(q - target))


def actor_loss(
    cfg: Config, actor: dict, critic: dict, task: GoalTask, level: int, batch: Transitions
) -> jax.Array:
    """``-mean Q(s, π(s, g), g)`` (DDPG's deterministic policy gradient)."""
    action = actor_net(cfg, task, level).apply(actor, batch.obs, batch.goal)
    return -jnp.mean(critic_net(cfg, task, level).apply(critic, batch.obs, batch.goal, action))


def learn(cfg: Config, task: GoalTask, lv: Level, level: int, hp: HParams, key) -> tuple:
    """``cfg.updates_per_episode`` critic-then-actor Adam steps on batches from the level's
    replay; nothing changes while it holds fewer than ``batch_size`` transitions.
    Returns the level and its mean critic loss (NaN when it did not learn)."""
    can = lv.replay.size >= cfg.batch_size

    def update(nets, key):  # the replay is read, not carried: only the networks change
        actor, critic, actor_opt, critic_opt = nets
        batch = replay_sample(lv.replay, key, cfg.batch_size)
        loss, grads = jax.value_and_grad(critic_loss, argnums=1)(
            cfg, critic, actor, task, level, batch, hp
        )
        updates, critic_opt = _adam(hp).update(grads, critic_opt, critic)
        critic = optax.apply_updates(critic, updates)
        grads = jax.grad(actor_loss, argnums=1)(cfg, actor, critic, task, level, batch)
        updates, actor_opt = _adam(hp).update(grads, actor_opt, actor)
        actor = optax.apply_updates(actor, updates)
        return (actor, critic, actor_opt, critic_opt), loss

    nets = (lv.actor, lv.critic, lv.actor_opt, lv.critic_opt)
    learned, losses = jax.lax.scan(update, nets, jax.random.split(key, cfg.updates_per_episode))
    actor, critic, actor_opt, critic_opt = jax.tree.map(
        lambda new, old: jnp.where(can, new, old), learned, nets
    )
    lv = lv.replace(actor=actor, critic=critic, actor_opt=actor_opt, critic_opt=critic_opt)
    return lv, jnp.where(can, jnp.mean(losses), jnp.nan)


def train_episode(cfg: Config, task: GoalTask, state: State, hp: HParams) -> tuple[State, Metrics]:
    """One exploring episode towards a sampled end goal, its transitions written to every
    level's replay, then every level's updates."""
    key, k_goal, k_episode, k_learn = jax.random.split(state.key, 4)
    actors = tuple(lv.actor for lv in state.levels)
    end_goal = sample_end_goal(task, k_goal)
    success, steps, transitions = episode(cfg, task, actors, hp, k_episode, end_goal)
    levels, metrics = [], {"train/success": success.astype(jnp.float32), "train/steps": steps}
    for level, (lv, (items, valid)) in enumerate(zip(state.levels, transitions, strict=True)):
        lv = lv.replace(replay=replay_add(lv.replay, items, valid))
        lv, loss = learn(cfg, task, lv, level, hp, jax.random.fold_in(k_learn, level))
        levels.append(lv)
        metrics[f"level{level}/critic_loss"] = loss
        metrics[f"level{level}/transitions"] = jnp.sum(valid.astype(jnp.int32))
    return State(tuple(levels), key, state.episode + 1), metrics


def evaluate(cfg: Config, task: GoalTask, state: State, hp: HParams, key: jax.Array) -> jax.Array:
    """Greedy success rate over ``cfg.eval_episodes`` episodes towards the test end goal."""
    actors = tuple(lv.actor for lv in state.levels)
    goal = jnp.asarray(task.test_end_goal, jnp.float32)
    keys = jax.random.split(key, cfg.eval_episodes)
    success, _, _ = jax.vmap(lambda k: episode(cfg, task, actors, hp, k, goal, False))(keys)
    return jnp.mean(success.astype(jnp.float32))


def train(cfg: Config, task: GoalTask, state: State, hp: HParams) -> tuple[State, Metrics]:
    """``cfg.episodes`` training episodes, a greedy evaluation after every ``eval_every``.

    Metrics: ``train/*`` and ``level{j}/*`` ``[episodes]``; ``eval/success``
    ``[episodes // eval_every]``.
    """

    def block(state: State, _):
        state, metrics = jax.lax.scan(
            lambda s, _: train_episode(cfg, task, s, hp), state, None, length=cfg.eval_every
        )
        key, k_eval = jax.random.split(state.key)
        success = evaluate(cfg, task, state, hp, k_eval)
        return state.replace(key=key), (metrics, success)

    state, (metrics, success) = jax.lax.scan(
        block, state, None, length=cfg.episodes // cfg.eval_every
    )
    metrics = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), metrics)
    return state, {**metrics, "eval/success": success}
