"""ACKTR: its K-FAC blocks, the trust-region step, invariances (jit, vmap, one program for
every hyperparameter value), config errors and a probe it must learn. K-FAC itself (the
natural gradient against explicit computations and kfac-jax): tests/optim/test_kfac.py."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl import envs
from jaxrl.algorithms import acktr, base
from jaxrl.envs import registry
from jaxrl.optim import kfac
from jaxrl.runner import config as run_config
from jaxrl.runner import loop, sweep

# Andy Jones's probe 5 (reward +1 iff action == (obs > 0), else -1; optimum +1); the
# inverses refresh every other update (a lax.cond, a select under vmap).
PROBE = "probe/obs_action_reward"
SMALL = dict(
    num_envs=8, rollout_len=4, hidden=(16,), total_timesteps=32 * 40, inverse_update_period=2
)


def _numeric(tree):
    """PRNG keys as their raw bits, so whole states can be compared."""
    is_key = lambda x: isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def _allclose(a, b, **kw):
    chex.assert_trees_all_close(_numeric(a), _numeric(b), **({"rtol": 1e-5, "atol": 1e-6} | kw))


# ---------------------------------------------------------------- the algorithm


@pytest.fixture(scope="module")
def small():
    """A tiny ACKTR on probe 5 with jitted init, update and vmapped update (``hp`` traced)."""
    env, _ = registry.make(PROBE)
    cfg = acktr.Config(**SMALL)
    hp = acktr.HParams.make(learning_rate=0.5, max_kl=0.01)
    init = jax.jit(lambda k: acktr.init(cfg, env, k, hp))
    step = jax.jit(chex.assert_max_traces(lambda s, h: acktr.update(cfg, env, s, h), n=1))
    vstep = jax.jit(jax.vmap(lambda s, h: acktr.update(cfg, env, s, h)))
    return cfg, env, hp, init, step, vstep


def _stack(trees):
    return jax.tree.map(lambda *x: jnp.stack(x), *trees)


def test_a_kronecker_block_per_dense_layer():
    env, _ = envs.make("CartPole-v1")
    separate = acktr.layers(acktr.Config(**SMALL), env)
    shared = acktr.layers(acktr.Config(**SMALL, shared_torso=True), env)
    assert len(separate) == 4  # actor and critic torso layers, 2 heads
    assert len(shared) == 3  # the shared torso layer, 2 heads
    assert [(layer.in_dim, layer.out_dim) for layer in shared] == [(5, 16), (17, 2), (17, 1)]


def test_a_kronecker_block_per_conv_layer():
    """The CNN torso's convolutions (patch matmuls) get conv blocks: 3x3x4 patches (+ bias)
    at the 10 x 10 positions of a MinAtar board."""
    env, _ = envs.make("Breakout-MinAtar")
    blocks = acktr.layers(acktr.Config(**SMALL, torso="cnn"), env)
    conv = [layer for layer in blocks if layer.positions > 1]
    assert len(conv) == 2  # the actor's and the critic's conv layer
    assert all(layer.positions == 100 and layer.in_dim == 3 * 3 * 4 + 1 for layer in conv)
    cfg = acktr.Config(**(SMALL | dict(num_envs=2, rollout_len=2)), torso="cnn")
    hp = acktr.HParams.make()
    state = acktr.init(cfg, env, jax.random.key(0), hp)
    new, metrics = jax.jit(lambda s: acktr.update(cfg, env, s, hp))(state)
    assert np.isfinite(metrics["train/kl"]) and metrics["train/step_size"] > 0
    assert not np.allclose(new.params["params"]["actor_torso"]["Conv_0"]["kernel"],
                           state.params["params"]["actor_torso"]["Conv_0"]["kernel"])  # fmt: skip


def test_update_steps_to_the_trust_region_edge(small):
    cfg, env, hp, init, step, _ = small
    state = init(jax.random.key(0))
    hp = hp.replace(momentum=jnp.float32(0.0))  # the step is the trust-region step itself
    tight = hp.replace(learning_rate=jnp.float32(10.0), max_kl=jnp.float32(1e-4))
    new, metrics = step(state, tight)
    assert metrics["train/trust_region_active"] == 1.0
    np.testing.assert_allclose(metrics["train/predicted_kl"], 1e-4, rtol=1e-4)
    # the policy's measured KL is part of the joint (actor + critic) quadratic model's
    assert 1e-6 < metrics["train/kl"] < 2e-4, metrics["train/kl"]
    loose = hp.replace(learning_rate=jnp.float32(1e-3), max_kl=jnp.float32(1.0))
    _, metrics = step(state, loose)
    assert metrics["train/trust_region_active"] == 0.0
    np.testing.assert_allclose(metrics["train/step_size"], 1e-3)
    assert new.update_count == 1


def test_one_compile_serves_every_hyperparameter_value(small):
    _, _, _, init, step, _ = small
    state = init(jax.random.key(0))
    for values in [
        dict(learning_rate=0.1, max_kl=1e-3, damping=1e-2, stats_decay=0.9, momentum=0.0),
        dict(learning_rate=1.0, max_kl=1e-2, damping=1e-1, stats_decay=0.99, momentum=0.9),
    ]:
        _, metrics = step(state, acktr.HParams.make(**values))
        assert np.isfinite(metrics["train/total_loss"])


def test_vmapped_runs_equal_separate_runs(small):
    """Two updates of (seed 0, δ = 1e-4) and (seed 1, δ = 1e-2), vmapped and one by one.

    The program calls no LAPACK kernel: batched ones (vmapped runs) can deadlock XLA's
    CPU thread pool, so the factor inverses are plain XLA (``kfac.psd_inverses``).
    """
    cfg, env, hp, init, step, vstep = small
    hps = [hp.replace(max_kl=jnp.float32(1e-4)), hp.replace(max_kl=jnp.float32(1e-2))]
    states = [init(sweep.seed_key(0)), init(sweep.seed_key(1))]
    assert "lapack" not in vstep.lower(_stack(states), _stack(hps)).as_text()
    batched, alone = _stack(states), list(states)
    for _ in range(2):
        batched, batched_metrics = vstep(batched, _stack(hps))
        alone, metrics = zip(*[step(s, h) for s, h in zip(alone, hps, strict=True)], strict=True)
    _allclose((batched, batched_metrics), _stack([*zip(alone, metrics, strict=True)]),
              rtol=1e-4, atol=1e-4)  # fmt: skip
    leaves = jax.tree.leaves(batched.params)
    assert any(not np.allclose(x[0], x[1]) for x in leaves)


def _conds_with_loops(jaxpr) -> int:
    """How many ``cond`` equations (at any depth) have a loop (``scan``/``while``) in a branch."""
    count = 0
    for eqn in jaxpr.eqns:
        subs = [v for v in eqn.params.values() if isinstance(v, jax.extend.core.ClosedJaxpr)]
        subs += [b for v in eqn.params.values() if isinstance(v, tuple) for b in v
                 if isinstance(b, jax.extend.core.ClosedJaxpr)]  # fmt: skip
        if eqn.primitive.name == "cond":
            count += any(
                loop in str(b.jaxpr) for b in eqn.params["branches"] for loop in ("scan", "while")
            )
        count += sum(_conds_with_loops(sub.jaxpr) for sub in subs)
    return count


def test_vmapped_inverse_refresh_stays_a_branch(small):
    """With ``inverse_update_period = 2`` the refresh (the Cholesky loops) sits in a ``cond``
    branch of the vmapped update, so vmapped runs skip it together on odd updates; a
    ``lax.cond`` on the runs' batched counters would compute it every update."""
    cfg, env, hp, init, _, _ = small
    states = _stack([init(sweep.seed_key(0)), init(sweep.seed_key(1))])
    vupdate = jax.vmap(lambda s, h: acktr.update(cfg, env, s, h))
    assert cfg.inverse_update_period == 2
    assert _conds_with_loops(jax.make_jaxpr(vupdate)(states, _stack([hp, hp])).jaxpr) >= 1


@pytest.mark.learning
def test_learns_probe_five_over_two_seeds_with_stale_inverses(small):
    """Probe 5's optimum is +1 (a random policy scores 0) within 40 updates, both seeds.

    With ``inverse_update_period = 2`` the inverses refresh at even update counts only, so
    after an even number of updates the cache is one curvature update behind the factors.
    """
    cfg, env, hp, init, _, vstep = small
    state = _stack([init(sweep.seed_key(0)), init(sweep.seed_key(1))])
    returns = []
    for _ in range(cfg.num_updates):
        state, metrics = vstep(state, _stack([hp, hp]))
        returns.append(metrics["episode/return"])
    final = np.asarray(returns[-10:]).mean(0)
    assert (final > 0.9).all(), final
    one = jax.tree.map(lambda x: x[0], state.kfac_state)
    fresh = kfac.update_inverses(acktr.layers(cfg, env), one, hp.damping)
    assert cfg.num_updates % 2 == 0
    assert not np.allclose(one.a_inv[0], fresh.a_inv[0])


@pytest.mark.slow
def test_jit_equals_no_jit(small):
    """The whole update eagerly (``disable_jit``: ~600 small compiles, ~15 s on 2 cores)."""
    cfg, env, hp, init, step, _ = small
    state = init(jax.random.key(0))
    jitted = step(state, hp)
    with jax.disable_jit():
        eager = acktr.update(cfg, env, state, hp)
    _allclose(jitted, eager, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(estimation_mode="fisher_empirical"), "estimation_mode"),
        (dict(inverse_update_period=0), "inverse_update_period"),
        (dict(torso="transformer"), "torso"),
        (dict(total_timesteps=10), "less than one update"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(base.ConfigError, match=match):
        acktr.Config(**(SMALL | overrides))


@pytest.mark.parametrize(
    "overrides, match",
    [(dict(damping=0.0), "damping"), (dict(momentum=1.0), "momentum"), (dict(max_kl=-1), "max_kl")],
)
def test_bad_hparams_raise(overrides, match):
    with pytest.raises(base.ConfigError, match=match):
        acktr.check(acktr.Config(**SMALL), acktr.HParams.make(**overrides))


def test_unknown_hparam_and_continuous_actions_raise():
    with pytest.raises(base.ConfigError, match="unknown hyperparameter"):
        acktr.HParams.make(clip_eps=0.2)
    env, _ = envs.make("Pendulum-v1")
    with pytest.raises(base.ConfigError, match="Discrete"):
        acktr.init(acktr.Config(**SMALL), env, jax.random.key(0), acktr.HParams.make())


# ---------------------------------------------------------------- the learning check


@pytest.mark.slow
def test_cartpole_preset_reaches_450_over_4_seeds_in_500k_steps():
    preset = run_config.load_preset("acktr/cartpole")
    cfg, hp = run_config.resolve(acktr, preset, {}, None)
    env, _ = envs.make(preset["env"])
    runs = sweep.grid(hp, seeds=range(4))
    result = loop.run(acktr, env, cfg, runs, env_name=preset["env"], algo_name="acktr", quiet=True)
    assert cfg.num_updates * cfg.steps_per_update <= 500_000
    final = np.asarray(result.summary["final_return"]["per_run"])
    assert np.isfinite(final).all()
    assert final.mean() >= 450, final


def test_hyperparameter_gradients_match_finite_differences(small):
    """Meta-gradients through an ACKTR update: ``d <θ', v> / d(δ, λ)`` by ``jax.grad``
    (through the trust region, the damped π-adjusted factors and the Cholesky loops) against
    central differences. The trust region binds, momentum 0."""
    cfg, env, hp, init, _, _ = small
    state = init(jax.random.key(0))
    hp = hp.replace(learning_rate=jnp.float32(10.0), momentum=jnp.float32(0.0))
    leaves = jax.tree.leaves(state.params)
    probes = [jax.random.normal(jax.random.key(i), x.shape) for i, x in enumerate(leaves)]

    @jax.jit
    def f(max_kl, damping):
        new, _ = acktr.update(cfg, env, state, hp.replace(max_kl=max_kl, damping=damping))
        pairs = zip(jax.tree.leaves(new.params), probes, strict=True)
        return sum(jnp.vdot(x, p) for x, p in pairs)

    x = (jnp.float32(1e-3), jnp.float32(0.05))
    grads = jax.grad(f, argnums=(0, 1))(*x)
    for i, g in enumerate(grads):
        eps = 0.05 * x[i]
        hi = list(x)
        lo = list(x)
        hi[i], lo[i] = x[i] + eps, x[i] - eps
        fd = (f(*hi) - f(*lo)) / (2 * eps)
        assert abs(fd) > 0
        np.testing.assert_allclose(g, fd, rtol=2e-2, err_msg=f"argument {i}")
