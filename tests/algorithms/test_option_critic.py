"""Option-critic and the four-rooms world: the four-rooms layout, moves, slips, resets and
ends; option-critic's critic, intra-option and termination updates against numpy; the
SARSA(0) update by hand; ε-greedy choices; one option being an actor-critic whose
terminations never move; vmapped runs against looped ones; config errors; and option-
critic recovering from a moved goal faster than the actor-critic (the paper's Figure 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.algorithms import option_critic as oc
from jaxrl.envs import four_rooms as fr
from jaxrl.envs import registry
from jaxrl.errors import ConfigError


def test_four_rooms_layout_doorways_and_walls():
    assert fr.NUM_STATES == 104
    assert fr.EAST_DOORWAY == 62 and len(fr.LOWER_RIGHT_ROOM) == 20
    # from the top-left corner cell (1, 1): up and left are walls, right and down move
    corner = fr.cell_index(1, 1)
    np.testing.assert_array_equal(
        fr.NEXT_STATE[corner], [corner, fr.cell_index(1, 2), fr.cell_index(2, 1), corner]
    )
    # the east doorway (7, 9) connects the two right rooms only
    door = fr.EAST_DOORWAY
    np.testing.assert_array_equal(
        fr.NEXT_STATE[door], [fr.cell_index(6, 9), door, fr.cell_index(8, 9), door]
    )
    with pytest.raises(ConfigError, match="not an open cell"):
        fr.cell_index(0, 0)


def test_four_rooms_slips_to_the_other_three_directions_evenly():
    env, params = fr.FourRooms(), fr.FourRoomsParams()
    centre = fr.cell_index(3, 3)  # open on every side
    state = fr.FourRoomsState(jnp.int32(centre), jnp.int32(0))
    keys = jax.random.split(jax.random.key(0), 30_000)
    cells, _, _ = jax.vmap(lambda k: env.step(k, state, jnp.int32(1), params))(keys)
    counts = np.array([np.mean(np.asarray(cells) == fr.NEXT_STATE[centre, a]) for a in range(4)])
    np.testing.assert_allclose(counts, [1 / 9, 2 / 3, 1 / 9, 1 / 9], atol=0.01)
    exact = fr.FourRooms(slip=0.0)
    cell, _, _ = exact.step(jax.random.key(1), state, jnp.int32(2), params)
    assert int(cell) == fr.NEXT_STATE[centre, 2]


def test_four_rooms_resets_away_from_the_goal_and_ends_there_or_at_the_limit():
    env = fr.FourRooms(slip=0.0, max_steps=3)
    params = fr.FourRoomsParams(goal=jnp.int32(fr.cell_index(1, 2)))
    starts, _ = jax.vmap(lambda k: env.reset(k, params))(jax.random.split(jax.random.key(0), 5000))
    starts = np.asarray(starts)
    assert int(params.goal) not in starts and len(np.unique(starts)) == 103
    state = fr.FourRoomsState(jnp.int32(fr.cell_index(1, 1)), jnp.int32(0))
    cell, _, step = env.step(jax.random.key(0), state, jnp.int32(1), params)  # right: the goal
    assert (int(cell), float(step.reward), bool(step.terminated)) == (int(params.goal), 1.0, True)
    state = fr.FourRoomsState(jnp.int32(fr.cell_index(5, 1)), jnp.int32(2))
    _, _, step = env.step(jax.random.key(0), state, jnp.int32(0), params)
    assert bool(step.truncated) and not bool(step.terminated) and float(step.reward) == 0.0


def _random_state(key, s=6, o=3, a=4) -> oc.State:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return oc.State(
        q_option=jax.random.normal(k1, (s, o)),
        q_action=jax.random.normal(k2, (s, o, a)),
        policy_logits=jax.random.normal(k3, (s, o, a)) * 0.05,
        termination_logits=jax.random.normal(k4, (s, o)),
        key=key,
    )


@pytest.mark.parametrize("terminal", [False, True])
def test_learn_step_against_numpy(terminal):
    hp = oc.HParams.make(deliberation_cost=0.02)
    state = _random_state(jax.random.key(3))
    s, option, action, reward, next_s = 1, 2, 3, 0.7, 4
    got = oc.learn_step(state, hp, s, option, action, jnp.float32(reward), next_s, terminal)
    qo, qa = np.asarray(state.q_option, np.float64), np.asarray(state.q_action, np.float64)
    theta = np.asarray(state.policy_logits, np.float64)
    vartheta = np.asarray(state.termination_logits, np.float64)
    beta = 1 / (1 + np.exp(-vartheta[next_s, option]))
    arrival = (1 - beta) * qo[next_s, option] + beta * qo[next_s].max()
    target = reward + (0.0 if terminal else 0.99 * arrival)
    qo[s, option] += 0.5 * (target - qo[s, option])
    qa[s, option, action] += 0.5 * (target - qa[s, option, action])
    logits = theta[s, option] / 0.01
    pi = np.exp(logits - logits.max())
    pi /= pi.sum()
    theta[s, option] += 0.25 * (qa[s, option, action] - qo[s, option]) * (np.eye(4)[action] - pi)
    if not terminal:
        adv = qo[next_s, option] - qo[next_s].max() + 0.02
        vartheta[next_s, option] -= 0.25 * beta * (1 - beta) * adv
    for name, want in (("q_option", qo), ("q_action", qa), ("policy_logits", theta),
                       ("termination_logits", vartheta)):  # fmt: skip
        np.testing.assert_allclose(np.asarray(getattr(got, name)), want, rtol=1e-5, atol=1e-6)


def test_sarsa_step_by_hand():
    hp = oc.HParams.make(critic_lr=0.5, gamma=0.9)
    q = jnp.asarray([[1.0, 2.0], [3.0, -1.0]])
    got = oc.sarsa_step(q, hp, 0, 1, jnp.float32(1.0), 1, 0, False)
    np.testing.assert_allclose(np.asarray(got), [[1.0, 2.0 + 0.5 * (1 + 0.9 * 3 - 2)], [3, -1]])
    got = oc.sarsa_step(q, hp, 0, 1, jnp.float32(1.0), 1, 0, True)
    np.testing.assert_allclose(np.asarray(got), [[1.0, 1.5], [3.0, -1.0]])


def test_epsilon_greedy_is_the_first_argmax_or_uniform():
    values = jnp.asarray([0.0, 2.0, 2.0, 1.0])
    keys = jax.random.split(jax.random.key(0), 8000)
    greedy = jax.vmap(lambda k: oc.epsilon_greedy(values, jnp.float32(0.0), k))(keys)
    assert set(np.asarray(greedy).tolist()) == {1}
    uniform = np.asarray(jax.vmap(lambda k: oc.epsilon_greedy(values, jnp.float32(1.0), k))(keys))
    np.testing.assert_allclose(np.bincount(uniform, minlength=4) / 8000, 0.25, atol=0.02)


def test_one_option_is_an_actor_critic_whose_termination_never_moves():
    env, hp = fr.FourRooms(), oc.HParams.make()
    cfg = oc.Config(options=1, episodes=5)
    state, metrics = jax.jit(lambda s: oc.train(cfg, env, s, hp, fr.FourRoomsParams()))(
        oc.init(cfg, env, jax.random.key(0))
    )
    np.testing.assert_array_equal(np.asarray(state.termination_logits), 0.0)
    assert np.asarray(metrics["steps"]).sum() > 0
    assert np.any(np.asarray(state.policy_logits) != 0)


def test_vmapped_runs_match_looped_ones():
    env, hp = fr.FourRooms(), oc.HParams.make()
    cfg = oc.Config(options=4, episodes=6)
    keys = jax.random.split(jax.random.key(1), 3)
    goals = jnp.asarray([fr.EAST_DOORWAY, 70, 90], jnp.int32)
    run = jax.jit(lambda s, p: oc.train(cfg, env, s, hp, p))
    batched = jax.vmap(lambda k: oc.init(cfg, env, k))(keys)
    vstate, vm = jax.jit(jax.vmap(lambda s, p: oc.train(cfg, env, s, hp, p)))(
        batched, fr.FourRoomsParams(goal=goals)
    )
    for i in range(3):
        state, m = run(oc.init(cfg, env, keys[i]), fr.FourRoomsParams(goal=goals[i]))
        np.testing.assert_array_equal(np.asarray(vm["steps"][i]), np.asarray(m["steps"]))
        np.testing.assert_allclose(
            np.asarray(vstate.q_action[i]), np.asarray(state.q_action), rtol=1e-5, atol=1e-6
        )


def test_config_and_hparam_errors():
    with pytest.raises(ConfigError, match="options"):
        oc.Config(options=0)
    env = fr.FourRooms()
    with pytest.raises(ConfigError, match="epsilon"):
        oc.check(oc.Config(), env, oc.HParams.make(epsilon=1.5))
    with pytest.raises(ConfigError, match="critic_lr"):
        oc.check(oc.Config(), env, oc.HParams.make(critic_lr=-0.1))
    pendulum, _ = registry.make("Pendulum-v1")
    with pytest.raises(ConfigError, match="Discrete observations"):
        oc.check(oc.Config(), pendulum, oc.HParams.make())
    with pytest.raises(ConfigError, match="slip"):
        fr.FourRooms(slip=1.5)


@pytest.mark.learning
def test_option_critic_recovers_from_a_moved_goal_faster_than_actor_critic():
    # 16 runs: 300 episodes with the goal in the east doorway, then 100 with it moved to a
    # lower-right room cell; mean steps per episode over runs.
    env, hp = fr.FourRooms(), oc.HParams.make()
    keys = jax.random.split(jax.random.key(11), 16)
    room = jnp.asarray(fr.LOWER_RIGHT_ROOM, jnp.int32)
    moved = fr.FourRoomsParams(goal=room[jax.random.randint(jax.random.key(12), (16,), 0, 20)])
    first = fr.FourRoomsParams(goal=jnp.full((16,), fr.EAST_DOORWAY, jnp.int32))
    steps = {}
    for options in (4, 1):
        cfg = oc.Config(options=options, episodes=300)
        state = jax.vmap(lambda k, c=cfg: oc.init(c, env, k))(keys)
        phase = jax.jit(jax.vmap(lambda s, p, c=cfg: oc.train(c, env, s, hp, p)))
        state, before = phase(state, first)
        cfg = oc.Config(options=options, episodes=100)
        _, after = jax.jit(jax.vmap(lambda s, p, c=cfg: oc.train(c, env, s, hp, p)))(state, moved)
        steps[options] = (
            float(np.mean(np.asarray(before["steps"])[:, -50:])),
            float(np.mean(np.asarray(after["steps"]))),
        )
    assert steps[4][0] < 60 and steps[1][0] < 60, steps  # both learned the first goal
    assert steps[4][1] < 0.6 * steps[1][1], steps  # option-critic recovers faster
