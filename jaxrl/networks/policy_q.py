"""A shared-torso network with a categorical policy head and a Q head (ACER's network).

``obs [..., *obs_shape] -> (distrax.Categorical with batch shape [...], q [..., A])``.
Both heads read the same torso features, as in ACER (Wang et al. 2017,
https://arxiv.org/abs/1611.01224): the policy ``pi(.|s)`` and the action values ``Q(s, .)``
of that policy, whose expectation ``V(s) = sum_a pi(a|s) Q(s, a)`` is the state value.
"""

from __future__ import annotations

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl.networks.heads import CategoricalHead
from jaxrl.networks.torsos import CNN, MLP, kernel_init


class PolicyQNetwork(nn.Module):
    """``obs [..., *obs_shape] -> (pi, q [..., A])`` through one shared torso.

    Attributes:
        num_actions: ``A``.
        hidden: torso widths.
        activation: name in ``jaxrl.networks.torsos.ACTIVATIONS``.
        ortho_init: orthogonal initialisation (gains sqrt 2 / 0.01 policy / 1 Q) or lecun.
        torso: ``"mlp"`` or ``"cnn"`` (image observations ``[..., H, W, C]``).
        obs_ndim: rank of one observation; an MLP flattens those trailing dims.
    """

    num_actions: int
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    ortho_init: bool = True
    torso: str = "mlp"
    obs_ndim: int = 1

    def setup(self):
        if self.torso == "cnn":
            self.body = CNN(
                hidden=self.hidden, activation=self.activation, ortho_init=self.ortho_init
            )
        else:
            self.body = MLP(self.hidden, self.activation, self.ortho_init)
        self.policy_head = CategoricalHead(self.num_actions, self.ortho_init)
        self.q_head = nn.Dense(self.num_actions, kernel_init=kernel_init(self.ortho_init, 1.0))

    def _features(self, obs: jax.Array) -> jax.Array:
        obs = obs.astype(jnp.float32)
        if self.torso == "mlp" and self.obs_ndim != 1:
            obs = obs.reshape((*obs.shape[: obs.ndim - self.obs_ndim], -1))
        return self.body(obs)

    def __call__(self, obs: jax.Array) -> tuple[distrax.Categorical, jax.Array]:
        features = self._features(obs)
        return self.policy_head(features), self.q_head(features)

    def policy(self, obs: jax.Array) -> distrax.Categorical:
        """``obs [..., *obs_shape] ->`` the categorical policy, batch shape ``[...]``."""
        return self.policy_head(self._features(obs))

    def value(self, obs: jax.Array) -> jax.Array:
        """``V(s) = sum_a pi(a|s) Q(s, a)``: ``obs [..., *obs_shape] -> [...]``."""
        dist, q = self(obs)
        return jnp.sum(jax.nn.softmax(dist.logits, axis=-1) * q, axis=-1)
