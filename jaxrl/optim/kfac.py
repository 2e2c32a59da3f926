"""K-FAC natural gradients as pure functions over kfac-jax's curvature estimator.

K-FAC (Martens & Grosse 2015, arXiv:1503.05671) approximates the Fisher of a network's
predictive distribution by one block per layer, each the Kronecker product of two small
factors: for a dense layer ``s = a W + b``, ``F_W ≈ A ⊗ G`` with ``A = E[ā āᵀ]`` over
the layer inputs ``ā = [a, 1]`` and ``G = E[δ δᵀ]`` over the back-propagated
pre-activation gradients ``δ = ∂(−log p(y|x))/∂s`` for ``y`` drawn from the model. Its
inverse is then a pair of small inverses: ``F_W⁻¹ vec(∇W) ≈ vec(A⁻¹ ∇W G⁻¹)``.

kfac-jax (``kfac_jax.BlockDiagonalCurvature``) does all of that: it finds the layers by
tracing the function (automatic tagging), samples the Fisher from the losses the function
registers (``kfac_jax.register_*_predictive_distribution``), keeps the factors as
bias-corrected moving averages and inverts them with damping. Its estimator methods are
pure (state in, state out) and take the moving-average decay and the damping as traced
arguments, so this module wraps them in four functions that nest under ``jit``, ``vmap``
and ``lax.scan``:

- :func:`make_estimator` builds and finalises the (static) estimator once per network;
- :func:`init`, :func:`update_curvature`, :func:`update_inverses` move its state;
- :func:`natural_gradient` preconditions a gradient pytree: ``F̂⁻¹ g``;
- :func:`trust_region_step_size` is ACKTR's step rule (Wu et al. 2017, arXiv:1708.05144):
  ``η = min(η_max, sqrt(2δ / (Δθᵀ F̂ Δθ)))`` with ``Δθ = F̂⁻¹ g``.

Damping ``λ`` is added to the Kronecker product, ``F̂ = A ⊗ G + λ I``, and inverted by
K-FAC's factored, π-adjusted approximation ``(A + π √λ I)⁻¹ ⊗ (G + √λ/π I)⁻¹``,
``π = sqrt((tr A / dim A) / (tr G / dim G))`` (Martens & Grosse's factored Tikhonov
damping; all of ``λ`` goes to ``A`` when ``G`` is ``1 x 1``, which is then exact). The
inverses are computed in plain XLA (:func:`psd_inverses`), not by LAPACK. kfac-jax's exact
alternative (the factors' eigendecompositions, as in OpenAI Baselines' ACKTR) is not
offered: its ``eigh`` falls back to a host ``jax.pure_callback`` that cannot be vmapped.

kfac-jax's ``Optimizer`` is *not* used: its ``step`` reads the step counter as a Python
int (so it cannot run inside ``lax.scan`` without a fake ``global_step_int``), and it fixes
the trust-region bound (``norm_constraint``), the factor decay (``curvature_ema``) and the
loss at construction, so they could not be traced, swept or vmapped (docs/acktr.md).

Compatibility: kfac-jax 0.0.8 (the newest release) predates jax 0.9.2, where
``Primitive.get_bind_params`` began to return the parameters alone instead of
``(subfuns, params)``; its graph tracer then fails on the first equation. Importing this
module replaces kfac-jax's ``tag_graph_matcher.eval_jaxpr_eqn`` with the version in
kfac-jax's main branch, only when the installed one fails that way
(:func:`patch_kfac_jax`). With jax 0.11, kfac-jax 0.0.8 does not import at all; this
module then imports without it and :func:`make_estimator` raises the
:class:`~jaxrl.errors.ConfigError` of :func:`jaxrl.optim.kfac_jax_compat.require`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxrl.optim import kfac_jax_compat
from jaxrl.optim.kfac_jax_compat import kfac_jax

if kfac_jax is not None:  # None on jax 0.11 (kfac_jax_compat): only ACKTR needs it
    tag_graph_matcher = importlib.import_module("kfac_jax._src.tag_graph_matcher")

ESTIMATION_MODES = (
    "fisher_gradients",  # K-FAC's original: one sampled y per input, its log-prob gradient
    "fisher_curvature_prop",  # random-sign "half factors" of the output Fisher (unbiased)
    "fisher_exact",  # every output direction: the exact expectation over y (x out dim)
    "ggn_curvature_prop",  # the generalised Gauss-Newton matrix (= Fisher for these losses)
    "ggn_exact",
)
EstimatorState = Any if kfac_jax is None else kfac_jax.BlockDiagonalCurvature.State
FisherFn = Callable[..., jax.Array]


def _eval_jaxpr_eqn(eqn, in_values: list) -> list:
    """kfac-jax main's ``eval_jaxpr_eqn`` for jax >= 0.9.2 (``get_bind_params`` -> params)."""
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    with tag_graph_matcher.jex.source_info_util.user_context(eqn.source_info.traceback):
        output = eqn.primitive.bind(*in_values, **bind_params)
    return output if isinstance(output, list) else [output]


def _eval_jaxpr_eqn_works() -> bool:
    eqn = jax.make_jaxpr(lambda x: x + 1.0)(1.0).jaxpr.eqns[0]
    try:
        tag_graph_matcher.eval_jaxpr_eqn(eqn, [jnp.float32(1.0)])
    except ValueError:  # "not enough values to unpack": the pre-0.9.2 two-value unpacking
        return False
    return True


def patch_kfac_jax() -> bool:
    """Makes kfac-jax's graph tracer work with this jax; returns whether it patched.

    A no-op when the installed kfac-jax already evaluates an equation correctly (a fixed
    release, or an older jax).
    """
    if _eval_jaxpr_eqn_works():
        return False
    tag_graph_matcher.eval_jaxpr_eqn = _eval_jaxpr_eqn
    return True


if kfac_jax is not None:
    patch_kfac_jax()


def _allow_rank_promotion(fn: Callable) -> Callable:
    """Runs ``fn`` with implicit rank promotion allowed: kfac-jax's layer patterns rely on
    it (``x @ w + b``), and callers may have set ``jax_numpy_rank_promotion="raise"``."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.numpy_rank_promotion("allow"):
            return fn(*args, **kwargs)

    return wrapped


@_allow_rank_promotion
def make_estimator(
    fisher_fn: FisherFn, example_args: tuple, estimation_mode: str = "fisher_gradients"
) -> kfac_jax.BlockDiagonalCurvature:
    """The finalised kfac-jax estimator for ``fisher_fn``: a static object, build it once.

    Args:
        fisher_fn: ``(params, *inputs) -> scalar`` that runs the network and registers its
            predictive distributions (``kfac_jax.register_categorical_predictive_distribution``
            and friends); the returned value is not used. Every dense (and conv) layer
            whose parameters feed a registered output gets a Kronecker-factored block.
        example_args: ``(params, *inputs)`` with the real shapes; arrays or
            ``jax.ShapeDtypeStruct`` (only shapes are read, so this is safe under a trace).
        estimation_mode: one of :data:`ESTIMATION_MODES`.
    """
    kfac_jax_compat.require()
    if estimation_mode not in ESTIMATION_MODES:
        raise ValueError(
            f"estimation_mode must be one of {ESTIMATION_MODES}, got {estimation_mode!r}"
        )
    estimator = kfac_jax.BlockDiagonalCurvature(
        func=fisher_fn, default_estimation_mode=estimation_mode
    )
    estimator.finalize(example_args)
    return estimator


@_allow_rank_promotion
def init(
    estimator: kfac_jax.BlockDiagonalCurvature,
    key: jax.Array,
    func_args: tuple,
) -> EstimatorState:
    """Zero factors (weight 0) and an empty inverse cache, one block per tagged layer."""
    return estimator.init(key, func_args, exact_powers_to_cache=None, approx_powers_to_cache=-1)


@_allow_rank_promotion
def update_curvature(
    estimator: kfac_jax.BlockDiagonalCurvature,
    state: EstimatorState,
    key: jax.Array,
    func_args: tuple,
    batch_size: int,
    decay: jax.Array,
    damping: jax.Array,
) -> EstimatorState:
    """Folds this batch's factor estimates into the moving averages.

    ``A ← (decay · w · A + A_batch) / (decay · w + 1)`` and likewise ``G`` (``w`` the
    running weight), so the first update sets the factors to the batch estimate (no
    zero-initialisation bias) and later ones decay at ``decay``. ``key`` draws the
    model's own outputs for the sampled-Fisher modes.

    Args:
        func_args: ``(params, *inputs)`` for ``fisher_fn``; inputs batched ``[B, ...]``.
        batch_size: static ``B`` (the factors are means over the batch).
        decay: traced scalar in ``[0, 1)``; damping: traced scalar ``λ`` (used by blocks
            that need it while estimating; not by dense Kronecker blocks).
    """
    return estimator.update_curvature_matrix_estimate(
        state,
        ema_old=decay,
        ema_new=1.0,
        identity_weight=damping,
        batch_size=batch_size,
        rng=key,
        func_args=func_args,
    )


def cholesky(m: jax.Array) -> jax.Array:
    """Lower Cholesky factor ``L`` of SPD matrices ``[..., d, d]`` (``m = L Lᵀ``), in plain XLA.

    Column by column (Cholesky–Crout): ``L[i, j] = (m[i, j] − Σ_{k<j} L[i, k] L[j, k]) / L[j, j]``
    for ``i >= j``, with ``L[j, j]`` the square root of the numerator at ``i = j``. A
    ``fori_loop`` over the ``d`` columns, each step batched over the leading axes.
    """
    d = m.shape[-1]
    rows = jnp.arange(d)

    def column(j, chol):
        v = m[..., :, j] - jnp.einsum("...ik,...k->...i", chol, chol[..., j, :])
        diag = jnp.sqrt(jnp.maximum(v[..., j], jnp.finfo(m.dtype).tiny))
        col = jnp.where(jnp.broadcast_to(rows >= j, v.shape), v / diag[..., None], 0.0)
        return chol.at[..., :, j].set(col)

    return jax.lax.fori_loop(0, d, column, jnp.zeros_like(m))


def lower_triangular_inverse(chol: jax.Array) -> jax.Array:
    """``L⁻¹`` of lower-triangular ``[..., d, d]`` by forward substitution, in plain XLA.

    Row ``i``: ``X[i] = (e_i − Σ_{k<i} L[i, k] X[k]) / L[i, i]``, a ``fori_loop`` over rows.
    """
    d = chol.shape[-1]
    eye = jnp.eye(d, dtype=chol.dtype)

    def row(i, inv):
        x = jnp.einsum("...k,...kj->...j", chol[..., i, :], inv)
        x = jnp.broadcast_to(eye[i], x.shape) - x
        x = x / chol[..., i, i, None]
        return inv.at[..., i, :].set(x)

    return jax.lax.fori_loop(0, d, row, jnp.zeros_like(chol))


def psd_inverses(matrices: list[jax.Array]) -> list[jax.Array]:
    """Inverses of symmetric positive-definite matrices ``[d_i, d_i]``, without LAPACK.

    Each is padded to ``blockdiag(M_i, I)`` of the largest size and all are inverted
    together, ``M⁻¹ = L⁻ᵀ L⁻¹`` with :func:`cholesky` and :func:`lower_triangular_inverse`
    (two loops of ``max d_i`` batched steps). Not ``jnp.linalg.inv`` or a Cholesky solve:
    on CPU, jaxlib's LAPACK kernels split a batch (vmapped runs) over XLA's intra-op thread
    pool and block a pool thread until it is done, so two such calls at once (one per
    factor, or one per CPU device when runs are sharded over devices) can each hold a
    thread waiting for the other's work; with a pool as small as the cores (2 here) that
    deadlocks (seen with jax 0.10, for LU and Cholesky alike).
    """
    size = max(m.shape[-1] for m in matrices)
    padded = []
    for m in matrices:
        d = m.shape[-1]
        top = jnp.concatenate([m, jnp.zeros((d, size - d), m.dtype)], axis=1)
        bottom = jnp.concatenate(
            [jnp.zeros((size - d, d), m.dtype), jnp.eye(size - d, dtype=m.dtype)], axis=1
        )
        padded.append(jnp.concatenate([top, bottom], axis=0))
    chol_inv = lower_triangular_inverse(cholesky(jnp.stack(padded)))  # [n, size, size]
    inverses = jnp.einsum("nji,njk->nik", chol_inv, chol_inv)
    return [inverses[i, : m.shape[-1], : m.shape[-1]] for i, m in enumerate(matrices)]


@_allow_rank_promotion
def update_inverses(
    estimator: kfac_jax.BlockDiagonalCurvature, state: EstimatorState, damping: jax.Array
) -> EstimatorState:
    """Recomputes the cached π-adjusted damped inverses of the factors.

    The same cache kfac-jax's ``estimator.update_cache`` writes for dense Kronecker blocks
    (tested equal), but the inverses are computed by :func:`psd_inverses`, in plain XLA
    (batched LAPACK calls can deadlock XLA's CPU thread pool).
    """
    damped, blocks_states = [], []
    for block, block_state in zip(estimator.blocks, state.blocks_states, strict=True):
        if not isinstance(block, kfac_jax.KroneckerFactored):
            raise TypeError(f"only Kronecker-factored blocks are supported, got {block}")
        factors = [f.value for f in block_state.factors]
        damped.append(kfac_jax.utils.pi_adjusted_kronecker_factors(*factors, damping=damping))
    inverses = iter(psd_inverses([m for ms in damped for m in ms]))
    for block, block_state, ms in zip(estimator.blocks, state.blocks_states, damped, strict=True):
        scale = block.state_dependent_scale(block_state) ** (1.0 / len(ms))
        cache = dict(block_state.cache)
        cache["-1"] = {f"{i}_factor": next(inverses) / scale for i in range(len(ms))}
        blocks_states.append(dataclasses.replace(block_state, cache=cache))
    return dataclasses.replace(state, blocks_states=tuple(blocks_states))


@_allow_rank_promotion
def natural_gradient(
    estimator: kfac_jax.BlockDiagonalCurvature,
    state: EstimatorState,
    grads: Any,
    damping: jax.Array,
) -> Any:
    """``F̂⁻¹ g`` per block from the cached inverses (a pytree shaped like ``grads``).

    ``damping`` must be the value the cache was last built with (it is baked in there).
    """
    return estimator.multiply_matpower(
        state,
        grads,
        identity_weight=damping,
        power=-1,
        exact_power=False,
        use_cached=True,
        pmap_axis_name=None,
    )


def tree_vdot(a: Any, b: Any) -> jax.Array:
    """``Σ_leaves <a, b>`` for two pytrees of the same structure (a float32 scalar)."""
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y), a, b))
    return sum(leaves, jnp.zeros((), jnp.float32))


def trust_region_step_size(
    grads: Any, natural_grads: Any, max_step: jax.Array, max_kl: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """ACKTR's step size ``η = min(η_max, sqrt(2δ / (Δθᵀ F̂ Δθ)))`` (Wu et al. 2017).

    With ``Δθ = F̂⁻¹ g`` the quadratic form is ``Δθᵀ F̂ Δθ = gᵀ F̂⁻¹ g = <g, Δθ>``, so no
    extra Fisher product is needed. Under the second-order model the KL between the
    policies before and after ``θ − η Δθ`` is ``½ η² Δθᵀ F̂ Δθ <= δ``. (OpenAI Baselines'
    ``kfac_clip`` is ``2δ`` here: it scales by ``sqrt(clip / (η_max² gᵀF̂⁻¹g))``.)

    Args:
        grads: ``g``, the loss gradient pytree.
        natural_grads: ``Δθ = F̂⁻¹ g``, same structure.
        max_step: ``η_max`` (the learning rate), scalar.
        max_kl: ``δ``, scalar.

    Returns:
        ``(η, Δθᵀ F̂ Δθ)``, scalars; ``η = η_max`` when the quadratic form is 0 (``g = 0``).
    """
    quad = tree_vdot(grads, natural_grads)
    safe = jnp.where(quad > 0, quad, 1.0)
    step = jnp.where(quad > 0, jnp.minimum(max_step, jnp.sqrt(2.0 * max_kl / safe)), max_step)
    return step, quad
