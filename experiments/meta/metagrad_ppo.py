"""Online meta-gradient RL (Xu et al. 2018) of PPO's discount and GAE lambda on a gymnax task.

Arms (each vmapped over ``--seeds`` seeds, one compiled program per arm):

* ``fixed-start``: PPO with the deliberately poor start ``γ, λ`` (``--start-discount``,
  ``--start-lambda``) for ``--updates`` updates.
* ``meta``: PPO from the same start, with ``γ`` and ``λ`` meta-learned online by
  :func:`jaxrl.meta.metagrad.online_step` (K = ``--k`` inner updates per meta-step; outer
  loss = PPO's loss on the next rollout with reference ``γ' = --ref-discount``,
  ``λ' = --ref-lambda``; Adam on the logits, ``--meta-lr``). By default the validation
  rollout ``τ'`` is also the data of the next inner update (Xu et al.'s scheme), so the
  arm uses the env steps of plain PPO plus one final rollout; with ``--no-reuse`` it
  takes a fresh rollout per update and sees ``(K + 1) / K`` times the env steps.
* ``meta-from-default`` (``--meta-from-default``): the same, starting from the default.
* ``fixed-default``: PPO with the default ``γ = 0.99, λ = 0.95``.
* with ``--no-reuse``, the fixed arms again for the env steps of ``meta`` (more updates).

``--algo a2c`` runs the same arms for A2C, built as PPO with one epoch of one minibatch
(one gradient step per rollout, at ratio 1, so the clipped surrogate's gradient is the
policy gradient) and Stable-Baselines3's A2C defaults: 16 envs x 5 steps, ``γ = 0.99``,
``λ = 1`` (n-step returns), ``ent_coef = 0``, ``vf_coef = 0.5``, learning rate 7e-4,
``max_grad_norm = 0.5``, no value clipping, no advantage normalisation, no annealing
(Adam instead of SB3's RMSprop). ``λ = 1`` has no logit, so meta arms start from
``min(λ, --meta-lambda-cap)`` (0.995 by default).

``--preset NAME`` (e.g. ``ppo/pendulum``) takes the env, the ``Config`` fields and the
hyperparameters of a jaxrl preset (:func:`jaxrl.runner.config.load_preset` and
``resolve``), with ``anneal_lr=False``; the default of the ``fixed-default`` and meta arms
is then the preset's hyperparameters with the discount replaced by PPO's *library default*
(0.99), and an extra ``fixed-preset`` arm runs the preset's own ``γ`` as a reference.
``--num-envs``, ``--rollout-len`` and ``--learning-rate`` override the preset when given.
The preset's observation and reward normalisers (``RunningStats`` in the env state) are
updated by each update's rollout exactly as in ``ppo.update`` and receive no
meta-gradient (actions are sampled data). ``--pool A.json B.json ...`` prints the
comparisons on the seeds of several result files pooled.

``--condition`` conditions the agent on ``(γ, λ)`` as Xu et al. do: the env is wrapped as
:class:`jaxrl.envs.wrappers.Conditioned` (size 2), every arm observes the ``γ, λ`` it uses
(fixed arms: constants), and the meta arms pass ``condition_on=("discount", "gae_lambda")``
to :func:`jaxrl.meta.metagrad.online_step`, whose outer loss reads the validation rollout
under ``(γ', λ')``.

``--outer-loss pg`` makes the outer objective the policy term alone (the reference
``HParams`` get ``vf_coef = ent_coef = 0``), a policy-gradient meta-objective as we read
Xu et al.'s ``J'``; the default ``ppo`` is PPO's whole loss, value and entropy terms included.

``--env DiscountingChain-bsuite --best-chain C`` puts bsuite's 1.1 bonus on chain ``C``
(delays 1, 3, 10, 30, 100 steps; bsuite's ``mapping_seed``; Run 11). Two controls replace
the meta-gradient's mean while keeping its step sizes: a negative ``--meta-lr`` ascends the
outer loss, and ``--random-sign`` multiplies each meta-gradient by a random sign.

``--no-start-arms`` drops ``meta`` and ``fixed-start``. The score is the mean
training-episode return over the last 10% of updates, per seed; the all-update mean is
the area under the learning curve. Meta-from-default minus fixed-default is printed with
its standard error (sample std, ``ddof=1``, over seeds). Each meta arm also prints the
statistics of its meta-gradients (:func:`grad_stats`); with ``--meta-lr 0`` the
hyperparameters stay frozen at their start, so those are the meta-gradients along a fixed
run (Run 10 of RESULTS_metagrad.md).

    python experiments/meta/metagrad_ppo.py --seeds 4 --updates 150
    python experiments/meta/metagrad_ppo.py --preset ppo/pendulum --names discount \
        --meta-from-default --no-start-arms --seeds 8 --updates 292
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrl import envs
from jaxrl.algorithms import ppo
from jaxrl.envs.wrappers import Conditioned
from jaxrl.logger.stats import mean_difference
from jaxrl.meta import metagrad as mg
from jaxrl.runner import config as config_lib


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default=None, help="CartPole-v1, or the preset's env")
    p.add_argument("--algo", choices=("ppo", "a2c"), default="ppo")
    p.add_argument("--preset", default=None, help="a PPO preset, e.g. ppo/pendulum")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="keys split(key(seed), seeds)")
    p.add_argument("--updates", type=int, default=150, help="inner PPO updates per run")
    p.add_argument("--k", type=int, default=1, help="inner updates per meta-step")
    p.add_argument("--num-envs", type=int, default=None, help="ppo 4, a2c 16")
    p.add_argument("--rollout-len", type=int, default=None, help="ppo 128, a2c 5")
    p.add_argument("--learning-rate", type=float, default=None, help="ppo 5e-4, a2c 7e-4")
    p.add_argument(
        "--meta-lambda-cap", type=float, default=0.995,
        help="meta arms start from min(λ, cap) (λ = 1 has no logit)",
    )  # fmt: skip
    p.add_argument("--start-discount", type=float, default=0.9)
    p.add_argument("--start-lambda", type=float, default=0.5)
    p.add_argument("--ref-discount", type=float, default=0.99)
    p.add_argument("--ref-lambda", type=float, default=1.0)
    p.add_argument(
        "--outer-loss", choices=("ppo", "pg"), default="ppo",
        help="outer objective: PPO's whole loss, or its policy term only",
    )  # fmt: skip
    p.add_argument("--meta-lr", type=float, default=0.03, help="negative: ascent (a control)")
    p.add_argument(
        "--random-sign", action="store_true",
        help="control: each meta-gradient times a random sign (same steps, no mean)",
    )  # fmt: skip
    p.add_argument("--names", default="discount,gae_lambda")
    p.add_argument(
        "--meta-from-default", action="store_true", help="also meta-learn from the default"
    )
    p.add_argument(
        "--reuse", action=argparse.BooleanOptionalAction, default=True,
        help="train the next update on the validation rollout (Xu et al. 2018)",
    )  # fmt: skip
    p.add_argument(
        "--no-start-arms", action="store_true", help="skip the meta and fixed-start arms"
    )
    p.add_argument(
        "--condition", action="store_true",
        help="observe (γ, λ): Xu et al.'s η-conditioned policy and value",
    )  # fmt: skip
    p.add_argument(
        "--best-chain", type=int, default=None, choices=range(5),
        help="DiscountingChain-bsuite: the chain paying 1.1 (bsuite's mapping_seed)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="write results JSON here")
    p.add_argument(
        "--pool", nargs="+", default=None, metavar="JSON",
        help="only print the comparisons of these results files, their seeds pooled",
    )  # fmt: skip
    return p.parse_args()


def score(returns: np.ndarray) -> np.ndarray:
    """Mean episode return over the last 10% of updates, per seed. ``[S, U] -> [S]``."""
    tail = max(returns.shape[1] // 10, 1)
    return np.nanmean(returns[:, -tail:], axis=1)


CONDITION_ON = ("discount", "gae_lambda")


def chain_params(env, best_chain):
    """DiscountingChain-bsuite's params with chain ``best_chain``'s delay on chain 0.

    gymnax pays 1.1 on chain 0 (bsuite's ``mapping_seed`` 0) and 1 on the others, at the
    delays ``reward_timestep = (1, 3, 10, 30, 100)``. Swapping delays 0 and ``best_chain``
    makes the 1.1 reward arrive after ``reward_timestep[best_chain]`` steps: bsuite's
    ``mapping_seed = best_chain`` with actions 0 and ``best_chain`` relabelled."""
    params = env.default_params()
    delays = params.reward_timestep
    swapped = delays.at[0].set(delays[best_chain]).at[best_chain].set(delays[0])
    return params.replace(reward_timestep=swapped)


def init_state(cfg, env, key, hp, env_params=None):
    """``ppo.init``; a :class:`Conditioned` env observes ``hp``'s ``(γ, λ)``."""
    if not isinstance(env, Conditioned):
        return ppo.init(cfg, env, key, hp, env_params)
    inner = env.env.default_params() if env_params is None else env_params
    env_params = env.with_params(inner, mg.condition_values(hp, CONDITION_ON))
    return ppo.init(cfg, env, key, hp, env_params)


def run_fixed(cfg, env, keys, hp, num_updates, env_params=None):
    # init is vmapped but not jitted, as in run_meta: jit(vmap(init)) with its LAPACK QR
    # (orthogonal init) hung on UmbrellaChain-bsuite and Catch-bsuite on this CPU
    init = jax.vmap(lambda k: init_state(cfg, env, k, hp, env_params))
    train = jax.jit(jax.vmap(lambda s: ppo.train(cfg, env, s, hp, num_updates)))
    _, metrics = train(init(keys))
    return np.asarray(metrics["episode/return"])  # [S, U]


def random_sign() -> optax.GradientTransformation:
    """Multiplies each meta-gradient leaf by a random sign: a control with the meta-gradient's
    step sizes and no mean. The sign is drawn from the gradient's own bits, so it differs
    between seeds and steps without a key in the optimiser state."""

    def flip(g):
        key = jax.random.fold_in(jax.random.key(0), jax.lax.bitcast_convert_type(g, "uint32"))
        return jnp.where(jax.random.bernoulli(key), g, -g)

    def update(updates, state, params=None):
        del params
        return jax.tree.map(flip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def run_meta(cfg, env, keys, hp, hp_ref, names, args, env_params=None):
    meta_tx = optax.adam(args.meta_lr)
    if args.random_sign:
        meta_tx = optax.chain(random_sign(), meta_tx)
    start = lambda k: mg.online_init(
        init_state(cfg, env, k, hp, env_params), mg.to_meta(hp, names), meta_tx
    )
    step = functools.partial(
        mg.online_step, ppo, cfg, env, hp=hp, hp_ref=hp_ref, meta_tx=meta_tx,
        num_steps=args.k, reuse_rollout=args.reuse,
        condition_on=CONDITION_ON if isinstance(env, Conditioned) else (),
    )  # fmt: skip
    num_meta = args.updates // args.k
    run = lambda o: jax.lax.scan(lambda o, _: step(o), o, None, num_meta)
    _, metrics = jax.jit(jax.vmap(run))(jax.vmap(start)(keys))
    return jax.tree.map(np.asarray, metrics)  # leaves [S, M]


def grad_stats(grads: np.ndarray) -> dict:
    """Statistics of the meta-gradients ``[S, M]`` (seeds x meta-steps) of one logit.

    ``snr`` is mean / std over all ``S * M`` samples; ``z`` is mean / (std / sqrt(S * M)),
    how far the average is from zero if the samples were independent; ``thirds_*`` split the
    meta-steps into three equal blocks (early, middle, late training). A negative mean
    raises the hyperparameter (gradient descent on the outer loss)."""
    g = grads.astype(np.float64)
    std = g.std()
    thirds = np.array_split(g, 3, axis=1)
    absg = np.abs(g)
    return {
        "mean": float(g.mean()), "std": float(std), "snr": float(g.mean() / std),
        "z": float(g.mean() / std * np.sqrt(g.size)), "frac_negative": float((g < 0).mean()),
        "median_abs": float(np.median(absg)), "p99_abs": float(np.quantile(absg, 0.99)),
        "max_abs": float(absg.max()),
        "thirds_mean": [float(t.mean()) for t in thirds],
        "thirds_snr": [float(t.mean() / t.std()) for t in thirds],
    }  # fmt: skip


def summary(name, returns, env_steps):
    s, auc = score(returns), np.nanmean(returns, axis=1)
    # the mean learning curve in (up to) 20 blocks of updates: episodes do not end every update
    every = max(returns.shape[1] // 20, 1)
    blocks = returns[:, : returns.shape[1] // every * every].reshape(returns.shape[0], -1, every)
    line = f"{name:>28s}: {s.mean():8.3f} ± {s.std():6.3f}  per seed {np.round(s, 3)}"
    print(f"{line}  (all-update mean {auc.mean():8.3f} ± {auc.std():6.3f}; {env_steps} steps)")
    return {"score_mean": float(s.mean()), "score_std": float(s.std()), "per_seed": s.tolist(),
            "auc_mean": float(auc.mean()), "auc_std": float(auc.std()),
            "auc_per_seed": auc.tolist(), "env_steps": env_steps,
            "curve_mean": np.nanmean(blocks, (0, 2)).tolist(), "curve_every": every}  # fmt: skip


def compare(a: dict, b: dict, name: str, a_name: str = "meta-from-default") -> dict:
    """Difference of means ``a - b`` per seed-level metric, its standard error and ratio."""
    out = {}
    for key in ("per_seed", "auc_per_seed"):
        diff, se = mean_difference(a[key], b[key])
        label = "final" if key == "per_seed" else "all-update mean"
        print(f"  {a_name} - {name}, {label}: {diff:+.4g} ± {se:.3g} SE ({diff / se:+.2f})")
        out[label] = {"diff": float(diff), "se": float(se), "z": float(diff / se)}
    return out


def build(args):
    """``(env, cfg, common, hp_preset)``: the env, PPO ``Config``, the hparams shared by every
    arm (a dict; its ``discount`` is the default arm's) and the preset's ``HParams`` (or None)."""
    a2c = args.algo == "a2c"
    preset = config_lib.load_preset(args.preset) if args.preset else None
    if preset is not None and (a2c or not args.preset.startswith("ppo/")):
        raise SystemExit("--preset takes a PPO preset (ppo/...) and --algo ppo")
    if preset is not None and args.env not in (None, preset["env"]):
        raise SystemExit(f"--env {args.env} differs from the preset's env {preset['env']}")
    args.env = args.env or (preset or {}).get("env", "CartPole-v1")
    env, _ = envs.make(args.env)
    if args.condition:
        env = Conditioned(env, size=len(CONDITION_ON))
    if preset is not None:  # jaxrl's own loader; anneal_lr off, budget for check_budget
        cfg, hp = config_lib.resolve(ppo, preset, {}, total_timesteps=None)
        given = {k: getattr(args, k) for k in ("num_envs", "rollout_len")}
        cfg = dataclasses.replace(cfg, anneal_lr=False, **{k: v for k, v in given.items() if v})
        cfg = dataclasses.replace(cfg, total_timesteps=cfg.steps_per_update * args.updates * 2)
        common = {k: float(v) for k, v in vars(hp).items()}
        if args.learning_rate is not None:
            common["learning_rate"] = args.learning_rate
        hp_preset = ppo.HParams.make(**common)
        # the default arm: the preset with PPO's library-default discount
        common["discount"] = ppo.HPARAM_DEFAULTS["discount"]
        return env, cfg, common, hp_preset
    for name, ppo_value, a2c_value in (
        ("num_envs", 4, 16), ("rollout_len", 128, 5), ("learning_rate", 5e-4, 7e-4)
    ):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, a2c_value if a2c else ppo_value)
    one_step = dict(num_epochs=1, num_minibatches=1, clip_value=False, normalize_advantages=False)
    algo_cfg = one_step if a2c else {}
    cfg = ppo.Config(
        num_envs=args.num_envs, rollout_len=args.rollout_len, anneal_lr=False,
        total_timesteps=args.num_envs * args.rollout_len * args.updates * 2, **algo_cfg,
    )  # fmt: skip
    common = dict(learning_rate=args.learning_rate)
    if a2c:  # SB3 A2C: n-step returns (λ = 1), no entropy bonus
        common |= dict(gae_lambda=1.0, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5)
    return env, cfg, common, None


def pool(paths) -> None:
    """Prints every ``a - b`` comparison of the result files with their seeds pooled."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    keys = ("per_seed", "auc_per_seed")
    arms = [k for k in runs[0] if isinstance(runs[0][k], dict) and "per_seed" in runs[0][k]]
    arms = [a for a in arms if all(a in r for r in runs)]
    merged = {a: {k: sum((r[a][k] for r in runs), []) for k in keys} for a in arms}
    print(
        f"pooled {len(paths)} files: "
        + ", ".join(f"{a} ({len(merged[a][keys[0]])} seeds)" for a in arms)
    )
    for a in arms:
        for key in keys:
            x = np.asarray(merged[a][key])
            print(f"{a:>28s} {key:>12s}: {x.mean():8.3f} ± {x.std():6.3f}")
    for a in ("meta-from-default", "meta", "fixed-preset", "fixed-start"):
        for b in ("fixed-default", "fixed-preset", "fixed-start"):
            if a != b and a in merged and b in merged:
                compare(merged[a], merged[b], b, a_name=a)


def main():
    args = parse_args()
    if args.pool:
        return pool(args.pool)
    names = tuple(args.names.split(","))
    env, cfg, common, hp_preset = build(args)
    if args.best_chain is not None and args.env != "DiscountingChain-bsuite":
        raise SystemExit("--best-chain takes --env DiscountingChain-bsuite")
    inner_env = env.env if isinstance(env, Conditioned) else env
    env_params = chain_params(inner_env, args.best_chain) if args.best_chain is not None else None
    if args.condition and cfg.normalize_obs:
        raise SystemExit("--condition: observation normalisation would normalise (γ, λ) away")
    start = dict(discount=args.start_discount, gae_lambda=args.start_lambda)
    hp_start = ppo.HParams.make(**common | start)
    hp_default = ppo.HParams.make(**common)
    ref = dict(discount=args.ref_discount, gae_lambda=args.ref_lambda)
    if args.outer_loss == "pg":  # the clipped surrogate alone: at θ' the policy gradient
        ref |= dict(vf_coef=0.0, ent_coef=0.0)
    hp_ref = ppo.HParams.make(**common | ref)
    # meta arms learning λ start from λ ≤ cap: λ = 1 is sigmoid(∞), not a finite logit
    lam = lambda hp: min(float(hp.gae_lambda), args.meta_lambda_cap)
    cap = lambda hp: hp.replace(gae_lambda=lam(hp)) if "gae_lambda" in names else hp
    ppo.check(cfg, hp_start), ppo.check(cfg, hp_ref)
    show = lambda hp: {k: round(float(v), 6) for k, v in vars(hp).items()}
    print(f"{args.algo}: {cfg}\n  default {show(hp_default)}\n  reference {show(hp_ref)}")
    if hp_preset is not None:
        print(f"  preset {args.preset} {show(hp_preset)}")
    keys = jax.random.split(jax.random.key(args.seed), args.seeds)
    per_update = cfg.steps_per_update
    meta_updates = args.updates // args.k * args.k
    if args.reuse:  # every validation rollout but the last is the next update's data
        meta_steps = per_update * (meta_updates + 1)
    else:
        meta_steps = per_update * meta_updates * (args.k + 1) // args.k
    matched = meta_steps // per_update
    results = {"args": vars(args)}

    meta_arms = {} if args.no_start_arms else {"meta": cap(hp_start)}
    if args.meta_from_default:
        meta_arms["meta-from-default"] = cap(hp_default)
    for arm, hp in meta_arms.items():
        t0 = time.time()
        metrics = run_meta(cfg, env, keys, hp, hp_ref, names, args, env_params)
        # one meta-step's inner metrics are averaged over its K updates
        results[arm] = summary(arm, metrics["episode/return"], meta_steps)
        for name in names:
            traj = metrics[f"meta/{name}"]  # [S, M], the value used at each meta-step
            results[arm][f"{name}_final"] = traj[:, -1].tolist()
            every = max(traj.shape[1] // 20, 1)
            for stat in ("mean", "min", "max"):
                curve = getattr(traj, stat)(0)[::every]
                results[arm][f"{name}_curve_{stat}"] = curve.tolist()
            final = np.round(traj[:, -1], 3)
            print(f"{'':>28s}  {name}: start {traj[:, 0].mean():.3f} -> final {final}")
            gs = results[arm][f"{name}_grad"] = grad_stats(metrics[f"meta/grad/{name}"])
            print(
                f"{'':>28s}  meta-gradient of logit({name}): mean {gs['mean']:.3g}, "
                f"std {gs['std']:.3g}, mean/std {gs['snr']:+.3f} (z {gs['z']:+.1f}; thirds "
                f"{np.round(gs['thirds_snr'], 3).tolist()}), negative {gs['frac_negative']:.2f}, "
                f"|g| median {gs['median_abs']:.3g}, p99 {gs['p99_abs']:.3g}, "
                f"max {gs['max_abs']:.3g}"
            )
        results[arm]["seconds"] = time.time() - t0
        print(f"{'':>28s}  ({results[arm]['seconds']:.0f} s)")

    arms = {"fixed-start": (hp_start, args.updates), "fixed-default": (hp_default, args.updates)}
    if hp_preset is not None:  # the preset's own (tuned) γ, λ: a reference, not the criterion
        arms["fixed-preset"] = (hp_preset, args.updates)
    if not args.reuse:
        arms |= {
            "fixed-start (same steps)": (hp_start, matched),
            "fixed-default (same steps)": (hp_default, matched),
        }
    if args.no_start_arms:
        arms = {k: v for k, v in arms.items() if not k.startswith("fixed-start")}
    for arm, (hp, n) in arms.items():
        t0 = time.time()
        returns = run_fixed(cfg, env, keys, hp, n, env_params)
        results[arm] = summary(arm, returns, per_update * n)
        results[arm]["seconds"] = time.time() - t0
    if args.meta_from_default:
        for base_arm in ("fixed-default", "fixed-default (same steps)"):
            if base_arm in results:
                results[f"meta-from-default - {base_arm}"] = compare(
                    results["meta-from-default"], results[base_arm], base_arm
                )
        if "fixed-preset" in results:
            results["meta-from-default - fixed-preset"] = compare(
                results["meta-from-default"], results["fixed-preset"], "fixed-preset"
            )
    if "fixed-preset" in results:
        results["fixed-preset - fixed-default"] = compare(
            results["fixed-preset"], results["fixed-default"], "fixed-default", "fixed-preset"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    jax.config.update("jax_numpy_rank_promotion", "raise")
    main()
