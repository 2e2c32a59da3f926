"""Meta-Q-Learning (Fakoor, Chaudhari, Soatto & Smola, ICLR 2020, arXiv:1910.00125).

Two pieces, both on top of the pure-function TD3 of :mod:`jaxrl.algorithms.td3`:

* **Meta-training** is plain multi-task TD3. :class:`TaskPerEpisode` draws a new task
  (``env.sample_params(key)``) at every reset and keeps it for the episode; with
  ``td3.Config(context_len=H)`` and the env wrapped in
  :class:`jaxrl.envs.wrappers.History` the actor and twin critics read a GRU summary
  (the *context*) of the episode's last ``H`` transitions ``(o, a, r)``
  (:func:`make_meta_env`, :func:`meta_init`, then ``td3.train``).
* **Adaptation** to a new task (:func:`adapt`) reuses the meta-training replay buffer:

  1. collect ``new_steps`` transitions on the new task with the meta-trained policy
     (exploration noise on);
  2. fit a logistic classifier ``p(new | x)`` separating them (label 1) from a pool of
     ``old_pool`` meta-training transitions (label 0) (:func:`fit_logistic`, Newton's
     method with a small ridge term). The features ``x`` (:func:`classifier_features`)
     are exactly what the meta-trained actor's MLP reads: the observation ``o`` and,
     with a context, the actor's GRU context of the history; without a context they are
     ``(o, a, r, o')``. Features are standardised on the pooled data;
  3. propensity weights of the old transitions ``beta(x) = p(new|x) / p(old|x)``,
     normalised to mean 1, clipped at ``beta_clip``, normalised again (:func:`propensity_weights`),
     effective sample size ``ESS = (sum beta)^2 / (n sum beta^2)`` in ``(0, 1]``
     (:func:`effective_sample_size`) and the proximal coefficient ``lambda = 1 - ESS``;
  4. ``adapt_steps`` TD3 gradient steps, each on a minibatch of new data (weight 1) plus
     a minibatch of old data (weight ``beta``), with the proximal penalty
     ``(lambda / 2) ||theta - theta_meta||^2`` on the actor and on the critics
     (:func:`weighted_critic_loss`, :func:`weighted_actor_loss`, :func:`proximal_penalty`).

  ``reuse=False`` gives the baseline of fine-tuning on the new data alone (no old data,
  no proximal term).

The classifier's intercept absorbs the class ratio ``n_new / n_old``; normalising the
weights removes that constant, so ``beta`` estimates the density ratio
``p_new(x) / p_old(x)`` up to scale.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl.algorithms import base, td3
from jaxrl.envs.base import Env, Wrapper
from jaxrl.envs.wrappers import History
from jaxrl.errors import ConfigError
from jaxrl.networks.continuous import ContextEncoder, split_context
from jaxrl.types import Metrics

# --------------------------------------------------------------------------- task sampling


class TaskState(struct.PyTreeNode):
    env_state: object  # the task env's state
    task: object  # the task env's params for this episode


@dataclasses.dataclass(frozen=True)
class TaskPerEpisode(Wrapper):
    """Draws a new task ``env.sample_params(key)`` at each ``reset``, keeps it for the episode.

    The ``params`` argument of ``reset``/``step`` only serves the spaces; the task lives
    in :class:`TaskState`. Put it inside ``AutoReset`` (td3 does, through
    ``make_vec_env``) so every auto-reset draws a fresh task.
    """

    def __post_init__(self):
        if not hasattr(self.env, "sample_params"):
            raise ConfigError(f"MQL needs env.sample_params(key), {self.env.name} has none")

    @property
    def name(self) -> str:
        return f"TaskPerEpisode-{self.env.name}"

    def reset(self, key, params=None):
        del params
        key_task, key_reset = jax.random.split(key)
        task = self.env.sample_params(key_task)
        obs, env_state = self.env.reset(key_reset, task)
        return obs, TaskState(env_state, task)

    def step(self, key, state: TaskState, action, params=None):
        del params
        obs, env_state, step = self.env.step(key, state.env_state, action, state.task)
        return obs, TaskState(env_state, state.task), step


def make_meta_env(task_env: Env, context_len: int) -> Env:
    """The meta-training env: a task per episode, plus the ``History`` if ``context_len > 0``."""
    env = TaskPerEpisode(task_env)
    return History(env, context_len) if context_len else env


def make_task_env(task_env: Env, context_len: int) -> Env:
    """One fixed task (given as ``env_params``), with the same observation layout."""
    return History(task_env, context_len) if context_len else task_env


def meta_init(cfg: td3.Config, task_env: Env, key: jax.Array, hp: td3.HParams) -> td3.State:
    """``td3.init`` on the meta-training env; then ``td3.train(cfg, make_meta_env(...), ...)``."""
    env = make_meta_env(task_env, cfg.context_len)
    return td3.init(cfg, env, key, hp, task_env.default_params())


# --------------------------------------------------------------------------- classifier


def classifier_features(
    cfg: td3.Config, env: Env, actor_params: dict, tr: td3.Transition
) -> jax.Array:
    """Classifier inputs ``[B, F]`` for transitions ``[B, ...]``.

    With ``cfg.context_len > 0``: ``[o, GRU context]``, the meta-trained actor's own
    context encoder applied to the history part of ``tr.obs`` (what its MLP reads).
    Without: ``[o, a, r, o']``, the raw transition.
    """
    if not cfg.context_len:
        return jnp.concatenate([tr.obs, tr.action, tr.reward[:, None], tr.next_obs], -1)
    obs, history = split_context(tr.obs, td3.action_dim(env), cfg.context_len)
    encoder_params = actor_params["params"]["_Features_0"]["ContextEncoder_0"]
    context = ContextEncoder(cfg.context_features).apply({"params": encoder_params}, history)
    return jnp.concatenate([obs, context], -1)


class Logistic(struct.PyTreeNode):
    """``p(label 1 | x) = sigmoid(x . w + b)``; ``w [F]``, ``b []``."""

    w: jax.Array
    b: jax.Array

    def logit(self, x: jax.Array) -> jax.Array:
        """``[..., F] -> [...]``."""
        return x @ self.w + self.b


def fit_logistic(x: jax.Array, y: jax.Array, num_steps: int = 20, ridge: float = 1e-3) -> Logistic:
    """Logistic regression by Newton's method (IRLS) on the mean log-likelihood.

    Minimises ``mean_i BCE(sigmoid(x_i w + b), y_i) + (ridge / 2) ||w||^2`` (the
    intercept is not penalised). The objective is convex, so a handful of Newton steps
    reach the optimum.

    Args:
        x: ``[N, F]`` features.
        y: ``[N]`` labels in ``{0, 1}``.
        num_steps: Newton iterations.
        ridge: L2 coefficient on ``w`` (keeps the Hessian invertible on separable data).
    """
    chex.assert_rank(x, 2)
    chex.assert_shape(y, x.shape[:1])
    n, f = x.shape
    xb = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], -1)  # [N, F + 1]
    penalty = jnp.concatenate([jnp.full((f,), ridge), jnp.zeros((1,))])

    def newton(theta, _):
        p = jax.nn.sigmoid(xb @ theta)
        grad = xb.T @ (p - y) / n + penalty * theta
        hess = (xb.T * (p * (1.0 - p))[None]) @ xb / n + jnp.diag(penalty + 1e-8)
        return theta - jnp.linalg.solve(hess, grad), None

    theta, _ = jax.lax.scan(newton, jnp.zeros((f + 1,), x.dtype), None, num_steps)
    return Logistic(theta[:f], theta[f])


def propensity_weights(logits: jax.Array, clip: float) -> jax.Array:
    """``beta = exp(logit) = p(new|x) / p(old|x)`` ``[N]``, clipped to ``[0, clip]`` after
    normalising to mean 1, then normalised to mean 1 again."""
    beta = jnp.exp(logits - jnp.max(logits))  # the scale cancels in the normalisation
    beta = beta / jnp.mean(beta)
    beta = jnp.minimum(beta, clip)
    return beta / jnp.mean(beta)


def effective_sample_size(weights: jax.Array) -> jax.Array:
    """``ESS = (sum w)^2 / (n sum w^2)`` in ``(0, 1]`` for weights ``[N]`` (1 iff uniform)."""
    return jnp.square(jnp.sum(weights)) / (weights.shape[0] * jnp.sum(jnp.square(weights)))


# --------------------------------------------------------------------------- losses


def proximal_penalty(params, anchor, lam: jax.Array) -> jax.Array:
    """``(lam / 2) ||params - anchor||^2`` summed over every leaf.

    Its gradient in ``params`` is ``lam (params - anchor)``; ``anchor`` is held fixed.
    """
    sq = jax.tree.map(
        lambda p, a: jnp.sum(jnp.square(p - jax.lax.stop_gradient(a))), params, anchor
    )
    return 0.5 * lam * sum(jax.tree.leaves(sq))


def weighted_critic_loss(
    cfg: td3.Config,
    env: Env,
    critic_params: dict,
    params: td3.Params,
    batch: td3.Batch,
    hp: td3.HParams,
    weights: jax.Array,
) -> tuple[jax.Array, Metrics]:
    """``td3.critic_loss`` with a weight per transition ``[B]``:
    ``sum_twins mean_b w_b (Q_i(s_b, a_b) - y_b)^2`` (equal to it when every ``w_b = 1``)."""
    chex.assert_shape(weights, batch.transition.reward.shape)
    actor, critic = td3.networks(cfg, env)
    tr = batch.transition
    noise = jnp.clip(hp.policy_noise * batch.target_noise, -hp.noise_clip, hp.noise_clip)
    next_action = jnp.clip(actor.apply(params.target_actor, tr.next_obs) + noise, -1.0, 1.0)
    next_q = jnp.min(critic.apply(params.target_critic, tr.next_obs, next_action), axis=0)
    target = jax.lax.stop_gradient(tr.reward + hp.discount * (1.0 - tr.terminated) * next_q)
    q = critic.apply(critic_params, tr.obs, tr.action)  # [2, B]
    loss = jnp.sum(jnp.mean(weights[None] * jnp.square(q - target[None]), axis=-1))
    return loss, {"train/critic_loss": loss, "train/q": jnp.mean(q)}


def weighted_actor_loss(
    cfg: td3.Config,
    env: Env,
    actor_params: dict,
    params: td3.Params,
    batch: td3.Batch,
    weights: jax.Array,
) -> tuple[jax.Array, Metrics]:
    """``-mean_b w_b Q_1(s_b, mu(s_b))`` with the critic held fixed; weights ``[B]``."""
    actor, critic = td3.networks(cfg, env)
    obs = batch.transition.obs
    q = critic.apply(jax.lax.stop_gradient(params.critic), obs, actor.apply(actor_params, obs))[0]
    loss = -jnp.mean(weights * q)
    return loss, {"train/actor_loss": loss}


# --------------------------------------------------------------------------- adaptation


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Static settings of adaptation to one new task."""

    new_envs: int = 2  # parallel episodes collected on the new task
    new_steps: int = 100  # env steps per new env (one nav2d episode)
    adapt_steps: int = 200  # gradient steps
    old_pool: int = 4096  # meta-training transitions drawn for the classifier and reuse
    reuse: bool = True  # False: fine-tune on new data only, no proximal term
    proximal: bool = True  # with reuse: False drops the proximal term (an ablation)
    beta_clip: float = 10.0
    classifier_steps: int = 20  # Newton iterations
    ridge: float = 1e-3

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(self, ("new_envs", "new_steps", "old_pool", "classifier_steps"))
        base.check_non_negative_ints(self, ("adapt_steps",))
        if not self.beta_clip > 0 or self.ridge < 0:
            raise ConfigError(
                f"need beta_clip > 0 and ridge >= 0, got {self.beta_clip}, {self.ridge}"
            )


class AdaptInfo(struct.PyTreeNode):
    """Diagnostics of one adaptation (scalars; ``beta [old_pool]``)."""

    ess: jax.Array
    lam: jax.Array  # the proximal coefficient used: 1 - ESS (0 without the term)
    classifier_acc: jax.Array  # training accuracy of the classifier
    beta: jax.Array


def _take(tree, idx):
    return jax.tree.map(lambda x: x[idx], tree)


def old_transitions(cfg: td3.Config, buffer_state, key: jax.Array, num: int) -> td3.Transition:
    """``num`` transitions drawn uniformly (with replacement) from a td3 replay buffer."""
    stored = jax.tree.map(lambda x: x[0], buffer_state.experience)  # [capacity, ...]
    size = jnp.where(buffer_state.is_full, cfg.buffer_size, buffer_state.current_index)
    idx = jax.random.randint(key, (num,), 0, jnp.maximum(size, 1))
    return _take(stored, idx)


def adapt(
    cfg: td3.Config,
    acfg: AdaptConfig,
    task_env: Env,
    meta_state: td3.State,
    task,
    key: jax.Array,
    hp: td3.HParams,
) -> tuple[td3.Params, AdaptInfo]:
    """Adapts meta-trained TD3 to ``task`` (task-env params); see the module docstring.

    Returns the adapted networks and diagnostics. ``cfg`` is the meta-training config
    (it fixes the networks and the replay layout).
    """
    env = make_task_env(task_env, cfg.context_len)
    key_reset, key_collect, key_old, key_steps = jax.random.split(key, 4)
    ccfg = dataclasses.replace(
        cfg, num_envs=acfg.new_envs, train_freq=acfg.new_steps, learning_starts=0,
        total_timesteps=acfg.new_envs * acfg.new_steps,
    )  # fmt: skip
    obs, env_state = td3.vec_env(ccfg, env).reset(key_reset, task)
    state = meta_state.replace(
        env_state=env_state,
        obs=obs,
        env_params=task,
        key=key_collect,
        env_steps=jnp.zeros((), jnp.int32),
    )
    _, new, _ = td3.collect(ccfg, env, state, hp)
    new = jax.tree.map(lambda x: x.reshape((-1, *x.shape[2:])), new)  # [n_new, ...]
    n_new = acfg.new_envs * acfg.new_steps
    old = old_transitions(cfg, meta_state.buffer, key_old, acfg.old_pool)
    meta = meta_state.params

    if acfg.reuse:
        x = jnp.concatenate(
            [classifier_features(cfg, env, meta.actor, t) for t in (new, old)], axis=0
        )
        x = (x - jnp.mean(x, 0, keepdims=True)) / (jnp.std(x, 0, keepdims=True) + 1e-6)
        y = jnp.concatenate([jnp.ones(n_new), jnp.zeros(acfg.old_pool)])
        clf = fit_logistic(x, y, acfg.classifier_steps, acfg.ridge)
        logits = clf.logit(x)
        acc = jnp.mean((logits > 0) == (y > 0.5))
        beta = propensity_weights(logits[n_new:], acfg.beta_clip)
        ess = effective_sample_size(beta)
        lam = (1.0 - ess) * float(acfg.proximal)
    else:
        beta = jnp.zeros(acfg.old_pool)
        ess = lam = acc = jnp.zeros(())

    tx = td3.optimizer(hp)
    # Fresh optimiser moments for adaptation; the networks start at the meta-trained ones.
    init = (meta, tx.init(meta.actor), tx.init(meta.critic))
    b = cfg.batch_size

    def grad_step(carry, xs):
        params, a_opt, c_opt = carry
        step, key = xs
        key_new, key_old, key_noise = jax.random.split(key, 3)
        batch_tr = _take(new, jax.random.randint(key_new, (b,), 0, n_new))
        weights = jnp.ones(b)
        if acfg.reuse:
            idx = jax.random.randint(key_old, (b,), 0, acfg.old_pool)
            batch_tr = jax.tree.map(lambda u, v: jnp.concatenate([u, v]), batch_tr, _take(old, idx))
            weights = jnp.concatenate([weights, beta[idx]])
        batch = td3.Batch(batch_tr, jax.random.normal(key_noise, batch_tr.action.shape))

        def c_loss(c):
            loss, m = weighted_critic_loss(cfg, env, c, params, batch, hp, weights)
            return loss + proximal_penalty(c, meta.critic, lam), m

        c_grads, metrics = jax.grad(c_loss, has_aux=True)(params.critic)
        updates, c_opt_new = tx.update(c_grads, c_opt, params.critic)
        params = params.replace(critic=optax.apply_updates(params.critic, updates))

        def a_loss(a):
            loss, m = weighted_actor_loss(cfg, env, a, params, batch, weights)
            return loss + proximal_penalty(a, meta.actor, lam), m

        a_grads, a_metrics = jax.grad(a_loss, has_aux=True)(params.actor)
        updates, a_opt_new = tx.update(a_grads, a_opt, params.actor)
        actor = optax.apply_updates(params.actor, updates)
        delayed = (step + 1) % cfg.policy_delay == 0
        with_actor = td3.Params(
            actor,
            params.critic,
            optax.incremental_update(actor, params.target_actor, hp.tau),
            optax.incremental_update(params.critic, params.target_critic, hp.tau),
        )
        params = jax.tree.map(lambda u, v: jnp.where(delayed, u, v), with_actor, params)
        a_opt = jax.tree.map(lambda u, v: jnp.where(delayed, u, v), a_opt_new, a_opt)
        return (params, a_opt, c_opt_new), metrics | a_metrics

    steps = jnp.arange(acfg.adapt_steps)
    (params, _, _), _ = jax.lax.scan(
        grad_step, init, (steps, jax.random.split(key_steps, acfg.adapt_steps))
    )
    return params, AdaptInfo(ess, lam, acc, beta)


# --------------------------------------------------------------------------- evaluation


def evaluate(
    cfg: td3.Config, task_env: Env, params: td3.Params, task, key: jax.Array, num_steps: int = 100
) -> jax.Array:
    """Undiscounted return ``[]`` of one greedy episode on ``task`` (rewards after the
    episode ends are dropped)."""
    env = make_task_env(task_env, cfg.context_len)
    key_reset, key_steps = jax.random.split(key)
    obs, state = env.reset(key_reset, task)

    def env_step(carry, key):
        obs, state, alive = carry
        action = td3.act(cfg, env, params, obs)
        obs, state, step = env.step(key, state, action, task)
        reward = jnp.where(alive, step.reward, 0.0)
        return (obs, state, jnp.logical_and(alive, jnp.logical_not(step.done))), reward

    _, rewards = jax.lax.scan(
        env_step, (obs, state, jnp.ones((), bool)), jax.random.split(key_steps, num_steps)
    )
    return jnp.sum(rewards)
