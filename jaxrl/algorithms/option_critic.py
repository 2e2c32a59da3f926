"""The option-critic architecture, tabular (Bacon, Harb & Precup 2017, arXiv:1609.05140).

``cfg.options`` options, each an intra-option policy ``π_ω(a|s) = softmax(θ[s, ω] / τ)``
and a termination function ``β_ω(s) = sigmoid(ϑ[s, ω])``, learned together with the
policy over options from the rewards of the task alone. The policy over options is
ε-greedy on the option values ``Q_Ω(s, ω)``. After every step ``(s, ω, a, r, s')``
(the paper's Algorithm 1):

1. **critic** (intra-option Q-learning): with
   ``U = r + γ [(1 - β_ω(s')) Q_Ω(s', ω) + β_ω(s') max_ω' Q_Ω(s', ω')]`` (just ``r`` when
   ``s'`` is terminal), ``Q_Ω(s, ω)`` and ``Q_U(s, ω, a)`` each move a step ``critic_lr``
   towards ``U``;
2. **intra-option policy gradient**: ``θ[s, ω] += intra_lr (Q_U(s, ω, a) - Q_Ω(s, ω))
   (e_a - π_ω(·|s))``, the log-softmax gradient with ``Q_Ω`` as baseline (the 1/τ factor
   is left to the step size, as in the authors' code);
3. **termination gradient** (``s'`` non-terminal): ``ϑ[s', ω] -= termination_lr
   β_ω(s') (1 - β_ω(s')) (Q_Ω(s', ω) - V_Ω(s') + ξ)`` with ``V_Ω(s') = max_ω' Q_Ω(s', ω')``:
   an option ends where another is better; ``ξ`` (``deliberation_cost``) favours longer
   options;
4. if ``β_ω(s')`` fires, a new option is drawn ε-greedily at ``s'``.

With ``options=1`` this is an actor-critic with a softmax policy and a TD(0) critic (the
paper's AC-PG baseline: the termination changes nothing). :func:`sarsa_train` is the
paper's other baseline, SARSA(0) on primitive actions.

Observations must be state numbers (``Discrete`` observation and action spaces), e.g.
:class:`jaxrl.envs.four_rooms.FourRooms`. Episodes run to their end (a ``lax.while_loop``),
so ``jax.jit(train)`` compiles once and ``jax.vmap`` runs seeds and tasks (env params)
side by side. Python API::

    env, params = four_rooms.FourRooms(), four_rooms.FourRoomsParams()
    cfg, hp = option_critic.Config(options=4, episodes=1000), option_critic.HParams.make()
    option_critic.check(cfg, env, hp)
    state = option_critic.init(cfg, env, key)
    state, metrics = jax.jit(lambda s, p: option_critic.train(cfg, env, s, hp, p))(state, params)
    metrics["steps"]  # [episodes]
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.algorithms import base
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.errors import ConfigError
from jaxrl.types import Metrics


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings."""

    options: int = 4
    episodes: int = 1000

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(self, ("options", "episodes"))


# The authors' four-rooms settings.
HPARAM_DEFAULTS = dict(
    critic_lr=0.5,
    intra_lr=0.25,
    termination_lr=0.25,
    epsilon=0.01,  # the policy over options (SARSA: over actions)
    temperature=0.01,  # the intra-option softmax
    gamma=0.99,
    deliberation_cost=0.0,
)
HPARAM_RANGES = dict(
    critic_lr=(0.0, 1.0),
    intra_lr=(0.0, 100.0),
    termination_lr=(0.0, 100.0),
    epsilon=(0.0, 1.0),
    temperature=(1e-6, 1e6),
    gamma=(0.0, 1.0),
    deliberation_cost=(-1e6, 1e6),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters (vmappable); defaults in :data:`HPARAM_DEFAULTS`."""

    critic_lr: jax.Array
    intra_lr: jax.Array
    termination_lr: jax.Array
    epsilon: jax.Array
    temperature: jax.Array
    gamma: jax.Array
    deliberation_cost: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def _sizes(env: Env) -> tuple[int, int]:
    params = env.default_params()
    obs, act = env.observation_space(params), env.action_space(params)
    if not (isinstance(obs, spaces.Discrete) and isinstance(act, spaces.Discrete)):
        raise ConfigError(
            f"tabular option-critic needs Discrete observations (state numbers) and actions; "
            f"{env.name} has {type(obs).__name__} observations and {type(act).__name__} actions"
        )
    return obs.n, act.n


def check(cfg: Config, env: Env, hp: HParams) -> None:
    """Raises ``ConfigError`` for out-of-range hyperparameters or a non-tabular env."""
    base.check_ranges(hp, HPARAM_RANGES)
    _sizes(env)


class State(struct.PyTreeNode):
    """Tables over ``S`` states, ``O`` options and ``A`` actions (all zeros at the start)."""

    q_option: jax.Array  # [S, O] Q_Ω
    q_action: jax.Array  # [S, O, A] Q_U
    policy_logits: jax.Array  # [S, O, A] θ
    termination_logits: jax.Array  # [S, O] ϑ
    key: jax.Array


def init(cfg: Config, env: Env, key: jax.Array) -> State:
    num_states, num_actions = _sizes(env)
    o = cfg.options
    return State(
        q_option=jnp.zeros((num_states, o)),
        q_action=jnp.zeros((num_states, o, num_actions)),
        policy_logits=jnp.zeros((num_states, o, num_actions)),
        termination_logits=jnp.zeros((num_states, o)),
        key=key,
    )


def intra_option_policy(state: State, s: jax.Array, option: jax.Array, hp: HParams) -> jax.Array:
    """``π_ω(·|s)``, ``[A]``."""
    return jax.nn.softmax(state.policy_logits[s, option] / hp.temperature)


def termination(state: State, s: jax.Array, option: jax.Array) -> jax.Array:
    """``β_ω(s)``, ``[]``."""
    return jax.nn.sigmoid(state.termination_logits[s, option])


def epsilon_greedy(values: jax.Array, epsilon: jax.Array, key: jax.Array) -> jax.Array:
    """The argmax of ``values [N]`` (the first on ties), or with probability ``epsilon`` a
    uniformly drawn index."""
    k_coin, k_pick = jax.random.split(key)
    uniform = jax.random.randint(k_pick, (), 0, values.shape[0])
    return jnp.where(jax.random.uniform(k_coin) < epsilon, uniform, jnp.argmax(values))


def learn_step(
    state: State, hp: HParams, s, option, action, reward, next_s, terminal
) -> State:  # fmt: skip
    """Steps 1-3 of the module docstring for one transition; returns the updated tables."""
    beta_next = termination(state, next_s, option)
    q_next = state.q_option[next_s]
    arrival = (1 - beta_next) * q_next[option] + beta_next * jnp.max(q_next)
    target = reward + jnp.where(terminal, 0.0, hp.gamma * arrival)
    q_option = state.q_option.at[s, option].add(hp.critic_lr * (target - state.q_option[s, option]))
    q_action = state.q_action.at[s, option, action].add(
        hp.critic_lr * (target - state.q_action[s, option, action])
    )
    advantage = q_action[s, option, action] - q_option[s, option]
    pi = intra_option_policy(state, s, option, hp)
    grad_log_pi = jax.nn.one_hot(action, pi.shape[0]) - pi
    policy_logits = state.policy_logits.at[s, option].add(hp.intra_lr * advantage * grad_log_pi)
    option_advantage = q_option[next_s, option] - jnp.max(q_option[next_s]) + hp.deliberation_cost
    step = hp.termination_lr * beta_next * (1 - beta_next) * option_advantage
    termination_logits = state.termination_logits.at[next_s, option].add(
        jnp.where(terminal, 0.0, -step)
    )
    return state.replace(
        q_option=q_option,
        q_action=q_action,
        policy_logits=policy_logits,
        termination_logits=termination_logits,
    )


class _Loop(struct.PyTreeNode):
    """The carry of an episode's ``while_loop``."""

    state: State
    env_state: object
    s: jax.Array  # [] the current state
    option: jax.Array  # [] the option in force
    action: jax.Array  # [] the action about to be taken
    key: jax.Array
    steps: jax.Array
    reward_sum: jax.Array
    switches: jax.Array
    terminated: jax.Array
    done: jax.Array


def _draw(key: jax.Array, probs: jax.Array) -> jax.Array:
    return jax.random.choice(key, probs.shape[0], p=probs)


def episode(env: Env, state: State, hp: HParams, env_params) -> tuple[State, Metrics]:
    """One learning episode, to its end. Metrics (``[]`` each): ``steps``, ``return``,
    ``switches`` (terminations of the option in force) and ``terminated`` (the episode
    reached a terminal state rather than the time limit)."""
    key, k_reset, k_option, k_action, k_loop = jax.random.split(state.key, 5)
    s, env_state = env.reset(k_reset, env_params)
    option = epsilon_greedy(state.q_option[s], hp.epsilon, k_option)
    action = _draw(k_action, intra_option_policy(state, s, option, hp))
    zero, false = jnp.zeros((), jnp.int32), jnp.zeros((), bool)
    start = _Loop(
        state, env_state, s, option, action, k_loop, zero, jnp.zeros(()), zero, false, false
    )

    def body(c: _Loop) -> _Loop:
        key, k_step, k_end, k_option, k_action = jax.random.split(c.key, 5)
        next_s, env_state, step = env.step(k_step, c.env_state, c.action, env_params)
        state = learn_step(
            c.state, hp, c.s, c.option, c.action, step.reward, next_s, step.terminated
        )
        ends = jax.random.uniform(k_end) < termination(state, next_s, c.option)
        new_option = epsilon_greedy(state.q_option[next_s], hp.epsilon, k_option)
        option = jnp.where(ends, new_option, c.option)
        action = _draw(k_action, intra_option_policy(state, next_s, option, hp))
        return _Loop(
            state, env_state, next_s, option, action, key, c.steps + 1,
            c.reward_sum + step.reward, c.switches + ends.astype(jnp.int32), step.terminated,
            step.done,
        )  # fmt: skip

    end = jax.lax.while_loop(lambda c: ~c.done, body, start)
    metrics = {
        "steps": end.steps,
        "return": end.reward_sum,
        "switches": end.switches,
        "terminated": end.terminated,
    }
    return end.state.replace(key=key), metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, env_params
) -> tuple[State, Metrics]:  # fmt: skip
    """``cfg.episodes`` learning episodes on ``env_params``; metrics ``[episodes]`` each.
    Call it again with other ``env_params`` to move the goal and keep learning."""
    return jax.lax.scan(
        lambda st, _: episode(env, st, hp, env_params), state, None, length=cfg.episodes
    )


# ------------------------------------------------------------------ the SARSA(0) baseline


class SarsaState(struct.PyTreeNode):
    q: jax.Array  # [S, A]
    key: jax.Array


def sarsa_init(env: Env, key: jax.Array) -> SarsaState:
    num_states, num_actions = _sizes(env)
    return SarsaState(jnp.zeros((num_states, num_actions)), key)


def sarsa_step(q: jax.Array, hp: HParams, s, action, reward, next_s, next_action, terminal):
    """``Q(s, a) += critic_lr (r + γ Q(s', a') - Q(s, a))`` (``r`` alone at a terminal)."""
    target = reward + jnp.where(terminal, 0.0, hp.gamma * q[next_s, next_action])
    return q.at[s, action].add(hp.critic_lr * (target - q[s, action]))


def sarsa_episode(
    env: Env, state: SarsaState, hp: HParams, env_params
) -> tuple[SarsaState, Metrics]:
    """One SARSA(0) episode, ε-greedy (``hp.epsilon``) on primitive actions; metrics as
    :func:`episode`'s (``switches`` is 0)."""
    key, k_reset, k_action, k_loop = jax.random.split(state.key, 4)
    s, env_state = env.reset(k_reset, env_params)
    action = epsilon_greedy(state.q[s], hp.epsilon, k_action)
    zero, false = jnp.zeros((), jnp.int32), jnp.zeros((), bool)

    def body(c):
        q, env_state, s, action, key, steps, reward_sum, _, _ = c
        key, k_step, k_action = jax.random.split(key, 3)
        next_s, env_state, step = env.step(k_step, env_state, action, env_params)
        next_action = epsilon_greedy(q[next_s], hp.epsilon, k_action)
        q = sarsa_step(q, hp, s, action, step.reward, next_s, next_action, step.terminated)
        return (q, env_state, next_s, next_action, key, steps + 1, reward_sum + step.reward,
                step.terminated, step.done)  # fmt: skip

    start = (state.q, env_state, s, action, k_loop, zero, jnp.zeros(()), false, false)
    q, _, _, _, _, steps, reward_sum, terminated, _ = jax.lax.while_loop(
        lambda c: ~c[-1], body, start
    )
    metrics = {"steps": steps, "return": reward_sum, "switches": zero, "terminated": terminated}
    return SarsaState(q, key), metrics


def sarsa_train(
    episodes: int, env: Env, state: SarsaState, hp: HParams, env_params
) -> tuple[SarsaState, Metrics]:  # fmt: skip
    """``episodes`` SARSA(0) episodes; metrics ``[episodes]``."""
    return jax.lax.scan(
        lambda st, _: sarsa_episode(env, st, hp, env_params), state, None, length=episodes
    )
