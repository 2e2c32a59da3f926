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
* ``gittins``: the finite-horizon Gittins index (Niño-Mora 2011; Kaufmann 2018 studies it
  as a near-Bayes-optimal index for finite-horizon Bernoulli bandits): with ``h`` pulls left,
  arm ``i``'s index is the best reward rate ``sup_τ E[Σ_{t<τ} r_t] / E[τ]`` over stopping
  times ``1 <= τ <= h`` of pulling that arm alone from its posterior, computed once per
  ``(n, α, β)`` by :func:`gittins_indices`. Pull the largest index. It needs no tuned
  constant (the discounted index of Duan et al.'s column needs a discount).

Ties are broken uniformly at random.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.errors import ConfigError

STRATEGIES = ("random", "greedy", "epsilon_greedy", "ucb1", "thompson", "gittins")
DEFAULTS = {
    "random": {},
    "greedy": {"alpha": 1.0, "beta": 1.0},
    "epsilon_greedy": {"epsilon": 0.1, "alpha": 1.0, "beta": 1.0},
    "ucb1": {"c": 0.2, "alpha": 1.0, "beta": 1.0},
    "thompson": {"alpha": 1.0, "beta": 1.0},
    "gittins": {"alpha": 1.0, "beta": 1.0},
}


@functools.lru_cache(maxsize=8)
def gittins_indices(num_pulls: int, alpha: float = 1.0, beta: float = 1.0) -> np.ndarray:
    """Finite-horizon Gittins indices of a Bernoulli arm under a ``Beta(alpha, beta)`` prior.

    Calibration: against a retirement reward ``λ`` per remaining pull, let ``W_k(s, f)`` be
    the best value with ``k`` pulls left after ``s`` successes and ``f`` failures,
    ``W_0 = 0``, ``W_k = max(λ k, C_k)`` with ``C_k = μ (1 + W_{k-1}(s+1, f)) +
    (1 − μ) W_{k-1}(s, f+1)`` and ``μ = (s + α) / (s + f + α + β)``. The index is the ``λ``
    at which pulling once more and then acting optimally breaks even, ``C_k(λ) = λ k``.
    ``C_k − λ k`` falls strictly in ``λ`` (slope ``<= −1``), so one backward sweep over the
    ``k`` levels on a grid of ``G = 1025`` values of ``λ`` in ``[0, 1]``, with linear
    interpolation between the two grid points around the root, gives every index at once
    (error below 1e-4 against bisection). Cost ``O(G n^3)`` time and ``O(G n^2)`` float32
    memory: about 1 s and 0.2 GB for ``n = 100`` on one CPU core, growing to minutes and
    several GB by ``n = 500``. Cached on the arguments.

    Args:
        num_pulls: ``n``, the trial length (static).
        alpha, beta: the Beta prior (static floats).

    Returns:
        ``[n + 1, n + 1, n + 1]`` float32 table ``index[h, s, f]`` for ``h >= 1`` pulls left
        (this one included) and ``s + f <= n − h``; row ``h = 0`` is unused (NaN).
    """
    if num_pulls < 1 or not (alpha > 0 and beta > 0):
        raise ConfigError(
            f"need num_pulls >= 1 and alpha, beta > 0; got {num_pulls}, {alpha}, {beta}"
        )
    n = num_pulls
    lam = np.linspace(0.0, 1.0, 1025, dtype=np.float32)[:, None, None]  # [G, 1, 1]
    table = np.full((n + 1, n + 1, n + 1), np.nan, np.float32)
    value = np.zeros((lam.shape[0], n + 1, n + 1), np.float32)  # W_{k-1}, s, f < n - k + 2
    for k in range(1, n + 1):
        m = n - k + 1  # states s, f < m hold every s + f <= n - k
        s, f = np.arange(m)[:, None], np.arange(m)[None, :]
        mean = ((s + alpha) / (s + f + alpha + beta)).astype(np.float32)  # [m, m]
        cont = mean * (1.0 + value[:, 1 : m + 1, :m]) + (1.0 - mean) * value[:, :m, 1 : m + 1]
        table[k, :m, :m] = _falling_root(cont - lam * k, lam[:, 0, 0])
        value = np.maximum(lam * k, cont)
    table.setflags(write=False)
    return table


def _falling_root(adv: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Root in ``grid [G]`` of ``adv [G, ...]``, decreasing along axis 0, by interpolation."""
    last_pos = np.clip((adv > 0).sum(0) - 1, 0, grid.size - 2)  # adv[0] > 0 always
    a0 = np.take_along_axis(adv, last_pos[None], 0)[0]
    a1 = np.take_along_axis(adv, last_pos[None] + 1, 0)[0]
    frac = np.clip(a0 / np.maximum(a0 - a1, 1e-30), 0.0, 1.0)
    return grid[last_pos] + frac * (grid[1] - grid[0])


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

    ``hp`` holds the strategy's traced hyperparameters (see ``DEFAULTS``); for ``gittins``
    also ``hp["index"]``, the :func:`gittins_indices` table of the trial length.
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
    if strategy == "gittins":
        pulls_left = hp["index"].shape[0] - 1 - t
        failures = counts - successes
        index = hp["index"][pulls_left, successes.astype(jnp.int32), failures.astype(jnp.int32)]
        return _argmax_random_ties(key_tie, index)
    raise ConfigError(f"unknown strategy {strategy!r}; valid: {STRATEGIES}")


def run(
    strategy: str, key: jax.Array, probs: jax.Array, num_pulls: int, **hp
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Plays ``strategy`` on a batch of trials.

    Args:
        strategy: one of ``STRATEGIES`` (static).
        key: PRNG key.
        probs: ``[B, k]`` arm success probabilities, one task per trial.
        num_pulls: ``n``, pulls per trial (static).
        **hp: strategy hyperparameters overriding ``DEFAULTS[strategy]`` (may be traced,
            except ``gittins``' prior, which fixes its index table).

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
    hp = DEFAULTS[strategy] | hp
    if strategy == "gittins":
        try:
            table = gittins_indices(num_pulls, float(hp["alpha"]), float(hp["beta"]))
        except jax.errors.ConcretizationTypeError as e:
            raise ConfigError("gittins' alpha and beta must be concrete (not traced)") from e
    hp = {k: jnp.asarray(v, jnp.float32) for k, v in hp.items()}
    if strategy == "gittins":
        hp["index"] = jnp.asarray(table)
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
