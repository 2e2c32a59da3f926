"""K-learning (O'Donoghue 2018, arXiv:1807.09647; O'Donoghue, Osband & Ionescu 2020,
"Making Sense of Reinforcement Learning and Probabilistic Inference") and soft Q-learning,
the "RL as inference" agent it corrects, on tabular episodic MDPs.

Both agents keep a Bayesian model of the MDP from counts and, before every episode, plan by
backward induction over the horizon ``L`` with a log-sum-exp ("soft") Bellman operator at
temperature ``tau``, then act from the Boltzmann policy ``pi_l(a|s) ∝ exp(K_l(s, a) / tau)``::

    K_l(s, a) = r_hat(s, a) + bonus(s, a) + sum_s' P_hat(s'|s, a) V_{l+1}(s'),
    V_l(s)    = tau log sum_a exp(K_l(s, a) / tau),        V_L = 0.

* **K-learning** adds the posterior's uncertainty: ``bonus = sigma^2(s, a) / (2 tau)``, the
  cumulant generating function of a Gaussian posterior on the mean reward. It picks
  ``tau`` every episode as the minimiser of its start-state value ``V_0(s_0)``, an upper
  bound on the Bayes-optimal value that is convex in ``tau`` (golden-section search in
  ``log tau``); a fixed ``cfg.temperature > 0`` replaces the search.
* **Soft Q-learning** plans with the posterior mean alone (``bonus = 0``) at a fixed
  ``cfg.temperature``: its Boltzmann policy dithers, and on DeepSea the chance of
  reaching the treasure falls as ``2^-N`` (the paper's point: inference that ignores
  uncertainty does not explore).

**The model** is the conjugate posterior with a prior worth one observation: after ``n``
visits to ``(s, a)``, the mean reward is ``sum r / (n + 1)`` (prior mean 0) with variance
``sigma^2 = prior_variance / (n + 1)``, and ``P_hat(.|s, a)`` is the Dirichlet mean
``(counts + 1 / (S + 1)) / (n + 1)`` (prior: uniform over the states). A pair never tried
thus leads anywhere, with the average value of the states; it is not pessimistic, so soft
Q-learning's exploration is plain dithering. States are indices: the observation must be a
one-hot encoding of the state (``DeepSea-bsuite``, whose observation is a one-hot
``[N, N]`` grid), and an episode's end (terminated or truncated) moves to an extra
absorbing state, index ``S``, worth 0. The model arrays are dense, ``P_hat`` is
``[S + 1, A, S + 1]``: a planning pass costs ``O(L S^2 A)``.

``train`` runs ``num_episodes`` episodes in one ``lax.scan`` (vmap it over keys for seeds);
each episode resets the env, plans, plays ``cfg.horizon`` steps (steps after the episode's
end are masked out) and adds the episode to the counts. K-learning runs from Python.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl.algorithms import base
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.errors import ConfigError
from jaxrl.types import Metrics

AGENTS = ("k_learning", "soft_q")
LOG_TAU_RANGE = (math.log(1e-4), math.log(1e4))  # the golden-section search's bracket
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings."""

    horizon: int = 10  # L: steps per episode at most (DeepSea-bsuite: its size)
    agent: str = "k_learning"  # "k_learning" (uncertainty bonus) or "soft_q" (none)
    temperature: float = 0.0  # tau; 0: K-learning minimises V_0(s_0) over tau per episode
    search_steps: int = 16  # golden-section iterations (one plan each) of that search

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(self, ("horizon", "search_steps"))
        base.check_choices(self, {"agent": AGENTS})
        if self.temperature < 0.0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.agent == "soft_q" and self.temperature == 0.0:
            raise ConfigError("soft_q needs a fixed temperature > 0 (it has no bonus to balance)")


HPARAM_DEFAULTS = dict(prior_variance=1.0)
HPARAM_RANGES = dict(prior_variance=(0.0, 1e6))


class HParams(struct.PyTreeNode):
    """Traced hyperparameter: the posterior variance numerator ``sigma^2 (n + 1)``."""

    prior_variance: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


class State(struct.PyTreeNode):
    """The counts: ``visits [S+1, A]``, ``reward_sum [S+1, A]``, ``next_visits [S+1, A, S+1]``
    (row ``S`` is the absorbing end), the key and the episodes played."""

    visits: jax.Array
    reward_sum: jax.Array
    next_visits: jax.Array
    key: jax.Array
    episode: jax.Array


class Model(struct.PyTreeNode):
    """The posterior the planner uses: ``reward [S+1, A]`` (mean), ``variance [S+1, A]``
    (``sigma^2``; 0 at the absorbing state) and ``transition [S+1, A, S+1]`` (rows sum to 1)."""

    reward: jax.Array
    variance: jax.Array
    transition: jax.Array


def sizes(env: Env, env_params=None) -> tuple[int, int]:
    """``(S, A)``: the states a one-hot observation encodes and the discrete actions."""
    env_params = env.default_params() if env_params is None else env_params
    action_space = env.action_space(env_params)
    if not isinstance(action_space, spaces.Discrete):
        raise ConfigError(f"K-learning needs Discrete actions, got {action_space}")
    return int(np.prod(env.observation_space(env_params).shape)), int(action_space.n)


def check(cfg: Config, env: Env, hp: HParams, env_params=None) -> None:
    """ConfigError for out-of-range hyperparameters, non-discrete actions, or an env whose
    reset observation is not one-hot (before compiling)."""
    base.check_ranges(hp, HPARAM_RANGES)
    sizes(env, env_params)
    env_params = env.default_params() if env_params is None else env_params
    obs, _ = env.reset(jax.random.key(0), env_params)
    obs = np.asarray(obs, np.float64).reshape(-1)
    if not (np.all((obs == 0) | (obs == 1)) and obs.sum() == 1):
        raise ConfigError(
            f"K-learning is tabular: the observation must be one-hot (one 1, the rest 0); "
            f"{env.name}'s reset observation has shape {obs.shape} and sum {obs.sum():g}"
        )


def init(cfg: Config, env: Env, key: jax.Array, env_params=None) -> State:
    """Zero counts."""
    num_states, num_actions = sizes(env, env_params)
    n = num_states + 1
    return State(
        visits=jnp.zeros((n, num_actions)),
        reward_sum=jnp.zeros((n, num_actions)),
        next_visits=jnp.zeros((n, num_actions, n)),
        key=key,
        episode=jnp.zeros((), jnp.int32),
    )


def state_index(obs: jax.Array) -> jax.Array:
    """The state a one-hot ``obs [*shape]`` encodes: its argmax, or ``S`` (absorbing) for an
    all-zero observation. Returns int32 ``[]``."""
    flat = obs.reshape(-1)
    return jnp.where(jnp.sum(flat) > 0, jnp.argmax(flat), flat.shape[0]).astype(jnp.int32)


def posterior(state: State, hp: HParams) -> Model:
    """The posterior means and variances after the counts (module docstring): the prior
    counts as one observation of reward 0 and of a next state drawn uniformly."""
    n = state.visits
    num = n.shape[0]
    absorbing = num - 1
    end = jax.nn.one_hot(absorbing, num)
    reward = (state.reward_sum / (n + 1.0)).at[absorbing].set(0.0)
    transition = (state.next_visits + 1.0 / num) / (n + 1.0)[..., None]
    variance = (hp.prior_variance / (n + 1.0)).at[absorbing].set(0.0)
    return Model(reward=reward, variance=variance, transition=transition.at[absorbing].set(end))


def soft_values(model: Model, tau: jax.Array, horizon: int, bonus: bool) -> jax.Array:
    """``K [L, S+1, A]`` by backward induction at temperature ``tau`` (module docstring);
    ``bonus`` adds ``variance / (2 tau)``. The absorbing state is worth 0 at every step."""
    absorbing = model.reward.shape[0] - 1
    immediate = model.reward + (model.variance / (2.0 * tau) if bonus else 0.0)

    def backward(v_next, _):
        k = immediate + jnp.einsum("sat,t->sa", model.transition, v_next)
        v = tau * jax.nn.logsumexp(k / tau, axis=-1)
        return v.at[absorbing].set(0.0), k

    _, ks = jax.lax.scan(backward, jnp.zeros(model.reward.shape[0]), None, length=horizon)
    return ks[::-1]


def start_value(k0: jax.Array, tau: jax.Array, s0: jax.Array) -> jax.Array:
    """``V_0(s0) = tau logsumexp(K_0(s0, .) / tau)`` from ``k0 [S+1, A]``."""
    return tau * jax.nn.logsumexp(k0[s0] / tau)


def best_temperature(model: Model, s0: jax.Array, horizon: int, steps: int) -> jax.Array:
    """The ``tau`` that minimises K-learning's ``V_0(s0)`` (convex in ``tau``): golden-section
    search over ``log tau`` in ``LOG_TAU_RANGE``: ``steps + 2`` planning passes, and a final
    bracket ``0.618^steps`` as wide as the first (16 steps: ``tau`` to within 1 %)."""

    def value(log_tau):
        tau = jnp.exp(log_tau)
        return start_value(soft_values(model, tau, horizon, True)[0], tau, s0)

    def shrink(_, carry):
        lo, hi, a, b, fa, fb = carry
        left = fa <= fb  # the minimum lies in [lo, b]: b becomes the upper point
        lo, hi = jnp.where(left, lo, a), jnp.where(left, b, hi)
        a_new = jnp.where(left, hi - GOLDEN * (hi - lo), b)
        b_new = jnp.where(left, a, lo + GOLDEN * (hi - lo))
        f_new = value(jnp.where(left, a_new, b_new))
        fa, fb = jnp.where(left, f_new, fb), jnp.where(left, fa, f_new)
        return lo, hi, a_new, b_new, fa, fb

    lo, hi = jnp.float32(LOG_TAU_RANGE[0]), jnp.float32(LOG_TAU_RANGE[1])
    a, b = hi - GOLDEN * (hi - lo), lo + GOLDEN * (hi - lo)
    lo, hi, *_ = jax.lax.fori_loop(0, steps, shrink, (lo, hi, a, b, value(a), value(b)))
    return jnp.exp(0.5 * (lo + hi))


def plan(cfg: Config, model: Model, s0: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(K [L, S+1, A], tau)`` for the episode that starts in ``s0``."""
    bonus = cfg.agent == "k_learning"
    if cfg.temperature > 0.0:
        tau = jnp.float32(cfg.temperature)
    else:
        tau = best_temperature(model, s0, cfg.horizon, cfg.search_steps)
    return soft_values(model, tau, cfg.horizon, bonus), tau


def episode(
    cfg: Config, env: Env, state: State, hp: HParams, env_params=None
) -> tuple[State, Metrics]:
    """Plans, plays one episode of at most ``cfg.horizon`` steps and adds it to the counts.

    Metrics: ``return`` (undiscounted), ``length``, ``tau`` and ``start_value`` (``V_0(s_0)``
    of the plan)."""
    env_params = env.default_params() if env_params is None else env_params
    key, key_reset, key_steps = jax.random.split(state.key, 3)
    obs, env_state = env.reset(key_reset, env_params)
    s0 = state_index(obs)
    k, tau = plan(cfg, posterior(state, hp), s0)
    absorbing = state.visits.shape[0] - 1

    def step(carry, xs):
        env_state, s, alive = carry
        k_l, key = xs
        key_act, key_env = jax.random.split(key)
        action = jax.random.categorical(key_act, k_l[s] / tau)
        obs, env_state, out = env.step(key_env, env_state, action, env_params)
        ended = jnp.logical_or(out.terminated, out.truncated)
        s_next = jnp.where(ended, absorbing, state_index(obs))
        kept = (s, action, out.reward.astype(jnp.float32), s_next, alive)
        return (env_state, s_next, jnp.logical_and(alive, jnp.logical_not(ended))), kept

    xs = (k, jax.random.split(key_steps, cfg.horizon))
    _, (s, a, r, s_next, alive) = jax.lax.scan(step, (env_state, s0, jnp.bool_(True)), xs)
    w = alive.astype(jnp.float32)
    state = state.replace(
        visits=state.visits.at[s, a].add(w),
        reward_sum=state.reward_sum.at[s, a].add(w * r),
        next_visits=state.next_visits.at[s, a, s_next].add(w),
        key=key,
        episode=state.episode + 1,
    )
    metrics = {
        "return": jnp.sum(w * r),
        "length": jnp.sum(w),
        "tau": tau,
        "start_value": start_value(k[0], tau, s0),
    }
    return state, metrics


def train(
    cfg: Config,
    env: Env,
    hp: HParams,
    key: jax.Array,
    num_episodes: int,
    env_params=None,
) -> tuple[State, Metrics]:
    """``(state, metrics)`` after ``num_episodes`` episodes; each metric is ``[num_episodes]``.
    Jit- and vmap-able over ``key`` and ``hp``; call :func:`check` first (outside jit)."""

    def body(state, _):
        return episode(cfg, env, state, hp, env_params)

    return jax.lax.scan(body, init(cfg, env, key, env_params), None, length=num_episodes)
