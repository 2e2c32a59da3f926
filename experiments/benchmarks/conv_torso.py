"""The MinAtar torso's gradient step: patch matmuls (``CNN(patches=True)``, the default)
against XLA's convolution (``patches=False``), on this machine's default JAX device.

The network is the DQN/Rainbow MinAtar torso (one 3x3 SAME conv with 16 channels on
``10 x 10 x 4`` images, then 128 ReLU units) with a 3-action linear head; the step is
plain SGD on a squared error, ``vmap``ped over ``S`` independent parameter sets (seeds),
``B`` images each. A jitted ``fori_loop`` runs ``--steps`` steps; the table gives the
best of ``--repeats`` timings per step (compile excluded) and the ratio XLA / patches,
both measured in this one run::

    python experiments/benchmarks/conv_torso.py [--seeds 1,8] [--batches 32,64]

The two implementations compute the same function (``tests/networks/test_networks.py``
checks values and gradients against each other).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl.networks.torsos import CNN


class TorsoQ(nn.Module):
    """MinAtar torso then a linear 3-action head: ``[B, 10, 10, 4] -> [B, 3]``."""

    patches: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(3)(CNN(activation="relu", patches=self.patches)(x))


def seconds_per_step(patches: bool, seeds: int, batch: int, steps: int, repeats: int) -> float:
    """Best wall time of one vmapped gradient step over ``repeats`` timed loops."""
    net = TorsoQ(patches)
    keys = jax.random.split(jax.random.key(0), seeds)
    x = (jax.random.uniform(jax.random.key(1), (seeds, batch, 10, 10, 4)) < 0.1).astype(jnp.float32)
    y = jax.random.normal(jax.random.key(2), (seeds, batch, 3))
    # lax.map, not vmap: vmapped orthogonal init can deadlock XLA:CPU (docs/design.md, 9)
    params = jax.jit(lambda ks: jax.lax.map(lambda k: net.init(k, x[0]), ks))(keys)

    def loss(p, xs, ys):
        return jnp.mean((net.apply(p, xs) - ys) ** 2)

    grad = jax.vmap(jax.grad(loss))

    @jax.jit
    def run(p):
        def body(_, p):
            return jax.tree.map(lambda w, g: w - 1e-3 * g, p, grad(p, x, y))

        return jax.lax.fori_loop(0, steps, body, p)

    jax.block_until_ready(run(params))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(params))
        best = min(best, time.perf_counter() - t0)
    return best / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,8", help="comma-separated vmapped seed counts")
    parser.add_argument("--batches", default="32,64", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, load {os.getloadavg()[0]:.1f}"
    )
    print("| seeds | batch | XLA convolution | patch matmuls | XLA / patches |")
    print("| --- | --- | --- | --- | --- |")
    for seeds in map(int, args.seeds.split(",")):
        for batch in map(int, args.batches.split(",")):
            xla = seconds_per_step(False, seeds, batch, args.steps, args.repeats)
            patch = seconds_per_step(True, seeds, batch, args.steps, args.repeats)
            print(
                f"| {seeds} | {batch} | {xla * 1e3:.2f} ms | {patch * 1e3:.2f} ms "
                f"| **{xla / patch:.2f}** |"
            )


if __name__ == "__main__":
    main()
