"""Actor-critic modules composed from torsos and heads, built from an action space."""

from __future__ import annotations

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl.envs import spaces
from jaxrl.networks.heads import CategoricalHead, GaussianHead, ValueHead
from jaxrl.networks.torsos import CNN, MLP


class ActorCritic(nn.Module):
    """``obs [..., *obs_shape] -> (policy distribution, value [...])``.

    Attributes:
        action_space: a Discrete space gives a categorical head, a Box a Gaussian head
            with state-independent log-std.
        hidden: torso widths.
        activation: name in ``jaxrl.networks.torsos.ACTIVATIONS``.
        ortho_init: orthogonal initialisation (gains sqrt 2 / 0.01 / 1) or lecun normal.
        shared_torso: one torso for actor and critic, or two separate ones (PPO default).
        torso: ``"mlp"`` or ``"cnn"`` (image observations ``[..., H, W, C]``).
        obs_ndim: rank of one observation; an MLP flattens those trailing dims.
    """

    action_space: spaces.Space
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    ortho_init: bool = True
    shared_torso: bool = False
    torso: str = "mlp"
    obs_ndim: int = 1

    def setup(self):
        self.actor_torso = self._torso()
        self.critic_torso = self.actor_torso if self.shared_torso else self._torso()
        if isinstance(self.action_space, spaces.Discrete):
            self.policy_head = CategoricalHead(self.action_space.n, self.ortho_init)
        else:
            dim = int(self.action_space.shape[-1]) if self.action_space.shape else 1
            self.policy_head = GaussianHead(dim, self.ortho_init)
        self.value_head = ValueHead(self.ortho_init)

    def _torso(self) -> nn.Module:
        if self.torso == "cnn":
            return CNN(hidden=self.hidden, activation=self.activation, ortho_init=self.ortho_init)
        return MLP(self.hidden, self.activation, self.ortho_init)

    def _features_in(self, obs: jax.Array) -> jax.Array:
        obs = obs.astype(jnp.float32)
        if self.torso == "mlp" and self.obs_ndim != 1:
            obs = obs.reshape((*obs.shape[: obs.ndim - self.obs_ndim], -1))
        return obs

    def __call__(self, obs: jax.Array) -> tuple[distrax.Distribution, jax.Array]:
        obs = self._features_in(obs)
        actor_features = self.actor_torso(obs)
        critic_features = actor_features if self.shared_torso else self.critic_torso(obs)
        return self.policy_head(actor_features), self.value_head(critic_features)

    def policy(self, obs: jax.Array) -> distrax.Distribution:
        """Actor only: ``obs [..., *obs_shape] ->`` distribution with batch shape ``[...]``."""
        return self.policy_head(self.actor_torso(self._features_in(obs)))

    def value(self, obs: jax.Array) -> jax.Array:
        """Critic only: ``obs [..., *obs_shape] -> [...]``."""
        return self.value_head(self.critic_torso(self._features_in(obs)))
