"""R2D3: recurrent replay distributed DQN from demonstrations (Paine et al. 2019).

https://arxiv.org/abs/1909.01387. R2D2 (:mod:`jaxrl.algorithms.r2d2`) with a second
replay that holds expert demonstrations. Every sequence of a learner batch comes from the
demo replay with probability ``hp.demo_ratio`` (the paper's demo ratio ``rho``, drawn per
sequence) and from the agent's own replay otherwise; both replays are prioritised, each
with its own priorities, and each sampled sequence's new priority goes back to the replay
it came from. There is no extra loss: demonstrations and the agent's experience are
learned from by the same n-step double-Q loss with value rescaling (R2D2's), and acting,
storing, exploration and the target network are R2D2's unchanged.

The demonstrations are recorded episodes (:func:`jaxrl.algorithms.demos.record` writes
them, ``cfg.demos`` names the ``.npz``; they need rewards, next observations, terminations
and episode ends). They are laid end to end as one stream, repeated cyclically just far
enough that every step lies in some window of ``sequence_length`` steps starting at a
multiple of ``period``; the stream's episode ends cut n-step returns and reset the LSTM
exactly as the agent's own streams do.

Where this differs from the paper:

* Demonstration windows start from a zero LSTM state (no actor read them, so there is no
  stored state); the burn-in (40 steps by default) unrolls the network from it, which is
  R2D2's "zero state with burn-in" strategy. Agent windows start from their stored state.
* One learner and vectorised actors in one process instead of distributed actors.
* Importance weights are computed within each replay's draws (each normalised by the
  maximum over its own ``batch_size`` draws), since the two replays' probabilities are on
  different scales.

``hp.demo_ratio = 0`` learns from the agent's replay only (R2D2, with the demo replay
sampled and unused); ``1`` learns from demonstrations only. The paper found small ratios
best on its hard-exploration tasks (1/256 in its sweep).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.algorithms import base, dqn, r2d2
from jaxrl.algorithms import demos as demos_lib
from jaxrl.envs.base import Env
from jaxrl.replay import buffers
from jaxrl.types import Metrics
from jaxrl.utils import tree

WHO = "R2D3"


@dataclasses.dataclass(frozen=True)
class Config(r2d2.Config):
    """R2D2's settings and the demonstrations' path."""

    demos: str = ""  # .npz of recorded episodes (demos.record / demos.save)


HPARAM_DEFAULTS = r2d2.HPARAM_DEFAULTS | dict(demo_ratio=1.0 / 256.0)
HPARAM_RANGES = r2d2.HPARAM_RANGES | dict(demo_ratio=(0.0, 1.0))


class HParams(r2d2.HParams):
    """R2D2's traced hyperparameters and ``demo_ratio``: the probability that a sequence of
    a learner batch is drawn from the demonstrations."""

    demo_ratio: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, hp: HParams) -> None:
    """ConfigError for out-of-range hyperparameters or missing, unreadable or incomplete
    demonstrations."""
    base.check_ranges(hp, HPARAM_RANGES)
    demos = demos_lib.load(demos_lib.required(cfg.demos, WHO))
    demos_lib.episode_bounds(np.asarray(demos.transitions(WHO).episodes(WHO).last))


class State(r2d2.State):
    """R2D2's state and the demo replay (a prioritised sequence buffer of one stream)."""

    demo_buffer: object


class Batch(r2d2.Batch):
    """A mixed learner minibatch: ``seq`` ``[L, B, ...]`` and ``weights`` ``[B]`` per draw
    from either replay, ``from_demos [B]`` which one, and the slots each replay drew
    (``indices`` the agent replay's, ``demo_indices`` the demo replay's, ``[B]`` each)."""

    demo_indices: jax.Array
    from_demos: jax.Array


Params = r2d2.Params
loss = r2d2.loss
network = r2d2.network
act = r2d2.act
policy_carry = r2d2.policy_carry
recurrent_policy = r2d2.recurrent_policy
evaluate = r2d2.evaluate


def stream_length(cfg: Config, num_steps: int) -> int:
    """Steps of the cyclic demonstration stream: the fewest ``T >= num_steps`` with ``T >=
    sequence_length`` and ``T - sequence_length`` a multiple of ``period``, so the windows
    starting at multiples of ``period`` cover every step."""
    length, period = cfg.sequence_length, cfg.period
    return length + max(0, -(-(num_steps - length) // period)) * period


def demo_stream(cfg: Config, demos: demos_lib.Demos) -> r2d2.Transition:
    """The demonstrations ``[M]`` as one replay stream ``[1, T, ...]`` of
    :class:`jaxrl.algorithms.r2d2.Transition` (``T = stream_length(cfg, M)``; steps past
    ``M`` repeat the stream from its start), with zero LSTM states."""
    demos.transitions(WHO).episodes(WHO)
    rows = np.arange(stream_length(cfg, demos.size)) % demos.size
    take = lambda x, dtype: jnp.asarray(x)[rows].astype(dtype)
    stream = r2d2.Transition(
        obs=take(demos.obs, jnp.float32),
        action=take(demos.action, jnp.int32),
        reward=take(demos.reward, jnp.float32),
        terminated=take(demos.terminated, jnp.float32),
        done=take(demos.last, jnp.float32),
        next_obs=take(demos.next_obs, jnp.float32),
        reset=jnp.roll(jnp.asarray(demos.last, bool), 1)[rows],  # the first step follows the end
        carry=r2d2.initial_carry(cfg, (rows.size,)),
    )
    return jax.tree.map(lambda x: x[None], stream)


def demo_buffer(cfg: Config, length: int):
    """The demo replay: one stream of ``length`` steps, windows as the agent's."""
    return buffers.prioritised_sequence_buffer(
        num_envs=1,
        capacity=length,
        batch_size=cfg.batch_size,
        sequence_length=cfg.sequence_length,
        period=cfg.period,
        priority_exponent=cfg.priority_exponent,
    )


def demo_length(state: State) -> int:
    """The demo stream's length (static: a shape)."""
    return jax.tree.leaves(state.demo_buffer.experience)[0].shape[1]


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params: object = None) -> State:
    """R2D2's initial state and a demo replay holding ``cfg.demos`` (ConfigError if missing,
    incomplete or not fitting ``env``)."""
    demos = demos_lib.load_for(cfg.demos, WHO, env, env_params)
    stream = demo_stream(cfg, demos)
    buf = demo_buffer(cfg, stream.obs.shape[1])
    demo_state = buf.add(buf.init(jax.tree.map(lambda x: x[0, 0], stream)), stream)
    agent = r2d2.init(cfg, env, key, hp, env_params)
    fields = {f.name: getattr(agent, f.name) for f in dataclasses.fields(agent)}
    return State(**fields, demo_buffer=demo_state)


def sample_batch(cfg: Config, state: State, key: jax.Array, hp: HParams) -> Batch:
    """``batch_size`` windows, each from the demo replay with probability
    ``hp.demo_ratio`` and from the agent replay otherwise (both drawn by priority, with
    their importance weights within each replay)."""
    key_agent, key_demo, key_mix = jax.random.split(key, 3)
    agent = r2d2.sample_batch(cfg, state.buffer, key_agent, hp)
    demo = r2d2.sample_windows(
        demo_buffer(cfg, demo_length(state)), state.demo_buffer, key_demo, hp
    )
    from_demos = jax.random.uniform(key_mix, (cfg.batch_size,)) < hp.demo_ratio
    pick = lambda d, a: jnp.where(from_demos.reshape(1, -1, *([1] * (d.ndim - 2))), d, a)
    return Batch(
        seq=jax.tree.map(pick, demo.seq, agent.seq),
        weights=jnp.where(from_demos, demo.weights, agent.weights),
        indices=agent.indices,
        demo_indices=demo.indices,
        from_demos=from_demos,
    )


def gradient_step(
    cfg: Config, env: Env, state: State, batch: Batch, hp: HParams, ready: jax.Array
) -> tuple[State, Metrics, jax.Array]:
    """R2D2's step (:func:`jaxrl.algorithms.r2d2.optimise`), each draw's new priority
    written to the replay it came from; a no-op where ``ready`` is false. Returns
    ``(state, metrics, priorities [B])``."""
    new, metrics, new_priorities = r2d2.optimise(cfg, env, state, batch, hp)
    priority = new_priorities + r2d2.PRIORITY_EPS
    alpha = cfg.priority_exponent
    new = new.replace(
        buffer=buffers.set_priorities_where(
            state.buffer, batch.indices, priority, ~batch.from_demos, alpha
        ),
        demo_buffer=buffers.set_priorities_where(
            state.demo_buffer, batch.demo_indices, priority, batch.from_demos, alpha
        ),
    )
    metrics = metrics | {"train/demo_fraction": jnp.mean(batch.from_demos.astype(jnp.float32))}
    return tree.select(ready, new, state), metrics, new_priorities


def learn(cfg: Config, env: Env, state: State, hp: HParams) -> tuple[State, Metrics]:
    """``cfg.gradient_steps`` :func:`gradient_step` s on mixed batches (no-ops before
    ``learning_starts``)."""
    ready = jnp.logical_and(
        state.env_steps >= cfg.learning_starts, r2d2.buffer(cfg).can_sample(state.buffer)
    )

    def step(st, key):
        st, metrics, _ = gradient_step(cfg, env, st, sample_batch(cfg, st, key, hp), hp, ready)
        return st, metrics

    key, key_steps = jax.random.split(state.key)
    state, metrics = jax.lax.scan(
        step, state.replace(key=key), jax.random.split(key_steps, cfg.gradient_steps)
    )
    return state, jax.tree.map(jnp.mean, metrics)


def update(cfg: Config, env: Env, state: State, hp: HParams) -> tuple[State, Metrics]:
    """One iteration: collect ``train_freq`` steps per env (R2D2's actors), store them in
    the agent replay, learn from mixed batches."""
    eps = jnp.mean(r2d2.epsilons(cfg, hp, state.env_steps))
    state, transitions, info = r2d2.collect(cfg, env, state, hp)
    state = state.replace(buffer=r2d2.store(cfg, state.buffer, transitions))
    state, metrics = learn(cfg, env, state, hp)
    metrics |= dqn.episode_metrics(info) | {"train/epsilon": eps}
    return state.replace(update_count=state.update_count + 1), metrics


def train(
    cfg: Config, env: Env, state: State, hp: HParams, num_updates: int
) -> tuple[State, Metrics]:
    """``num_updates`` iterations as one scan; metrics stacked ``[num_updates]``."""
    return jax.lax.scan(lambda s, _: update(cfg, env, s, hp), state, None, num_updates)
