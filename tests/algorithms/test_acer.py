"""ACER: Retrace targets against a numpy transcription of the paper's recursion and against
rlax, the truncated-IS + bias-correction gradient by hand (and its on-policy reduction to the
actor-critic gradient), the trust-region projection, the Polyak average, replay of segments,
vmapped == looped, config errors, learning probe 5, and (slow) CartPole with the preset."""

from __future__ import annotations

import functools
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

from jaxrl.algorithms import acer
from jaxrl.envs import registry
from jaxrl.errors import ConfigError
from jaxrl.runner import sweep

TINY = dict(
    total_timesteps=16 * 200, num_envs=4, rollout_len=4, replay_ratio=2, buffer_size=64,
    replay_start=32, hidden=(16,),
)  # fmt: skip


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _numeric(tree):
    """PRNG keys as their raw bits, so whole states can be compared."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


@pytest.fixture(scope="module")
def setup():
    """A tiny ACER on probe 5 with one jitted ``update`` (``hp`` traced) shared by the tests."""
    env, _ = registry.make("probe/obs_action_reward")
    cfg = acer.Config(**TINY)
    hp = acer.HParams.make(learning_rate=3e-3, avg_decay=0.9)
    init = jax.jit(lambda k, h: acer.init(cfg, env, k, h))
    step = jax.jit(lambda s, h: acer.update(cfg, env, s, h))
    return types.SimpleNamespace(cfg=cfg, env=env, hp=hp, init=init, step=step)


# ---------------------------------------------------------------- Retrace


def _retrace_by_hand(q_a, v, v_next, r, term, trunc, c, gamma):
    """ACER Algorithm 2's loop, cut at episode ends: Q_ret <- r + gamma Q_ret; then
    Q_ret <- c (Q_ret - Q(x, a)) + V(x); a termination restarts from 0, a truncation and
    the segment end from V of the pre-reset next obs."""
    out = np.zeros(len(r))
    carry = 0.0
    for i in reversed(range(len(r))):
        if term[i]:
            carry = 0.0
        elif trunc[i] or i == len(r) - 1:
            carry = v_next[i]
        out[i] = r[i] + gamma * carry
        carry = c[i] * (out[i] - q_a[i]) + v[i]
    return out


def _segment_values():
    """T = 7 with a termination at 2 and a truncation at 4; ``v_next_t = v_{t+1}`` where
    the episode goes on (the same state), anything where it ended."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=7)
    q_a = v + rng.normal(size=7)
    r = rng.normal(size=7)
    term = np.array([0, 0, 1, 0, 0, 0, 0], np.float32)
    trunc = np.array([0, 0, 0, 0, 1, 0, 0], np.float32)
    v_next = np.append(v[1:], 0.0) + 0.0
    v_next[2] = 123.0  # after a termination: never read
    v_next[4] = 5.0  # the truncated episode's last state
    v_next[6] = -2.0  # the segment end
    c = np.minimum(1.0, rng.uniform(0.2, 2.0, size=7))
    return q_a, v, v_next, r, term, trunc, c


class RetraceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_the_papers_recursion_with_episode_ends(self):
        q_a, v, v_next, r, term, trunc, c = _segment_values()
        got = self.variant(acer.retrace_targets)(
            *(jnp.asarray(x, jnp.float32) for x in (q_a, v_next, r, term, trunc, c)), 0.9
        )
        chex.assert_shape(got, (7,))
        want = _retrace_by_hand(q_a, v, v_next, r, term, trunc, c, 0.9)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert got[2] == pytest.approx(r[2])  # terminated: no bootstrap
        assert got[4] == pytest.approx(r[4] + 0.9 * 5.0)  # truncated: V of the cut state

    @chex.variants(with_jit=True, without_jit=True)
    def test_equals_rlax_retrace_without_episode_ends(self):
        rng = np.random.default_rng(1)
        t, a = 6, 3
        q = rng.normal(size=(t + 1, a)).astype(np.float32)  # Q at x_0 .. x_T (x_T: bootstrap)
        pi = rng.dirichlet(np.ones(a), size=t + 1).astype(np.float32)
        mu = rng.dirichlet(np.ones(a), size=t + 1).astype(np.float32)
        action = rng.integers(0, a, size=t + 1).astype(np.int32)
        r = rng.normal(size=t).astype(np.float32)
        take = lambda x: x[np.arange(t + 1), action]
        c = np.minimum(1.0, take(pi) / take(mu))
        v = np.sum(pi * q, -1)
        zeros = np.zeros(t, np.float32)
        got = self.variant(acer.retrace_targets)(take(q)[:-1], v[1:], r, zeros, zeros, c[:-1], 0.95)
        err = _rlax_retrace(q[:-1], q[1:], action[:-1], action[1:], r, np.full(t, 0.95, np.float32),
                            pi[1:], take(mu)[1:])  # fmt: skip
        np.testing.assert_allclose(got, err + take(q)[:-1], rtol=1e-5, atol=1e-5)


_rlax_retrace = jax.jit(functools.partial(rlax.retrace, lambda_=1.0, eps=0.0))


# ---------------------------------------------------------------- the policy gradient


def _hand_example():
    """Two states, three actions: one with rho(a_t) = 2 above c = 1.5 and a bias-correction
    weight on action 2 (rho = 3 > c), one with every rho below c."""
    probs = np.array([[0.2, 0.2, 0.6], [0.5, 0.3, 0.2]])
    mu = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]])
    q = np.array([[1.0, -0.5, 2.0], [0.3, 0.8, -1.2]])
    action = np.array([0, 1])
    q_ret = np.array([1.7, 0.4])
    return probs, mu, q, action, q_ret


def _g_by_hand(probs, mu, q, action, q_ret, c, ent, statistics):
    """eq. 9 + entropy, differentiated by hand w.r.t. probabilities or logits."""
    g = np.zeros_like(probs)
    for i in range(len(probs)):
        p, m, a = probs[i], mu[i], action[i]
        v = p @ q[i]
        rho = p / m
        w_a = min(c, rho[a]) * (q_ret[i] - v)
        w = np.maximum(0.0, 1.0 - c / rho) * p * (q[i] - v)  # weights of log f(b)
        onehot = np.eye(len(p))[a]
        h = -(p * np.log(p)).sum()
        if statistics == "probs":  # d log p_b / d p_j = delta_bj / p_b
            g[i] = w_a * onehot / p[a] + w / p - ent * (np.log(p) + 1.0)
        else:  # d log p_b / d l_j = delta_bj - p_j
            g[i] = w_a * (onehot - p) + (w - w.sum() * p) - ent * p * (np.log(p) + h)
    return g


@pytest.mark.parametrize("statistics", acer.STATISTICS)
def test_policy_gradient_matches_hand_computation(statistics):
    probs, mu, q, action, q_ret = _hand_example()
    stats = probs if statistics == "probs" else np.log(probs) + 0.3  # logits up to a shift
    g = jax.jit(acer.policy_statistics_gradient, static_argnums=1)(
        jnp.asarray(stats, jnp.float32), statistics, jnp.asarray(action), jnp.asarray(q),
        jnp.asarray(q_ret), jnp.asarray(mu), 1.5, 0.05,
    )  # fmt: skip
    want = _g_by_hand(probs, mu, q, action, q_ret, 1.5, 0.05, statistics)
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
    # The example exercises both terms: rho(a_0) = 2 is truncated to c = 1.5, and the
    # bias correction is non-zero exactly on action 2 of state 0 (rho = 3 > c).
    assert (probs / mu)[0, 0] > 1.5 and (probs / mu)[0, 2] > 1.5
    assert np.all((probs / mu)[1] < 1.5)


@pytest.mark.parametrize("statistics", acer.STATISTICS)
def test_kl_gradient_closed_form(statistics):
    probs, mu, *_ = _hand_example()
    stats = probs if statistics == "probs" else np.log(probs)
    kl_gradient = jax.jit(acer.kl_gradient, static_argnums=2)
    k = kl_gradient(jnp.asarray(stats, jnp.float32), jnp.asarray(mu, jnp.float32), statistics)
    want = -mu / probs if statistics == "probs" else probs - mu
    np.testing.assert_allclose(k, want, rtol=1e-5, atol=1e-6)


def _batch(t=5, b=3):
    """A random time-major batch ``[T, B]`` (numpy) with a termination and a truncation;
    ``mu`` is left uniform (the test sets it to the current policy)."""
    rng = np.random.default_rng(4)
    obs = rng.normal(size=(t, b, 1)).astype(np.float32)
    term = np.zeros((t, b), np.float32)
    trunc = np.zeros((t, b), np.float32)
    term[1, 0], trunc[2, 1] = 1.0, 1.0
    # The obs each step reached: the next obs where the episode goes on, else a fresh one.
    other = rng.normal(size=(t, b, 1)).astype(np.float32)
    final_obs = np.concatenate([obs[1:], other[-1:]])
    final_obs = np.where((term + trunc)[..., None] > 0, other, final_obs)
    action = rng.integers(0, 2, size=(t, b)).astype(np.int32)
    reward = rng.normal(size=(t, b)).astype(np.float32)
    return acer.Segment(obs, action, np.full((t, b, 2), 0.5, np.float32), reward, term, trunc,
                        final_obs)  # fmt: skip


@pytest.mark.parametrize("statistics,trust_region", [("probs", True), ("logits", False)])
def test_on_policy_gradient_is_the_actor_critic_gradient(setup, statistics, trust_region):
    """With mu = pi, c >= 1 and no active trust region (off, or delta huge), the ACER policy
    gradient is -grad mean(log pi(a) (Q_ret - V) + ent_coef H), Q_ret by the numpy recursion."""
    cfg = acer.Config(**{**TINY, "statistics": statistics, "trust_region": trust_region})
    env = setup.env
    net = acer.network(cfg, env)
    hp = acer.HParams.make(q_coef=0.0, truncation_c=1e6, trust_region_delta=1e9, ent_coef=0.1)
    # init does not depend on the two switches: the shared jitted one serves.
    params = setup.init(jax.random.key(2), hp).params
    params = params.replace(average=setup.init(jax.random.key(3), hp).params.online)
    batch = _batch()

    @jax.jit
    def acer_gradient(params, batch):
        dist, q = net.apply(params.online, batch.obs)
        batch = batch.replace(mu=jax.nn.softmax(dist.logits))  # on-policy: mu = pi
        grad = jax.grad(lambda p: acer.loss(cfg, env, params.replace(online=p), batch, hp)[0])
        v = jnp.sum(jax.nn.softmax(dist.logits) * q, -1)
        q_a = jnp.take_along_axis(q, batch.action[..., None], -1)[..., 0]
        v_next = net.apply(params.online, batch.final_obs, method="value")
        return grad(params.online), v, q_a, v_next

    got, v, q_a, v_next = jax.device_get(acer_gradient(params, batch))
    flags = (batch.reward, batch.terminated, batch.truncated)
    q_ret = np.stack(
        [
            _retrace_by_hand(q_a[:, j], v[:, j], v_next[:, j], *(x[:, j] for x in flags),
                             np.ones(5), 0.99)
            for j in range(3)
        ],
        axis=1,
    )  # fmt: skip
    want = jax.device_get(_actor_critic_gradient(net, params.online, batch, q_ret - v, 0.1))
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)
    assert np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(want))) > 1e-3


@functools.partial(jax.jit, static_argnums=0)
def _actor_critic_gradient(net, online, batch, advantage, ent_coef):
    def actor_critic(p):
        dist = net.apply(p, batch.obs, method="policy")
        return -jnp.mean(dist.log_prob(batch.action) * advantage + ent_coef * dist.entropy())

    return jax.grad(actor_critic)(online)


def test_meta_gradients_reach_the_hyperparameters(setup):
    """d loss / d hp (policy surrogate and critic) equals central finite differences, and is
    non-zero for discount, truncation_c, ent_coef and trust_region_delta."""
    cfg, env = setup.cfg, setup.env
    hp = acer.HParams.make(truncation_c=0.9, trust_region_delta=0.01, ent_coef=0.1)
    params = setup.init(jax.random.key(2), hp).params
    params = params.replace(average=setup.init(jax.random.key(3), hp).params.online)
    batch = _batch()
    value_and_grad = jax.jit(jax.value_and_grad(lambda h: acer.loss(cfg, env, params, batch, h)[0]))
    _, grads = value_and_grad(hp)
    for name in ("discount", "truncation_c", "ent_coef", "trust_region_delta"):
        eps = 1e-3 if name != "trust_region_delta" else 1e-4
        x = float(getattr(hp, name))
        up, _ = value_and_grad(hp.replace(**{name: jnp.float32(x + eps)}))
        down, _ = value_and_grad(hp.replace(**{name: jnp.float32(x - eps)}))
        finite = (float(up) - float(down)) / (2 * eps)
        assert abs(float(getattr(grads, name))) > 1e-3, name
        np.testing.assert_allclose(getattr(grads, name), finite, rtol=0.01, err_msg=name)


# ---------------------------------------------------------------- the trust region


def test_trust_region_projection():
    rng = np.random.default_rng(5)
    g = rng.normal(size=(64, 4)).astype(np.float32)
    k = rng.normal(size=(64, 4)).astype(np.float32)
    project = jax.jit(acer.trust_region_projection)
    z, scale = jax.device_get(project(g, k, 0.5))
    kg, kz = np.sum(k * g, -1), np.sum(k * z, -1)
    inside = kg <= 0.5
    assert 0 < int(inside.sum()) < 64  # both cases occur
    np.testing.assert_array_equal(z[inside], g[inside])
    np.testing.assert_array_equal(scale[inside], 0.0)
    assert np.all(kz <= 0.5 + 1e-5)
    np.testing.assert_allclose(kz[~inside], 0.5, rtol=1e-5)  # active: on the boundary
    # z - g is along -k: z is the closest point of the half-space k.z <= delta to g.
    d, k_out = (z - g)[~inside], k[~inside]
    cos = np.sum(d * k_out, -1) / (np.linalg.norm(d, axis=-1) * np.linalg.norm(k_out, axis=-1))
    np.testing.assert_allclose(cos, -1.0, rtol=1e-5)
    # k = 0 (average = current network, logits statistics): no NaN, z = g.
    z0, _ = project(g, np.zeros_like(g), 1.0)
    np.testing.assert_array_equal(z0, g)


# ---------------------------------------------------------------- updates and replay


def test_average_moves_by_polyak_and_replay_starts_late(setup):
    cfg, hp = setup.cfg, setup.hp
    state = setup.init(jax.random.key(0), hp)
    new, metrics = setup.step(state, hp)  # 16 env steps < replay_start: one on-policy step
    assert int(new.grad_steps) == 1 and float(metrics["train/replay_steps"]) == 0.0
    want = jax.tree.map(lambda a, o: 0.9 * a + 0.1 * o, state.params.average, new.params.online)
    chex.assert_trees_all_close(new.params.average, want, rtol=1e-6, atol=1e-7)
    assert any(
        not np.allclose(a, b)
        for a, b in zip(
            jax.tree.leaves(new.params.online), jax.tree.leaves(state.params.online), strict=True
        )
    )
    new, metrics = setup.step(new, hp)  # 32 steps stored: replay begins
    assert int(new.grad_steps) == 1 + 1 + cfg.replay_ratio
    assert float(metrics["train/replay_steps"]) == cfg.replay_ratio
    # One compiled program served every call, whatever the hyperparameter values.
    setup.step(new, hp.replace(trust_region_delta=jnp.float32(0.1)))
    assert setup.step._cache_size() == 1


def test_update_stores_segments_with_the_behaviour_distribution(setup):
    cfg, env, hp = setup.cfg, setup.env, setup.hp
    state = setup.init(jax.random.key(1), hp)
    new, _ = setup.step(state, hp)
    n, t = cfg.num_envs, cfg.rollout_len
    stored = jax.tree.map(lambda x: x[0, :n], new.buffer.experience)  # [N, T, ...]
    chex.assert_shape(stored.mu, (n, t, 2))
    # mu is the acting (pre-update) policy at every stored observation.
    logits = acer.network(cfg, env).apply(state.params.online, stored.obs, method="policy").logits
    np.testing.assert_allclose(stored.mu, jax.nn.softmax(logits), rtol=1e-5, atol=1e-7)
    # Probe 5's rules hold for every stored step: reward +1 iff action == (obs > 0), and every
    # one-step episode terminates.
    rewarded = stored.action == (stored.obs[..., 0] > 0)
    np.testing.assert_array_equal(stored.reward, np.where(rewarded, 1.0, -1.0))
    np.testing.assert_array_equal(stored.terminated, 1.0)
    np.testing.assert_array_equal(stored.truncated, 0.0)
    assert int(new.env_steps) == cfg.steps_per_update
    assert int(new.buffer.current_index) == n  # one segment per env, nothing else


def test_replay_samples_stored_segments(setup):
    cfg, hp = setup.cfg, setup.hp
    buf = acer.buffer(cfg)
    state = setup.init(jax.random.key(0), hp)
    t, n = cfg.rollout_len, cfg.num_envs
    # Three rollouts: 12 distinct segments (capacity 16), segment i carrying the id i everywhere.
    ids = jnp.arange(3 * n, dtype=jnp.float32).reshape(3, n, 1) + jnp.zeros((3, n, t))
    stored = set(np.asarray(ids[:, :, 0]).ravel().tolist())

    @jax.jit
    def fill_and_sample(buffer_state, key):
        for i in range(3):
            seg = acer.Segment(
                ids[i, ..., None], jnp.zeros((n, t), jnp.int32), jnp.full((n, t, 2), 0.5),
                ids[i], jnp.zeros((n, t)), jnp.zeros((n, t)), ids[i, ..., None] + 0.5,
            )  # fmt: skip
            buffer_state = buf.add(buffer_state, seg)
        return acer.sample_batches(cfg, buffer_state, key)

    batches = fill_and_sample(state.buffer, jax.random.key(7))
    chex.assert_shape(batches.reward, (cfg.replay_ratio, t, n))
    chex.assert_shape(batches.obs, (cfg.replay_ratio, t, n, 1))
    first = np.asarray(batches.reward[:, 0])
    assert set(first.ravel().tolist()) <= stored
    # Every sampled segment is one stored segment, whole: the same id at every step and field.
    np.testing.assert_array_equal(batches.reward, np.broadcast_to(first[:, None], (2, t, n)))
    np.testing.assert_array_equal(batches.obs[..., 0], batches.reward)
    np.testing.assert_array_equal(batches.final_obs[..., 0], batches.reward + 0.5)


def test_vmapped_runs_equal_looped(setup):
    """Two runs differing in seed, learning rate and trust-region delta, vmapped, equal the
    same runs one by one (initial states from the shared jitted init: no extra compile)."""
    cfg, env, hp = setup.cfg, setup.env, setup.hp
    keys = jnp.stack([sweep.seed_key(0), sweep.seed_key(1)])
    hps = hp.replace(
        learning_rate=jnp.array([1e-3, 3e-3], jnp.float32),
        trust_region_delta=jnp.array([0.1, 1.0], jnp.float32),
    )
    hps = jax.tree.map(lambda x: jnp.broadcast_to(x, (2,)), hps)
    hp_runs = [jax.tree.map(lambda x, i=i: np.asarray(x)[i], hps) for i in range(2)]
    looped = [setup.init(keys[i], hp_runs[i]) for i in range(2)]
    # Stacked on the host (numpy), so that no small eager op needs compiling; keys stay keys.
    batched = jax.tree.map(lambda *xs: jnp.stack(xs) if _is_key(xs[0]) else np.stack(xs), *looped)
    vstep = jax.jit(jax.vmap(lambda s, h: acer.update(cfg, env, s, h)))
    for _ in range(2):  # the second update includes replay steps
        batched, vmetrics = vstep(batched, hps)
    for i in range(2):
        state = looped[i]
        for _ in range(2):
            state, metrics = setup.step(state, hp_runs[i])
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], jax.device_get(_numeric(batched))),
            jax.device_get(_numeric(state)), rtol=1e-5, atol=1e-6,
        )  # fmt: skip
        np.testing.assert_allclose(vmetrics["train/loss"][i], metrics["train/loss"], rtol=1e-5)
    assert not np.allclose(vmetrics["train/loss"][0], vmetrics["train/loss"][1])


def test_config_errors():
    with pytest.raises(ConfigError, match="replay_ratio"):
        acer.Config(replay_ratio=-1)
    with pytest.raises(ConfigError, match="optimizer"):
        acer.Config(optimizer="sgd")
    with pytest.raises(ConfigError, match="statistics"):
        acer.Config(statistics="means")
    with pytest.raises(ConfigError, match="segments is fewer than num_envs"):
        acer.Config(buffer_size=100, rollout_len=20, num_envs=8)
    with pytest.raises(ConfigError, match="less than one update"):
        acer.Config(total_timesteps=100)
    with pytest.raises(ConfigError, match="rollout_len"):
        acer.Config(rollout_len=0)
    with pytest.raises(ConfigError, match="unknown"):
        acer.HParams.make(delta=1.0)
    with pytest.raises(ConfigError, match="avg_decay"):
        acer.check(acer.Config(), acer.HParams.make(avg_decay=1.5))
    with pytest.raises(ConfigError, match="trust_region_delta"):
        acer.check(acer.Config(), acer.HParams.make(trust_region_delta=-1.0))
    env, _ = registry.make("probe/continuous_target")
    with pytest.raises(ConfigError, match="discrete"):
        acer.init(acer.Config(**TINY), env, jax.random.key(0), acer.HParams.make())


# ---------------------------------------------------------------- learning


@pytest.mark.learning
def test_learns_probe_five(setup):
    """Probe 5 (obs +-1, reward +1 iff action == (obs > 0), else -1): Q(o, a) = +-1 and the
    policy picks the rewarded action."""
    cfg, env, hp = setup.cfg, setup.env, setup.hp
    state = setup.init(jax.random.key(11), hp)
    returns = []
    for _ in range(120):  # 1,920 env steps
        state, metrics = setup.step(state, hp)
        returns.append(float(metrics["episode/return"]))
    obs = jnp.array([[1.0], [-1.0]])
    dist, q = acer.network(cfg, env).apply(state.params.online, obs)
    # The rewarded actions' values are learned well; the others, rarely taken late, less so.
    np.testing.assert_allclose(q[0, 1], 1.0, atol=0.1)
    np.testing.assert_allclose(q[1, 0], 1.0, atol=0.1)
    assert float(q[0, 0]) < -0.5 and float(q[1, 1]) < -0.5, q
    assert float(dist.probs[0, 1]) > 0.9 and float(dist.probs[1, 0]) > 0.9, dist.probs
    assert np.mean(returns[-20:]) > 0.8, returns[-20:]


@pytest.mark.slow
@pytest.mark.learning
def test_cartpole_preset_reaches_400_over_4_seeds_in_500k_steps():
    from jaxrl import envs
    from jaxrl.runner import config, loop

    preset = config.load_preset("acer/cartpole")
    cfg, hp = config.resolve(acer, preset, {}, None)
    env, _ = envs.make(preset["env"])
    runs = sweep.grid(hp, seeds=range(4))
    result = loop.run(acer, env, cfg, runs, env_name=preset["env"], algo_name="acer", quiet=True)
    assert cfg.num_updates * cfg.steps_per_update <= 500_000
    final = np.asarray(result.summary["final_return"]["per_run"])
    print("acer/cartpole final returns", final, "run seconds", result.summary["run_seconds"])
    assert np.isfinite(final).all()
    assert final.mean() >= 400, final
