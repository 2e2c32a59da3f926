"""Maximum-entropy inverse RL on tabular MDPs (Ziebart et al. 2008; causal form, Ziebart
2010): recover a reward, linear in state features, under which the demonstrations are
most likely.

The model of the demonstrator: over a horizon of ``T`` steps it acts by the soft-optimal
policy of the reward ``r = features @ w``::

    Q_t(s, a) = r(s) + sum_s' P(s'|s, a) V_{t+1}(s'),    V_T = 0
    V_t(s)    = log sum_a exp Q_t(s, a),                  pi_t(a|s) = exp(Q_t(s, a) - V_t(s))

``fit`` maximises the demonstrations' log-likelihood ``mean_n sum_t log pi_t(a_t|s_t)`` in
``w`` with Adam (``jax.grad`` through the soft value iteration). Under deterministic
dynamics that gradient is exactly the classic feature matching: the demonstrations' mean
feature counts minus those the model's policy expects from the same start states
(:func:`feature_gap`; the tests check the equality). Under stochastic dynamics the two
differ by a term whose mean over demonstrations that follow the dynamics is zero.

A :class:`TabularMDP` holds the dynamics ``[S, A, S]``, the features ``[S, F]`` and the
start distribution ``[S]``; :func:`grid_mdp` builds the coloured grid worlds of the
experiment (each cell has a colour; the true reward is a weight per colour). Everything
is a pure function of arrays: ``jax.jit`` and ``jax.vmap`` over layouts and seeds apply.
Python API::

    mdp = maxent_irl.grid_mdp(colours, num_colours=4, slip=0.1)
    demos = maxent_irl.sample_demos(mdp, expert_log_policy, key, num=16, horizon=20)
    w, metrics = maxent_irl.fit(cfg, mdp, demos, hp)
    maxent_irl.policy_return(mdp, maxent_irl.greedy_policy(mdp, mdp.features @ w, 20), r, 20)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base
from jaxrl.errors import ConfigError
from jaxrl.types import Metrics

# Grid actions: north, east, south, west, stay (row, col offsets).
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1), (0, 0))


class TabularMDP(struct.PyTreeNode):
    """``transition [S, A, S]`` (rows sum to 1), ``features [S, F]``, ``start [S]``."""

    transition: jax.Array
    features: jax.Array
    start: jax.Array


class Demos(struct.PyTreeNode):
    """Demonstrations: ``states [N, T]`` and ``actions [N, T]`` int32, ``T`` the horizon."""

    states: jax.Array
    actions: jax.Array


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings: the horizon and the number of Adam steps."""

    horizon: int = 20
    num_steps: int = 300

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(self, ("horizon", "num_steps"))


HPARAM_DEFAULTS = dict(learning_rate=0.1)
HPARAM_RANGES = dict(learning_rate=(0.0, 100.0))


class HParams(struct.PyTreeNode):
    """Traced hyperparameters (float32 arrays)."""

    learning_rate: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, mdp: TabularMDP, demos: Demos, hp: HParams) -> None:
    """``ConfigError`` for out-of-range hyperparameters, an MDP whose shapes or rows are
    inconsistent, or demonstrations that are not ``[N, horizon]`` valid indices."""
    base.check_ranges(hp, HPARAM_RANGES)
    p, phi, start = (jnp.asarray(x) for x in (mdp.transition, mdp.features, mdp.start))
    if p.ndim != 3 or p.shape[0] != p.shape[2]:
        raise ConfigError(f"transition must be [S, A, S], got shape {p.shape}")
    s, a = p.shape[0], p.shape[1]
    if phi.ndim != 2 or phi.shape[0] != s or start.shape != (s,):
        raise ConfigError(
            f"features must be [S, F] and start [S] with S = {s}; got {phi.shape} and {start.shape}"
        )
    if not bool(jnp.allclose(p.sum(-1), 1.0, atol=1e-4)) or not bool(
        jnp.isclose(start.sum(), 1.0, atol=1e-4)
    ):
        raise ConfigError("transition rows and start must be probability distributions")
    states, actions = jnp.asarray(demos.states), jnp.asarray(demos.actions)
    if states.shape != actions.shape or states.ndim != 2 or states.shape[1] != cfg.horizon:
        raise ConfigError(
            f"demos must be states and actions [N, horizon = {cfg.horizon}]; got "
            f"{states.shape} and {actions.shape}"
        )
    if bool(jnp.any((states < 0) | (states >= s) | (actions < 0) | (actions >= a))):
        raise ConfigError(f"demo states must lie in [0, {s}) and actions in [0, {a})")


# --- planning -----------------------------------------------------------------------------


def soft_policy(mdp: TabularMDP, reward: jax.Array, horizon: int) -> jax.Array:
    """``log pi_t(a|s)`` ``[T, S, A]``: soft value iteration of ``reward [S]`` over ``T``."""

    def backup(v_next, _):
        q = reward[:, None] + mdp.transition @ v_next  # [S, A]
        v = jax.nn.logsumexp(q, axis=1)
        return v, q - v[:, None]

    _, log_pi = jax.lax.scan(backup, jnp.zeros_like(reward), None, horizon)
    return log_pi[::-1]


def greedy_policy(mdp: TabularMDP, reward: jax.Array, horizon: int) -> jax.Array:
    """``log pi_t(a|s)`` ``[T, S, A]`` of an optimal finite-horizon policy for ``reward``
    (hard value iteration; ties go to the first action), as one-hot log-probabilities."""

    def backup(v_next, _):
        q = reward[:, None] + mdp.transition @ v_next
        best = jax.nn.one_hot(jnp.argmax(q, axis=1), q.shape[1])
        return jnp.max(q, axis=1), jnp.log(best)

    _, log_pi = jax.lax.scan(backup, jnp.zeros_like(reward), None, horizon)
    return log_pi[::-1]


def visitation(mdp: TabularMDP, log_pi: jax.Array, start: jax.Array) -> jax.Array:
    """``D_t(s)`` ``[T, S]``: the state distribution at each step under ``log_pi [T, S, A]``
    from ``start [S]``."""

    def forward(d, log_pi_t):
        joint = d[:, None] * jnp.exp(log_pi_t)  # [S, A]
        return jnp.einsum("sa,sat->t", joint, mdp.transition), d

    _, ds = jax.lax.scan(forward, start, log_pi)
    return ds


def policy_return(mdp: TabularMDP, log_pi: jax.Array, reward: jax.Array) -> jax.Array:
    """The expected sum of ``reward [S]`` over the horizon of ``log_pi`` from ``mdp.start``."""
    return jnp.sum(visitation(mdp, log_pi, mdp.start) @ reward)


# --- demonstrations and fitting -----------------------------------------------------------


def sample_demos(mdp: TabularMDP, log_pi: jax.Array, key: jax.Array, num: int) -> Demos:
    """``num`` trajectories of ``log_pi``'s horizon, starts drawn from ``mdp.start``."""
    horizon = log_pi.shape[0]
    key_start, key_steps = jax.random.split(key)
    s0 = jax.random.categorical(key_start, jnp.log(mdp.start), shape=(num,))

    def step(s, inputs):
        log_pi_t, key_t = inputs
        key_a, key_s = jax.random.split(key_t)
        a = jax.random.categorical(key_a, log_pi_t[s])
        s_next = jax.random.categorical(key_s, jnp.log(mdp.transition[s, a]))
        return s_next, (s, a)

    _, (states, actions) = jax.lax.scan(step, s0, (log_pi, jax.random.split(key_steps, horizon)))
    return Demos(states.T.astype(jnp.int32), actions.T.astype(jnp.int32))


def log_likelihood(mdp: TabularMDP, w: jax.Array, demos: Demos) -> jax.Array:
    """``mean_n sum_t log pi_t(a_t | s_t)`` under the soft-optimal policy of ``features @ w``."""
    horizon = demos.states.shape[1]
    log_pi = soft_policy(mdp, mdp.features @ w, horizon)
    t = jnp.arange(horizon)[None]
    return jnp.mean(jnp.sum(log_pi[t, demos.states, demos.actions], axis=1))


def empirical_start(num_states: int, demos: Demos) -> jax.Array:
    """The demonstrations' start-state frequencies ``[S]``."""
    return jnp.mean(jax.nn.one_hot(demos.states[:, 0], num_states), axis=0)


def feature_gap(mdp: TabularMDP, w: jax.Array, demos: Demos) -> jax.Array:
    """``[F]``: the demonstrations' mean feature counts minus those the soft-optimal policy
    of ``features @ w`` expects from the demonstrations' own start states: the gradient of
    :func:`log_likelihood` under deterministic dynamics, and its expectation otherwise."""
    horizon = demos.states.shape[1]
    demo_counts = jnp.mean(jnp.sum(mdp.features[demos.states], axis=1), axis=0)
    log_pi = soft_policy(mdp, mdp.features @ w, horizon)
    start = empirical_start(mdp.start.shape[0], demos)
    model_counts = jnp.sum(visitation(mdp, log_pi, start) @ mdp.features, axis=0)
    return demo_counts - model_counts


def fit(cfg: Config, mdp: TabularMDP, demos: Demos, hp: HParams) -> tuple[jax.Array, Metrics]:
    """Reward weights ``w [F]`` from ``cfg.num_steps`` Adam steps of gradient ascent on
    :func:`log_likelihood` from ``w = 0``; metrics ``[num_steps]``: the log-likelihood and
    its gradient's norm before each step. (For a deterministic demonstrator the likelihood
    keeps rising as ``w`` grows, so the gradient shrinks without reaching 0.)"""
    tx = optim.adam(hp.learning_rate)
    w0 = jnp.zeros(mdp.features.shape[1])
    value_and_grad = jax.value_and_grad(lambda w: log_likelihood(mdp, w, demos))

    def step(carry, _):
        w, opt_state = carry
        value, grad = value_and_grad(w)
        updates, opt_state = tx.update(-grad, opt_state, w)
        metrics = {"log_likelihood": value, "grad_norm": jnp.linalg.norm(grad)}
        return (optax.apply_updates(w, updates), opt_state), metrics

    (w, _), metrics = jax.lax.scan(step, (w0, tx.init(w0)), None, cfg.num_steps)
    return w, metrics


def behavioural_cloning(num_states: int, num_actions: int, demos: Demos, horizon: int) -> jax.Array:
    """The tabular imitation baseline ``log pi [T, S, A]``: each state's demonstrated
    action frequencies (time-independent), uniform in states the demonstrations never
    visit."""
    counts = jnp.zeros((num_states, num_actions)).at[demos.states, demos.actions].add(1.0)
    total = jnp.sum(counts, axis=1, keepdims=True)
    pi = jnp.where(total > 0, counts / jnp.maximum(total, 1.0), 1.0 / num_actions)
    return jnp.broadcast_to(jnp.log(pi)[None], (horizon, num_states, num_actions))


# --- coloured grid worlds -----------------------------------------------------------------


def grid_mdp(colours: jax.Array, num_colours: int, slip: float) -> TabularMDP:
    """The grid world on ``colours [H, W]`` (int): 5 actions (:data:`MOVES`), a move off the
    grid stays, and with probability ``slip`` the action is replaced by a uniformly random
    one. Features: the one-hot colour of the cell ``[H * W, num_colours]``; the start is
    uniform over cells."""
    h, w = colours.shape
    rows, cols = jnp.divmod(jnp.arange(h * w), w)
    moves = jnp.array(MOVES)
    r = jnp.clip(rows[:, None] + moves[None, :, 0], 0, h - 1)
    c = jnp.clip(cols[:, None] + moves[None, :, 1], 0, w - 1)
    intended = jax.nn.one_hot(r * w + c, h * w)  # [S, A, S]
    uniform = jnp.mean(intended, axis=1, keepdims=True)
    transition = (1.0 - slip) * intended + slip * uniform
    features = jax.nn.one_hot(colours.reshape(-1), num_colours)
    return TabularMDP(transition, features, jnp.full((h * w,), 1.0 / (h * w)))


def random_colours(key: jax.Array, shape: tuple[int, int], probs: jax.Array) -> jax.Array:
    """A layout ``[H, W]`` whose cells take colour ``k`` with probability ``probs[k]``."""
    return jax.random.categorical(key, jnp.log(probs), shape=shape).astype(jnp.int32)
