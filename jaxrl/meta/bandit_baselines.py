"""Classic Bernoulli-bandit strategies, the baselines of RL^2's bandit table (Duan et al. 2016).

Each strategy is a pure ``select`` rule on per-arm statistics; :func:`run` plays it on a
batch of trials (one task each, ``probs [B, k]``) for ``num_pulls`` pulls as one
``lax.scan`` of a ``vmap`` and returns the total reward of every trial. Nothing here calls
``jit``; callers do (``num_pulls`` and the strategy name are static).

Strategies (``counts [k]`` pulls and ``successes [k]`` of each arm, ``t`` pulls so far):

* ``random``: a uniform arm.
* ``greedy``: the best posterior mean ``μ_i = (s_i + α) / (n_i + α + β)`` under a Beta(α, β)
  prior (Duan et al.'s baselines all use a tuned Beta prior; an untried arm scores the prior
  mean ``α / (α + β)``, so a low prior mean makes greedy stick with the first arm that pays).
* ``epsilon_greedy``: ``greedy`` with probability ``1 − ε``, else a uniform arm.
* ``ucb1``: ``argmax μ_i + c·sqrt(2 ln(t + 1) / (n_i + α + β))`` (Auer et al. 2002, with the
  prior's pseudo-counts so untried arms are defined; ``c = 0.2`` tuned here on
  n = 100, as Duan et al. tuned theirs; ``c = 1`` is textbook UCB1).
* ``thompson``: sample ``θ_i ~ Beta(α + s_i, β + f_i)``, pull the argmax.

Ties are broken uniformly at random.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl.errors import ConfigError

STRATEGIES = ("random", "greedy", "epsilon_greedy", "ucb1", "thompson")
DEFAULTS = {
    "random": {},
    "greedy": {"alpha": 1.0, "beta": 1.0},
    "epsilon_greedy": {"epsilon": 0.1, "alpha": 1.0, "beta": 1.0},
    "ucb1": {"c": 0.2, "alpha": 1.0, "beta": 1.0},
    "thompson": {"alpha": 1.0, "beta": 1.0},
}


def _argmax_random_ties(key: jax.Array, score: jax.Array) -> jax.Array:
    """``argmax`` of ``score [k]`` with ties broken uniformly at random."""
    best = score >= jnp.max(score)
    noise = jax.random.uniform(key, score.shape)
    return jnp.argmax(jnp.where(best, noise, -1.0))


def select(
    strategy: str,
    key: jax.Array,
    counts: jax.Array,
    successes: jax.Array,
    t: jax.Array,
    hp: dict,
) -> jax.Array:
    """The arm ``strategy`` pulls given ``counts [k]``, ``successes [k]`` and ``t`` (scalar).

    ``hp`` holds the strategy's traced hyperparameters (see ``DEFAULTS``).
    """
    key_tie, key_explore, key_arm = jax.random.split(key, 3)
    num_arms = counts.shape[0]
    if strategy == "random":
        return jax.random.randint(key_arm, (), 0, num_arms)
    pseudo = counts + hp["alpha"] + hp["beta"]
    mean = (successes + hp["alpha"]) / pseudo
    if strategy == "greedy":
        return _argmax_random_ties(key_tie, mean)
    if strategy == "epsilon_greedy":
        greedy = _argmax_random_ties(key_tie, mean)
        explore = jax.random.uniform(key_explore) < hp["epsilon"]
        return jnp.where(explore, jax.random.randint(key_arm, (), 0, num_arms), greedy)
    if strategy == "ucb1":
        log_t = jnp.log((t + 1).astype(jnp.float32))
        bonus = hp["c"] * jnp.sqrt(2.0 * log_t / pseudo)
        return _argmax_random_ties(key_tie, mean + bonus)
    if strategy == "thompson":
        theta = jax.random.beta(key_arm, hp["alpha"] + successes, hp["beta"] + counts - successes)
        return _argmax_random_ties(key_tie, theta)
    raise ConfigError(f"unknown strategy {strategy!r}; valid: {STRATEGIES}")


def run(
    strategy: str, key: jax.Array, probs: jax.Array, num_pulls: int, **hp
) -> tuple[jax.Array, jax.Array]:
    """Plays ``strategy`` on a batch of trials.

    Args:
        strategy: one of ``STRATEGIES`` (static).
        key: PRNG key.
        probs: ``[B, k]`` arm success probabilities, one task per trial.
        num_pulls: ``n``, pulls per trial (static).
        **hp: strategy hyperparameters overriding ``DEFAULTS[strategy]`` (may be traced).

    Returns:
        ``(total_reward [B], best_arm [n, B], regret [n, B])``: the sampled total reward of
        each trial, whether each pull chose a best arm (for learning curves) and the expected
        regret of each pull, ``max_i p_i - p_a``.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; valid: {STRATEGIES}")
    unknown = set(hp) - set(DEFAULTS[strategy])
    if unknown:
        raise ConfigError(f"unknown hyperparameter(s) {sorted(unknown)} for {strategy!r}")
    if probs.ndim != 2:
        raise ConfigError(f"probs must be [B, k], got shape {probs.shape}")
    hp = {k: jnp.asarray(v, jnp.float32) for k, v in (DEFAULTS[strategy] | hp).items()}
    num_trials, num_arms = probs.shape
    best_p = jnp.max(probs, axis=1)

    def pull(carry, inputs):
        counts, successes = carry
        t, key = inputs
        key_sel, key_rew = jax.random.split(key)
        sel_keys = jax.random.split(key_sel, num_trials)
        action = jax.vmap(lambda k, c, s: select(strategy, k, c, s, t, hp))(
            sel_keys, counts, successes
        )
        p = jnp.take_along_axis(probs, action[:, None], axis=1)[:, 0]
        reward = jax.random.bernoulli(key_rew, p).astype(jnp.float32)
        one_hot = jax.nn.one_hot(action, num_arms, dtype=jnp.float32)
        counts = counts + one_hot
        successes = successes + one_hot * reward[:, None]
        return (counts, successes), (reward, p >= best_p, best_p - p)

    zeros = jnp.zeros((num_trials, num_arms), jnp.float32)
    inputs = (jnp.arange(num_pulls), jax.random.split(key, num_pulls))
    _, (rewards, best, regret) = jax.lax.scan(pull, (zeros, zeros), inputs)
    return rewards.sum(axis=0), best, regret


def tuned(strategy: str, num_pulls: int) -> dict:
    """Hyperparameters we use for the Duan et al. table (their baselines were tuned too).

    ``epsilon_greedy``: ``ε = 0.1`` for ``n <= 10`` would waste a tenth of a short trial, so
    ``ε = 0`` there (it then equals ``greedy``, as the table's equal columns suggest) and
    ``ε = 0.02`` for longer trials.
    """
    if strategy == "epsilon_greedy":
        return {"epsilon": 0.0 if num_pulls <= 10 else 0.02}
    return {}


def sample_probs(key: jax.Array, num_trials: int, num_arms: int) -> jax.Array:
    """Duan et al.'s task distribution: ``probs [B, k]``, i.i.d. ``U[0, 1]``."""
    return jax.random.uniform(key, (num_trials, num_arms))
