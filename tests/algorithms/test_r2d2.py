"""R2D2: value rescaling, n-step targets and TD errors against a step-by-step loop and rlax,
LSTM resets at episode boundaries, burn-in without loss, priorities by hand, stored actor
states, jit == no-jit, vmapped == looped, config errors, and Andy Jones's probes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

from jaxrl.algorithms import r2d2
from jaxrl.envs import probe, registry
from jaxrl.errors import ConfigError
from jaxrl.runner import sweep

TINY = dict(
    total_timesteps=2_000, num_envs=4, train_freq=4, gradient_steps=1, buffer_size=512,
    batch_size=8, sequence_length=8, burn_in=2, period=4, n_step=3, learning_starts=64,
    target_update_period=20, hidden=(16,), lstm_features=16,
)  # fmt: skip
CHUNK = 25  # updates per compiled train call (16 env steps each)


@pytest.fixture(scope="module")
def env():
    return registry.make("probe/reward_from_obs")[0]


@pytest.fixture(scope="module")
def compiled(env):
    """One compiled ``train`` of CHUNK updates and its vmapped twin, shared by the tests."""
    cfg = r2d2.Config(**TINY)
    single = jax.jit(lambda s, h: r2d2.train(cfg, env, s, h, CHUNK))
    batched = jax.jit(jax.vmap(lambda s, h: r2d2.train(cfg, env, s, h, CHUNK)))
    return cfg, single, batched


# Jitted once per shape: eager flax calls are far slower than compiling these on CPU.
_td_errors = jax.jit(r2d2.td_errors, static_argnums=(0, 1))
_unroll = jax.jit(r2d2.unroll, static_argnums=(0, 1))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _net(cfg, env, params, carry, obs, reset):
    """The R2D2 network: ``(carry, q [T, B, A])``."""
    return r2d2.network(cfg, env).apply(params, carry, obs, reset)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _loss_and_grad(cfg, env, online, target, batch, hp):
    """``(loss, priorities [B], d loss / d online)`` of :func:`r2d2.weighted_loss`."""
    (value, (prio, _)), grads = jax.value_and_grad(r2d2.weighted_loss, argnums=2, has_aux=True)(
        cfg, env, online, target, batch, hp
    )
    return value, prio, grads


def _h(x, eps=1e-3):
    x = np.asarray(x, np.float64)
    return np.sign(x) * (np.sqrt(np.abs(x) + 1) - 1) + eps * x


def _h_inv(y, eps=1e-3):
    """Closed-form inverse of _h (the root of eps z^2 + z - (|y| + 1 + eps) = 0, z = sqrt(|x|+1)),
    in float64."""
    y = np.asarray(y, np.float64)
    z = (-1 + np.sqrt(1 + 4 * eps * (np.abs(y) + 1 + eps))) / (2 * eps)
    return np.sign(y) * (z**2 - 1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _nets(cfg, env, key):
    """Online and target parameters drawn independently (so mixing them up shows)."""
    net = r2d2.network(cfg, env)
    carry = r2d2.initial_carry(cfg, (1,))
    k1, k2 = jax.random.split(key)
    dummy = (carry, jnp.zeros((1, 1, 1)), jnp.ones((1, 1), bool))
    return net.init(k1, *dummy), net.init(k2, *dummy)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6))
def _sequence(key, length, batch, num_actions=2, features=16, done_p=0.25, trunc_p=0.5):
    """Random time-major sequences with consistent episode flags: ``reset[t] = done[t-1]``,
    ``terminated`` a subset of ``done``, a random nonzero stored carry (zero where reset)."""
    k = jax.random.split(key, 8)
    done = jax.random.bernoulli(k[0], done_p, (length, batch))
    truncated = jnp.logical_and(done, jax.random.bernoulli(k[1], trunc_p, (length, batch)))
    first = jax.random.bernoulli(k[2], 0.3, (1, batch))
    reset = jnp.concatenate([first, done[:-1]], axis=0)
    carry = tuple(jax.random.normal(kk, (length, batch, features)) for kk in k[3:5])
    carry = jax.tree.map(lambda c: jnp.where(reset[..., None], 0.0, c), carry)
    return r2d2.Transition(
        obs=jax.random.normal(k[5], (length, batch, 1)),
        action=jax.random.randint(k[6], (length, batch), 0, num_actions, jnp.int32),
        reward=jax.random.normal(k[7], (length, batch)),
        terminated=jnp.logical_and(done, ~truncated).astype(jnp.float32),
        done=done.astype(jnp.float32),
        next_obs=jax.random.normal(jax.random.fold_in(key, 1), (length, batch, 1)),
        reset=reset,
        carry=carry,
    )


def _reference_td(cfg, env, online, target, seq, hp, b):
    """TD errors of sequence ``b`` by a step-by-step loop over the network and the returns."""
    apply = functools.partial(_net, cfg, env)  # one compile per config, not per call
    h, h_inv = (_h, _h_inv) if cfg.value_rescaling else (lambda x: x, lambda x: x)
    length = seq.obs.shape[0]
    no_reset = jnp.zeros((1, 1), bool)

    def run(params):
        carry = tuple(c[0, b][None] for c in seq.carry)
        q, q_next = [], []
        for t in range(length):
            carry, qt = apply(params, carry, seq.obs[t, b][None, None], seq.reset[t, b][None, None])
            _, qn = apply(params, carry, seq.next_obs[t, b][None, None], no_reset)
            q.append(np.asarray(qt[0, 0], np.float64))
            q_next.append(np.asarray(qn[0, 0], np.float64))
        return q, q_next

    q_online, next_online = run(online)
    _, next_target = run(target)
    gamma, n = float(hp.discount), cfg.n_step
    r, done, term = (
        np.asarray(x[:, b], np.float64) for x in (seq.reward, seq.done, seq.terminated)
    )
    tds = []
    for t in range(cfg.burn_in, length):
        ret, scale = 0.0, 1.0
        for j in range(t, min(t + n, length)):
            ret += scale * r[j]
            scale *= gamma
            if done[j]:
                break
        a_next = int(np.argmax(next_online[j])) if cfg.double else int(np.argmax(next_target[j]))
        ret += scale * (1 - term[j]) * h_inv(next_target[j][a_next])
        tds.append(h(ret) - q_online[t][int(seq.action[t, b])])
    return np.array(tds)


def test_value_rescaling_is_the_papers_h_and_invertible():
    cfg = r2d2.Config(**TINY)
    hp = r2d2.HParams.make()
    h, h_inv = r2d2.value_transform(cfg, hp)
    x = jnp.asarray([-1000.0, -37.5, -1.0, -0.01, 0.0, 0.3, 1.0, 12.0, 999.0])
    np.testing.assert_allclose(h(x), _h(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(h_inv(h(x)), x, rtol=1e-4, atol=1e-3)  # float32 h^-1 cancels
    np.testing.assert_allclose(h_inv(_h(x).astype(np.float32)), _h_inv(_h(x)), rtol=1e-4, atol=1e-3)
    y = jnp.linspace(-30.0, 30.0, 61)
    np.testing.assert_allclose(h(h_inv(y)), y, atol=1e-4)
    ident, ident_inv = r2d2.value_transform(r2d2.Config(**TINY, value_rescaling=False), hp)
    np.testing.assert_array_equal(ident(x), x)
    np.testing.assert_array_equal(ident_inv(x), x)


def test_n_step_targets_match_a_loop_and_rlax():
    key = jax.random.split(jax.random.key(0), 4)
    length, n, gamma = 11, 4, 0.9
    r = jax.random.normal(key[0], (length,))
    v = jax.random.normal(key[1], (length,))
    done = jax.random.bernoulli(key[2], 0.3, (length,)).astype(jnp.float32)
    term = done * jax.random.bernoulli(key[3], 0.5, (length,))
    got = r2d2.n_step_targets(r, term, done, v, jnp.float32(gamma), n)
    expected = []
    for t in range(length):
        ret, scale = 0.0, 1.0
        for j in range(t, min(t + n, length)):
            ret, scale = ret + scale * float(r[j]), scale * gamma
            if done[j]:
                break
        expected.append(ret + scale * (1 - float(term[j])) * float(v[j]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # With terminations only, rlax's discount-cut n-step returns are the same numbers.
    rlax_ret = rlax.n_step_bootstrapped_returns(r, gamma * (1 - done), v, n)
    np.testing.assert_allclose(r2d2.n_step_targets(r, done, done, v, gamma, n), rlax_ret, rtol=1e-5)


@pytest.mark.parametrize("burn_in, double, rescale", [(3, True, True), (0, False, False)])
def test_td_errors_match_a_step_by_step_loop(env, burn_in, double, rescale):
    cfg = r2d2.Config(**TINY | dict(burn_in=burn_in, double=double, value_rescaling=rescale))
    hp = r2d2.HParams.make(discount=0.8)
    online, target = _nets(cfg, env, jax.random.key(1))
    seq = _sequence(jax.random.key(2), cfg.sequence_length, 3)
    assert float(seq.done.sum()) >= 2 and float((seq.done - seq.terminated).sum()) >= 1
    td, _ = _td_errors(cfg, env, online, target, seq, hp)
    assert td.shape == (cfg.sequence_length - burn_in, 3)
    for b in range(3):
        ref = _reference_td(cfg, env, online, target, seq, hp, b)
        np.testing.assert_allclose(td[:, b], ref, rtol=2e-4, atol=2e-4)


def test_td_errors_equal_rlax_transformed_n_step_q_learning(env):
    """Without episode ends a window is one continuous unroll: rlax's R2D2 loss applies."""
    cfg = r2d2.Config(**TINY)
    hp = r2d2.HParams.make(discount=0.97)
    online, target = _nets(cfg, env, jax.random.key(3))
    length, batch = cfg.sequence_length, 2
    seq = _sequence(jax.random.key(4), length, batch, done_p=0.0)
    seq = seq.replace(
        reset=jnp.zeros_like(seq.reset),
        next_obs=jnp.concatenate([seq.obs[1:], seq.next_obs[-1:]], axis=0),
    )
    td, _ = _td_errors(cfg, env, online, target, seq, hp)
    carry0 = jax.tree.map(lambda c: c[0], seq.carry)
    obs = jnp.concatenate([seq.obs, seq.next_obs[-1:]], axis=0)  # [L + 1, B, 1]
    reset = jnp.zeros((length + 1, batch), bool)
    _, q_online = _net(cfg, env, online, carry0, obs, reset)
    _, q_target = _net(cfg, env, target, carry0, obs, reset)
    for b in range(batch):
        expected = rlax.transformed_n_step_q_learning(
            q_online[:-1, b], seq.action[:, b], q_target[1:, b],
            jnp.argmax(q_online[1:, b], axis=-1), seq.reward[:, b],
            jnp.full((length,), 0.97), cfg.n_step, tx_pair=rlax.SIGNED_HYPERBOLIC_PAIR,
        )  # fmt: skip
        np.testing.assert_allclose(td[:, b], expected[cfg.burn_in :], rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("burn_in", [0, 3])
def test_zero_start_state_is_the_stored_strategy_on_zeroed_carries(env, burn_in):
    """``start_state="zero"`` starts every window from zeros: its TD errors are the stored
    strategy's on the same window with a zero first carry, whatever was stored."""
    stored = r2d2.Config(**TINY | dict(burn_in=burn_in))
    zero = r2d2.Config(**TINY | dict(burn_in=burn_in, start_state="zero"))
    hp = r2d2.HParams.make(discount=0.9)
    online, target = _nets(stored, env, jax.random.key(10))
    seq = _sequence(jax.random.key(11), stored.sequence_length, 3, done_p=0.1)
    seq = seq.replace(reset=seq.reset.at[0].set(False))  # the stored carry is read at step 0
    zeroed = seq.replace(carry=jax.tree.map(lambda c: c.at[0].set(0.0), seq.carry))
    td_zero, _ = _td_errors(zero, env, online, target, seq, hp)
    td_zeroed, _ = _td_errors(stored, env, online, target, zeroed, hp)
    np.testing.assert_allclose(td_zero, td_zeroed, rtol=1e-6, atol=1e-7)
    td_stored, _ = _td_errors(stored, env, online, target, seq, hp)
    assert float(jnp.abs(td_stored - td_zero).max()) > 1e-3  # the stored carry matters


def test_lstm_state_resets_at_episode_boundaries(env):
    """After a reset the Q-values equal a fresh unroll from the zero state, and the TD errors
    from there on equal those of a window that starts at the boundary; targets before the
    boundary do not see what comes after it."""
    cfg = r2d2.Config(**TINY | dict(burn_in=0))
    hp = r2d2.HParams.make(discount=0.9)
    online, target = _nets(cfg, env, jax.random.key(5))
    seq = _sequence(jax.random.key(6), cfg.sequence_length, 2, done_p=0.0)
    k = 3  # episode ends at step k - 1, the next starts at k
    seq = seq.replace(
        done=seq.done.at[k - 1].set(1.0),
        terminated=seq.terminated.at[k - 1].set(1.0),
        reset=seq.reset.at[0].set(False).at[k].set(True),
    )
    carry0 = jax.tree.map(lambda c: c[0], seq.carry)
    q, _ = _unroll(cfg, env, online, carry0, seq.obs, seq.reset)
    fresh, _ = _unroll(cfg, env, online, r2d2.initial_carry(cfg, (2,)), seq.obs[k:], seq.reset[k:])
    np.testing.assert_allclose(q[k:], fresh, rtol=1e-5, atol=1e-6)
    no_reset, _ = _unroll(cfg, env, online, carry0, seq.obs, jnp.zeros_like(seq.reset))
    assert float(jnp.abs(no_reset[k:] - fresh).max()) > 1e-3  # the reset is what did it

    td, _ = _td_errors(cfg, env, online, target, seq, hp)
    tail = jax.tree.map(lambda x: x[k:], seq)
    td_tail, _ = _td_errors(cfg, env, online, target, tail, hp)
    np.testing.assert_allclose(td[k:], td_tail, rtol=1e-5, atol=1e-6)
    # Replace everything after the boundary: the targets before it do not change.
    other = _sequence(jax.random.key(7), cfg.sequence_length, 2)
    changed = jax.tree.map(
        lambda x, y: x.at[k:].set(y[k:]) if x.ndim >= 2 else x, seq, other
    ).replace(reset=seq.reset, carry=seq.carry)
    td_changed, _ = _td_errors(cfg, env, online, target, changed, hp)
    np.testing.assert_allclose(td_changed[:k], td[:k], rtol=1e-6)


def test_burn_in_steps_get_no_loss_and_no_gradient(env):
    cfg = r2d2.Config(**TINY | dict(burn_in=3))
    hp = r2d2.HParams.make(discount=0.9)
    online, target = _nets(cfg, env, jax.random.key(8))
    params = r2d2.Params(online, target)
    seq = _sequence(jax.random.key(9), cfg.sequence_length, 4)
    batch = r2d2.Batch(seq, jnp.asarray([1.0, 0.5, 0.8, 0.3]), jnp.arange(4))

    def loss_and_grad(p, b, c=cfg):
        return _loss_and_grad(c, env, p.online, p.target, b, hp)

    value, prio, grads = loss_and_grad(params, batch)
    # 1. What burn-in steps hold beyond their observations (which set the state) is unused.
    other = _sequence(jax.random.key(10), cfg.sequence_length, 4)
    b = cfg.burn_in
    swap = lambda x, y: x.at[:b].set(y[:b])  # noqa: E731
    changed = seq.replace(
        reward=swap(seq.reward, other.reward), action=swap(seq.action, other.action),
        done=swap(seq.done, other.done), terminated=swap(seq.terminated, other.terminated),
        next_obs=swap(seq.next_obs, other.next_obs),
    )  # fmt: skip
    value2, prio2, _ = loss_and_grad(params, batch.replace(seq=changed))
    np.testing.assert_allclose(value2, value, rtol=1e-6)
    np.testing.assert_allclose(prio2, prio, rtol=1e-6)

    # One compiled gradient of the contract's loss in the parameters and the stored state
    # (the latter is checked in 3.).
    def loss_of(p, c):
        return r2d2.loss(cfg, env, p, batch.replace(seq=seq.replace(carry=c)), hp)[0]

    grads_params, d_carry = jax.jit(jax.grad(loss_of, argnums=(0, 1)))(params, seq.carry)
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=2e-6),
        grads_params.online,
        grads,
    )
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads_params.target))
    # 2. Same loss and gradient as learning on the rest from the burned-in state held fixed:
    # no gradient flows through the burn-in unroll. (online == target here, so one stored
    # state serves both networks.)
    same = r2d2.Params(online, online)
    value_s, prio_s, grads_s = loss_and_grad(same, batch)
    carry0 = jax.tree.map(lambda c: c[0], seq.carry)
    burned, _ = _net(cfg, env, online, carry0, seq.obs[:b], seq.reset[:b])
    rest = jax.tree.map(lambda x: x[b:], seq)
    rest = rest.replace(carry=jax.tree.map(lambda c, s: c.at[0].set(s), rest.carry, burned))
    cfg0 = r2d2.Config(**TINY | dict(burn_in=0, sequence_length=cfg.sequence_length - b))
    value_t, prio_t, grads_t = loss_and_grad(same, batch.replace(seq=rest), cfg0)
    np.testing.assert_allclose(value_t, value_s, rtol=1e-5)
    np.testing.assert_allclose(prio_t, prio_s, rtol=1e-5)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6)
    jax.tree.map(close, grads_t, grads_s)
    # 3. Nor does the stored state get a gradient.
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(d_carry))


def test_priorities_are_0_9_max_plus_0_1_mean_of_abs_td(env):
    td = jnp.asarray([[0.5, -2.0], [-1.5, 0.1], [0.2, 0.3]])  # [T=3, B=2]
    expected = [0.9 * 1.5 + 0.1 * (0.5 + 1.5 + 0.2) / 3, 0.9 * 2.0 + 0.1 * (2.0 + 0.1 + 0.3) / 3]
    np.testing.assert_allclose(r2d2.sequence_priorities(td, 0.9), expected, rtol=1e-6)
    np.testing.assert_allclose(r2d2.sequence_priorities(td, 0.0), [2.2 / 3, 2.4 / 3], rtol=1e-6)
    # The learner's priorities are these of its TD errors, and its loss their weighted mean.
    cfg = r2d2.Config(**TINY | dict(loss="l2"))
    hp = r2d2.HParams.make(priority_eta=0.7)
    online, target = _nets(cfg, env, jax.random.key(11))
    seq = _sequence(jax.random.key(12), cfg.sequence_length, 3)
    weights = jnp.asarray([0.2, 1.0, 0.6])
    value, prio, _ = _loss_and_grad(cfg, env, online, target, r2d2.Batch(seq, weights, None), hp)
    td = np.asarray(_td_errors(cfg, env, online, target, seq, hp)[0], np.float64)
    by_hand = 0.7 * np.abs(td).max(0) + 0.3 * np.abs(td).mean(0)
    np.testing.assert_allclose(prio, by_hand, rtol=1e-5)
    np.testing.assert_allclose(value, np.mean(weights * (0.5 * td**2).mean(0)), rtol=1e-5)


def test_collect_stores_the_actor_state_and_episode_starts():
    env, _ = registry.make("MemoryChain-bsuite")  # 6-step episodes
    cfg = r2d2.Config(**TINY | dict(train_freq=15))
    hp = r2d2.HParams.make()
    init_collect = lambda k: r2d2.collect(cfg, env, r2d2.init(cfg, env, k, hp), hp)  # noqa: E731
    state, tr, _ = jax.jit(init_collect)(jax.random.key(13))
    done, reset = np.asarray(tr.done, bool), np.asarray(tr.reset, bool)
    assert reset[0].all() and done.any()
    np.testing.assert_array_equal(reset[1:], done[:-1])
    np.testing.assert_array_equal(state.reset, done[-1])
    c, h = (np.asarray(x) for x in tr.carry)
    assert np.all(c[reset] == 0) and np.all(h[reset] == 0)
    assert np.abs(h[~reset]).min(axis=-1).max() > 0
    # Each stored state is the previous one stepped by the actor's network on its obs (and
    # the state kept in State is the last one stepped).
    carry = jax.tree.map(lambda x: x.reshape(-1, x.shape[-1]), tr.carry)  # [T * N, H]
    obs = tr.obs.reshape(1, -1, tr.obs.shape[-1])
    after, _ = _net(cfg, env, state.params.online, carry, obs, jnp.zeros((1, obs.shape[1]), bool))
    after = [np.asarray(x).reshape(c.shape) for x, c in zip(after, (c, h), strict=True)]
    for got, stepped in zip((c, h), after, strict=True):
        np.testing.assert_allclose(
            got[1:], np.where(reset[1:, :, None], 0.0, stepped[:-1]), atol=1e-6
        )
    for kept, stepped in zip(state.carry, after, strict=True):
        np.testing.assert_allclose(kept, stepped[-1], atol=1e-6)


def test_jit_equals_no_jit(env):
    """The learner's loss, priorities and metrics, op by op and compiled. (Gradient steps
    are compared under jit elsewhere: vmapped == looped; eagerly they take ~15 s here.)"""
    cfg = r2d2.Config(**TINY)
    hp = r2d2.HParams.make(discount=0.95)
    online, target = _nets(cfg, env, jax.random.key(15))
    batch = r2d2.Batch(
        _sequence(jax.random.key(16), 8, 8), jnp.linspace(0.1, 1.0, 8), jnp.arange(8)
    )
    fn = lambda o, t, b: r2d2.weighted_loss(cfg, env, o, t, b, hp)  # noqa: E731
    eager = fn(online, target, batch)
    jitted = jax.jit(fn)(online, target, batch)
    # float32 with other fusion: h^-1 cancels digits, so priorities agree to ~1e-5
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6), jitted, eager)
    assert float(eager[0]) > 0


@pytest.mark.parametrize(
    "bad",
    [
        dict(burn_in=8),  # no step left to learn from
        dict(burn_in=-1),
        dict(period=9),  # longer than a sequence
        dict(sequence_length=0),
        dict(buffer_size=16),  # 4 steps per env < sequence_length
        dict(loss="mse"),
        dict(exploration="boltzmann"),
        dict(torso="transformer"),
        dict(start_state="burn_in"),
        dict(priority_exponent=1.5),
        dict(total_timesteps=8),  # less than one update
    ],
)
def test_bad_config_raises_config_error(bad):
    with pytest.raises(ConfigError):
        r2d2.Config(**TINY | bad)


def test_bad_hparams_raise_config_error():
    cfg = r2d2.Config(**TINY)
    for bad in (dict(discount=1.5), dict(rescale_eps=0.0), dict(priority_eta=-0.1)):
        with pytest.raises(ConfigError):
            r2d2.check(cfg, r2d2.HParams.make(**bad))
    with pytest.raises(ConfigError):
        r2d2.HParams.make(epsilon=0.1)
    r2d2.check(cfg, r2d2.HParams.make())


def test_per_env_epsilons_follow_ape_x():
    cfg = r2d2.Config(**TINY | dict(learning_starts=0))
    eps = r2d2.epsilons(cfg, r2d2.HParams.make(), jnp.asarray(0))
    np.testing.assert_allclose(eps, [0.4 ** (1 + 7 * i / 3) for i in range(4)], rtol=1e-5)
    warm = r2d2.epsilons(r2d2.Config(**TINY), r2d2.HParams.make(), jnp.asarray(0))
    np.testing.assert_array_equal(warm, np.ones(4))


@pytest.mark.learning
def test_learns_reward_from_obs(env, compiled):
    """obs +-1, reward 1 iff action == (obs > 0): greedy play scores 1 (random: 0.5)."""
    cfg, single, _ = compiled
    hp = r2d2.HParams.make(learning_rate=3e-3, discount=0.9)
    state = jax.jit(lambda k: r2d2.init(cfg, env, k, hp))(jax.random.key(18))
    for _ in range(cfg.num_updates // CHUNK):
        state, metrics = single(state, hp)
    mean, count = r2d2.evaluate(cfg, env, state.params, jax.random.key(19), 32, 4)
    assert int(count) == 128 and float(mean) == 1.0
    h1 = _h(1.0)  # Q(o, right action) = h(1), Q(o, wrong) = h(0) = 0
    carry = r2d2.initial_carry(cfg, (2,))
    _, q = _net(
        cfg, env, state.params.online, carry, jnp.asarray([[[1.0], [-1.0]]]), jnp.ones((1, 2), bool)
    )
    np.testing.assert_allclose(q[0], [[0.0, h1], [h1, 0.0]], atol=0.1)


PROBE_CFG = TINY | dict(total_timesteps=1_600, gradient_steps=4, exploration="linear")


@pytest.mark.learning
@pytest.mark.parametrize("probe_name", probe.JONES_PROBES)
def test_passes_the_probes(probe_name):
    """Q at the start of an episode (and, in the two-step probe, after its first step)
    reaches the rescaled true values h(Q)."""
    env, _ = registry.make(f"probe/{probe_name}")
    cfg = r2d2.Config(**PROBE_CFG)
    hp = r2d2.HParams.make(learning_rate=3e-3, discount=0.9)
    run = lambda k: r2d2.train(cfg, env, r2d2.init(cfg, env, k, hp), hp, cfg.num_updates)  # noqa: E731
    state, _ = jax.jit(run)(jax.random.key(20))
    expected = {
        "constant_reward": [([0.0], [1.0])],
        "obs_reward": [([1.0], [1.0]), ([-1.0], [-1.0])],
        "two_step_reward": [([0.0], [0.9]), ([1.0], [1.0])],
        "action_reward": [([0.0], [-1.0, 1.0])],
        "obs_action_reward": [([1.0], [-1.0, 1.0]), ([-1.0], [1.0, -1.0])],
    }[probe_name]
    obs = jnp.asarray([o for o, _ in expected])[:, None]  # [T, 1, 1]: one episode in order
    reset = jnp.asarray([[i == 0 or probe_name != "two_step_reward"] for i in range(len(obs))])
    carry = r2d2.initial_carry(cfg, (1,))
    _, q = _net(cfg, env, state.params.online, carry, obs, reset)
    for t, (_, q_true) in enumerate(expected):
        np.testing.assert_allclose(q[t, 0], _h(q_true), atol=0.1, err_msg=probe_name)


# After the learning test, which compiles `single` first: here only the vmapped twin compiles.
def test_vmapped_over_two_seeds_equals_a_loop(env, compiled):
    cfg, single, batched = compiled
    hps = r2d2.HParams.make(learning_rate=jnp.asarray([1e-3, 3e-3]))
    hps = jax.tree.map(lambda x: jnp.broadcast_to(x, (2,)), hps)
    keys = jax.random.split(jax.random.key(17), 2)
    states = sweep.init_runs(r2d2, cfg, env, keys, hps)
    out_v, metrics_v = batched(states, hps)
    assert int(out_v.grad_steps[0]) > 10  # learning happened inside the chunk
    close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5)
    for i in range(2):
        pick = functools.partial(jax.tree.map, lambda x, i=i: x[i])
        out, metrics = single(pick(states), pick(hps))
        jax.tree.map(close, pick(out_v.params), out.params)
        jax.tree.map(close, pick(metrics_v), metrics)
