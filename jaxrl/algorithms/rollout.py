"""The one actor-critic rollout shared by the on-policy family (PPO, VPG, A2C, TRPO, ...).

Every on-policy algorithm rolls its current policy out the same way and differs only in
its loss and optimiser. This module holds that common part:

- :func:`collect` steps ``T`` times through an auto-reset vector env with the actor only,
  then evaluates the critic on all ``T x N`` observations in one batched pass;
- :func:`advantages` runs truncation-aware GAE (``jaxrl.losses.returns.episode_gae``),
  bootstrapping from the pre-reset observation of every step;
- :func:`episode_metrics` reports the returns of the episodes that ended in the rollout.

The algorithm's ``State`` only needs the fields ``params``, ``env_state``, ``obs``,
``env_params`` and ``key``; :func:`collect` returns it with the env fields and key
advanced. ``net`` is any flax module with ``policy(obs) -> distribution`` and
``value(obs) -> [...]`` methods (``jaxrl.networks.ActorCritic``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jaxrl.algorithms import base
from jaxrl.envs.base import Env
from jaxrl.losses.returns import episode_gae
from jaxrl.types import Metrics


class Rollout(struct.PyTreeNode):
    """Time-major rollout, every leaf ``[T, N, ...]``.

    ``log_prob`` is the behaviour policy's log-probability of ``action``; ``value`` the
    critic's value of ``obs``; ``final_obs`` the observation each step reached, taken
    before auto-reset (equal to the next ``obs`` where no episode ended).
    """

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_obs: jax.Array
    info: dict


def collect(venv: Env, net: nn.Module, state, num_steps: int, params=None):
    """Rolls ``net``'s policy out for ``num_steps`` steps of every env in ``venv``.

    Args:
        venv: a vector env (``jaxrl.envs.wrappers.make_vec_env``) with ``N`` envs.
        net: module with ``policy`` and ``value`` methods.
        state: any pytree with ``params``, ``env_state``, ``obs [N, ...]``, ``env_params``
            and ``key`` fields.
        num_steps: ``T``.
        params: the acting parameters; ``state.params`` when ``None`` (a stale copy for
            lagged behaviour policies).

    Returns:
        ``(state, rollout)``: ``state`` with ``env_state``, ``obs`` and ``key`` advanced,
        and a :class:`Rollout` ``[T, N, ...]``. Only the actor runs inside the step loop;
        the critic's values are one batched pass afterwards.
    """
    params = state.params if params is None else params

    def env_step(carry, _):
        env_state, obs, key = carry
        key, key_act, key_env = jax.random.split(key, 3)
        dist = net.apply(params, obs, method="policy")
        action = dist.sample(seed=key_act)
        log_prob = dist.log_prob(action)
        action = jax.lax.stop_gradient(action)  # actions are data, not a reparameterised path
        next_obs, env_state, step = venv.step(key_env, env_state, action, state.env_params)
        out = Rollout(
            obs, action, log_prob, None, step.reward, step.terminated, step.truncated,
            step.final_obs, step.info,
        )  # fmt: skip
        return (env_state, next_obs, key), out

    (env_state, obs, key), rollout = jax.lax.scan(
        env_step, (state.env_state, state.obs, state.key), None, num_steps
    )
    rollout = rollout.replace(value=net.apply(params, rollout.obs, method="value"))
    return state.replace(env_state=env_state, obs=obs, key=key), rollout


def bootstrap_values(net: nn.Module, params, rollout: Rollout) -> jax.Array:
    """``V(final_obs)`` ``[T, N]``: the value of the state each step reached, pre-reset."""
    return net.apply(params, rollout.final_obs, method="value")


def advantages(
    net: nn.Module,
    params,
    rollout: Rollout,
    discount: jax.Array,
    gae_lambda: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Truncation-aware GAE on ``rollout``; returns ``(advantages, targets)``, each ``[T, N]``.

    Where no episode ended, ``final_obs`` is the next observation, so ``V(final_obs)`` is
    the bootstrap value everywhere: one batched critic pass, and truncations bootstrap
    from the state the time limit cut, while terminations do not bootstrap at all.
    ``gae_lambda = 1`` gives the Monte-Carlo return to the end of the rollout (bootstrapped
    there); ``gae_lambda = 0`` the one-step TD target.
    """
    return episode_gae(
        rollout.reward,
        rollout.value,
        bootstrap_values(net, params, rollout),
        rollout.terminated,
        rollout.truncated,
        discount,
        gae_lambda,
    )


def flatten(tree, num_items: int):
    """Merges the leading ``[T, N]`` axes of every leaf into one ``[T * N]`` axis."""
    return jax.tree.map(lambda x: x.reshape((num_items, *x.shape[2:])), tree)


def episode_metrics(rollout: Rollout) -> Metrics:
    """Mean return and length of the episodes that ended in ``rollout`` (NaN if none), count."""
    done = jnp.logical_or(rollout.terminated, rollout.truncated).astype(jnp.float32)
    return {
        "episode/return": base.nan_mean(rollout.info["episode_return"], done),
        "episode/length": base.nan_mean(rollout.info["episode_length"], done),
        "episode/count": jnp.sum(done),
    }
