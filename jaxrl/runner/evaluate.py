"""Evaluation rollouts that count whole episodes exactly, and periodic evaluation in training.

:func:`evaluate` runs ``num_episodes`` copies of the raw env side by side (``vmap``), each
for exactly its first episode, from fresh resets drawn with an evaluation key (never the
training key). A copy's return is the undiscounted sum of its rewards from reset until its
first ``done`` (termination *or* the env's own time-limit truncation, which is the end of
an episode as the task defines it). Rewards after that are masked out, so no copy
contributes half an episode or a second one, and no return is cut at a rollout length
(the failure of Brax issue #516). Should an episode still be running after ``max_steps``
steps (a safety bound on the loop, not a time limit), its return is ``NaN``: an error the
caller sees, never a silently truncated number.

The policy is the algorithm's own network: for a distribution policy (PPO) the
``deterministic`` policy is the distribution's mode (Categorical argmax, Gaussian mean,
tanh of the Gaussian mean for squashed heads) and the stochastic one samples; for a
deterministic actor (TD3) the greedy action, or with ``deterministic=False`` the training
behaviour policy ``clip(mu + sigma N(0, 1))`` with ``sigma = hp.exploration_noise``; for a
Q-learner (DQN family) the greedy action, or epsilon-greedy at the final ``hp.eps_end``.
Continuous actions are clipped to the action bounds, as in training (``ClipAction``).
Observation normalisation statistics, when the agent trained with them, are frozen and
applied (``obs_stats``; :func:`obs_stats` finds them in a ``State``'s env state).

Nothing here calls ``jit``: :class:`PeriodicEval` and ``jaxrl eval`` do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.envs.base import Env
from jaxrl.envs.wrappers import ClipAction, NormalizeObs, NormalizeObsState, RunningStats
from jaxrl.errors import ConfigError

DEFAULT_MAX_STEPS = 100_000
# Evaluation keys descend from their own root, apart from training's ``key(0)`` root
# (jaxrl.runner.sweep.seed_key), so evaluation episodes never reuse training env seeds.
EVAL_ROOT = 0x5EED_E7A1


def eval_key(seed: int, run_seed: int | jax.Array, update: int | jax.Array = 0) -> jax.Array:
    """The evaluation key of run seed ``run_seed`` at ``update`` under evaluation seed ``seed``."""
    key = jax.random.fold_in(jax.random.key(EVAL_ROOT), seed)
    return jax.random.fold_in(jax.random.fold_in(key, run_seed), update)


def _mode(dist: distrax.Distribution) -> jax.Array:
    if isinstance(dist, distrax.Transformed):  # e.g. tanh-squashed Gaussian: tanh(mean)
        return dist.bijector.forward(_mode(dist.distribution))
    return dist.mode()


def policy_fn(
    algo: ModuleType, cfg: Any, env: Env, deterministic: bool, hp: Any = None
) -> Callable[[Any, Any, jax.Array, jax.Array], tuple[Any, jax.Array]]:
    """``(params, carry, obs [E, *obs_shape], key) -> (carry, actions [E, ...])`` for ``algo``.

    Recurrent algorithms (R2D2) provide ``recurrent_policy(cfg, env, params, carry, obs, key,
    deterministic, hp)`` and ``policy_carry(cfg, num_episodes)``, and the carry is their
    recurrent state; for the others it is ``()``. Algorithms with a ``policy(cfg, env,
    params, obs, key, deterministic, hp)`` (TD3, the DQN family) act through it;
    distribution policies are recognised by ``algo.network(cfg, env)`` returning
    ``(dist, value)``.
    """
    if hasattr(algo, "recurrent_policy"):
        return lambda params, carry, obs, key: algo.recurrent_policy(
            cfg, env, params, carry, obs, key, deterministic, hp
        )
    if hasattr(algo, "initial_carry"):
        raise ConfigError(f"{algo.__name__} is recurrent but has no recurrent_policy to evaluate")
    if hasattr(algo, "policy"):
        return lambda params, carry, obs, key: (
            carry,
            algo.policy(cfg, env, params, obs, key, deterministic, hp),
        )
    if hasattr(algo, "network"):
        net = algo.network(cfg, env)

        def act(params, carry, obs, key):
            dist, _ = net.apply(params, obs)
            return carry, _mode(dist) if deterministic else dist.sample(seed=key)

        return act
    raise ConfigError(f"{algo.__name__} has no policy evaluate() knows how to run")


def policy_carry(algo: ModuleType, cfg: Any, num_episodes: int) -> Any:
    """The initial policy carry of ``num_episodes`` episodes (``()`` for stateless policies)."""
    if hasattr(algo, "policy_carry"):
        return algo.policy_carry(cfg, num_episodes)
    return ()


def obs_stats(env_state: Any) -> RunningStats | None:
    """The observation-normalisation statistics inside a wrapped env state, or ``None``."""
    s = env_state
    while s is not None:
        if isinstance(s, NormalizeObsState):
            return s.stats
        s = getattr(s, "env_state", None)
    return None


def observer(env: Env, obs_stats: RunningStats | None) -> Callable[[jax.Array], jax.Array]:
    """``obs -> obs`` as a policy trained on normalised observations sees them, with the
    frozen statistics ``obs_stats``; the identity when ``obs_stats`` is ``None``."""
    if obs_stats is None:
        return lambda obs: obs
    normalizer = NormalizeObs(env)
    return lambda obs: normalizer._normalize(obs, obs_stats)


def evaluate(
    algo: ModuleType,
    cfg: Any,
    env: Env,
    params: Any,
    key: jax.Array,
    num_episodes: int,
    deterministic: bool,
    env_params: Any = None,
    max_steps: int | None = None,
    *,
    obs_stats: RunningStats | None = None,
    hp: Any = None,
) -> jax.Array:
    """Returns of exactly ``num_episodes`` complete episodes: ``[num_episodes]`` float32,
    ``NaN`` for an episode not ended within ``max_steps``. The returns of
    :func:`evaluate_episodes` (same arguments), without the lengths."""
    returns, _ = evaluate_episodes(
        algo, cfg, env, params, key, num_episodes, deterministic, env_params, max_steps,
        obs_stats=obs_stats, hp=hp,
    )  # fmt: skip
    return returns


def evaluate_episodes(
    algo: ModuleType,
    cfg: Any,
    env: Env,
    params: Any,
    key: jax.Array,
    num_episodes: int,
    deterministic: bool,
    env_params: Any = None,
    max_steps: int | None = None,
    *,
    obs_stats: RunningStats | None = None,
    hp: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """Returns and lengths of exactly ``num_episodes`` complete episodes.

    Args:
        algo: the algorithm module (its policy, recurrent or not: see :func:`policy_fn`).
        cfg, env: the static config and the *raw* env (no auto-reset, no vectorisation).
        params: the policy parameters of one run (``State.params``).
        key: evaluation PRNG key (see :func:`eval_key`); episode ``i`` resets with
            ``split(key_reset, num_episodes)[i]``.
        num_episodes, deterministic, max_steps: static. ``max_steps`` (default
            ``DEFAULT_MAX_STEPS``) bounds the loop; an episode not ended by then is ``NaN``.
        env_params: the env's params (default ``env.default_params()``).
        obs_stats: frozen normalisation statistics if the agent trained on normalised obs.
        hp: the run's HParams (needed only by a deterministic actor's stochastic policy).

    Returns:
        ``(returns, lengths)``, each ``[num_episodes]``: each episode's undiscounted return
        (float32, ``NaN`` if unfinished) and its number of steps (int32; ``max_steps`` if
        unfinished).
    """
    env_params = env.default_params() if env_params is None else env_params
    max_steps = DEFAULT_MAX_STEPS if max_steps is None else int(max_steps)
    act = policy_fn(algo, cfg, env, deterministic, hp)
    raw = ClipAction(env)
    observe = observer(env, obs_stats)
    key_reset, key = jax.random.split(key)
    reset_keys = jax.random.split(key_reset, num_episodes)
    obs, state = jax.vmap(raw.reset, in_axes=(0, None))(reset_keys, env_params)
    zeros = jnp.zeros((num_episodes,), jnp.float32)
    policy_state = policy_carry(algo, cfg, num_episodes)
    done = jnp.zeros((num_episodes,), bool)
    lengths = jnp.zeros((num_episodes,), jnp.int32)
    carry = (jnp.zeros((), jnp.int32), key, state, obs, policy_state, zeros, lengths, done)

    def cond(c):
        t, done = c[0], c[-1]
        return jnp.logical_and(t < max_steps, jnp.logical_not(jnp.all(done)))

    def body(c):
        t, key, state, obs, policy_state, ret, lengths, done = c
        key, key_act, key_env = jax.random.split(key, 3)
        policy_state, action = act(params, policy_state, observe(obs), key_act)
        env_keys = jax.random.split(key_env, num_episodes)
        obs, state, step = jax.vmap(raw.step, in_axes=(0, 0, 0, None))(
            env_keys, state, action, env_params
        )
        # An env that has finished keeps stepping (cheaper than freezing its state), but
        # its rewards no longer count: each copy contributes exactly its first episode.
        ret = jnp.where(done, ret, ret + step.reward.astype(jnp.float32))
        lengths = lengths + jnp.logical_not(done)
        done = jnp.logical_or(done, step.done)
        return t + 1, key, state, obs, policy_state, ret, lengths, done

    *_, ret, lengths, done = jax.lax.while_loop(cond, body, carry)
    return jnp.where(done, ret, jnp.nan), lengths


def discounted_return(
    act: Callable[[jax.Array], jax.Array],
    env: Env,
    env_params: Any,
    env_state: Any,
    obs: jax.Array,
    discount: jax.Array | float,
    horizon: int,
    key: jax.Array | None = None,
) -> jax.Array:
    """``Σ_{t < horizon} γ^t r_t`` of the policy ``act`` from one env state: a scalar.

    The true value that a learned ``V(s)`` or ``Q(s, π(s))`` estimates, for measuring the
    estimates' bias (e.g. DQN's and DDPG's overestimation). Rewards count until the first
    ``terminated`` step, inclusive; a ``truncated`` step (a time limit) does not stop the
    sum, since a learner that bootstraps through time limits estimates the untruncated
    value (``env.step`` never resets; an env whose adapter reports its time limit as a
    termination needs the limit raised in ``env_params``). The tail left out is at most
    ``γ^horizon · max|r| / (1 − γ)``.

    Args:
        act: ``obs [*obs_shape] -> action`` (deterministic; e.g. a greedy policy).
        env, env_params: the *raw* env (no auto-reset) and its params.
        env_state, obs: the start state and its observation (from ``env.reset``).
        discount: ``γ``. horizon: steps rolled out (static).
        key: env step keys are ``fold_in(key, t)`` (default ``key(0)``; deterministic envs
            ignore them).
    """
    key = jax.random.key(0) if key is None else key

    def step(carry, t):
        state, obs, scale, alive = carry
        obs, state, out = env.step(jax.random.fold_in(key, t), state, act(obs), env_params)
        reward = jnp.where(alive, scale * out.reward.astype(jnp.float32), 0.0)
        alive = jnp.logical_and(alive, jnp.logical_not(out.terminated))
        return (state, obs, scale * discount, alive), reward

    carry = (env_state, obs, jnp.float32(1.0), jnp.bool_(True))
    _, rewards = jax.lax.scan(step, carry, jnp.arange(horizon))
    return jnp.sum(rewards)


def evaluate_runs(
    algo: ModuleType,
    cfg: Any,
    env: Env,
    state: Any,
    hps: Any,
    keys: jax.Array,
    num_episodes: int,
    deterministic: bool,
    max_steps: int | None = None,
) -> jax.Array:
    """:func:`evaluate` vmapped over a batch of runs: ``State``/``HParams``/keys with a leading
    ``[R]`` axis -> returns ``[R, num_episodes]``. Each run uses its own ``env_params`` and
    observation statistics when its ``State`` has them."""

    def one(s, h, k):
        return evaluate(
            algo, cfg, env, s.params, k, num_episodes, deterministic,
            getattr(s, "env_params", None), max_steps,
            obs_stats=obs_stats(getattr(s, "env_state", None)), hp=h,
        )  # fmt: skip

    return jax.vmap(one)(state, hps, keys)


class PeriodicEval:
    """Evaluation inside training: every ``every`` chunks, both policies, ``num_episodes`` each.

    Compiled once (first call); writes one row per run to ``eval.jsonl`` (if ``path``) with
    ``eval/return_deterministic`` and ``eval/return_stochastic`` (means over episodes) and
    their standard deviations. Keys come from :func:`eval_key` (``seed``, the run's seed,
    the update count), separate from the training env seeds. With several processes every
    process calls it (the runs span their devices) and process 0 alone writes the file.
    """

    def __init__(
        self,
        algo: ModuleType,
        cfg: Any,
        env: Env,
        *,
        num_episodes: int = 10,
        every: int = 1,
        max_steps: int | None = None,
        seed: int = 0,
        path: str | Path | None = None,
    ):
        if num_episodes < 1 or every < 1:
            raise ConfigError("evaluation needs num_episodes >= 1 and every >= 1")
        self.every, self.seed = every, seed
        self.path = Path(path) if path is not None else None

        def both(state, hps, keys):
            return {
                mode: evaluate_runs(algo, cfg, env, state, hps, keys, num_episodes, det, max_steps)
                for mode, det in (("deterministic", True), ("stochastic", False))
            }

        self._fn = jax.jit(both)

    def due(self, chunks_done: int, last: bool) -> bool:
        return last or chunks_done % self.every == 0

    def __call__(
        self,
        state: Any,
        hps: Any,
        *,
        update: int,
        steps_per_update: int,
        run_labels: Sequence[dict[str, Any]],
    ) -> dict[str, np.ndarray]:
        """Evaluates every run (``State``/``HParams`` ``[R]``); returns ``{metric: [R]}``."""
        from jaxrl.distributed import multihost
        from jaxrl.logger import writers

        num_runs = len(run_labels)
        seeds = [label.get("seed", label["run"]) for label in run_labels]
        like = jax.tree.leaves(state)[0]
        if multihost.spans_processes(like):  # several processes: evaluate the padded runs
            # too, as sharded, and drop them on the host (no resharding, no collectives)
            seeds += seeds[:1] * (like.shape[0] - num_runs)
        else:
            state, hps = jax.tree.map(lambda x: x[:num_runs], (state, hps))
        keys = jax.vmap(lambda s: eval_key(self.seed, s, update))(jnp.asarray(seeds))
        keys = multihost.place_like(keys, like)
        returns = multihost.to_host(self._fn(state, hps, keys))
        returns = {mode: r[:num_runs] for mode, r in returns.items()}
        out = {}
        with np.errstate(all="ignore"):
            for mode, r in returns.items():
                out[f"eval/return_{mode}"] = np.mean(r, axis=1)
                out[f"eval/return_{mode}_std"] = np.std(r, axis=1)
        if self.path is not None and jax.process_index() == 0:
            metrics = {name: value[:, None] for name, value in out.items()}
            writers.JsonlWriter(self.path).write_chunk(
                metrics,
                first_update=update - 1,
                steps_per_update=steps_per_update,
                run_labels=list(run_labels),
            )
        return out
