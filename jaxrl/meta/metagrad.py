"""Meta-gradients through ``K`` inner updates of any algorithm that follows the contract.

An algorithm module (``Config``, ``HParams``, ``State``, ``init``, ``update``, ``train``,
``loss``; see :mod:`jaxrl.algorithms.base`) is a pure function ``state -> state`` per
update, with every number it may be differentiated by held in traced ``HParams``. So a
meta-gradient is ``jax.grad`` of an outer objective of ``state_K`` through a
``lax.scan`` of ``K`` calls of ``algo.update``. This module adds the three choices of
*what* is meta-learned (``wrt``), the truncation length ``K``, optional
``jax.checkpoint`` rematerialisation of the inner steps, and a first-order mode:

* ``wrt="hparams"``: meta-parameters are a dict of unconstrained scalars, one per
  ``HParams`` field, mapped in by :func:`from_meta` (a sigmoid for fields in ``(0, 1)``
  such as ``discount`` and ``gae_lambda``, ``exp`` otherwise, e.g. ``learning_rate``).
  This is meta-gradient RL (Xu, van Hasselt, Silver 2018, arXiv:1805.09801) when the
  outer objective is a policy-gradient loss with fixed reference ``γ'``, ``λ'`` on the
  *next* rollout, which is then also the data of the next inner update
  (:func:`validation_loss`, :func:`online_step`).
* ``wrt="params"``: meta-parameters are the initial network parameters ``θ_0`` in
  ``State.params`` (MAML, Finn et al. 2017, arXiv:1703.03400), target and averaged
  copies included; :func:`with_params` also sets the copies an algorithm keeps outside
  ``State.params`` (IMPALA's lagged behaviour parameters, Ape-X's actors'), so the run
  starts from ``θ_0``.
* ``wrt="loss"``: meta-parameters ``η`` of a learned loss
  ``learned_loss(η, cfg, env, params, batch, hp)`` that replaces ``algo.loss`` wherever
  the update takes its gradient (every algorithm's ``update`` takes
  ``loss_fn=algo.loss``); LPG (Oh et al. 2020, arXiv:2007.08794) and MetaGenRL (Kirsch
  et al. 2020, arXiv:1910.04098) style.

**First order.** With ``first_order=True`` every inner update ``s_{k+1} = u(s_k, η)`` is
applied as an increment whose dependence on the incoming state is cut:
``x_{k+1} = x_k + sg(·)[u(sg(s_k), η) − sg(x_k)]`` for each float leaf ``x`` of the state
(implemented as ``x_k − sg(x_k) + u(sg(s_k), η)``; the value is unchanged). The Jacobian
``∂s_{k+1}/∂s_k`` is thereby replaced by the identity, and only the explicit dependence
of each update on ``η`` is kept: ``ds_K/dη ≈ Σ_k ∂u_k/∂η``.

* For MAML this is FOMAML: ``dL(θ_K)/dθ_0 ≈ ∇L(θ_K)``, dropping every second-derivative
  (Hessian) term of the inner gradient steps.
* For hyperparameters and learned losses it drops the products of Hessians along the
  unroll (the terms through which an early change of ``η`` is propagated by later
  updates), keeping the direct effect of ``η`` on each update. For ``K = 1`` it equals the
  exact meta-gradient (``s_0`` does not depend on ``η``); this is the one-step
  approximation of Xu et al. 2018 (their trace ``z`` with decay ``μ = 0``).

The outer objective ``outer_fn(state_K) -> (scalar, aux)`` is any differentiable surrogate
on fresh data (STYLE §4), never a sampled return. No function here calls ``jit``.

**Every algorithm.** All three are tested against finite differences through the updates
of every algorithm in ``jaxrl.algorithms.ALGORITHMS`` (tests/meta/: test_metagrad_algorithms,
test_maml_algorithms, test_learned_loss_algorithms). Where an update is more than a
gradient step of ``algo.loss``, the learned loss replaces its gradient block by block:
TRPO / NPG's natural-gradient step preconditions its gradient in the actor and the
critic's Adam steps follow its gradient in the critic (the line search still tests TRPO's
surrogate); SAC's critic, actor and temperature and TD3 / DDPG's critics and actor each
step down its gradient in their own parameters; the DQN family's replay priorities stay
the algorithm's TD errors (docs/design.md, "Meta-gradients through every algorithm").
The meta-gradient is that of the computation except where an inner loss stops a
gradient (bootstrap values of target networks, ACER's and IMPALA's stopped values: a
semi-gradient, as in Xu et al.) and at discrete choices (sampled actions, argmaxes, replay
sample indices, TRPO's accepted backtrack), which get the derivative of the branch taken:
docs/design.md, "Meta-gradients through every algorithm" and "MAML through every
algorithm" (for target networks it is a semi-gradient in their copies of ``θ_0``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl.errors import ConfigError
from jaxrl.types import Metrics

WRT = ("hparams", "params", "loss")
# Hyperparameters that live in (0, 1): parameterised by their logit; all others by their log.
UNIT_INTERVAL = frozenset({"discount", "gae_lambda", "tau", "epsilon", "reward_scaling_discount"})

OuterFn = Callable[[Any], tuple[jax.Array, Any]]


# ---------------------------------------------------------------- checks


def check_num_steps(num_steps: int) -> None:
    """Raises :class:`ConfigError` unless ``num_steps`` (``K``) is a Python int >= 1."""
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ConfigError(
            f"num_steps (K, the truncation length) must be an int >= 1, got {num_steps!r}"
        )


def check_hparam_names(hp: Any, names) -> None:
    """Raises :class:`ConfigError` if a name is not a field of the ``HParams`` ``hp``."""
    fields = [f.name for f in dataclasses.fields(hp)]
    unknown = sorted(set(names) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown hyperparameter(s) {unknown} for meta-learning; valid: {', '.join(fields)}"
        )
    if not names:
        raise ConfigError("no hyperparameter to meta-learn: give at least one name")


def _check_wrt(wrt: str, loss_fn: Callable | None) -> None:
    if wrt not in WRT:
        raise ConfigError(f"wrt must be one of {WRT}, got {wrt!r}")
    if wrt == "loss" and loss_fn is None:
        raise ConfigError('wrt="loss" needs loss_fn(meta_params, cfg, env, params, batch, hp)')


# ---------------------------------------------------------------- hyperparameter transforms


def to_meta(hp: Any, names) -> dict[str, jax.Array]:
    """Unconstrained meta-parameters for ``names``: ``logit`` of (0, 1) fields, else ``log``.

    Args:
        hp: an algorithm's ``HParams`` (scalar leaves, or ``[R]`` for a run axis).
        names: field names to meta-learn, e.g. ``("discount", "gae_lambda")``.

    Returns:
        ``{name: array}`` with the shape of each field; ``from_meta(hp, to_meta(hp, n))``
        gives ``hp`` back (to float rounding).
    """
    names = tuple(names)
    check_hparam_names(hp, names)
    out = {}
    for name in names:
        value = jnp.asarray(getattr(hp, name), jnp.float32)
        out[name] = jax.scipy.special.logit(value) if name in UNIT_INTERVAL else jnp.log(value)
    return out


def from_meta(hp: Any, meta: Mapping[str, jax.Array]) -> Any:
    """``hp`` with each field in ``meta`` replaced by ``sigmoid`` / ``exp`` of its value."""
    check_hparam_names(hp, tuple(meta))
    values = {
        name: jax.nn.sigmoid(x) if name in UNIT_INTERVAL else jnp.exp(x) for name, x in meta.items()
    }
    return hp.replace(**values)


# ---------------------------------------------------------------- inner loop


def _is_float(x) -> bool:
    if isinstance(x, float):  # e.g. gymnax's default EnvParams hold Python floats
        return True
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


def stop_float_gradients(tree: Any) -> Any:
    """``stop_gradient`` on every float leaf (PRNG keys and integers pass through)."""
    return jax.tree.map(lambda x: jax.lax.stop_gradient(x) if _is_float(x) else x, tree)


def with_params(algo: ModuleType, cfg: Any, state: Any, params: Any) -> Any:
    """``state`` as if the run started from the network parameters ``params`` (MAML's ``θ_0``).

    ``params`` has the structure of ``state.params``, target / averaged copies included
    (DQN family, TD3, DDPG, SAC, ACER): they are meta-parameters of their own, and pass
    them equal to the online part for a run that starts as :func:`init` would. Copies of
    the parameters held *outside* ``State.params`` are set by the algorithm's
    ``with_params(cfg, state, params)`` where it has one (IMPALA's ring buffer of lagged
    behaviour parameters, Ape-X's actors' copy); otherwise ``state.replace(params=params)``.
    Optimiser moments, K-FAC statistics, replay contents, recurrent carries and env
    states are kept (none is a copy of the parameters).
    """
    hook = getattr(algo, "with_params", None)
    if hook is None:
        return state.replace(params=params)
    return hook(cfg, state, params)


def inner_train(
    algo: ModuleType,
    cfg: Any,
    env: Any,
    state: Any,
    hp: Any,
    num_steps: int,
    *,
    loss_fn: Callable | None = None,
    remat: bool = False,
    first_order: bool = False,
) -> tuple[Any, Metrics]:
    """``num_steps`` (``K``) calls of ``algo.update`` as one ``lax.scan``.

    Args:
        algo: an algorithm module following the contract (e.g. ``jaxrl.algorithms.ppo``).
        cfg, env: its static ``Config`` and environment.
        state, hp: its ``State`` and ``HParams`` (traced; may depend on meta-parameters).
        num_steps: ``K``, a Python int >= 1.
        loss_fn: replaces ``algo.loss`` (signature of ``algo.loss``), passed to
            ``algo.update``; ``None`` keeps it.
        remat: wrap each update in ``jax.checkpoint``, so reverse mode stores only the
            ``K`` states and recomputes each update's internals (memory ``O(K)`` states
            instead of ``O(K)`` full update traces; same gradient).
        first_order: cut ``∂s_{k+1}/∂s_k`` to the identity (see the module docstring).

    Returns:
        ``(state_K, metrics)`` with metrics stacked ``[K, ...]``. Equals
        ``algo.train(cfg, env, state, hp, K)`` in value for every setting.
    """
    check_num_steps(num_steps)

    def update(s):
        if loss_fn is None:
            return algo.update(cfg, env, s, hp)
        return algo.update(cfg, env, s, hp, loss_fn)

    if remat:
        update = jax.checkpoint(update, prevent_cse=False)  # inside scan CSE is not a risk

    def step(s, _):
        if not first_order:
            return update(s)
        s_out, metrics = update(stop_float_gradients(s))
        # x - sg(x) + u: the value of u, with d/dx = identity and d/dη through u only.
        merge = lambda x, x_out: x - jax.lax.stop_gradient(x) + x_out if _is_float(x) else x_out
        return jax.tree.map(merge, s, s_out), metrics

    return jax.lax.scan(step, state, None, num_steps)


def unroll(
    algo: ModuleType,
    cfg: Any,
    env: Any,
    state: Any,
    hp: Any,
    meta_params: Any,
    num_steps: int,
    *,
    wrt: str = "hparams",
    loss_fn: Callable | None = None,
    remat: bool = False,
    first_order: bool = False,
) -> tuple[Any, Metrics]:
    """Puts ``meta_params`` where ``wrt`` says, then runs :func:`inner_train`.

    Args:
        meta_params: ``wrt="hparams"``: ``{name: unconstrained scalar}`` (see
            :func:`to_meta`); ``"params"``: a network-parameter pytree replacing
            ``state.params`` (:func:`with_params`); ``"loss"``: any pytree ``η`` passed
            as the first argument of ``loss_fn``.
        loss_fn: with ``wrt="loss"``, ``loss_fn(η, cfg, env, params, batch, hp)`` (the
            learned loss); otherwise an optional plain replacement of ``algo.loss``.

    Returns:
        ``(state_K, metrics[K])``.
    """
    _check_wrt(wrt, loss_fn)
    check_num_steps(num_steps)
    if wrt == "hparams":
        hp = from_meta(hp, meta_params)
    elif wrt == "params":
        state = with_params(algo, cfg, state, meta_params)
    else:
        loss_fn = functools.partial(loss_fn, meta_params)
    return inner_train(
        algo, cfg, env, state, hp, num_steps,
        loss_fn=loss_fn, remat=remat, first_order=first_order,
    )  # fmt: skip


def meta_loss(
    meta_params: Any,
    outer_fn: OuterFn,
    algo: ModuleType,
    cfg: Any,
    env: Any,
    state: Any,
    hp: Any,
    num_steps: int,
    **kw,
) -> tuple[jax.Array, tuple[Any, Any, Metrics]]:
    """``outer_fn(unroll(meta_params, ...))``; returns ``(outer, (aux, state_K, metrics))``.

    ``outer_fn(state_K) -> (scalar, aux)``. ``kw`` are :func:`unroll`'s keyword options.
    """
    state_k, metrics = unroll(algo, cfg, env, state, hp, meta_params, num_steps, **kw)
    outer, aux = outer_fn(state_k)
    return outer, (aux, state_k, metrics)


def meta_grad(
    outer_fn: OuterFn,
    algo: ModuleType,
    cfg: Any,
    env: Any,
    state: Any,
    hp: Any,
    meta_params: Any,
    num_steps: int,
    *,
    wrt: str = "hparams",
    loss_fn: Callable | None = None,
    first_order: bool = False,
    remat: bool = False,
) -> tuple[Any, tuple[jax.Array, Any, Any, Metrics]]:
    """Gradient of ``outer_fn(state_K)`` w.r.t. ``meta_params`` through ``K`` inner updates.

    Args:
        outer_fn: ``state_K -> (scalar, aux)``, the outer (validation) objective.
        algo, cfg, env, state, hp: the algorithm module and its inputs.
        meta_params: see :func:`unroll`.
        num_steps: ``K``, the truncation length (Python int >= 1).
        wrt: ``"hparams"``, ``"params"`` (MAML) or ``"loss"`` (learned loss).
        loss_fn: see :func:`unroll`.
        first_order: identity Jacobian across inner updates (FOMAML for ``"params"``;
            the Hessian-free / one-step approximation otherwise; module docstring).
        remat: ``jax.checkpoint`` each inner update (same gradient, less memory).

    Returns:
        ``(grads, (outer_value, aux, state_K, metrics[K]))``; ``grads`` has the structure
        of ``meta_params``.
    """
    _check_wrt(wrt, loss_fn)
    check_num_steps(num_steps)
    if wrt == "hparams":
        check_hparam_names(hp, tuple(meta_params))
    kw = dict(wrt=wrt, loss_fn=loss_fn, first_order=first_order, remat=remat)
    objective = functools.partial(
        meta_loss, outer_fn=outer_fn, algo=algo, cfg=cfg, env=env, state=state, hp=hp,
        num_steps=num_steps, **kw,
    )  # fmt: skip
    (outer, (aux, state_k, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
        meta_params
    )
    return grads, (outer, aux, state_k, metrics)


# ---------------------------------------------------------------- outer objectives


def validation_loss(
    algo: ModuleType, cfg: Any, env: Any, state: Any, hp_ref: Any, condition: Any = None
) -> tuple[jax.Array, tuple[Any, Metrics]]:
    """The algorithm's own loss on a fresh rollout, with reference hyperparameters.

    For algorithms with ``collect(cfg, env, state) -> (state, rollout)`` and
    ``make_batch(cfg, env, params, rollout, hp) -> batch`` (PPO). The rollout is taken
    by the updated policy ``θ_K`` and its advantages/targets are computed with ``hp_ref``
    (e.g. ``γ' = 0.99``, ``λ' = 1``) from ``sg(θ_K)``: they are data, as in Xu et al.'s
    outer objective ``J'(τ', θ', γ')``. Only ``algo.loss(θ_K, batch, hp_ref)`` carries the
    gradient. For PPO at ``θ_K`` itself the ratio is 1, so the clipped surrogate's
    gradient is the policy gradient ``−E[Â ∇log π]`` plus the value and entropy terms.

    **Conditioned agents.** With ``condition`` (``[C]``, e.g. ``(γ', λ')``) and ``env`` a
    :class:`jaxrl.envs.wrappers.Conditioned` env, the rollout is re-read under the
    reference: its observations get ``condition`` in place of the acting one, and its
    values and behaviour log-probabilities are recomputed from ``sg(θ_K)`` (so the ratio
    is again 1). The outer loss is then ``L'(τ', θ_K, η')`` with the policy and value
    conditioned on ``η'``, as in Xu et al. 2018 (§1.4). Needs ``algo.network(cfg, env)``
    whose ``apply(params, obs)`` gives ``(dist, value)`` (PPO's).

    Returns:
        ``(loss, (next_state, metrics))``: ``next_state`` is ``sg(state)`` advanced past
        the validation rollout (env state, observation, key), for an online loop.
    """
    data_state, rollout = algo.collect(cfg, env, stop_float_gradients(state))
    if condition is not None:
        rollout = recondition(algo, cfg, env, data_state.params, rollout, condition)
    batch = algo.make_batch(cfg, env, data_state.params, rollout, hp_ref)
    loss, metrics = algo.loss(cfg, env, state.params, stop_float_gradients(batch), hp_ref)
    return loss, (data_state, metrics)


def recondition(algo: ModuleType, cfg: Any, env: Any, params: Any, rollout: Any, condition):
    """A rollout ``[T, N, ...]`` of a :class:`~jaxrl.envs.wrappers.Conditioned` env re-read
    with ``condition`` ``[C]``: observations (and ``final_obs``) carry ``condition``, and
    ``value`` and ``log_prob`` are those of ``params`` on the new observations."""
    _check_conditioned(env, jnp.shape(condition)[-1])
    obs = env.replace_condition(rollout.obs, condition)
    final_obs = env.replace_condition(rollout.final_obs, condition)
    dist, value = algo.network(cfg, env).apply(params, obs)
    return rollout.replace(
        obs=obs, final_obs=final_obs, value=value, log_prob=dist.log_prob(rollout.action)
    )


def _check_conditioned(env: Any, size: int) -> None:
    from jaxrl.envs.wrappers import Conditioned  # envs import nothing from meta

    if not isinstance(env, Conditioned) or env.size != size:
        raise ConfigError(
            f"conditioning on {size} value(s) needs the env wrapped as Conditioned(env, "
            f"size={size}); got {env!r}"
        )


def condition_values(hp: Any, names) -> jax.Array:
    """``[len(names)]`` float32: the values of the ``HParams`` fields ``names`` of ``hp``."""
    return jnp.stack([jnp.asarray(getattr(hp, n), jnp.float32) for n in names])


# ---------------------------------------------------------------- online meta-gradient RL


class OnlineState(struct.PyTreeNode):
    """One online meta-learning run: the algorithm's state and the meta-learner's."""

    state: Any  # the algorithm's State
    meta_params: Any  # e.g. {"discount": logit, "gae_lambda": logit}
    meta_opt_state: optax.OptState


def online_init(state: Any, meta_params: Any, meta_tx: optax.GradientTransformation) -> OnlineState:
    """Wraps an algorithm state and initial meta-parameters (e.g. :func:`to_meta`)."""
    return OnlineState(
        state=state, meta_params=meta_params, meta_opt_state=meta_tx.init(meta_params)
    )


def online_step(
    algo: ModuleType,
    cfg: Any,
    env: Any,
    ostate: OnlineState,
    hp: Any,
    hp_ref: Any,
    meta_tx: optax.GradientTransformation,
    num_steps: int = 1,
    *,
    wrt: str = "hparams",
    loss_fn: Callable | None = None,
    outer_fn: Callable | None = None,
    first_order: bool = False,
    remat: bool = False,
    reuse_rollout: bool = True,
    condition_on: tuple[str, ...] = (),
) -> tuple[OnlineState, Metrics]:
    """``K`` inner updates with meta-parameters ``η``, then one meta-update of ``η``.

    Xu et al. 2018: ``θ' = u_K(θ, η)``; on the next rollout ``τ'`` (by ``θ'``) the outer
    loss ``L'(τ', θ', η')`` uses the fixed reference ``hp_ref``; ``η ← meta_tx(∇_η L')``
    (e.g. ``optax.adam``).

    **Reusing ``τ'``.** In the paper ``τ'`` is also the data of the next inner update, so
    meta-learning costs no extra env samples. With ``reuse_rollout=True`` (the default)
    the agent continues from ``sg(state_K)`` *before* ``τ'``: the next ``algo.update``
    collects from the same params, env state and key, so it trains on exactly the
    transitions of ``τ'`` (``collect`` is a pure function of the state). Each update then
    consumes one rollout, plus one final validation rollout per run; the rollout's compute
    (not its data) is paid twice. ``reuse_rollout=False`` continues *after* ``τ'`` (the
    ``next_state`` of ``outer_fn``): a fresh rollout per inner update, ``(K + 1) / K``
    times the env steps of plain training.

    Args:
        ostate: the run (from :func:`online_init`).
        hp: the inner ``HParams``; fields named in ``meta_params`` are overridden.
        hp_ref: ``HParams`` of the outer objective (``γ'``, ``λ'``).
        meta_tx: the meta-optimiser (static).
        num_steps: ``K`` inner updates per meta-update.
        wrt: ``"hparams"`` or ``"loss"`` (``"params"`` is not an online setting).
        outer_fn: ``state_K -> (scalar, (next_state, metrics))``; default
            :func:`validation_loss` with ``hp_ref``. Its ``next_state`` is used only
            with ``reuse_rollout=False``.
        reuse_rollout: continue from ``sg(state_K)``, so the next update trains on the
            validation rollout ``τ'`` (the paper's scheme); else from ``next_state``.
        condition_on: ``HParams`` names whose values the agent observes (Xu et al.'s
            ``η``-conditioned policy and value): ``env`` must be
            ``Conditioned(env, size=len(condition_on))`` and the algorithm's ``State``
            hold ``env_params``. Before the inner updates the condition is set to the
            values in use (``sg``: an input, not a path of the meta-gradient); the default
            outer loss reads ``τ'`` under ``hp_ref``'s values (:func:`validation_loss`).
            With reuse, the next update re-collects ``τ'`` under the new ``η``, so its
            observations' last ``C`` entries (and hence its sampled actions) may differ.

    Returns:
        ``(ostate, metrics)``: ``"meta/outer_loss"``, ``"meta/grad/<name>"`` and, for
        hyperparameters, ``"meta/<name>"`` (the value used by the inner updates), plus the
        inner metrics averaged over the ``K`` updates (NaN-aware).
    """
    if wrt == "params":
        raise ConfigError('online_step meta-learns "hparams" or "loss", not initial "params"')
    state, condition_ref = ostate.state, None
    if condition_on:
        if wrt != "hparams":
            raise ConfigError('condition_on needs wrt="hparams"')
        check_hparam_names(hp, tuple(condition_on))
        _check_conditioned(env, len(condition_on))
        used = condition_values(from_meta(hp, ostate.meta_params), condition_on)
        inner = state.env_params.env_params
        state = state.replace(env_params=env.with_params(inner, jax.lax.stop_gradient(used)))
        condition_ref = condition_values(hp_ref, condition_on)
    if outer_fn is None:
        outer_fn = functools.partial(
            validation_loss, algo, cfg, env, hp_ref=hp_ref, condition=condition_ref
        )
    grads, (outer, (next_state, _), state_k, metrics) = meta_grad(
        outer_fn, algo, cfg, env, state, hp, ostate.meta_params, num_steps,
        wrt=wrt, loss_fn=loss_fn, first_order=first_order, remat=remat,
    )  # fmt: skip
    updates, meta_opt_state = meta_tx.update(grads, ostate.meta_opt_state, ostate.meta_params)
    meta_params = optax.apply_updates(ostate.meta_params, updates)
    out = jax.tree.map(lambda x: jnp.nanmean(x, axis=0), metrics)
    out["meta/outer_loss"] = outer
    if wrt == "hparams":
        used = from_meta(hp, ostate.meta_params)
        for name, g in grads.items():
            out[f"meta/{name}"] = getattr(used, name)
            out[f"meta/grad/{name}"] = g
    else:
        out["meta/grad_norm"] = optax.global_norm(grads)
    if reuse_rollout:
        next_state = stop_float_gradients(state_k)
    ostate = OnlineState(state=next_state, meta_params=meta_params, meta_opt_state=meta_opt_state)
    return ostate, out
