"""Kuhn poker (Kuhn 1950): exact payoffs, best responses and exploitability, and an env in
which a learner plays one seat against a population's mixture.

The game: a deck of three cards (0 < 1 < 2), each player antes 1 and gets one card. Player 1
passes or bets 1; after a pass, player 2 passes (showdown for 1) or bets; after a bet, the
other player folds (losing the ante) or calls (showdown for 2). The higher card wins a
showdown. Action 0 is pass/fold, 1 is bet/call.

A player's **strategy** is ``[3, 2]`` float32: the probability of action 1 at each of its
six information sets, ``[card, decision]``. Player 1's decisions are 0 = opening and 1 =
after pass-bet; player 2's are 0 = after a pass and 1 = after a bet. Everything here is a
closed form over the six deals, exact and differentiable; the game's value for player 1 is
``-1/18`` and ``exploitability`` is 0 exactly at a Nash equilibrium.

A **population** is ``[K, 3, 2]`` strategies with mixture weights ``[K]``. A mixture of
strategies plays like one behaviour strategy whose probabilities are reach-weighted
averages (:func:`mix`): the weights of player 1's second decision are each strategy's
probability of having passed first.

:class:`KuhnPoker` is the jaxrl env for learning a best response by RL: the learner sits in
``seat`` (1 or 2, static); each episode deals the cards and draws the opponent's strategy
from ``params.population`` by ``params.weights``. The observation is ``[5]``: the one-hot
card and the one-hot decision. The reward, at the episode's end, is the learner's winnings.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.envs import spaces
from jaxrl.envs.base import Env, Step
from jaxrl.errors import ConfigError

NUM_CARDS = 3
GAME_VALUE = -1.0 / 18.0  # player 1's value at every Nash equilibrium
# The six deals (card of player 1, card of player 2), each of probability 1/6.
DEALS = jnp.array([(a, b) for a in range(NUM_CARDS) for b in range(NUM_CARDS) if a != b])


def _terms(p1: jax.Array, p2: jax.Array):
    """Per-deal probabilities of the five terminal histories, ``[6]`` each, and the
    showdown sign for player 1."""
    c1, c2 = DEALS[:, 0], DEALS[:, 1]
    x, y = p1[c1, 0], p1[c1, 1]  # P1: bet first; call after pass-bet
    u, v = p2[c2, 0], p2[c2, 1]  # P2: bet after pass; call after bet
    sign = jnp.sign(c1 - c2).astype(jnp.float32)
    return x, y, u, v, sign


def payoff(p1: jax.Array, p2: jax.Array) -> jax.Array:
    """Player 1's expected winnings ``[]`` when strategies ``p1`` and ``p2`` (``[3, 2]``
    each) meet; player 2's are its negative."""
    x, y, u, v, s = _terms(p1, p2)
    per_deal = (
        (1 - x) * (1 - u) * s  # pass, pass: showdown for 1
        + (1 - x) * u * (1 - y) * -1.0  # pass, bet, fold
        + (1 - x) * u * y * 2 * s  # pass, bet, call: showdown for 2
        + x * (1 - v) * 1.0  # bet, fold
        + x * v * 2 * s  # bet, call
    )
    return jnp.mean(per_deal)


def payoff_matrix(pop1: jax.Array, pop2: jax.Array) -> jax.Array:
    """``[K1, K2]`` player 1's payoff for every pair of the populations' strategies."""
    return jax.vmap(lambda a: jax.vmap(lambda b: payoff(a, b))(pop2))(pop1)


def mix(population: jax.Array, weights: jax.Array, player: int) -> jax.Array:
    """The behaviour strategy ``[3, 2]`` that plays like the mixture ``weights [K]`` of
    ``population [K, 3, 2]`` for ``player`` (1 or 2).

    Player 2's information sets each lie on one path of its own, so the mixture averages
    them with ``weights``. Player 1's second decision comes after its own pass: there the
    weights are ``weights * (1 - bet first)``, renormalised (plain weights where no
    strategy passes, a set never reached).
    """
    w = weights[:, None]
    first = jnp.sum(w * population[:, :, 0], axis=0)
    if player == 2:
        second = jnp.sum(w * population[:, :, 1], axis=0)
        return jnp.stack([first, second], axis=-1)
    reach = w * (1.0 - population[:, :, 0])  # [K, 3]
    total = jnp.sum(reach, axis=0)
    second_reached = jnp.sum(reach * population[:, :, 1], axis=0) / jnp.maximum(total, 1e-12)
    second_plain = jnp.sum(w * population[:, :, 1], axis=0)
    second = jnp.where(total > 1e-12, second_reached, second_plain)
    return jnp.stack([first, second], axis=-1)


def best_response(opponent: jax.Array, player: int) -> tuple[jax.Array, jax.Array]:
    """A deterministic best response of ``player`` (1 or 2) to the ``opponent`` strategy.

    Returns ``(strategy [3, 2], value [])``: the response (0/1 entries; at a tie it passes)
    and its expected winnings for ``player``. Each information set compares its actions'
    values summed over the two cards the opponent may hold, weighted by the probability
    that the opponent's play reaches it.
    """
    cards = jnp.arange(NUM_CARDS)
    other = jnp.array([[c for c in range(NUM_CARDS) if c != mine] for mine in range(NUM_CARDS)])
    sign = jnp.sign(cards[:, None] - other).astype(jnp.float32)  # [3, 2]: my showdown sign
    if player == 1:
        u, v = opponent[other, 0], opponent[other, 1]  # [3, 2] over the opponent's cards
        # After pass-bet: call wins 2s, fold loses 1; reached in proportion to u.
        call = jnp.sum(u * 2 * sign, axis=1)
        fold = jnp.sum(u * -1.0, axis=1)
        second = (call > fold).astype(jnp.float32)
        second_value = jnp.where(second[:, None] > 0, 2 * sign, -1.0)  # [3, 2]
        pass_value = jnp.sum((1 - u) * sign + u * second_value, axis=1)
        bet_value = jnp.sum((1 - v) * 1.0 + v * 2 * sign, axis=1)
        first = (bet_value > pass_value).astype(jnp.float32)
        value = jnp.sum(jnp.maximum(bet_value, pass_value)) / 6.0
        return jnp.stack([first, second], axis=-1), value
    x, y = opponent[other, 0], opponent[other, 1]  # player 1's play with the other cards
    # After a pass (weight 1 - x): pass gives showdown for 1; bet makes P1 fold or call.
    after_pass_pass = jnp.sum((1 - x) * sign, axis=1)
    after_pass_bet = jnp.sum((1 - x) * ((1 - y) * 1.0 + y * 2 * sign), axis=1)
    # After a bet (weight x): fold loses 1, call is a showdown for 2.
    after_bet_fold = jnp.sum(x * -1.0, axis=1)
    after_bet_call = jnp.sum(x * 2 * sign, axis=1)
    first = (after_pass_bet > after_pass_pass).astype(jnp.float32)
    second = (after_bet_call > after_bet_fold).astype(jnp.float32)
    value = (
        jnp.sum(jnp.maximum(after_pass_pass, after_pass_bet))
        + jnp.sum(jnp.maximum(after_bet_fold, after_bet_call))
    ) / 6.0
    return jnp.stack([first, second], axis=-1), value


def exploitability(p1: jax.Array, p2: jax.Array) -> jax.Array:
    """``(BR value against p2 + BR value against p1) / 2`` ``[]``: half of NashConv; 0
    exactly at a Nash equilibrium, positive elsewhere."""
    return 0.5 * (best_response(p2, 1)[1] + best_response(p1, 2)[1])


def nash_strategies(alpha: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """One of Kuhn's equilibria: player 1 bets a jack with ``alpha`` in ``[0, 1/3]``, a
    king with ``3 alpha``, calls with a queen after pass-bet with ``alpha + 1/3``; player 2
    bets a jack after a pass with 1/3 and calls a bet with a queen with 1/3."""
    p1 = jnp.array([[alpha, 0.0], [0.0, alpha + 1 / 3], [3 * alpha, 1.0]], jnp.float32)
    p2 = jnp.array([[1 / 3, 0.0], [0.0, 1 / 3], [1.0, 1.0]], jnp.float32)
    return p1, p2


# --- the env ----------------------------------------------------------------------------


class KuhnParams(struct.PyTreeNode):
    """The opponent: a population ``[K, 3, 2]`` and its mixture weights ``[K]``."""

    population: jax.Array
    weights: jax.Array


class KuhnState(struct.PyTreeNode):
    """One deal: the cards, the learner's next decision and this episode's opponent."""

    cards: jax.Array  # [2] int32: player 1's and player 2's cards
    decision: jax.Array  # int32: the learner's decision index (0 or 1)
    opponent: jax.Array  # [3, 2]: the strategy drawn for this episode


@dataclasses.dataclass(frozen=True)
class KuhnPoker(Env):
    """The learner in ``seat`` (1 or 2) against a strategy drawn from ``params`` each episode.

    ``default_params`` is one opponent that plays every action with probability 1/2.
    """

    seat: int = 1

    def __post_init__(self):
        if self.seat not in (1, 2):
            raise ConfigError(f"seat must be 1 or 2, got {self.seat!r}")

    @property
    def name(self) -> str:
        return f"KuhnPoker-seat{self.seat}"

    def default_params(self) -> KuhnParams:
        return KuhnParams(jnp.full((1, NUM_CARDS, 2), 0.5), jnp.ones((1,)))

    def observation_space(self, params):
        return spaces.Box(0.0, 1.0, (NUM_CARDS + 2,))

    def action_space(self, params):
        return spaces.Discrete(2)

    def _obs(self, state: KuhnState) -> jax.Array:
        card = state.cards[self.seat - 1]
        return jnp.concatenate([jax.nn.one_hot(card, NUM_CARDS), jax.nn.one_hot(state.decision, 2)])

    def reset(self, key, params: KuhnParams):
        key_deal, key_opp, key_act = jax.random.split(key, 3)
        cards = jax.random.permutation(key_deal, NUM_CARDS)[:2].astype(jnp.int32)
        k = jax.random.choice(key_opp, params.weights.shape[0], p=params.weights)
        opponent = params.population[k]
        if self.seat == 1:
            decision = jnp.zeros((), jnp.int32)
        else:  # player 1 opens: the learner decides after its pass (0) or bet (1)
            bets = jax.random.uniform(key_act) < opponent[cards[0], 0]
            decision = bets.astype(jnp.int32)
        state = KuhnState(cards, decision, opponent)
        return self._obs(state), state

    def step(self, key, state: KuhnState, action, params: KuhnParams):
        del params
        bet = action.astype(jnp.int32) == 1
        c1, c2 = state.cards[0], state.cards[1]
        s = jnp.sign(c1 - c2).astype(jnp.float32)  # player 1's showdown sign
        # One draw serves the opponent's only decision in this step.
        opp_acts = jax.random.uniform(key) < state.opponent[c2 if self.seat == 1 else c1]
        if self.seat == 1:
            u, v = opp_acts[0], opp_acts[1]  # player 2: bets after a pass; calls a bet
            opening = state.decision == 0
            # Opening: bet -> 2 calls (2s) or folds (+1); pass -> 2 bets (our next
            # decision) or passes (showdown s). After pass-bet: call 2s, fold -1.
            opening_reward = jnp.where(bet, jnp.where(v, 2 * s, 1.0), jnp.where(u, 0.0, s))
            continues = opening & ~bet & u
            reward = jnp.where(opening, opening_reward, jnp.where(bet, 2 * s, -1.0))
        else:
            y = opp_acts[1]  # player 1 calls after pass-bet
            after_pass = state.decision == 0
            # After a pass: bet -> 1 calls (-2s) or folds (+1); pass -> showdown (-s).
            # After a bet: call -> showdown (-2s); fold -> -1.
            reward = jnp.where(
                after_pass,
                jnp.where(bet, jnp.where(y, -2 * s, 1.0), -s),
                jnp.where(bet, -2 * s, -1.0),
            )
            continues = jnp.zeros((), bool)
        next_state = state.replace(decision=jnp.ones((), jnp.int32))
        obs = self._obs(next_state)
        reward = jnp.where(continues, 0.0, reward)
        done = jnp.logical_not(continues)
        step = Step(reward=reward, terminated=done, truncated=jnp.zeros((), bool), final_obs=obs)
        return obs, next_state, step


def infoset_observations() -> jax.Array:
    """``[3, 2, 5]``: the env's observation at each ``[card, decision]`` information set
    (the same for both seats), so a policy network gives a strategy in one batched call."""
    cards = jax.nn.one_hot(jnp.arange(NUM_CARDS), NUM_CARDS)
    decisions = jnp.eye(2)
    return jnp.concatenate(
        [
            jnp.broadcast_to(cards[:, None, :], (NUM_CARDS, 2, NUM_CARDS)),
            jnp.broadcast_to(decisions[None], (NUM_CARDS, 2, 2)),
        ],
        axis=-1,
    )
