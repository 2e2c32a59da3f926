"""Trust-region machinery on flat parameter vectors: Fisher-vector products, conjugate
gradient, the KL-constrained step size and a backtracking line search (TRPO, NPG).

Everything acts on one flat vector ``θ [P]`` (``jax.flatten_util.ravel_pytree`` of the
actor's parameters) and on plain callables ``θ -> scalar``; nothing here knows about
networks or environments. The Fisher matrix is never built: ``F v`` is the Hessian of
the mean KL at ``θ_old`` times ``v``, by forward-over-reverse autodiff.

References: Schulman et al. 2015, "Trust Region Policy Optimization" (arXiv:1502.05477),
Appendix C; Kakade 2001, "A Natural Policy Gradient".
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import distrax
import jax
import jax.numpy as jnp
from flax import struct

Vector = jax.Array  # [P]


def mean_kl(old: distrax.Distribution, new: distrax.Distribution) -> jax.Array:
    """``mean_s KL(π_old(·|s) ‖ π_new(·|s))``, analytic (distrax); batch shape ``[B] -> []``."""
    return jnp.mean(old.kl_divergence(new))


def fisher_vector_product(
    kl_fn: Callable[[Vector], jax.Array], theta: Vector, damping: jax.Array
) -> Callable[[Vector], Vector]:
    """``v -> (F + damping · I) v`` with ``F = ∇²_θ KL(θ)`` at ``theta``.

    ``kl_fn(θ)`` is the mean ``KL(π_old ‖ π_θ)`` with ``π_old`` held fixed, so its
    Hessian at ``θ = θ_old`` is the Fisher information of the policy (averaged over the
    batch's states). The product is forward-over-reverse: ``jax.linearize`` of
    ``jax.grad(kl_fn)`` at ``theta`` runs the forward and backward pass once, and each
    product is then one tangent (JVP) pass; no ``[P, P]`` matrix is formed.

    Args:
        kl_fn: ``θ [P] -> []``.
        theta: ``[P]``, the point (``θ_old``).
        damping: scalar added to the diagonal (keeps ``F`` positive definite for CG).

    Returns:
        ``v [P] -> [P]``.
    """
    chex.assert_rank(theta, 1)
    _, hvp = jax.linearize(jax.grad(kl_fn), theta)
    return lambda v: hvp(v) + damping * v


def conjugate_gradient(
    matvec: Callable[[Vector], Vector], b: Vector, iters: int, residual_tol: float = 1e-10
) -> Vector:
    """Approximately solves ``A x = b`` for symmetric positive-definite ``A``; ``[P] -> [P]``.

    Exactly ``iters`` (static) iterations of textbook CG from ``x = 0`` in a
    ``lax.fori_loop``; once ``‖r‖² <= residual_tol`` (or the curvature ``pᵀAp`` is not
    positive) the iterate is frozen, as OpenAI Baselines' ``cg`` breaks there (its
    defaults: 10 iterations, 1e-10).

    Why not ``jax.scipy.sparse.linalg.cg``: with jax 0.10 on CPU, that solver (a
    ``while_loop`` with a data-dependent stop) inside TRPO's update, scanned over updates
    and vmapped over runs, returned NaN or wrong solutions that varied from process to
    process, while the same update unscanned or unbatched was right. A fixed trip count
    has no batched predicate, costs the same under ``vmap`` (which runs every lane to the
    slowest anyway) and is reverse-differentiable.
    """
    chex.assert_rank(b, 1)

    def body(_, carry):
        x, r, p, rr = carry
        ap = matvec(p)
        pap = jnp.vdot(p, ap)
        active = (rr > residual_tol) & (pap > 0)
        alpha = jnp.where(active, rr / jnp.where(active, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = jnp.vdot(r, r)
        beta = rr_new / jnp.where(active, rr, 1.0)
        p = jnp.where(active, r + beta * p, p)
        return x, r, p, jnp.where(active, rr_new, rr)

    init = (jnp.zeros_like(b), b, b, jnp.vdot(b, b))
    return jax.lax.fori_loop(0, iters, body, init)[0]


def trust_region_step(
    direction: Vector, fvp: Callable[[Vector], Vector], max_kl: jax.Array
) -> tuple[Vector, jax.Array]:
    """Scales ``s`` to the edge of the quadratic trust region: ``β s``, ``β = √(2δ / sᵀFs)``.

    Under the second-order model ``KL(θ + βs) ≈ ½ β² sᵀFs``, this step has KL ``δ``.

    Args:
        direction: ``s [P]`` (the CG solution of ``F s = g``).
        fvp: ``v -> F v`` (with damping).
        max_kl: ``δ``, scalar.

    Returns:
        ``(β s [P], sᵀFs [])``; the step is zero when ``sᵀFs <= 0`` (``s = 0``).
    """
    sfs = jnp.vdot(direction, fvp(direction))
    beta = jnp.where(sfs > 0, jnp.sqrt(2.0 * max_kl / jnp.where(sfs > 0, sfs, 1.0)), 0.0)
    return beta * direction, sfs


class LineSearchInfo(struct.PyTreeNode):
    """What the line search chose (all scalars)."""

    fraction: jax.Array  # accepted step fraction ``coef^j`` (0 when nothing was accepted)
    accepted: jax.Array  # bool
    backtracks: jax.Array  # int32 ``j`` of the accepted candidate (``num_backtracks`` if none)
    improvement: jax.Array  # ``f(θ_new) − f(θ)`` (0 when nothing was accepted)
    kl: jax.Array  # ``KL(θ_new)`` (0 when nothing was accepted)


def backtracking_line_search(
    objective_fn: Callable[[Vector], jax.Array],
    kl_fn: Callable[[Vector], jax.Array],
    theta: Vector,
    full_step: Vector,
    objective: jax.Array,
    max_kl: jax.Array,
    backtrack_coef: jax.Array,
    num_backtracks: int,
) -> tuple[Vector, LineSearchInfo]:
    """TRPO's line search: the first of ``θ + coef^j · step`` (``j = 0 .. n−1``) that
    improves the objective and keeps the mean KL within ``max_kl``; else ``θ`` unchanged.

    Every candidate is evaluated (a ``lax.map`` over the static ``num_backtracks``), then
    the first acceptable one is selected, so the search has a fixed cost, vmaps without
    divergent control flow and is differentiable almost everywhere.

    Args:
        objective_fn: ``θ [P] -> []``, to be increased (the surrogate advantage).
        kl_fn: ``θ [P] -> []``, mean ``KL(π_old ‖ π_θ)``.
        theta: ``[P]`` current parameters; ``objective = objective_fn(theta)``.
        full_step: ``[P]`` from :func:`trust_region_step`.
        max_kl, backtrack_coef: scalars ``δ`` and ``coef ∈ [0, 1]``.
        num_backtracks: static ``n`` (number of candidates).

    Returns:
        ``(θ_new [P], LineSearchInfo)``.
    """
    chex.assert_equal_shape([theta, full_step])
    fractions = backtrack_coef ** jnp.arange(num_backtracks, dtype=jnp.float32)

    def evaluate(fraction):
        candidate = theta + fraction * full_step
        return objective_fn(candidate) - objective, kl_fn(candidate)

    improvement, kl = jax.lax.map(evaluate, fractions)
    ok = (improvement > 0) & (kl <= max_kl) & jnp.isfinite(improvement) & jnp.isfinite(kl)
    first = jnp.argmax(ok)
    accepted = ok[first]
    fraction = jnp.where(accepted, fractions[first], 0.0)
    info = LineSearchInfo(
        fraction=fraction,
        accepted=accepted,
        backtracks=jnp.where(accepted, first, num_backtracks).astype(jnp.int32),
        improvement=jnp.where(accepted, improvement[first], 0.0),
        kl=jnp.where(accepted, kl[first], 0.0),
    )
    return jnp.where(accepted, theta + fraction * full_step, theta), info
