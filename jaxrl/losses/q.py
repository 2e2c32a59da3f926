"""Q-learning targets and losses shared by the value-based family (DQN .. Rainbow, R2D2, Ape-X).

The per-example losses are rlax's (``double_q_learning``, ``categorical_double_q_learning``,
``quantile_q_learning``), vmapped over the batch. n-step returns are computed here from
replay windows of consecutive steps of one env, cut at the first episode end, so one
window format serves 1-step and n-step learning alike.

Gradients are stopped on the next-state network outputs, not on whole targets (rlax's
``stop_target_gradients`` is off): the target ``G + d · sg(Q(s', ·))`` keeps its
derivative in ``G`` and ``d``, so in the discount, which meta-gradients need (STYLE §4).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import rlax

DISTRIBUTIONS = ("none", "c51", "qr")


def n_step_bootstrap(
    reward: jax.Array, done: jax.Array, terminated: jax.Array, discount: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """n-step return from the first step of each window, stopped at the first episode end.

    With ``k*`` the first step where ``done`` (else ``n - 1``):
    ``G = sum_{k <= k*} discount^k r_k`` and the bootstrap discount is
    ``discount^(k*+1) (1 - terminated_{k*})`` (truncated episodes still bootstrap, from
    the pre-reset ``next_obs[k*]``).

    Args:
        reward, done, terminated: ``[B, n]`` (``done`` and ``terminated`` as 0/1 or bool).
        discount: scalar.

    Returns:
        ``(G [B], bootstrap_discount [B], k* [B] int32)``.
    """
    chex.assert_rank([reward, done, terminated], 2)
    n = reward.shape[1]
    done = done.astype(bool)
    last = jnp.where(jnp.any(done, axis=1), jnp.argmax(done, axis=1), n - 1).astype(jnp.int32)
    steps = jnp.arange(n, dtype=jnp.int32)
    included = (steps[None, :] <= last[:, None]).astype(reward.dtype)
    powers = discount ** steps.astype(reward.dtype)
    returns = jnp.sum(included * powers[None, :] * reward, axis=1)
    term = jnp.take_along_axis(terminated.astype(reward.dtype), last[:, None], axis=1)[:, 0]
    boot = discount ** (last + 1).astype(reward.dtype) * (1.0 - term)
    return returns, boot, last


def take_last(x: jax.Array, last: jax.Array) -> jax.Array:
    """``x[b, last[b]]`` for ``x [B, n, ...]``, ``last [B]`` -> ``[B, ...]``."""
    return jax.vmap(lambda xb, i: xb[i])(x, last)


def scalar_td_error(
    q_tm1: jax.Array,
    action: jax.Array,
    returns: jax.Array,
    discount: jax.Array,
    q_t_value: jax.Array,
    q_t_selector: jax.Array,
) -> jax.Array:
    """TD errors ``[B]`` of (double) Q-learning:
    ``G + d Q_value(s', argmax_a Q_selector(s', a)) - Q(s, a)``.

    Pass the target network's values as both arguments for DQN's max target, the online
    network's as ``q_t_selector`` for Double DQN. ``q_* [B, A]``, the rest ``[B]``.
    Gradients reach ``q_tm1``, ``returns`` and ``discount``, not ``q_t_*``.
    """
    sg = jax.lax.stop_gradient
    per_example = lambda q, a, r, d, qt, sel: rlax.double_q_learning(  # noqa: E731
        q, a, r, d, sg(qt), sg(sel), stop_target_gradients=False
    )
    return jax.vmap(per_example)(q_tm1, action, returns, discount, q_t_value, q_t_selector)


def categorical_loss(
    atoms: jax.Array,
    logits_tm1: jax.Array,
    action: jax.Array,
    returns: jax.Array,
    discount: jax.Array,
    logits_t: jax.Array,
    q_t_selector: jax.Array,
) -> jax.Array:
    """C51 cross-entropy ``[B]`` to the projected target distribution (Bellemare et al. 2017).

    ``atoms [K]`` the fixed support, ``logits_* [B, A, K]``, ``q_t_selector [B, A]``
    (expected values of the net that picks the next action: target net for C51, online
    net for double), ``action, returns, discount [B]``. Gradients reach ``logits_tm1``,
    ``returns`` and ``discount``, not ``logits_t`` or ``q_t_selector``.

    rlax's cross-entropy is ``KL + entropy`` of the target, whose ``log`` has a NaN
    derivative at the projected target's zeros. So rlax's loss keeps its stopped target,
    and the target's derivative in ``returns`` and ``discount`` (meta-gradients need it
    in ``∇_θ loss``) comes from ``c(p) − c(sg(p))``, ``c(p) = −Σ p · log_softmax(logits_tm1[a])``:
    exactly 0 in value and in ``∂/∂logits_tm1``, so loss and gradient are rlax's bitwise.
    """
    sg = jax.lax.stop_gradient
    per_example = lambda lt, a, r, d, lt1, sel: rlax.categorical_double_q_learning(  # noqa: E731
        atoms, lt, a, r, d, atoms, lt1, sel
    )
    losses = jax.vmap(per_example)(logits_tm1, action, returns, discount, logits_t, q_t_selector)

    def target(r, d, lt1, sel):  # rlax's projected target, with its derivative in r and d
        probs = jax.nn.softmax(sg(lt1)[jnp.argmax(sel)])
        return rlax.categorical_l2_project(r + d * atoms, probs, atoms)

    targets = jax.vmap(target)(returns, discount, logits_t, q_t_selector)
    taken = jnp.take_along_axis(logits_tm1, action[:, None, None].astype(jnp.int32), axis=1)
    log_q = jax.nn.log_softmax(taken[:, 0], axis=-1)
    cross_entropy = lambda p: -jnp.sum(p * log_q, axis=-1)  # noqa: E731
    return losses + (cross_entropy(targets) - cross_entropy(sg(targets)))


def quantile_midpoints(num_quantiles: int) -> jax.Array:
    """``tau_hat_i = (2 i + 1) / (2 N)``, ``[N]``: the quantile levels QR-DQN regresses on."""
    return (2.0 * jnp.arange(num_quantiles) + 1.0) / (2.0 * num_quantiles)


def quantile_loss(
    quantiles_tm1: jax.Array,
    action: jax.Array,
    returns: jax.Array,
    discount: jax.Array,
    quantiles_t: jax.Array,
    selector_t: jax.Array,
    huber: float = 1.0,
) -> jax.Array:
    """QR-DQN quantile Huber loss ``[B]`` (Dabney et al. 2018).

    ``quantiles_* [B, A, N]``; ``selector_t [B, A, N]`` picks the greedy next action by
    its mean (target net's quantiles for QR-DQN, the online net's for double). Gradients
    reach ``quantiles_tm1``, ``returns`` and ``discount``, not ``quantiles_t``/``selector_t``.
    """
    taus = quantile_midpoints(quantiles_tm1.shape[-1])
    sg = jax.lax.stop_gradient
    per_example = lambda q, a, r, d, sel, qt: rlax.quantile_q_learning(  # noqa: E731
        q.T, taus, a, r, d, sg(sel).T, sg(qt).T, huber, stop_target_gradients=False
    )
    return jax.vmap(per_example)(quantiles_tm1, action, returns, discount, selector_t, quantiles_t)


def expected_q(out: jax.Array, distribution: str, atoms: jax.Array | None = None) -> jax.Array:
    """Action values ``[..., A]`` from a network output: itself (``none``), the mean over
    the softmax of the atoms (``c51``, ``out [..., A, K]``), or the quantile mean (``qr``)."""
    if distribution == "none":
        return out
    if distribution == "c51":
        return jax.nn.softmax(out, axis=-1) @ atoms
    return jnp.mean(out, axis=-1)


def regression(td: jax.Array, kind: str, delta: float = 1.0) -> jax.Array:
    """Elementwise regression loss of TD errors: rlax Huber (``delta``) or ``0.5 td^2``."""
    if kind == "huber":
        return rlax.huber_loss(td, delta)
    return rlax.l2_loss(td)
