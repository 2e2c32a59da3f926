"""Feature torsos: MLP and convolutional stacks with an orthogonal-initialisation option.

Fields are static architecture (tuples, strings, bools); parameters live outside.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.networks.init import orthogonal

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": nn.relu,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "silu": nn.silu,
}


def kernel_init(ortho_init: bool, scale: float = float(np.sqrt(2.0))):
    """Orthogonal init with gain ``scale`` (Implementation Matters' choice) or flax's lecun."""
    return orthogonal(scale) if ortho_init else nn.initializers.lecun_normal()


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called ``name``; ValueError lists the valid names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Dense layers ``hidden[0] .. hidden[-1]``, each followed by ``activation``.

    Input ``[..., D]`` (extra trailing dims are flattened), output ``[..., hidden[-1]]``.
    """

    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    ortho_init: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = activation_fn(self.activation)
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=kernel_init(self.ortho_init))(x))
        return x


def image_patches(
    x: jax.Array, window: tuple[int, int], strides: tuple[int, int], padding
) -> jax.Array:
    """The ``kh x kw`` windows of ``x [N, H, W, C]`` at ``strides``, flattened into
    features: ``[N, H', W', kh * kw * C]`` in ``(kh, kw, C)`` order.

    ``padding`` is ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``. Built
    from ``kh * kw`` strided slices: data movement only, where
    ``lax.conv_general_dilated_patches`` runs a convolution with a one-hot kernel, which
    costs ``kh * kw * C`` multiply-adds per patch feature.
    """
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    out_h = (x.shape[1] - window[0]) // strides[0] + 1
    out_w = (x.shape[2] - window[1]) // strides[1] + 1
    slices = [
        x[
            :,
            i : i + strides[0] * (out_h - 1) + 1 : strides[0],
            j : j + strides[1] * (out_w - 1) + 1 : strides[1],
        ]
        for i in range(window[0])
        for j in range(window[1])
    ]
    return jnp.concatenate(slices, axis=-1)


def patch_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
) -> jax.Array:
    """``lax.conv_general_dilated`` for channel-last layouts as image patches times a matrix.

    ``lhs [N, H, W, C]``, ``rhs [kh, kw, C, F]`` (flax's NHWC / HWIO), output
    ``[N, H', W', F]``: the same numbers as the convolution up to float rounding. The
    :func:`image_patches` ``[N, H', W', kh * kw * C]`` meet the kernel reshaped to
    ``[kh * kw * C, F]`` in one matmul, so the kernel's gradient is a matmul too. On
    XLA:CPU that is much faster than XLA's convolution gradient, above all under a seed
    ``vmap``, which makes the latter a grouped convolution (figures: ``docs/design.md``
    item 13). Dilations and grouped convolutions are not supported.
    """
    if feature_group_count != 1:
        raise ValueError(f"patch_conv needs feature_group_count 1, got {feature_group_count}")
    for name, dilation in (("lhs_dilation", lhs_dilation), ("rhs_dilation", rhs_dilation)):
        if dilation is not None and any(d != 1 for d in dilation):
            raise ValueError(f"patch_conv does not support {name} {dilation}")
    if lhs.ndim != 4 or rhs.ndim != 4:
        raise ValueError(f"patch_conv needs 2-D images, got lhs {lhs.shape}, rhs {rhs.shape}")
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    if dimension_numbers is not None and dimension_numbers != nhwc:
        raise ValueError(f"patch_conv needs NHWC inputs and HWIO kernels, got {dimension_numbers}")
    patches = image_patches(lhs, rhs.shape[:2], tuple(window_strides), padding)
    return jnp.matmul(patches, rhs.reshape(-1, rhs.shape[-1]), precision=precision)


class CNN(nn.Module):
    """Conv stack then an MLP, for image observations ``[..., H, W, C]``.

    ``convs`` is a tuple of ``(features, kernel, stride)``; the default is the MinAtar
    torso (one 3x3 conv with 16 channels); the Nature-DQN torso is
    ``((32, 8, 4), (64, 4, 2), (64, 3, 1))`` with ``hidden=(512,)``. The convolutions are
    flax ``nn.Conv`` layers computed by :func:`patch_conv`, or with ``patches=False`` by
    XLA's convolution (same parameters, same numbers up to rounding).
    """

    convs: tuple[tuple[int, int, int], ...] = ((16, 3, 1),)
    hidden: tuple[int, ...] = (128,)
    activation: str = "relu"
    ortho_init: bool = True
    patches: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = activation_fn(self.activation)
        batch_shape = x.shape[:-3]
        x = x.reshape((-1, *x.shape[-3:])).astype(jnp.float32)
        for features, kernel, stride in self.convs:
            conv = nn.Conv(
                features,
                (kernel, kernel),
                (stride, stride),
                kernel_init=kernel_init(self.ortho_init),
                conv_general_dilated=patch_conv if self.patches else None,
            )
            x = act(conv(x))
        x = x.reshape((x.shape[0], -1))
        x = MLP(self.hidden, self.activation, self.ortho_init)(x)
        return x.reshape((*batch_shape, x.shape[-1]))
