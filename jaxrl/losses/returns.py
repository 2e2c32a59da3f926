"""Advantages and returns, with termination and truncation kept apart.

rlax folds every episode end into ``discount_t``, which is right for terminations but
wrong for time limits: at a truncation the target should bootstrap from the value of
the observation the episode was cut at. :func:`gae` therefore takes the bootstrap
values ``v_t`` explicitly (the value of the *pre-reset* observation where an episode
was cut) and a per-step ``lambda_t`` that is zero where a trajectory is cut, so the
advantage recursion does not leak across episodes. When nothing is truncated it
equals ``rlax.truncated_generalized_advantage_estimation`` (tested).

Conventions follow rlax: one trajectory of length ``T``; ``r_t`` and ``discount_t``
belong to the transition from ``s_{t-1}`` to ``s_t``; the caller vmaps over envs.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def gae(
    r_t: jax.Array,
    discount_t: jax.Array,
    lambda_t: jax.Array,
    v_tm1: jax.Array,
    v_t: jax.Array,
) -> jax.Array:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438).

    ``δ_t = r_t + discount_t · v_t − v_tm1`` and
    ``A_t = δ_t + discount_t · lambda_t · A_{t+1}`` (computed backwards, ``A_T = 0``).

    Args:
        r_t: rewards ``[T]``.
        discount_t: ``γ`` times ``(1 − terminated)`` ``[T]``.
        lambda_t: ``λ`` times ``(1 − truncated)`` ``[T]`` (or a scalar ``λ``).
        v_tm1: values of the states the actions were taken in ``[T]``.
        v_t: bootstrap values of the next states ``[T]`` (pre-reset where truncated).

    Returns:
        Advantages ``[T]``. Gradients flow through every input (no stop-gradient), so
        meta-gradients with respect to ``γ`` and ``λ`` are available.
    """
    chex.assert_rank([r_t, discount_t, v_tm1, v_t], 1)
    chex.assert_equal_shape([r_t, discount_t, v_tm1, v_t])
    lambda_t = jnp.broadcast_to(lambda_t, r_t.shape)
    delta_t = r_t + discount_t * v_t - v_tm1

    def backward(advantage_tp1, inputs):
        delta, discount, lambda_ = inputs
        advantage = delta + discount * lambda_ * advantage_tp1
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward, jnp.zeros_like(delta_t[0]), (delta_t, discount_t, lambda_t), reverse=True
    )
    return advantages


def episode_gae(
    reward: jax.Array,
    value: jax.Array,
    bootstrap_value: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    discount: jax.Array,
    gae_lambda: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """GAE over a time-major rollout of auto-reset envs; returns ``(advantages, targets)``.

    Args:
        reward: ``[T, N]`` rewards.
        value: ``[T, N]`` values of the observations acted on.
        bootstrap_value: ``[T, N]`` value of the observation reached by each step, taken
            before auto-reset (so at a truncation it is the cut-off state's value).
        terminated: ``[T, N]`` bool, real episode ends (no bootstrap).
        truncated: ``[T, N]`` bool, time-limit ends (bootstrap, but cut the λ-trace).
        discount: scalar ``γ``.
        gae_lambda: scalar ``λ``.

    Returns:
        ``advantages [T, N]`` and value targets ``advantages + value`` ``[T, N]``.
    """
    chex.assert_equal_shape([reward, value, bootstrap_value, terminated, truncated])
    discount_t = discount * (1.0 - terminated.astype(reward.dtype))
    lambda_t = gae_lambda * (1.0 - truncated.astype(reward.dtype))
    advantages = jax.vmap(gae, in_axes=1, out_axes=1)(
        reward, discount_t, lambda_t, value, bootstrap_value
    )
    return advantages, advantages + value
