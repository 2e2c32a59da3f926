"""RL^2 (Duan et al. 2016, arXiv:1611.02779; Wang et al. 2016, arXiv:1611.05763).

One recurrent actor-critic is trained across a task distribution. A *trial* is one task
(``env.sample_params(key)``) played for ``episodes_per_trial`` episodes; the hidden state
persists through the whole trial and is reset between trials, so the objective (the
discounted return of the trial) rewards exploring early and exploiting later, and after
training adaptation to a new task happens in the hidden state with frozen weights.

RL^2 is two pieces:

* :class:`TrialWrapper` turns a task env (anything with ``sample_params(key)``) into a
  *trial env* whose episode is one trial: ``reset`` draws a task, the task env is reset
  after each of its episodes inside the trial, and the observation is the RL^2 input
  ``[obs_t, one_hot(a_{t-1}), r_{t-1}, d_{t-1}(, t / T)]`` with zeros for the previous
  action, reward and done at the start of a trial. The trial ends (``terminated``) when
  its ``episodes_per_trial``-th episode ends.
* :mod:`jaxrl.algorithms.recurrent_ppo` trains on the trial env; it zeroes the carry at
  the trial env's episode boundaries, i.e. between trials only.

For Duan et al.'s bandits, ``TrialWrapper(BernoulliBandit(k), episodes_per_trial=n)``:
every pull is a one-step episode, so a trial is ``n`` pulls. For Wang et al.'s two-arm
bandits add the time input, ``include_time=True`` (``t / n``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.algorithms import recurrent_ppo
from jaxrl.envs import spaces
from jaxrl.envs.base import Step, Wrapper
from jaxrl.errors import ConfigError
from jaxrl.utils import tree


class TrialState(struct.PyTreeNode):
    env_state: object  # the task env's state
    task: object  # the task env's params for this trial
    episode: jax.Array  # int32: task-env episodes finished in this trial
    time: jax.Array  # int32: steps taken in this trial


@dataclasses.dataclass(frozen=True)
class TrialWrapper(Wrapper):
    """An RL^2 trial env over a task env ``env`` with ``sample_params(key)``.

    The ``params`` argument of ``reset``/``step`` is ignored: every trial draws its own
    task, kept in :class:`TrialState`. ``max_trial_steps`` (used for the time input
    ``t / max_trial_steps``) defaults to ``episodes_per_trial`` (one-step episodes).
    ``Step.info`` passes the task env's info through and adds ``"trial_time"`` (``t``
    of the step) and ``"episode_done"`` (the task env's episode ended).
    """

    episodes_per_trial: int = 10
    include_time: bool = False
    max_trial_steps: int = 0

    def __post_init__(self):
        if not hasattr(self.env, "sample_params"):
            raise ConfigError(f"RL^2 needs env.sample_params(key), {self.env.name} has none")
        if not isinstance(self.episodes_per_trial, int) or self.episodes_per_trial < 1:
            raise ConfigError(f"episodes_per_trial must be >= 1, got {self.episodes_per_trial}")

    @property
    def name(self) -> str:
        return f"RL2-{self.env.name}-x{self.episodes_per_trial}"

    @property
    def num_actions(self) -> int:
        return self.env.action_space(self.env.default_params()).n

    @property
    def obs_dim(self) -> int:
        inner = self.env.observation_space(self.env.default_params()).shape
        return math.prod(inner) + self.num_actions + 2 + int(self.include_time)

    def _obs(self, obs, action_one_hot, reward, done, time):
        parts = [jnp.ravel(obs).astype(jnp.float32), action_one_hot, reward[None], done[None]]
        if self.include_time:
            horizon = self.max_trial_steps or self.episodes_per_trial
            parts.append((time / horizon).astype(jnp.float32)[None])
        return jnp.concatenate(parts)

    def reset(self, key, params=None):
        del params
        key_task, key_reset = jax.random.split(key)
        task = self.env.sample_params(key_task)
        obs, env_state = self.env.reset(key_reset, task)
        zero = jnp.zeros((), jnp.float32)
        time = jnp.zeros((), jnp.int32)
        obs = self._obs(obs, jnp.zeros((self.num_actions,)), zero, zero, time)
        return obs, TrialState(env_state, task, time, time)

    def step(self, key, state: TrialState, action, params=None):
        del params
        key_step, key_reset = jax.random.split(key)
        obs, env_state, step = self.env.step(key_step, state.env_state, action, state.task)
        # Inside a trial the task env auto-resets (same task) after each of its episodes.
        obs_reset, state_reset = self.env.reset(key_reset, state.task)
        done = step.done
        obs, env_state = tree.select(done, (obs_reset, state_reset), (obs, env_state))
        episode = state.episode + done.astype(jnp.int32)
        time = state.time + 1
        one_hot = jax.nn.one_hot(action, self.num_actions, dtype=jnp.float32)
        obs = self._obs(obs, one_hot, step.reward, done.astype(jnp.float32), time)
        trial_over = episode >= self.episodes_per_trial
        info = dict(step.info) | {"trial_time": state.time, "episode_done": done}
        out = Step(step.reward, trial_over, jnp.zeros((), bool), obs, info)
        return obs, TrialState(env_state, state.task, episode, time), out

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(float("-inf"), float("inf"), (self.obs_dim,))

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self.num_actions)


class TrialRollout(struct.PyTreeNode):
    """Frozen-weight play of fresh trials; leaves ``[T, B]`` (``info`` as the env gives)."""

    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    info: dict


def evaluate(
    cfg: recurrent_ppo.Config,
    env: TrialWrapper,
    params: dict,
    key: jax.Array,
    num_trials: int,
    num_steps: int,
    greedy: bool = False,
) -> TrialRollout:
    """Plays ``num_trials`` fresh (held-out) trials for ``num_steps`` steps with fixed weights.

    Every trial starts from a zero carry; the carry is reset only when a trial ends. No
    parameter changes: whatever the agent learns within a trial lives in its hidden state.
    ``greedy`` takes the argmax action instead of sampling.
    """
    net = recurrent_ppo.network(cfg, env)
    key_reset, key_steps = jax.random.split(key)
    obs, state = jax.vmap(env.reset)(jax.random.split(key_reset, num_trials))
    carry = recurrent_ppo.policy_carry(cfg, num_trials)
    reset = jnp.ones((num_trials,), bool)

    def env_step(loop, key):
        obs, state, carry, reset = loop
        key_act, key_env, key_new = jax.random.split(key, 3)
        carry, dist, _ = net.apply(params, carry, obs[None], reset[None])
        action = (dist.mode() if greedy else dist.sample(seed=key_act))[0]
        keys = jax.random.split(key_env, num_trials)
        obs, state, step = jax.vmap(env.step)(keys, state, action)
        new_obs, new_state = jax.vmap(env.reset)(jax.random.split(key_new, num_trials))
        done = step.terminated
        pick = lambda a, b: jax.tree.map(
            lambda x, y: jnp.where(done.reshape(done.shape + (1,) * (x.ndim - 1)), x, y), a, b
        )
        loop = (pick(new_obs, obs), pick(new_state, state), carry, done)
        return loop, TrialRollout(action, step.reward, done, step.info)

    _, out = jax.lax.scan(
        env_step, (obs, state, carry, reset), jax.random.split(key_steps, num_steps)
    )
    return out
