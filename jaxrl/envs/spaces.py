"""Action and observation spaces: static, hashable descriptions of shapes and bounds."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Discrete:
    """Integer actions ``0 .. n - 1``."""

    n: int
    shape: tuple[int, ...] = ()
    dtype: str = "int32"

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.randint(key, self.shape, 0, self.n, dtype=self.dtype)


@dataclasses.dataclass(frozen=True)
class Box:
    """Real-valued arrays of a fixed shape with elementwise bounds.

    ``low`` and ``high`` are tuples (hashable) of length ``prod(shape)`` or scalars.
    """

    low: float | tuple[float, ...]
    high: float | tuple[float, ...]
    shape: tuple[int, ...]
    dtype: str = "float32"

    def bounds(self) -> tuple[jax.Array, jax.Array]:
        """Returns ``(low, high)`` as arrays of ``shape``."""

        def full(x):
            x = jnp.asarray(x, self.dtype)
            return jnp.broadcast_to(x if x.ndim == 0 else x.reshape(self.shape), self.shape)

        return full(self.low), full(self.high)

    def sample(self, key: jax.Array) -> jax.Array:
        low, high = self.bounds()
        low = jnp.where(jnp.isfinite(low), low, -1.0)
        high = jnp.where(jnp.isfinite(high), high, 1.0)
        return jax.random.uniform(key, self.shape, self.dtype, low, high)


Space = Discrete | Box


def from_bounds(low, high, shape, dtype="float32") -> Box:
    """Builds a hashable Box from array-like bounds (as numpy or jax arrays)."""

    def hashable(x):
        arr = np.asarray(x, dtype=np.float64).reshape(-1)
        return float(arr[0]) if arr.size == 1 else tuple(float(v) for v in arr)

    return Box(hashable(low), hashable(high), tuple(int(s) for s in shape), str(np.dtype(dtype)))
