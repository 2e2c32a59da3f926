"""Feature torsos: MLP and convolutional stacks with an orthogonal-initialisation option.

Fields are static architecture (tuples, strings, bools); parameters live outside.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": nn.relu,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "silu": nn.silu,
}


def kernel_init(ortho_init: bool, scale: float = float(np.sqrt(2.0))):
    """Orthogonal init with gain ``scale`` (Implementation Matters' choice) or flax's lecun."""
    return nn.initializers.orthogonal(scale) if ortho_init else nn.initializers.lecun_normal()


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


class CNN(nn.Module):
    """Conv stack then an MLP, for image observations ``[..., H, W, C]``.

    ``convs`` is a tuple of ``(features, kernel, stride)``; the default is the MinAtar
    torso (one 3x3 conv with 16 channels); the Nature-DQN torso is
    ``((32, 8, 4), (64, 4, 2), (64, 3, 1))`` with ``hidden=(512,)``.
    """

    convs: tuple[tuple[int, int, int], ...] = ((16, 3, 1),)
    hidden: tuple[int, ...] = (128,)
    activation: str = "relu"
    ortho_init: bool = True

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
            )
            x = act(conv(x))
        x = x.reshape((x.shape[0], -1))
        x = MLP(self.hidden, self.activation, self.ortho_init)(x)
        return x.reshape((*batch_shape, x.shape[-1]))
