"""Policy-Space Response Oracles (Lanctot et al. 2017) with Nash, uniform and alpha-Rank
meta-solvers (Muller et al. 2020, "A Generalized Training Approach for Multiagent
Learning"), on two-player Kuhn poker (:mod:`jaxrl.envs.kuhn_poker`).

PSRO grows one population of strategies per player. Each iteration:

1. **payoffs**: the empirical game, player 1's payoff for every pair of strategies in the
   populations (computed exactly here, where the paper estimates it by simulation);
2. **meta-solve**: a distribution over each population (``cfg.solver``):

   * ``"nash"``: a Nash equilibrium of the zero-sum empirical game, by regret matching+
     with linear averaging (``solver_steps`` iterations);
   * ``"uniform"``: every strategy so far with equal weight (fictitious self-play);
   * ``"alpharank"``: the marginals of alpha-Rank's stationary distribution over joint
     strategy profiles (Omidshafiei et al. 2019), with ranking intensity ``alpha`` and
     population size ``m`` (the paper's alpha-PSRO);

3. **respond**: each player's oracle answers the other's meta-mixture (``cfg.oracle``):

   * ``"exact"``: the best response by backward induction, deterministic;
   * ``"ppo"``: a fresh PPO agent (:mod:`jaxrl.algorithms.ppo`) trained for
     ``ppo_updates`` updates in :class:`~jaxrl.envs.kuhn_poker.KuhnPoker`, its opponent
     drawn each episode from the mixture; its policy at the six information sets is the
     new strategy.

The iteration's metric is the **exploitability** of the meta-mixture (half of NashConv,
exact): how much two best responses would win against it; 0 at a Nash equilibrium.

The loop is one pure function: ``jax.jit(psro.train)`` compiles all ``iterations`` as a
scan over fixed-size populations (``iterations + 1`` slots, the first holding the
uniform-random strategy), and ``jax.vmap`` runs seeds side by side::

    cfg = psro.Config(solver="nash", oracle="ppo")
    state, metrics = jax.jit(lambda k: psro.train(cfg, psro.init(cfg, k), hp))(key)
    metrics["exploitability"]  # [iterations]
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.algorithms import base, ppo
from jaxrl.envs import kuhn_poker as kp
from jaxrl.errors import ConfigError
from jaxrl.types import Metrics

SOLVERS = ("nash", "uniform", "alpharank")
ORACLES = ("exact", "ppo")
# PPO as a best-response oracle: episodes last one or two steps, so many envs and short
# rollouts; no learning-rate annealing within one oracle call.
ORACLE_PPO = ppo.Config(
    total_timesteps=1_000_000, num_envs=32, rollout_len=16, num_minibatches=4,
    anneal_lr=False, hidden=(32, 32),
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings: iterations, meta-solver and oracle."""

    iterations: int = 20  # strategies added per player
    solver: str = "nash"
    oracle: str = "exact"
    solver_steps: int = 2_000  # regret-matching+ iterations ("nash")
    alpha: float = 10.0  # alpha-Rank's ranking intensity ("alpharank")
    alpharank_population: int = 50  # alpha-Rank's m ("alpharank")
    ppo: ppo.Config = ORACLE_PPO  # the "ppo" oracle's settings
    ppo_updates: int = 100  # PPO updates per oracle call

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(
            self, ("iterations", "solver_steps", "alpharank_population", "ppo_updates")
        )
        base.check_choices(self, {"solver": SOLVERS, "oracle": ORACLES})
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be positive, got {self.alpha!r}")
        if not isinstance(self.ppo, ppo.Config):
            raise ConfigError(f"ppo must be a ppo.Config, got {type(self.ppo).__name__}")
        if self.ppo.torso != "mlp" or self.ppo.data_shards != 1:
            raise ConfigError("the PPO oracle takes an mlp torso on one shard")

    @property
    def capacity(self) -> int:
        """Strategies per population at the end: the random start plus one per iteration."""
        return self.iterations + 1


ORACLE_HPARAM_DEFAULTS = dict(learning_rate=1e-3)  # PPO's defaults otherwise


class HParams(ppo.HParams):
    """The ``"ppo"`` oracle's traced hyperparameters (unused by ``"exact"``): PPO's, with
    ``ORACLE_HPARAM_DEFAULTS`` as defaults (a best response in one short call needs the
    larger step)."""

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, {**ppo.HPARAM_DEFAULTS, **ORACLE_HPARAM_DEFAULTS}, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """Raises ``ConfigError`` for out-of-range concrete hyperparameters (before compiling)."""
    ppo.check(cfg.ppo, hp)


class State(struct.PyTreeNode):
    """The two populations ``[capacity, 3, 2]``, how many slots are filled, and a key."""

    pop1: jax.Array
    pop2: jax.Array
    size: jax.Array  # int32 scalar
    key: jax.Array


def init(cfg: Config, key: jax.Array) -> State:
    """Both populations start with the strategy that plays every action with probability 1/2."""
    pop = jnp.zeros((cfg.capacity, kp.NUM_CARDS, 2)).at[0].set(0.5)
    return State(pop, pop, jnp.ones((), jnp.int32), key)


# --- meta-solvers ---------------------------------------------------------------------------


def solve_zero_sum(payoffs: jax.Array, size: jax.Array, steps: int) -> tuple[jax.Array, jax.Array]:
    """An approximate Nash equilibrium ``(w1 [K], w2 [K])`` of the zero-sum matrix game
    ``payoffs[:size, :size]`` (row player maximises), by regret matching+ with alternating
    updates and linearly weighted averages; weights beyond ``size`` are 0.

    Its exploitability falls like ``O(1 / steps)`` in practice (``O(1 / sqrt(steps))`` is
    the bound).
    """
    k = payoffs.shape[0]
    valid = (jnp.arange(k) < size).astype(jnp.float32)

    def strategy(regret):
        positive = jnp.maximum(regret, 0.0) * valid
        total = jnp.sum(positive)
        return jnp.where(total > 0, positive / jnp.maximum(total, 1e-30), valid / jnp.sum(valid))

    def step(carry, t):
        r1, r2, avg1, avg2 = carry
        s1, s2 = strategy(r1), strategy(r2)
        u1 = payoffs @ s2  # row values
        r1 = jnp.maximum(r1 + (u1 - s1 @ u1) * valid, 0.0)
        s1 = strategy(r1)
        u2 = -(s1 @ payoffs)  # column values
        r2 = jnp.maximum(r2 + (u2 - s2 @ u2) * valid, 0.0)
        s2 = strategy(r2)
        weight = t.astype(jnp.float32) + 1.0
        return (r1, r2, avg1 + weight * s1, avg2 + weight * s2), None

    zeros = jnp.zeros(k)
    (_, _, avg1, avg2), _ = jax.lax.scan(step, (zeros, zeros, zeros, zeros), jnp.arange(steps))
    return avg1 / jnp.sum(avg1), avg2 / jnp.sum(avg2)


def fixation_probability(delta: jax.Array, alpha: float, m: int) -> jax.Array:
    """The chance that one mutant with fitness gain ``delta`` takes over a population of
    ``m`` under selection intensity ``alpha``: ``(1 - e^{-alpha delta}) / (1 - e^{-m alpha
    delta})``, ``1/m`` at ``delta = 0``; computed without overflow for large ``alpha``."""
    a = alpha * delta
    safe = jnp.where(a == 0, 1.0, jnp.abs(a))
    # For a > 0 the formula as written; for a < 0 the same with e^{(1-m)|a|} taken out.
    ratio = jnp.expm1(-safe) / jnp.expm1(-m * safe)
    value = jnp.where(a > 0, ratio, jnp.exp((1 - m) * safe) * ratio)
    return jnp.where(a == 0, 1.0 / m, value)


def alpharank(
    payoffs: jax.Array, size: jax.Array, alpha: float, m: int
) -> tuple[jax.Array, jax.Array]:
    """alpha-Rank's strategy marginals ``(w1 [K], w2 [K])`` for the two-player game whose
    player 1 gets ``payoffs[:size, :size]`` and player 2 its negative.

    The Markov chain runs over joint profiles ``(i, j)``: one player, chosen uniformly
    among ``2 (size - 1)`` possible deviations, switches to another strategy with the
    fixation probability of its payoff gain; the rest stays. The stationary distribution
    is solved exactly (a linear system over the ``K^2`` profiles; profiles beyond ``size``
    flow into ``(0, 0)`` and keep no mass).
    """
    k = payoffs.shape[0]
    valid = jnp.arange(k) < size
    eta = jnp.maximum(2.0 * (size.astype(jnp.float32) - 1.0), 1.0)
    # rows (i, j) -> (i', j): player 1 deviates; (i, j) -> (i, j'): player 2 deviates.
    gain1 = payoffs[None, :, :] - payoffs[:, None, :]  # [i, i', j]
    gain2 = -(payoffs[:, None, :] - payoffs[:, :, None])  # [i, j, j']
    move1 = fixation_probability(gain1, alpha, m) / eta
    move2 = fixation_probability(gain2, alpha, m) / eta
    eye = jnp.eye(k, dtype=bool)
    move1 = jnp.where(eye[:, :, None] | ~valid[None, :, None], 0.0, move1)
    move2 = jnp.where(eye[None] | ~valid[None, None, :], 0.0, move2)
    # P[(i, j), (i', j')] as a [k, k, k, k] array.
    p = jnp.einsum("iaj,jb->ijab", move1, jnp.eye(k)) + jnp.einsum(
        "ia,ijb->ijab", jnp.eye(k), move2
    )
    stay = 1.0 - jnp.sum(p, axis=(2, 3))
    p = p + jnp.einsum("ij,ia,jb->ijab", stay, jnp.eye(k), jnp.eye(k))
    profile_valid = valid[:, None] & valid[None, :]
    to_origin = jnp.zeros((k, k)).at[0, 0].set(1.0)
    p = jnp.where(profile_valid[:, :, None, None], p, to_origin[None, None])
    p = p.reshape(k * k, k * k)
    # pi (P - I) = 0 and sum(pi) = 1: the last equation replaced by the normalisation.
    a = (p.T - jnp.eye(k * k)).at[-1].set(1.0)
    b = jnp.zeros(k * k).at[-1].set(1.0)
    pi = jnp.linalg.solve(a, b).reshape(k, k)
    pi = jnp.maximum(jnp.where(profile_valid, pi, 0.0), 0.0)
    pi = pi / jnp.sum(pi)
    return jnp.sum(pi, axis=1), jnp.sum(pi, axis=0)


def meta_solve(cfg: Config, payoffs: jax.Array, size: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The meta-strategies ``(w1 [K], w2 [K])`` of ``cfg.solver`` over the first ``size``."""
    if cfg.solver == "nash":
        return solve_zero_sum(payoffs, size, cfg.solver_steps)
    if cfg.solver == "alpharank":
        return alpharank(payoffs, size, cfg.alpha, cfg.alpharank_population)
    valid = (jnp.arange(payoffs.shape[0]) < size).astype(jnp.float32)
    uniform = valid / jnp.sum(valid)
    return uniform, uniform


# --- oracles --------------------------------------------------------------------------------


def ppo_response(
    cfg: Config, seat: int, population: jax.Array, weights: jax.Array, key: jax.Array, hp: HParams
) -> jax.Array:
    """A strategy ``[3, 2]`` for ``seat`` from a fresh PPO agent trained against the
    mixture ``weights`` of the opponent's ``population``: its probability of action 1
    at each information set."""
    env = kp.KuhnPoker(seat)
    env_params = kp.KuhnParams(population, weights)
    state = ppo.init(cfg.ppo, env, key, hp, env_params)
    state, _ = ppo.train(cfg.ppo, env, state, hp, cfg.ppo_updates)
    dist, _ = ppo.network(cfg.ppo, env).apply(state.params, kp.infoset_observations())
    return jnp.exp(dist.log_prob(jnp.ones((kp.NUM_CARDS, 2), jnp.int32)))


def ppo_responses(
    cfg: Config, state: State, w1: jax.Array, w2: jax.Array, key: jax.Array, hp: HParams
) -> tuple[jax.Array, jax.Array]:
    """Each player's :func:`ppo_response` ``[3, 2]`` to the other's meta-mixture."""
    key1, key2 = jax.random.split(key)
    br1 = ppo_response(cfg, 1, state.pop2, w2, key1, hp)
    br2 = ppo_response(cfg, 2, state.pop1, w1, key2, hp)
    return br1, br2


# --- the loop -------------------------------------------------------------------------------


def meta_mixture(cfg: Config, state: State) -> tuple[jax.Array, jax.Array, Metrics]:
    """The meta-strategies of the current populations, the behaviour strategies they play
    like (``[3, 2]`` each), and their exploitability and player 1's payoff."""
    payoffs = kp.payoff_matrix(state.pop1, state.pop2)
    w1, w2 = meta_solve(cfg, payoffs, state.size)
    p1, p2 = kp.mix(state.pop1, w1, 1), kp.mix(state.pop2, w2, 2)
    metrics = {
        "exploitability": kp.exploitability(p1, p2),
        "payoff": kp.payoff(p1, p2),
        "population": state.size,
    }
    return (w1, w2), (p1, p2), metrics


def iteration(cfg: Config, state: State, hp: HParams) -> tuple[State, Metrics]:
    """Meta-solve, measure the meta-mixture, add each player's response to its population.

    Besides :func:`meta_mixture`'s metrics, ``oracle_gap``: what the responses fall short
    of exact best responses to the same mixtures, summed over the two players (0 for the
    exact oracle). Call it at most ``cfg.iterations`` times from :func:`init`: the
    populations have that many free slots (beyond them the responses would be dropped).
    """
    (w1, w2), (p1, p2), metrics = meta_mixture(cfg, state)
    key, key_respond = jax.random.split(state.key)
    (best1, value1), (best2, value2) = kp.best_response(p2, 1), kp.best_response(p1, 2)
    if cfg.oracle == "exact":
        br1, br2 = best1, best2
    else:
        br1, br2 = ppo_responses(cfg, state, w1, w2, key_respond, hp)
    metrics["oracle_gap"] = value1 + value2 - (kp.payoff(br1, p2) - kp.payoff(p1, br2))
    state = state.replace(
        pop1=state.pop1.at[state.size].set(br1),
        pop2=state.pop2.at[state.size].set(br2),
        size=state.size + 1,
        key=key,
    )
    return state, metrics


def train(cfg: Config, state: State, hp: HParams) -> tuple[State, Metrics]:
    """``cfg.iterations`` PSRO iterations as one scan, from a fresh :func:`init`.

    Metrics are stacked ``[iterations + 1]``: entry ``t`` measures the meta-mixture over
    the first ``t + 1`` strategies (entry 0 is the random start, the last the final
    populations; its ``oracle_gap`` is NaN).
    """
    state, metrics = jax.lax.scan(lambda s, _: iteration(cfg, s, hp), state, None, cfg.iterations)
    _, _, final = meta_mixture(cfg, state)
    final["oracle_gap"] = jnp.full((), jnp.nan)  # no response after the last iteration
    metrics = jax.tree.map(lambda xs, x: jnp.concatenate([xs, x[None]]), metrics, final)
    return state, metrics
