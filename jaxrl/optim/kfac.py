"""K-FAC natural gradients for dense and convolution layers, as pure functions.

K-FAC (Martens & Grosse 2015, arXiv:1503.05671) approximates the Fisher of a network's
predictive distribution by one block per layer, each the Kronecker product of two small
factors: for a dense layer ``s = a W + b``, ``F_W ≈ A ⊗ G`` with ``A = E[ā āᵀ]`` over
the layer inputs ``ā = [a, 1]`` and ``G = E[δ δᵀ]`` over the back-propagated
pre-activation gradients ``δ = ∂(−log p(y|x))/∂s`` for ``y`` drawn from the model. Its
inverse is then a pair of small inverses: ``F_W⁻¹ vec(∇W) ≈ vec(A⁻¹ ∇W G⁻¹)``.

A convolution is a dense layer applied at ``T`` positions to image patches. K-FAC for
convolutions (KFC, Grosse & Martens 2016, arXiv:1602.01407) assumes the positions alike
and independent: ``F_W ≈ T · Ā ⊗ Ḡ`` with ``Ā``, ``Ḡ`` averaged over the batch and the
positions. Here every layer is treated that way, a dense layer on ``[B, d]`` having
``T = 1``; a conv layer's inputs are its :func:`~jaxrl.networks.torsos.image_patches`
whichever way the convolution itself is computed.

The layers are found as flax runs them: :func:`find_layers` and :func:`update_curvature`
apply the network under ``flax.linen.intercept_methods``, which sees every ``nn.Dense``
and ``nn.Conv`` call, records its input and adds a zero "perturbation" to its output;
the cotangent of that perturbation is ``δ``. The network's outputs are declared as
predictive distributions (:class:`Categorical`, :class:`Normal`) by a
``predictive_fn(params, inputs)``. Every parameter must belong to a found layer
(:func:`find_layers` raises otherwise). Two estimates of ``G`` (``estimation_mode``):

- ``"fisher_gradients"`` (K-FAC's and ACKTR's): one ``y`` drawn per input from the model,
  ``δ`` the gradient of its log-likelihood; an unbiased estimate of the next one;
- ``"fisher_exact"``: the expectation over ``y`` in closed form, one back-propagation per
  output dimension (``F_out = Σ_k c_k c_kᵀ``: ``√p_k (e_k − p)`` for logits, ``e_k / σ``
  for a Gaussian mean).

The factors are moving averages with a traced decay, bias-corrected (the first update sets
them to the batch estimate). Damping ``λ`` is added to the block, ``F̂ = T Ā ⊗ Ḡ + λ I``,
and inverted by K-FAC's factored, π-adjusted approximation
``(T Ā ⊗ Ḡ + λ I)⁻¹ ≈ T⁻¹ (Ā + π √λ' I)⁻¹ ⊗ (Ḡ + √λ'/π I)⁻¹``, ``λ' = λ / T``,
``π = sqrt((tr Ā / dim Ā) / (tr Ḡ / dim Ḡ))`` (Martens & Grosse's factored Tikhonov
damping; all of ``λ'`` goes to ``Ā`` when ``Ḡ`` is ``1 x 1``, which is then exact). The
inverses are computed in plain XLA (:func:`psd_inverses`), not by LAPACK.

The functions nest under ``jit``, ``vmap``, ``lax.scan`` and ``grad``:
:func:`find_layers` (static, once per network and batch shape), :func:`init`,
:func:`update_curvature`, :func:`update_inverses`, :func:`natural_gradient`, and
:func:`trust_region_step_size`, ACKTR's step rule (Wu et al. 2017, arXiv:1708.05144):
``η = min(η_max, sqrt(2δ / (Δθᵀ F̂ Δθ)))`` with ``Δθ = F̂⁻¹ g``. The same numbers as
kfac-jax's ``BlockDiagonalCurvature`` with its dense and conv blocks (tested against
kfac-jax 0.0.8 where it imports; why kfac-jax is not used: docs/acktr.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct, traverse_util

from jaxrl.networks.torsos import image_patches

ESTIMATION_MODES = ("fisher_gradients", "fisher_exact")


class Categorical(struct.PyTreeNode):
    """A categorical predictive distribution over ``logits [B, K]``."""

    logits: jax.Array

    def output(self) -> jax.Array:
        return self.logits

    def with_output(self, x: jax.Array) -> Categorical:
        return self.replace(logits=x)

    def sampled_cotangent(self, key: jax.Array) -> jax.Array:
        """``∇_logits log p(y)`` for ``y`` drawn from the model: ``onehot(y) − p``, ``[B, K]``."""
        y = jax.random.categorical(key, self.logits)
        return jax.nn.one_hot(y, self.logits.shape[-1]) - jax.nn.softmax(self.logits)

    def fisher_factor(self) -> jax.Array:
        """``[K, B, K]``: column ``k`` is ``√p_k (e_k − p)``; ``Σ_k c_k c_kᵀ = diag(p) − p pᵀ``."""
        p = jax.nn.softmax(self.logits)  # [B, K]
        eye = jnp.eye(p.shape[-1], dtype=p.dtype)
        return jnp.sqrt(p).T[:, :, None] * (eye[:, None, :] - p[None])


class Normal(struct.PyTreeNode):
    """A Gaussian predictive distribution ``N(y; mean, variance I)`` over ``mean [B, ...]``."""

    mean: jax.Array
    variance: float = struct.field(pytree_node=False, default=1.0)

    def output(self) -> jax.Array:
        return self.mean

    def with_output(self, x: jax.Array) -> Normal:
        return self.replace(mean=x)

    def sampled_cotangent(self, key: jax.Array) -> jax.Array:
        """``∇_mean log p(y)`` for ``y ~ N(mean, σ²)``: ``(y − mean) / σ² = ε / σ``."""
        return jax.random.normal(key, self.mean.shape, self.mean.dtype) / math.sqrt(self.variance)

    def fisher_factor(self) -> jax.Array:
        """``[E, B, ...]`` (``E`` the event size): ``e_k / σ``; ``Σ_k c_k c_kᵀ = I / σ²``."""
        event = self.mean.shape[1:]
        size = math.prod(event)
        eye = jnp.eye(size, dtype=self.mean.dtype).reshape(size, 1, *event)
        return jnp.broadcast_to(eye / math.sqrt(self.variance), (size, *self.mean.shape))


Distribution = Categorical | Normal
PredictiveFn = Callable[[Any, jax.Array], Sequence[Distribution]]


@dataclasses.dataclass(frozen=True)
class Layer:
    """One Kronecker-factored block: a dense or conv layer's place and sizes (static).

    Attributes:
        path: the module's path in ``params["params"]`` (its ``kernel`` and ``bias``).
        bias: whether the layer has a bias (``ā`` then ends in a 1).
        in_dim: ``dim ā``: inputs (a conv layer's patch size) plus 1 with a bias.
        out_shape: one example's output shape, ``[*positions, out_dim]``.
    """

    path: tuple[str, ...]
    bias: bool
    in_dim: int
    out_shape: tuple[int, ...]

    @property
    def out_dim(self) -> int:
        """Output features, ``dim δ``."""
        return self.out_shape[-1]

    @property
    def positions(self) -> int:
        """``T``, the number of positions the layer is applied at (1: dense on ``[B, d]``)."""
        return math.prod(self.out_shape[:-1])


class Curvature(struct.PyTreeNode):
    """The K-FAC state: per layer (in ``find_layers`` order) ``Ā``, ``Ḡ`` and inverses.

    ``a[i]`` is ``[in_dim, in_dim]``, ``g[i]`` ``[out_dim, out_dim]``; ``weight`` the
    moving averages' total weight (0 before the first update); ``a_inv[i]``, ``g_inv[i]``
    the damped inverses last computed by :func:`update_inverses`, ``1/T`` folded into
    ``g_inv`` (identity at first, so the natural gradient is the gradient).
    """

    a: tuple[jax.Array, ...]
    g: tuple[jax.Array, ...]
    weight: jax.Array
    a_inv: tuple[jax.Array, ...]
    g_inv: tuple[jax.Array, ...]


def _conv_patches(module: nn.Conv, x: jax.Array) -> jax.Array:
    """A flax ``nn.Conv``'s inputs ``[N, H, W, C]`` as patches ``[N, H', W', kh·kw·C]``,
    ordered as its kernel ``[kh, kw, C, F]`` reshaped to ``[kh·kw·C, F]``."""
    window = tuple(module.kernel_size)
    ones = (None, 1, (1,) * len(window))
    if (
        len(window) != 2
        or x.ndim != 4
        or module.feature_group_count != 1
        or module.input_dilation not in ones
        or module.kernel_dilation not in ones
    ):
        raise ValueError(
            "K-FAC supports 2-D, ungrouped, undilated convolutions on [N, H, W, C] inputs; "
            f"got {module.scope.path}: kernel {window}, input {x.shape}"
        )
    strides = module.strides or 1
    strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
    padding = module.padding
    if isinstance(padding, str):
        if padding not in ("SAME", "VALID"):
            raise ValueError(f"K-FAC supports SAME or VALID padding, got {padding!r}")
    elif isinstance(padding, int):
        padding = ((padding, padding),) * 2
    else:
        padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    return image_patches(x, window, strides, padding)


def _apply_tapped(
    predictive_fn: PredictiveFn,
    params: Any,
    inputs: jax.Array,
    perturbations: Sequence[jax.Array] | None,
) -> tuple[tuple[Distribution, ...], list[tuple[nn.Module, jax.Array, jax.Array]]]:
    """Runs ``predictive_fn`` with every dense/conv call tapped.

    Returns the distributions and, per layer call in order, ``(module, layer input [B, ...,
    d_in] (patches for a conv), output [B, ..., d_out])``; the ``i``-th call's output has
    ``perturbations[i]`` added (when given).
    """
    taps: list[tuple[nn.Module, jax.Array, jax.Array]] = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, nn.Dense | nn.Conv):
            return next_fun(*args, **kwargs)
        x = args[0] if args else kwargs["inputs"]
        out = next_fun(*args, **kwargs)
        if perturbations is not None:
            out = out + perturbations[len(taps)]
        layer_input = _conv_patches(module, x) if isinstance(module, nn.Conv) else x
        taps.append((module, layer_input, out))
        return out

    with nn.intercept_methods(interceptor):
        dists = tuple(predictive_fn(params, inputs))
    return dists, taps


def find_layers(predictive_fn: PredictiveFn, params: Any, inputs: Any) -> tuple[Layer, ...]:
    """The K-FAC blocks of the network ``predictive_fn`` runs: one per dense/conv layer.

    Args:
        predictive_fn: ``(params, inputs [B, ...]) -> (Categorical | Normal, ...)``, the
            network's predictive distributions (flax modules applied inside it).
        params: the flax variables ``{"params": ...}`` (arrays or ``ShapeDtypeStruct``:
            only shapes are read, under ``jax.eval_shape``).
        inputs: a batch ``[B, ...]`` (array or ``ShapeDtypeStruct``).

    Raises:
        ValueError: a layer runs twice, a layer's input is not batched ``[B, ..., d]``, a
            parameter belongs to no dense/conv layer, or no distribution is returned.
    """
    found: list[Layer] = []

    def trace(params, inputs):
        dists, taps = _apply_tapped(predictive_fn, params, inputs, None)
        if not dists or not all(isinstance(d, Categorical | Normal) for d in dists):
            raise ValueError(f"predictive_fn must return Categorical/Normal outputs, got {dists}")
        for module, x, out in taps:
            path, bias = tuple(module.scope.path), bool(module.use_bias)
            if any(layer.path == path for layer in found):
                raise ValueError(f"K-FAC: layer {'/'.join(path)} runs more than once")
            if x.ndim < 2 or x.shape[:-1] != out.shape[:-1] or x.shape[0] != inputs.shape[0]:
                raise ValueError(
                    f"K-FAC: layer {'/'.join(path)} input {x.shape} / output {out.shape} "
                    f"are not [B, ..., features] with B = {inputs.shape[0]}"
                )
            found.append(Layer(path, bias, x.shape[-1] + bias, tuple(out.shape[1:])))
        return jnp.zeros(())

    jax.eval_shape(trace, params, inputs)
    covered = {(*layer.path, name) for layer in found for name in ("kernel", "bias")}
    missing = [
        "/".join(k) for k in traverse_util.flatten_dict(params["params"]) if k not in covered
    ]
    if missing:
        raise ValueError(
            f"K-FAC has no block for parameters {missing}: only nn.Dense and nn.Conv "
            "layers are factored"
        )
    return tuple(found)


def init(layers: Sequence[Layer]) -> Curvature:
    """Zero factors (weight 0) and identity inverses, one block per layer."""
    eye = lambda d: jnp.eye(d, dtype=jnp.float32)
    zero = lambda d: jnp.zeros((d, d), jnp.float32)
    return Curvature(
        a=tuple(zero(layer.in_dim) for layer in layers),
        g=tuple(zero(layer.out_dim) for layer in layers),
        weight=jnp.zeros((), jnp.float32),
        a_inv=tuple(eye(layer.in_dim) for layer in layers),
        g_inv=tuple(eye(layer.out_dim) for layer in layers),
    )


def _cotangents(
    dists: tuple[Distribution, ...], key: jax.Array, mode: str
) -> tuple[Distribution, ...]:
    """Output cotangents whose pull-backs are the ``δ``: one set (``fisher_gradients``) or
    stacked ``[D, ...]`` over every output dimension of every distribution (exact)."""
    if mode == "fisher_gradients":
        keys = jax.random.split(key, len(dists))
        pairs = zip(dists, keys, strict=True)
        return tuple(d.with_output(d.sampled_cotangent(k)) for d, k in pairs)
    factors = [d.fisher_factor() for d in dists]  # [D_i, B, ...]
    total = sum(f.shape[0] for f in factors)
    stacked, start = [], 0
    for d, f in zip(dists, factors, strict=True):
        pad = ((start, total - start - f.shape[0]),) + ((0, 0),) * (f.ndim - 1)
        stacked.append(d.with_output(jnp.pad(f, pad)))
        start += f.shape[0]
    return tuple(stacked)


def _batch_factors(layer: Layer, x: jax.Array, delta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """This batch's ``Ā = mean ā āᵀ`` and ``Ḡ = Σ_directions mean δ δᵀ`` (means over the
    batch and the positions); ``x [B, ..., d]``, ``delta [(D,) B, ..., out_dim]``."""
    x = x.reshape(-1, x.shape[-1])
    n = x.shape[0]  # B · T
    if layer.bias:
        x = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], axis=1)
    delta = delta.reshape(-1, layer.out_dim)
    return x.T @ x / n, delta.T @ delta / n


def update_curvature(
    layers: Sequence[Layer],
    curvature: Curvature,
    key: jax.Array,
    predictive_fn: PredictiveFn,
    params: Any,
    inputs: jax.Array,
    decay: jax.Array,
    mode: str = "fisher_gradients",
) -> Curvature:
    """Folds this batch's factor estimates into the moving averages.

    ``A ← (decay · w · A + A_batch) / (decay · w + 1)``, ``w ← decay · w + 1``, and likewise
    ``G``, so the first update sets the factors to the batch estimate.

    Args:
        layers: :func:`find_layers` of ``predictive_fn`` at this batch shape.
        key: draws the model's outputs (``fisher_gradients``; unused when exact).
        params, inputs: the network's variables and a batch ``[B, ...]``.
        decay: traced scalar in ``[0, 1)``.
        mode: one of :data:`ESTIMATION_MODES`.
    """
    if mode not in ESTIMATION_MODES:
        raise ValueError(f"estimation_mode must be one of {ESTIMATION_MODES}, got {mode!r}")
    batch = inputs.shape[0]
    zeros = [jnp.zeros((batch, *layer.out_shape), jnp.float32) for layer in layers]

    def outputs(perturbations):
        dists, taps = _apply_tapped(predictive_fn, params, inputs, perturbations)
        return dists, [x for _, x, _ in taps]

    dists, pull_back, xs = jax.vjp(outputs, zeros, has_aux=True)
    cotangents = _cotangents(dists, key, mode)
    if mode == "fisher_gradients":
        (deltas,) = pull_back(cotangents)
    else:
        (deltas,) = jax.vmap(pull_back)(cotangents)  # [D, B, ..., out_dim] per layer
    weight = decay * curvature.weight + 1.0
    old = decay * curvature.weight / weight
    a, g = [], []
    for layer, x, delta, a_old, g_old in zip(
        layers, xs, deltas, curvature.a, curvature.g, strict=True
    ):
        a_new, g_new = _batch_factors(layer, x, delta)
        a.append(old * a_old + a_new / weight)
        g.append(old * g_old + g_new / weight)
    return curvature.replace(a=tuple(a), g=tuple(g), weight=weight)


def pi_adjusted_factors(
    a: jax.Array, g: jax.Array, damping: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(Â, Ĝ)`` with ``Â ⊗ Ĝ ≈ A ⊗ G + λ I`` (factored, π-adjusted Tikhonov damping).

    Each factor is written ``c_i u_i`` with ``tr u_i / dim u_i = 1``; ``λ`` is shared
    between the non-scalar ``u_i`` (``Â = √(c_A c_G) (u_A + √λ/√(c_A c_G) I)``, the
    π-adjustment); a ``1 x 1`` factor takes none (then the product is exact). Where a
    factor is zero (a dead layer) both become ``√λ I``. kfac-jax's
    ``pi_adjusted_kronecker_factors`` for two factors.
    """
    norms = [jnp.trace(f) / f.shape[0] for f in (a, g)]
    non_scalar = [f.shape[0] > 1 for f in (a, g)]
    safe = [jnp.where(n > 0, n, 1.0) for n in norms]
    scale = jnp.sqrt(safe[0] * safe[1])  # geometric mean of the norms
    if all(non_scalar):
        ridge = jnp.sqrt(damping) / scale
    elif any(non_scalar):
        ridge = damping / scale**2
    else:
        scale = jnp.sqrt(safe[0] * safe[1] + damping)
    regular = []
    for f, n, big in zip((a, g), safe, non_scalar, strict=True):
        u = f / n + ridge * jnp.eye(f.shape[0], dtype=f.dtype) if big else jnp.ones_like(f)
        regular.append(u * scale)
    dead = jnp.minimum(norms[0], norms[1]) <= 0
    fallback = [jnp.sqrt(damping) * jnp.eye(f.shape[0], dtype=f.dtype) for f in (a, g)]
    return tuple(jnp.where(dead, d, r) for d, r in zip(fallback, regular, strict=True))


def update_inverses(layers: Sequence[Layer], curvature: Curvature, damping: jax.Array) -> Curvature:
    """Recomputes the damped inverses from the current factors.

    ``(T Ā ⊗ Ḡ + λ I)⁻¹ ≈ Â⁻¹ ⊗ (Ĝ⁻¹ / T)`` with ``(Â, Ĝ)`` the
    :func:`pi_adjusted_factors` of ``(Ā, Ḡ)`` at ``λ / T``.
    """
    damped = [
        pi_adjusted_factors(a, g, damping / layer.positions)
        for layer, a, g in zip(layers, curvature.a, curvature.g, strict=True)
    ]
    inverses = psd_inverses([m for pair in damped for m in pair])
    a_inv = tuple(inverses[0::2])
    g_inv = tuple(inv / layer.positions for layer, inv in zip(layers, inverses[1::2], strict=True))
    return curvature.replace(a_inv=a_inv, g_inv=g_inv)


def natural_gradient(layers: Sequence[Layer], curvature: Curvature, grads: Any) -> Any:
    """``F̂⁻¹ g`` per layer from the cached inverses, shaped like ``grads``.

    ``A⁻¹ [∇W; ∇b] G⁻¹`` for each layer; ``grads`` are flax variables ``{"params": ...}``,
    and a conv kernel ``[kh, kw, C, F]`` is the matrix ``[kh·kw·C, F]``.
    """
    flat = dict(traverse_util.flatten_dict(grads["params"]))
    for layer, a_inv, g_inv in zip(layers, curvature.a_inv, curvature.g_inv, strict=True):
        kernel = flat[(*layer.path, "kernel")]
        m = kernel.reshape(-1, layer.out_dim)
        if layer.bias:
            m = jnp.concatenate([m, flat[(*layer.path, "bias")][None]], axis=0)
        nat = a_inv @ m @ g_inv
        flat[(*layer.path, "kernel")] = nat[: m.shape[0] - layer.bias].reshape(kernel.shape)
        if layer.bias:
            flat[(*layer.path, "bias")] = nat[-1]
    return {**grads, "params": traverse_util.unflatten_dict(flat)}


BLOCK = 128  # matrices larger than this are factored and inverted by blocks of this size


def _cholesky_unblocked(m: jax.Array) -> jax.Array:
    """Cholesky–Crout, column by column: ``L[i, j] = (m[i, j] − Σ_{k<j} L[i, k] L[j, k]) /
    L[j, j]`` for ``i >= j``; a ``fori_loop`` over the ``d`` columns, batched over the
    leading axes."""
    d = m.shape[-1]
    rows = jnp.arange(d)

    def column(j, chol):
        v = m[..., :, j] - jnp.einsum("...ik,...k->...i", chol, chol[..., j, :])
        diag = jnp.sqrt(jnp.maximum(v[..., j], jnp.finfo(m.dtype).tiny))
        col = jnp.where(jnp.broadcast_to(rows >= j, v.shape), v / diag[..., None], 0.0)
        return chol.at[..., :, j].set(col)

    return jax.lax.fori_loop(0, d, column, jnp.zeros_like(m))


def _lower_triangular_inverse_unblocked(chol: jax.Array) -> jax.Array:
    """Forward substitution, row by row: ``X[i] = (e_i − Σ_{k<i} L[i, k] X[k]) / L[i, i]``."""
    d = chol.shape[-1]
    eye = jnp.eye(d, dtype=chol.dtype)

    def row(i, inv):
        x = jnp.einsum("...k,...kj->...j", chol[..., i, :], inv)
        x = jnp.broadcast_to(eye[i], x.shape) - x
        x = x / chol[..., i, i, None]
        return inv.at[..., i, :].set(x)

    return jax.lax.fori_loop(0, d, row, jnp.zeros_like(chol))


def _transpose(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


def cholesky(m: jax.Array) -> jax.Array:
    """Lower Cholesky factor ``L`` of SPD matrices ``[..., d, d]`` (``m = L Lᵀ``), in plain XLA.

    Up to :data:`BLOCK` columns, column by column (a loop of ``d`` matrix-vector steps).
    Larger, right-looking by blocks of :data:`BLOCK` columns, so most of the work is
    matmuls: factor the diagonal block ``L_kk``, then the panel below it
    ``L_ik = A_ik L_kkᵀ⁻¹`` and the trailing update ``A ← A − L_ik L_ikᵀ``.
    """
    d = m.shape[-1]
    if d <= BLOCK:
        return _cholesky_unblocked(m)
    panels, rest = [], m
    for start in range(0, d, BLOCK):
        size = min(BLOCK, d - start)
        diag = _cholesky_unblocked(rest[..., :size, :size])
        if start + size < d:
            below = rest[..., size:, :size] @ _transpose(_lower_triangular_inverse_unblocked(diag))
            rest = rest[..., size:, size:] - below @ _transpose(below)
            diag = jnp.concatenate([diag, below], axis=-2)
        pad = [(0, 0)] * (m.ndim - 2) + [(start, 0), (0, 0)]
        panels.append(jnp.pad(diag, pad))
    return jnp.concatenate(panels, axis=-1)


def lower_triangular_inverse(chol: jax.Array) -> jax.Array:
    """``L⁻¹`` of lower-triangular ``[..., d, d]``, in plain XLA.

    Up to :data:`BLOCK` rows, by forward substitution row by row. Larger, by block rows:
    ``X_ii = L_ii⁻¹`` and ``X_i,<i = −X_ii (L_i,<i X_<i,<i)``, matmuls against the inverse
    of the rows above.
    """
    d = chol.shape[-1]
    if d <= BLOCK:
        return _lower_triangular_inverse_unblocked(chol)
    inv = None  # X for the rows and columns done so far
    for start in range(0, d, BLOCK):
        stop = min(start + BLOCK, d)
        diag = _lower_triangular_inverse_unblocked(chol[..., start:stop, start:stop])
        if inv is None:
            inv = diag
            continue
        left = -diag @ (chol[..., start:stop, :start] @ inv)  # [..., size, start]
        top = jnp.pad(inv, [(0, 0)] * (chol.ndim - 2) + [(0, 0), (0, stop - start)])
        inv = jnp.concatenate([top, jnp.concatenate([left, diag], axis=-1)], axis=-2)
    return inv


def psd_inverses(matrices: list[jax.Array]) -> list[jax.Array]:
    """Inverses of symmetric positive-definite matrices ``[d_i, d_i]``, without LAPACK.

    The matrices are grouped by size (each group's largest at most twice its smallest);
    within a group each is padded to ``blockdiag(M_i, I)`` of the group's largest size and
    all are inverted together, ``M⁻¹ = L⁻ᵀ L⁻¹`` with :func:`cholesky` and
    :func:`lower_triangular_inverse` (by blocks of matmuls above :data:`BLOCK`). Not
    ``jnp.linalg.inv`` or a Cholesky solve: on CPU, jaxlib's LAPACK kernels split a batch
    (vmapped runs) over XLA's intra-op thread pool and block a pool thread until it is
    done, so two such calls at once (one per factor, or one per CPU device when runs are
    sharded over devices) can each hold a thread waiting for the other's work; with a pool
    as small as the cores (2 here) that deadlocks (seen with jax 0.10, for LU and Cholesky
    alike).
    """
    groups: list[tuple[int, list[int]]] = []  # (padded size, indices), largest first
    for i in sorted(range(len(matrices)), key=lambda i: -matrices[i].shape[-1]):
        d = matrices[i].shape[-1]
        if groups and 2 * d >= groups[-1][0]:
            groups[-1][1].append(i)
        else:
            groups.append((d, [i]))
    inverses: list[jax.Array | None] = [None] * len(matrices)
    for size, members in groups:
        padded = []
        for i in members:
            m, d = matrices[i], matrices[i].shape[-1]
            top = jnp.concatenate([m, jnp.zeros((d, size - d), m.dtype)], axis=1)
            bottom = jnp.concatenate(
                [jnp.zeros((size - d, d), m.dtype), jnp.eye(size - d, dtype=m.dtype)], axis=1
            )
            padded.append(jnp.concatenate([top, bottom], axis=0))
        chol_inv = lower_triangular_inverse(cholesky(jnp.stack(padded)))  # [n, size, size]
        group_inverses = jnp.einsum("nji,njk->nik", chol_inv, chol_inv)
        for j, i in enumerate(members):
            d = matrices[i].shape[-1]
            inverses[i] = group_inverses[j, :d, :d]
    return inverses


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
