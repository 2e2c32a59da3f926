"""flax.linen networks: torsos, distribution-valued policy heads, value heads."""

from jaxrl.networks.actor_critic import ActorCritic
from jaxrl.networks.heads import CategoricalHead, GaussianHead, TanhGaussianHead, ValueHead
from jaxrl.networks.policy_q import PolicyQNetwork
from jaxrl.networks.torsos import CNN, MLP

__all__ = [
    "CNN",
    "MLP",
    "ActorCritic",
    "CategoricalHead",
    "GaussianHead",
    "PolicyQNetwork",
    "TanhGaussianHead",
    "ValueHead",
]
