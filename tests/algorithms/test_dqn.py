"""The DQN core: its loss by hand (n-step, double, terminations and truncations), every
variant on Andy Jones's probes, jit == no-jit, vmapped == looped, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import dqn, rainbow
from jaxrl.envs import probe, registry
from jaxrl.errors import ConfigError

VARIANTS = {
    "dqn": dict(),
    "double": dict(double=True),
    "dueling": dict(dueling=True),
    "n_step": dict(n_step=3),
    "per": dict(prioritised=True),
    "c51": dict(distribution="c51", num_atoms=21, v_min=-2.0, v_max=2.0),
    "qr": dict(distribution="qr", num_atoms=8),
    "noisy": dict(noisy=True),
    "rainbow": dict(
        double=True, dueling=True, n_step=3, prioritised=True, distribution="c51",
        num_atoms=21, v_min=-2.0, v_max=2.0, noisy=True,
    ),
}  # fmt: skip

PROBE_CFG = dict(
    total_timesteps=1_600, num_envs=4, train_freq=1, gradient_steps=2, buffer_size=400,
    batch_size=32, learning_starts=100, target_update_period=10, hidden=(16, 16),
)  # fmt: skip


def _train(cfg, env, hp, key, num_updates=None):
    num_updates = cfg.num_updates if num_updates is None else num_updates
    state = dqn.init(cfg, env, key, hp)
    return jax.jit(lambda s: dqn.train(cfg, env, s, hp, num_updates))(state)


# The value each probe's greedy Q must reach: (obs, per-action Q) pairs, NaN where the
# action's value is not pinned down (probes with one action have only index 0).
def _expected_q(name, discount):
    return {
        "constant_reward": [([0.0], [1.0])],
        "obs_reward": [([1.0], [1.0]), ([-1.0], [-1.0])],
        "two_step_reward": [([0.0], [discount]), ([1.0], [1.0])],
        "action_reward": [([0.0], [-1.0, 1.0])],
        "obs_action_reward": [([1.0], [-1.0, 1.0]), ([-1.0], [1.0, -1.0])],
    }[name]


# Plain DQN and Rainbow (every option at once) run by default; each single option is
# opt-in with --runslow (35 more compiled runs, about four minutes on two cores).
DEFAULT_VARIANTS = ("dqn", "rainbow")


@pytest.mark.learning
@pytest.mark.parametrize(
    "variant",
    [v if v in DEFAULT_VARIANTS else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS],
)
@pytest.mark.parametrize("probe_name", probe.JONES_PROBES)
def test_every_variant_passes_the_probes(variant, probe_name):
    env, _ = registry.make(f"probe/{probe_name}")
    cfg = dqn.Config(**PROBE_CFG, **VARIANTS[variant])
    # A high final epsilon keeps data on the worse action of probes 4 and 5, so its value
    # is pinned down too; noisy nets explore by noise alone, so there only the greedy
    # action's value is exact and the other must merely be worse.
    # Probes 1 and 4 feed obs 0, so only output biases learn (relu(0) passes no gradient):
    # a large learning rate lets them converge in 800 gradient steps.
    hp = dqn.HParams.make(learning_rate=1e-2, discount=0.9, eps_fraction=0.3, eps_end=0.5)
    state, _ = _train(cfg, env, hp, jax.random.key(0))
    for obs, q_expected in _expected_q(probe_name, 0.9):
        q = np.asarray(dqn.q_values(cfg, env, state.params.online, jnp.asarray([obs]), None)[0])
        q_expected = np.asarray(q_expected)
        msg = f"{variant} on {probe_name} at obs {obs}: Q = {q}"
        assert int(np.argmax(q)) == int(np.argmax(q_expected)), msg
        best = int(np.argmax(q_expected))
        np.testing.assert_allclose(q[best], q_expected[best], atol=0.15, err_msg=msg)
        if not cfg.noisy:
            np.testing.assert_allclose(q, q_expected, atol=0.15, err_msg=msg)


def _random_online_target(cfg, env, key):
    k1, k2 = jax.random.split(key)
    obs = jnp.zeros((1, 1))
    net = dqn.network(cfg, env)
    return net.init(k1, obs), net.init(k2, obs)


def test_n_step_double_loss_matches_hand_computation():
    env, _ = registry.make("probe/obs_action_reward")
    cfg = dqn.Config(**PROBE_CFG, double=True, n_step=3, loss="l2")
    hp = dqn.HParams.make(discount=0.9)
    online, target = _random_online_target(cfg, env, jax.random.key(1))
    b, n = 5, 3
    k = jax.random.split(jax.random.key(2), 4)
    # Row 0: no episode end; row 1: terminated at step 1; row 2: truncated at step 0;
    # row 3: terminated at step 2; row 4: truncated at step 2.
    done = jnp.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]], jnp.float32)
    term = jnp.array([[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]], jnp.float32)
    window = dqn.Transition(
        obs=jax.random.normal(k[0], (b, n, 1)),
        action=jax.random.randint(k[1], (b, n), 0, 2),
        reward=jax.random.normal(k[2], (b, n)),
        terminated=term,
        done=done,
        next_obs=jax.random.normal(k[3], (b, n, 1)),
    )
    batch = dqn.Batch(window, jnp.ones(b), jnp.zeros(b, jnp.int32), jax.random.key(3))
    value, _ = dqn.loss(cfg, env, dqn.Params(online, target), batch, hp)

    net = dqn.network(cfg, env)
    expected = []
    for i in range(b):
        g, last = 0.0, n - 1
        for t in range(n):
            g += 0.9**t * float(window.reward[i, t])
            if done[i, t]:
                last = t
                break
        s_next = window.next_obs[i, last][None]
        a_star = int(jnp.argmax(net.apply(online, s_next)[0]))
        q_next = float(net.apply(target, s_next)[0, a_star])
        y = g + 0.9 ** (last + 1) * (1.0 - float(term[i, last])) * q_next
        q = float(net.apply(online, window.obs[i, 0][None])[0, int(window.action[i, 0])])
        expected.append(0.5 * (y - q) ** 2)
    np.testing.assert_allclose(value, np.mean(expected), rtol=1e-5)


def test_gradient_reaches_only_the_online_network():
    env, _ = registry.make("probe/obs_action_reward")
    cfg = dqn.Config(**PROBE_CFG)
    hp = dqn.HParams.make()
    online, target = _random_online_target(cfg, env, jax.random.key(4))
    window = dqn.Transition(
        jnp.ones((4, 1, 1)), jnp.zeros((4, 1), jnp.int32), jnp.ones((4, 1)),
        jnp.zeros((4, 1)), jnp.zeros((4, 1)), -jnp.ones((4, 1, 1)),
    )  # fmt: skip
    batch = dqn.Batch(window, jnp.ones(4), jnp.zeros(4, jnp.int32), jax.random.key(0))
    grads = jax.grad(lambda p: dqn.loss(cfg, env, p, batch, hp)[0])(dqn.Params(online, target))
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads.target))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads.online))


def test_epsilon_schedule():
    cfg = dqn.Config(**{**PROBE_CFG, "total_timesteps": 1000, "learning_starts": 100})
    hp = dqn.HParams.make(eps_start=1.0, eps_end=0.1, eps_fraction=0.5)
    eps = [float(dqn.epsilon(cfg, hp, jnp.int32(t))) for t in (0, 99, 100, 250, 500, 900)]
    np.testing.assert_allclose(eps, [1.0, 1.0, 0.82, 0.55, 0.1, 0.1], rtol=1e-6)
    noisy = dqn.Config(**{**PROBE_CFG, "total_timesteps": 1000, "noisy": True})
    assert float(dqn.epsilon(noisy, hp, jnp.int32(500))) == 0.0


def test_periodic_target_updates():
    env, _ = registry.make("probe/obs_action_reward")
    cfg = dqn.Config(**{**PROBE_CFG, "learning_starts": 0, "target_update_period": 3})
    hp = dqn.HParams.make()
    state = dqn.init(cfg, env, jax.random.key(0), hp)
    state = jax.jit(lambda s: dqn.train(cfg, env, s, hp, 4)[0])(state)  # 8 gradient steps
    # The last copy happened at gradient step 6, so the target is 2 steps behind.
    assert int(state.grad_steps) == 8
    assert not np.allclose(state.params.target["params"]["torso"]["Dense_0"]["kernel"],
                           state.params.online["params"]["torso"]["Dense_0"]["kernel"])  # fmt: skip


def test_polyak_target_moves_by_tau_towards_the_online_net():
    env, _ = registry.make("probe/obs_action_reward")
    overrides = dict(learning_starts=0, gradient_steps=1, target_update_period=1, batch_size=4)
    cfg = dqn.Config(**{**PROBE_CFG, **overrides})
    hp = dqn.HParams.make(tau=0.25)
    state0 = dqn.init(cfg, env, jax.random.key(0), hp)
    state = jax.jit(lambda s: dqn.train(cfg, env, s, hp, 1)[0])(state0)  # one gradient step
    assert int(state.grad_steps) == 1
    jax.tree.map(
        lambda old, online, target: np.testing.assert_allclose(
            target, 0.75 * old + 0.25 * online, rtol=1e-6, atol=1e-7
        ),
        state0.params.target, state.params.online, state.params.target,
    )  # fmt: skip
    assert not np.allclose(state.params.online["params"]["head"]["q"]["kernel"],
                           state0.params.online["params"]["head"]["q"]["kernel"])  # fmt: skip


def test_jit_equals_no_jit_and_vmap_equals_loop():
    env, _ = registry.make("probe/two_step_reward")
    cfg = dqn.Config(**{**PROBE_CFG, "learning_starts": 8}, prioritised=True, n_step=2)
    hp = dqn.HParams.make()
    keys = jax.random.split(jax.random.key(5), 2)

    # Two updates: learning (gradient steps, new priorities) starts in the second (8 env
    # steps). Eagerly, each further update would only repeat the same ops (~2.4 s each).
    def run(key):
        return dqn.train(cfg, env, dqn.init(cfg, env, key, hp), hp, 2)

    with jax.disable_jit():
        plain_state, plain_metrics = run(keys[0])
    jit_state, jit_metrics = jax.jit(run)(keys[0])
    assert int(jit_state.grad_steps) == cfg.gradient_steps
    np.testing.assert_allclose(plain_metrics["train/loss"], jit_metrics["train/loss"], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        plain_state.params, jit_state.params,
    )  # fmt: skip
    batched_state, batched_metrics = jax.jit(jax.vmap(run))(keys)
    for i in range(2):
        state_i, metrics_i = jax.jit(run)(keys[i])
        np.testing.assert_allclose(
            batched_metrics["train/loss"][i], metrics_i["train/loss"], rtol=1e-5
        )


def test_rainbow_module_is_dqn_with_every_option_on():
    cfg = rainbow.Config()
    assert (cfg.double, cfg.dueling, cfg.prioritised, cfg.noisy) == (True, True, True, True)
    assert (cfg.n_step, cfg.distribution) == (3, "c51")
    assert isinstance(cfg, dqn.Config)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(distribution="iqn"), "distribution must be one of"),
        (dict(torso="resnet"), "torso must be one of"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(n_step=300, buffer_size=400), "too short for n_step"),
        (dict(batch_size=500, buffer_size=400), "exceeds buffer_size"),
        (dict(distribution="c51", v_min=1.0, v_max=0.0), "v_min < v_max"),
        (dict(priority_exponent=-1.0), "priority_exponent"),
        (dict(priority_exponent=1.5), r"priority_exponent must be in \[0, 1\], got 1.5"),
        (dict(noisy=True, noisy_sigma0=-0.1), "noisy_sigma0"),
    ],
)
def test_bad_config_is_a_clear_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        dqn.Config(**{**PROBE_CFG, **overrides})


def test_bad_hparams_and_continuous_actions_are_clear_errors():
    with pytest.raises(ConfigError, match="learning_rate"):
        dqn.check(dqn.Config(**PROBE_CFG), dqn.HParams.make(learning_rate=-1.0))
    env, _ = registry.make("probe/continuous_target")
    with pytest.raises(ConfigError, match="discrete actions"):
        dqn.init(dqn.Config(**PROBE_CFG), env, jax.random.key(0), dqn.HParams.make())


@pytest.mark.learning
def test_dqn_solves_cartpole_within_1e5_steps():
    """Issue 5's check, 4 fixed seeds, 1e5 env steps each: plain DQN's final greedy policies
    average >= 450 over 16 evaluation episodes each.

    The ``dqn/cartpole`` preset is Rejax's DQN CartPole config with learning-rate annealing,
    lr 2e-3 and epsilon decayed over the first quarter. Over 56 other seeds it averages 474
    and 4 of them collapse late (to 104-177; experiments/dqn/RESULTS.md), so a seed set can
    fail this bar; these four reach 500."""
    from jaxrl.runner import config as run_config
    from jaxrl.runner import evaluate

    cfg, hp = run_config.resolve(dqn, run_config.load_preset("dqn/cartpole"), {}, None)
    env, env_params = registry.make("CartPole-v1")
    keys = jax.random.split(jax.random.key(0), 4)
    state = jax.vmap(lambda k: dqn.init(cfg, env, k, hp, env_params))(keys)
    state, _ = jax.jit(jax.vmap(lambda s: dqn.train(cfg, env, s, hp, cfg.num_updates)))(state)
    returns = jax.jit(
        jax.vmap(lambda p, k: evaluate.evaluate(dqn, cfg, env, p, k, 16, True, env_params))
    )(state.params, jax.random.split(jax.random.key(1), 4))
    assert float(jnp.mean(returns)) >= 450, np.asarray(jnp.mean(returns, axis=1))
