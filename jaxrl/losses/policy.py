"""Policy-gradient terms: PPO's clipped surrogate (via rlax) and the KL-penalised surrogate."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import rlax


def clipped_surrogate_loss(
    log_prob: jax.Array, old_log_prob: jax.Array, advantage: jax.Array, clip_eps: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """PPO-clip (Schulman et al. 2017, arXiv:1707.06347), negated to a loss.

    ``L = −mean(min(ρ A, clip(ρ, 1 − ε, 1 + ε) A))`` with ``ρ = exp(log π − log π_old)``.

    Args:
        log_prob, old_log_prob, advantage: ``[B]``.
        clip_eps: scalar ``ε``.

    Returns:
        ``(loss, clip_fraction)``, both scalars.

    rlax's stop-gradient on the advantage is off: the learner differentiates with
    respect to the parameters only, and meta-gradients need ``∂A/∂γ`` and ``∂A/∂λ``.
    """
    chex.assert_rank([log_prob, old_log_prob, advantage], 1)
    ratio = jnp.exp(log_prob - old_log_prob)
    loss = rlax.clipped_surrogate_pg_loss(ratio, advantage, clip_eps, use_stop_gradient=False)
    clip_fraction = jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32))
    return loss, clip_fraction


def approx_kl(log_prob: jax.Array, old_log_prob: jax.Array) -> jax.Array:
    """Unbiased, non-negative estimate of ``KL(π_old ‖ π)`` from samples of ``π_old``.

    ``E[(ρ − 1) − log ρ]`` with ``ρ = π/π_old`` (Schulman's "k3" estimator). ``[B] -> []``.
    """
    log_ratio = log_prob - old_log_prob
    return jnp.mean(jnp.expm1(log_ratio) - log_ratio)


def kl_penalty_loss(
    log_prob: jax.Array, old_log_prob: jax.Array, advantage: jax.Array, beta: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """PPO's adaptive-KL objective: ``−mean(ρ A) + β · KL(π_old ‖ π)``; returns ``(loss, kl)``."""
    chex.assert_rank([log_prob, old_log_prob, advantage], 1)
    ratio = jnp.exp(log_prob - old_log_prob)
    kl = approx_kl(log_prob, old_log_prob)
    return -jnp.mean(ratio * advantage) + beta * kl, kl


def adapt_kl_beta(beta: jax.Array, kl: jax.Array, kl_target: jax.Array) -> jax.Array:
    """PPO paper's rule: double β if ``kl > 1.5 target``, halve it if ``kl < target / 1.5``."""
    beta = jnp.where(kl > 1.5 * kl_target, beta * 2.0, beta)
    return jnp.where(kl < kl_target / 1.5, beta * 0.5, beta)
