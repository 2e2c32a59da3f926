"""Never Give Up (Badia et al. 2020, arXiv:2002.06038): directed exploration by a family
of policies that share one Q-network and differ in how much they value novelty.

Every transition gets an intrinsic reward ``r_i = r_episodic * min(max(alpha, 1), L)``:

* **episodic novelty** ``r_episodic``: each env keeps the embeddings ``f(x)`` of the
  observations of its running episode. The ``k`` nearest to the new one, at squared
  distances ``d_k``, give ``r = 1 / (sqrt(sum_k K(d_k)) + c)`` with the inverse kernel
  ``K(d) = eps / (max(d / d_m - xi, 0) + eps)``; ``d_m`` is a running average of the
  squared k-NN distances, ``xi`` the cluster distance, and a similarity ``sqrt(sum K)``
  over ``s_max`` gives ``r = 0``. The memory is emptied when an episode ends, so the
  bonus pays for states new *within the episode*, however often they were seen before.
* **embeddings learned from the agent's actions**: ``f`` is trained with an inverse model
  ``p(a | f(x), f(x'))`` (softmax cross-entropy). It keeps what the agent controls and
  drops what it does not: noise in the observations (:mod:`jaxrl.envs.disco_room`) does
  not look novel.
* **life-long novelty** ``alpha``: Random Network Distillation's error
  ``||g_hat(x) - g(x)||^2`` (a predictor chasing a fixed random network), normalised by
  its running mean and standard deviation, ``alpha = 1 + (err - mean) / std``, clipped to
  ``[1, L]``. ``max_modulation = 1`` turns it off.

The family: env ``i`` always acts for policy ``j = i mod N`` (``N = cfg.num_policies``)
with the Ape-X epsilon ``epsilon_base ** (1 + epsilon_alpha * i / (num_envs - 1))``.
Policy ``j`` is paid ``r_e + beta_j r_i`` and discounts by ``gamma_j`` (the paper's
schedules, :func:`betas` and :func:`discounts`): ``beta_0 = 0`` with ``gamma_max`` is the
exploitative policy, ``beta_{N-1} = beta`` with ``gamma_min`` the most exploratory. One
Q-network serves them all (a UVFA): a torso fed the observation and a one-hot ``j``, and
one linear head per policy.

Learning, once per vector step after ``cfg.learning_starts``: one double-Q step on
``n``-step returns (``n = cfg.n_step``, cut at episode ends) with the paper's value
rescaling ``h`` (``h(G + gamma^n h^-1(Q_target))``), one inverse-model step on the
embedding network, one step of the RND predictor, each on its own uniform batch of windows
from one replay of per-env streams. Both rewards are stored, so every window is learned
for *every* policy of the family (:func:`every_policy`). The target network is copied
every ``cfg.target_update_period`` steps. Evaluations run policy 0 with
``hp.eval_epsilon`` (0.05, the DQN papers' evaluation epsilon; a fully greedy policy can
push into a wall forever in a deterministic room).

Where this differs from the paper (which builds on R2D2 with hundreds of actors):

* the Q-network is feed-forward and learns n-step double-Q targets; the paper's is an
  LSTM fed the previous action and rewards, learning from Retrace on sequences. The
  episodic bonus depends on the episode so far, which a feed-forward learner sees only on
  average;
* each window is learned for all ``N`` policies, not only for the one that collected it.
  With 16 envs, policy 0 acts in 2; learned only from its own windows it did not learn
  to exploit what the explorers found (a pilot on the disco room). The n-step returns of
  another policy's windows are not corrected (R2D2's and Ape-X's choice for their own
  stale behaviour);
* the episodic memory holds the last ``cfg.memory_size`` embeddings of the episode (a
  ring; the paper keeps the whole episode): set it at least the episode's length;
* ``N``, the networks, the learning rates and the discounts are sized for small tasks
  (``gamma_max = 0.95`` and ``gamma_min = 0.9``; the paper's 0.997 and 0.99 leave the
  action gaps of a 30-step task too small for a greedy policy to follow).

``num_policies = 1`` is the exploitative policy alone: Ape-X-style epsilon-greedy double
DQN with the same value rescaling, the baseline the paper compares against (R2D2).

The whole run (acting, memories, replay, the three learners, evaluations of policy 0) is
one jitted function, vmappable over seeds and hyperparameters::

    env = DiscoRoom(noise_dims=4)
    cfg, hp = ngu.Config(), ngu.HParams.make()
    ngu.check(cfg, env, hp)
    state = ngu.init(cfg, env, key, hp)
    state, metrics = jax.jit(lambda s: ngu.train(cfg, env, s, hp))(state)
    metrics["eval/return"]  # [steps // eval_every]: return of policy 0 (epsilon 0.05)
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import rlax
from flax import struct

from jaxrl import optim
from jaxrl.algorithms import base
from jaxrl.envs import spaces
from jaxrl.envs.base import Env
from jaxrl.envs.wrappers import RunningStats, make_vec_env
from jaxrl.errors import ConfigError
from jaxrl.losses import q as qloss
from jaxrl.networks.torsos import MLP
from jaxrl.replay import buffers
from jaxrl.utils import tree


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings (shapes and loop lengths).

    Attributes:
        num_envs: parallel envs, each acting for one policy of the family.
        num_policies: ``N``, the family's size (1: the exploitative policy alone).
        steps: vector steps of a run (``num_envs`` env steps each).
        learning_starts: vector steps before the first learning step.
        hidden: the Q-network's hidden layers (ReLU).
        embedding_hidden: hidden layers of the embedding and inverse networks and of RND's.
        embedding_size: width of ``f(x)`` (and of RND's output).
        memory_size: episodic memory slots per env (at least the episode length).
        num_neighbours: ``k`` of the k-NN.
        n_step: steps of the Q-learning returns.
        buffer_size: replay capacity, in transitions (``buffer_size // num_envs`` per env).
        batch_size: windows per learning step (each of the three learners).
        target_update_period: learning steps between target-network copies.
        eval_every: vector steps between evaluations of policy 0.
        eval_episodes: episodes of each evaluation.
        eval_steps: steps of each evaluation episode (at least the env's time limit).
    """

    num_envs: int = 16
    num_policies: int = 8
    steps: int = 16_000
    learning_starts: int = 100
    hidden: tuple[int, ...] = (128, 128)
    embedding_hidden: tuple[int, ...] = (64,)
    embedding_size: int = 32
    memory_size: int = 64
    num_neighbours: int = 10
    n_step: int = 5
    buffer_size: int = 50_000
    batch_size: int = 64
    target_update_period: int = 100
    eval_every: int = 2_000
    eval_episodes: int = 32
    eval_steps: int = 100

    def __post_init__(self):
        base.check_fields(self)
        base.check_positive_ints(
            self,
            ("num_envs", "num_policies", "steps", "embedding_size", "memory_size",
             "num_neighbours", "n_step", "buffer_size", "batch_size", "target_update_period",
             "eval_every", "eval_episodes", "eval_steps"),
        )  # fmt: skip
        base.check_non_negative_ints(self, ("learning_starts",))
        if self.steps % self.eval_every:
            raise ConfigError(
                f"steps ({self.steps}) must be a multiple of eval_every ({self.eval_every})"
            )
        if self.num_neighbours > self.memory_size:
            raise ConfigError(
                f"num_neighbours ({self.num_neighbours}) must not exceed memory_size "
                f"({self.memory_size})"
            )
        if self.num_policies > self.num_envs:
            raise ConfigError(
                f"num_policies ({self.num_policies}) must not exceed num_envs "
                f"({self.num_envs}): each policy acts in at least one env"
            )
        if self.buffer_size // self.num_envs < self.n_step:
            raise ConfigError(
                f"buffer_size // num_envs ({self.buffer_size // self.num_envs}) must be at "
                f"least n_step ({self.n_step})"
            )


HPARAM_DEFAULTS = dict(
    learning_rate=5e-4,  # Adam, the Q-network
    embedding_learning_rate=5e-4,  # Adam, the embedding and inverse networks
    rnd_learning_rate=5e-4,  # Adam, RND's predictor
    beta=0.3,  # the most exploratory policy's intrinsic weight
    gamma_max=0.95,  # policy 0's discount (the paper's 0.997 is for Atari's long episodes)
    gamma_min=0.9,  # policy N-1's discount (the paper's 0.99)
    epsilon_base=0.4,  # Ape-X's per-env epsilons
    epsilon_alpha=7.0,
    kernel_epsilon=1e-3,  # eps of the inverse kernel
    cluster_distance=8e-3,  # xi
    kernel_constant=1e-3,  # c
    max_similarity=8.0,  # s_max
    max_modulation=5.0,  # L (1: no life-long modulation)
    eval_epsilon=0.05,  # policy 0's epsilon in evaluations
)
HPARAM_RANGES = dict(
    learning_rate=(0.0, 1.0),
    embedding_learning_rate=(0.0, 1.0),
    rnd_learning_rate=(0.0, 1.0),
    beta=(0.0, 1e3),
    gamma_max=(0.0, 1.0),
    gamma_min=(0.0, 1.0),
    epsilon_base=(0.0, 1.0),
    epsilon_alpha=(0.0, 1e3),
    kernel_epsilon=(1e-12, 1e3),
    cluster_distance=(0.0, 1e3),
    kernel_constant=(1e-12, 1e3),
    max_similarity=(0.0, 1e6),
    max_modulation=(1.0, 1e6),
    eval_epsilon=(0.0, 1.0),
)


class HParams(struct.PyTreeNode):
    """Traced hyperparameters (vmappable for sweeps); defaults in :data:`HPARAM_DEFAULTS`."""

    learning_rate: jax.Array
    embedding_learning_rate: jax.Array
    rnd_learning_rate: jax.Array
    beta: jax.Array
    gamma_max: jax.Array
    gamma_min: jax.Array
    epsilon_base: jax.Array
    epsilon_alpha: jax.Array
    kernel_epsilon: jax.Array
    cluster_distance: jax.Array
    kernel_constant: jax.Array
    max_similarity: jax.Array
    max_modulation: jax.Array
    eval_epsilon: jax.Array

    @classmethod
    def make(cls, **overrides) -> HParams:
        return base.make_hparams(cls, HPARAM_DEFAULTS, overrides)


def check(cfg: Config, env: Env, hp: HParams, env_params=None) -> None:
    """Raises ``ConfigError`` before compiling: out-of-range hyperparameters, or an env
    whose actions are not discrete."""
    base.check_ranges(hp, HPARAM_RANGES)
    params = env.default_params() if env_params is None else env_params
    if not isinstance(env.action_space(params), spaces.Discrete):
        raise ConfigError(f"NGU acts in discrete action spaces; {env.name}'s is not Discrete")


# ------------------------------------------------------------------ the family


def betas(num_policies: int, beta: jax.Array) -> jax.Array:
    """``[N]`` intrinsic weights: ``beta_0 = 0``, ``beta_{N-1} = beta`` and, between, the
    paper's sigmoid ``beta * sigmoid(10 (2 j - (N - 2)) / (N - 2))``."""
    n = num_policies
    j = jnp.arange(n, dtype=jnp.float32)
    middle = beta * jax.nn.sigmoid(10.0 * (2.0 * j - (n - 2)) / max(n - 2, 1))
    return jnp.where(j == 0, 0.0, jnp.where(j == n - 1, beta, middle))


def discounts(num_policies: int, gamma_max: jax.Array, gamma_min: jax.Array) -> jax.Array:
    """``[N]`` discounts, ``gamma_max`` for policy 0 to ``gamma_min`` for policy ``N - 1``,
    spaced evenly in ``log(1 - gamma)`` (the paper's schedule)."""
    if num_policies == 1:
        return jnp.reshape(gamma_max, (1,))
    j = jnp.arange(num_policies, dtype=jnp.float32)
    n = num_policies - 1
    log_gap = ((n - j) * jnp.log1p(-gamma_max) + j * jnp.log1p(-gamma_min)) / n
    return 1.0 - jnp.exp(log_gap)


def actor_epsilons(num_envs: int, base_eps: jax.Array, alpha: jax.Array) -> jax.Array:
    """``[num_envs]`` Ape-X epsilons ``base ** (1 + alpha i / (num_envs - 1))``."""
    i = jnp.arange(num_envs, dtype=jnp.float32)
    return base_eps ** (1.0 + alpha * i / max(num_envs - 1, 1))


def policy_indices(cfg: Config) -> jax.Array:
    """``[num_envs]`` int32: env ``i`` acts for policy ``i mod N``."""
    return jnp.arange(cfg.num_envs, dtype=jnp.int32) % cfg.num_policies


# ------------------------------------------------------------------ networks


class QNetwork(nn.Module):
    """``(obs [B, D], policy [B] int) -> Q [B, A]``: a ReLU torso on the observation and
    the policy's one-hot, then policy ``j``'s own linear head."""

    hidden: tuple[int, ...]
    num_actions: int
    num_policies: int

    @nn.compact
    def __call__(self, obs: jax.Array, policy: jax.Array) -> jax.Array:
        one_hot = jax.nn.one_hot(policy, self.num_policies)
        x = MLP(self.hidden, "relu")(jnp.concatenate([obs, one_hot], -1))
        heads = nn.Dense(self.num_policies * self.num_actions)(x)
        heads = heads.reshape(*heads.shape[:-1], self.num_policies, self.num_actions)
        return jnp.einsum("...n,...na->...a", one_hot, heads)


class InverseDynamics(nn.Module):
    """The embedding ``f(x) [B, F]`` and the inverse model's logits
    ``p(a | f(x), f(x')) [B, A]`` (ReLU MLPs)."""

    hidden: tuple[int, ...]
    size: int
    num_actions: int

    def setup(self):
        self.embedding = nn.Sequential([MLP(self.hidden, "relu"), nn.Dense(self.size)])
        self.inverse = nn.Sequential([MLP(self.hidden, "relu"), nn.Dense(self.num_actions)])

    def embed(self, obs: jax.Array) -> jax.Array:
        return self.embedding(obs)

    def __call__(self, obs: jax.Array, next_obs: jax.Array) -> jax.Array:
        return self.inverse(jnp.concatenate([self.embedding(obs), self.embedding(next_obs)], -1))


class RandomFeatures(nn.Module):
    """RND's network ``[B, D] -> [B, F]`` (target and predictor share the shape)."""

    hidden: tuple[int, ...]
    size: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return nn.Dense(self.size)(MLP(self.hidden, "relu")(obs))


def _flat(obs: jax.Array, obs_shape: tuple[int, ...]) -> jax.Array:
    return jnp.reshape(obs, (*obs.shape[: obs.ndim - len(obs_shape)], -1)).astype(jnp.float32)


# ------------------------------------------------------------------ episodic memory


class Memory(struct.PyTreeNode):
    """Per-env episodic memories.

    Attributes:
        embeddings: ``[E, M, F]`` the episode's embeddings (a ring once full).
        count: ``[E]`` int32 embeddings written this episode.
        mean_distance: ``[E]`` running average ``d_m`` of the squared k-NN distances.
        num_distances: ``[E]`` distances averaged so far.
    """

    embeddings: jax.Array
    count: jax.Array
    mean_distance: jax.Array
    num_distances: jax.Array


def nearest_distances(embeddings: jax.Array, count: jax.Array, query: jax.Array, k: int):
    """Squared distances ``[k]`` from ``query [F]`` to its ``k`` nearest among the
    ``min(count, M)`` stored ``embeddings [M, F]``, and ``[k]`` bool marking real ones
    (fewer than ``k`` stored: the rest are padding)."""
    stored = jnp.arange(embeddings.shape[0]) < count
    squared = jnp.sum(jnp.square(embeddings - query[None]), -1)
    negated, _ = jax.lax.top_k(jnp.where(stored, -squared, -jnp.inf), k)
    valid = jnp.isfinite(negated)
    return jnp.where(valid, -negated, 0.0), valid


def episodic_reward(
    distances: jax.Array, valid: jax.Array, mean_distance: jax.Array, hp: HParams
) -> jax.Array:
    """The episodic bonus from the k-NN squared ``distances [k]`` (``valid [k]``) and the
    running mean ``d_m``: ``1 / (sqrt(sum K) + c)``, or 0 past ``s_max``."""
    normalised = distances / jnp.maximum(mean_distance, 1e-8)
    normalised = jnp.maximum(normalised - hp.cluster_distance, 0.0)
    kernel = jnp.where(valid, hp.kernel_epsilon / (normalised + hp.kernel_epsilon), 0.0)
    similarity = jnp.sqrt(jnp.sum(kernel)) + hp.kernel_constant
    return jnp.where(similarity > hp.max_similarity, 0.0, 1.0 / similarity)


def observe(memory: Memory, embedding: jax.Array, hp: HParams, k: int):
    """One step of every env's memory: the bonuses ``[E]`` of ``embedding [E, F]`` and the
    memories with the running means updated and the embeddings written."""

    def one(embeddings, count, mean, n, query):
        distances, valid = nearest_distances(embeddings, count, query, k)
        new = jnp.sum(valid)
        mean = mean + (jnp.sum(distances) - new * mean) / jnp.maximum(n + new, 1)
        reward = episodic_reward(distances, valid, mean, hp)
        slot = count % embeddings.shape[0]
        return reward, embeddings.at[slot].set(query), count + 1, mean, n + new

    reward, embeddings, count, mean, n = jax.vmap(one)(
        memory.embeddings, memory.count, memory.mean_distance, memory.num_distances, embedding
    )
    return reward, Memory(embeddings, count, mean, n)


def restart(memory: Memory, done: jax.Array, embedding: jax.Array) -> Memory:
    """Empties the memories of envs whose episode ended (``done [E]``) and writes the new
    episode's first embedding ``[E, F]``; the running means carry over."""
    first = memory.embeddings.at[:, 0].set(embedding)
    embeddings = jnp.where(done[:, None, None], first, memory.embeddings)
    return memory.replace(embeddings=embeddings, count=jnp.where(done, 1, memory.count))


# ------------------------------------------------------------------ state


class Transition(struct.PyTreeNode):
    """One env step as replay keeps it (both rewards, so any policy's can be formed)."""

    obs: jax.Array  # [D] observation acted on
    action: jax.Array  # [] int32
    reward: jax.Array  # [] the env's
    intrinsic: jax.Array  # [] r_i
    terminated: jax.Array  # [] bool: no bootstrap
    done: jax.Array  # [] bool: the episode ended (terminated or truncated)
    next_obs: jax.Array  # [D] observation reached (before any reset)


class State(struct.PyTreeNode):
    q_params: dict
    target_params: dict
    q_opt: optax.OptState
    embedding_params: dict
    embedding_opt: optax.OptState
    rnd_target: dict
    rnd_params: dict
    rnd_opt: optax.OptState
    rnd_stats: RunningStats  # of RND's errors
    buffer: object
    env_state: object
    obs: jax.Array  # [E, ...]
    memory: Memory
    key: jax.Array
    steps: jax.Array  # [] int32 vector steps taken
    updates: jax.Array  # [] int32 learning steps taken


def _num_actions(env: Env, env_params) -> int:
    return env.action_space(env_params).n


def _obs_shape(env: Env, env_params) -> tuple[int, ...]:
    return tuple(env.observation_space(env_params).shape)


def q_network(cfg: Config, env: Env, env_params=None) -> QNetwork:
    params = env.default_params() if env_params is None else env_params
    return QNetwork(cfg.hidden, _num_actions(env, params), cfg.num_policies)


def inverse_dynamics(cfg: Config, env: Env, env_params=None) -> InverseDynamics:
    params = env.default_params() if env_params is None else env_params
    return InverseDynamics(cfg.embedding_hidden, cfg.embedding_size, _num_actions(env, params))


def random_features(cfg: Config) -> RandomFeatures:
    return RandomFeatures(cfg.embedding_hidden, cfg.embedding_size)


def replay(cfg: Config):
    """Per-env streams, sampled as ``[batch_size, n_step]`` windows."""
    return buffers.sequence_buffer(cfg.num_envs, cfg.buffer_size, cfg.batch_size, cfg.n_step)


def vec_env(cfg: Config, env: Env) -> Env:
    return make_vec_env(env, cfg.num_envs)


def init(cfg: Config, env: Env, key: jax.Array, hp: HParams, env_params=None) -> State:
    """Fresh networks, an empty replay, reset envs and memories holding their first
    observation."""
    env_params = env.default_params() if env_params is None else env_params
    shape = _obs_shape(env, env_params)
    dim = math.prod(shape)
    k_q, k_e, k_t, k_p, k_env, key = jax.random.split(key, 6)
    x, j = jnp.zeros((1, dim)), jnp.zeros((1,), jnp.int32)
    q_params = q_network(cfg, env, env_params).init(k_q, x, j)
    embedding_params = inverse_dynamics(cfg, env, env_params).init(k_e, x, x)
    rnd_target = random_features(cfg).init(k_t, x)
    rnd_params = random_features(cfg).init(k_p, x)
    obs, env_state = vec_env(cfg, env).reset(k_env, env_params)
    example = Transition(
        jnp.zeros(dim), jnp.zeros((), jnp.int32), jnp.zeros(()), jnp.zeros(()),
        jnp.zeros((), bool), jnp.zeros((), bool), jnp.zeros(dim),
    )  # fmt: skip
    first = _embed(cfg, env, env_params, embedding_params, _flat(obs, shape))
    e, m, f = cfg.num_envs, cfg.memory_size, cfg.embedding_size
    zero_memory = Memory(jnp.zeros((e, m, f)), jnp.zeros(e, jnp.int32), jnp.zeros(e), jnp.zeros(e))
    memory = restart(zero_memory, jnp.ones(e, bool), first)
    zero = jnp.zeros((), jnp.int32)
    return State(
        q_params, q_params, optim.adam(hp.learning_rate).init(q_params),
        embedding_params, optim.adam(hp.embedding_learning_rate).init(embedding_params),
        rnd_target, rnd_params, optim.adam(hp.rnd_learning_rate).init(rnd_params),
        RunningStats.zeros(()), replay(cfg).init(example), env_state, obs, memory, key,
        zero, zero,
    )  # fmt: skip


def _embed(cfg, env, env_params, params, obs):
    net = inverse_dynamics(cfg, env, env_params)
    return net.apply(params, obs, method=InverseDynamics.embed)


# ------------------------------------------------------------------ acting


def life_long_modulator(
    cfg: Config, state: State, obs: jax.Array, hp: HParams
) -> tuple[jax.Array, RunningStats]:
    """``[E]`` multipliers ``clip(1 + (err - mean) / std, 1, L)`` of RND's errors on
    ``obs [E, D]``, and the error statistics with this batch merged in."""
    net = random_features(cfg)
    predicted, target = net.apply(state.rnd_params, obs), net.apply(state.rnd_target, obs)
    error = jnp.sum(jnp.square(predicted - target), -1)
    stats = state.rnd_stats.update(error)
    alpha = 1.0 + (error - stats.mean) / jnp.sqrt(stats.var + 1e-8)
    return jnp.clip(alpha, 1.0, hp.max_modulation), stats


def act_step(cfg: Config, env: Env, env_params, state: State, hp: HParams):
    """One epsilon-greedy step of every env: returns the state (envs, memories, RND
    statistics moved on; nothing learned), the transitions ``[E]`` and the env's step."""
    shape = _obs_shape(env, env_params)
    policy = policy_indices(cfg)
    key, k_eps, k_random, k_env = jax.random.split(state.key, 4)
    obs = _flat(state.obs, shape)
    q = q_network(cfg, env, env_params).apply(state.q_params, obs, policy)
    explore = jax.random.uniform(k_eps, (cfg.num_envs,)) < actor_epsilons(
        cfg.num_envs, hp.epsilon_base, hp.epsilon_alpha
    )
    random_action = jax.random.randint(k_random, (cfg.num_envs,), 0, q.shape[-1])
    action = jnp.where(explore, random_action, jnp.argmax(q, -1)).astype(jnp.int32)
    next_obs, env_state, step = vec_env(cfg, env).step(k_env, state.env_state, action, env_params)
    reached = _flat(step.final_obs, shape)
    embedding = _embed(cfg, env, env_params, state.embedding_params, reached)
    bonus, memory = observe(state.memory, embedding, hp, cfg.num_neighbours)
    modulator, rnd_stats = life_long_modulator(cfg, state, reached, hp)
    first = _embed(cfg, env, env_params, state.embedding_params, _flat(next_obs, shape))
    memory = restart(memory, step.done, first)
    transitions = Transition(
        obs, action, step.reward, bonus * modulator, step.terminated, step.done, reached
    )
    state = state.replace(
        env_state=env_state, obs=next_obs, memory=memory, rnd_stats=rnd_stats, key=key,
        steps=state.steps + 1,
    )  # fmt: skip
    return state, transitions, step


# ------------------------------------------------------------------ learning


def q_loss(
    cfg: Config,
    env: Env,
    env_params,
    q_params,
    target_params,
    batch: Transition,
    policy: jax.Array,
    hp: HParams,
) -> jax.Array:
    """Mean squared n-step double-Q error of ``policy [B]`` (int) under the value rescaling
    ``h``, on ``batch``'s ``[B, n]`` windows of one env each, whoever collected them.

    With policy ``j``'s reward ``r_e + beta_j r_i`` and discount ``gamma_j``, the return
    ``G`` of the window's first step is cut at its first episode end ``k*``
    (:func:`jaxrl.losses.q.n_step_bootstrap`); the target of ``Q(x_0, j, a_0)`` is
    ``h(G + gamma_j^(k*+1) h^-1(Q_target(x'_k*, j, a*)))`` with
    ``a* = argmax Q(x'_k*, j, .)``, and a termination at ``k*`` does not bootstrap.
    """
    net = q_network(cfg, env, env_params)
    beta = betas(cfg.num_policies, hp.beta)[policy]  # [B]
    gamma = discounts(cfg.num_policies, hp.gamma_max, hp.gamma_min)[policy]  # [B]
    reward = batch.reward + beta[:, None] * batch.intrinsic
    returns, boot, last = jax.vmap(
        lambda r, d, t, g: qloss.n_step_bootstrap(r[None], d[None], t[None], g)
    )(reward, batch.done, batch.terminated, gamma)
    returns, boot = returns[:, 0], boot[:, 0]
    next_obs = qloss.take_last(batch.next_obs, last[:, 0])
    q = net.apply(q_params, batch.obs[:, 0], policy)
    best = jnp.argmax(net.apply(q_params, next_obs, policy), -1)
    q_next = jnp.take_along_axis(net.apply(target_params, next_obs, policy), best[:, None], -1)
    target = rlax.signed_hyperbolic(returns + boot * rlax.signed_parabolic(q_next[:, 0]))
    taken = jnp.take_along_axis(q, batch.action[:, :1], -1)[:, 0]
    return jnp.mean(jnp.square(taken - jax.lax.stop_gradient(target)))


def every_policy(cfg: Config, batch: Transition) -> tuple[Transition, jax.Array]:
    """``batch`` of ``B`` windows repeated for each of the ``N`` policies: ``[N B, n]``
    windows and their policies ``[N B]`` (``0 .. 0, 1 .. 1, ...``)."""
    n = cfg.num_policies
    tiled = jax.tree.map(lambda x: jnp.concatenate([x] * n, 0), batch)
    b = batch.obs.shape[0]
    return tiled, jnp.repeat(jnp.arange(n, dtype=jnp.int32), b)


def inverse_loss(cfg: Config, env: Env, env_params, params, batch: Transition) -> jax.Array:
    """Mean cross-entropy of the inverse model's logits for the actions taken (the first
    transition of each window)."""
    first = jax.tree.map(lambda x: x[:, 0], batch)
    logits = inverse_dynamics(cfg, env, env_params).apply(params, first.obs, first.next_obs)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, first.action))


def rnd_loss(cfg: Config, params, target_params, batch: Transition) -> jax.Array:
    """Mean squared error of RND's predictor on the observations reached (the first
    transition of each window)."""
    net = random_features(cfg)
    reached = batch.next_obs[:, 0]
    target = jax.lax.stop_gradient(net.apply(target_params, reached))
    return jnp.mean(jnp.sum(jnp.square(net.apply(params, reached) - target), -1))


def learn_step(cfg: Config, env: Env, env_params, state: State, hp: HParams):
    """One step of each learner on its own uniform batch, and the target copy when due.
    Returns the state and ``{"loss/q", "loss/inverse", "loss/rnd"}``."""
    key, k_q, k_e, k_r = jax.random.split(state.key, 4)
    sample = lambda k: replay(cfg).sample(state.buffer, k).experience  # noqa: E731
    windows, policies = every_policy(cfg, sample(k_q))
    q_value, q_grad = jax.value_and_grad(q_loss, argnums=3)(
        cfg, env, env_params, state.q_params, state.target_params, windows, policies, hp
    )
    e_value, e_grad = jax.value_and_grad(inverse_loss, argnums=3)(
        cfg, env, env_params, state.embedding_params, sample(k_e)
    )
    r_value, r_grad = jax.value_and_grad(rnd_loss, argnums=1)(
        cfg, state.rnd_params, state.rnd_target, sample(k_r)
    )

    def apply(grad, opt_state, params, lr):
        updates, opt_state = optim.adam(lr).update(grad, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    q_params, q_opt = apply(q_grad, state.q_opt, state.q_params, hp.learning_rate)
    e_params, e_opt = apply(
        e_grad, state.embedding_opt, state.embedding_params, hp.embedding_learning_rate
    )
    r_params, r_opt = apply(r_grad, state.rnd_opt, state.rnd_params, hp.rnd_learning_rate)
    updates = state.updates + 1
    copy = updates % cfg.target_update_period == 0
    target = tree.select(copy, q_params, state.target_params)
    state = state.replace(
        q_params=q_params, target_params=target, q_opt=q_opt, embedding_params=e_params,
        embedding_opt=e_opt, rnd_params=r_params, rnd_opt=r_opt, key=key, updates=updates,
    )  # fmt: skip
    return state, {"loss/q": q_value, "loss/inverse": e_value, "loss/rnd": r_value}


def train_step(cfg: Config, env: Env, env_params, state: State, hp: HParams):
    """Act, store, and (after ``max(learning_starts, n_step)`` steps) learn. Returns the
    state and this step's metrics: per-env ``episode_return [E]`` and ``done [E]``, the
    mean bonus, the losses (0 before learning starts)."""
    state, transitions, step = act_step(cfg, env, env_params, state, hp)
    stream = jax.tree.map(lambda x: x[:, None], transitions)  # [E, 1, ...]
    state = state.replace(buffer=replay(cfg).add(state.buffer, stream))
    learned, losses = learn_step(cfg, env, env_params, state, hp)
    learning = state.steps > max(cfg.learning_starts, cfg.n_step)
    state = tree.select(learning, learned, state)
    losses = jax.tree.map(lambda x: jnp.where(learning, x, 0.0), losses)
    metrics = {
        "episode_return": step.info["episode_return"],
        "done": step.done,
        "intrinsic": jnp.mean(transitions.intrinsic),
    } | losses
    return state, metrics


def evaluate(
    cfg: Config, env: Env, env_params, state: State, hp: HParams, key: jax.Array
) -> jax.Array:
    """``[eval_episodes]`` undiscounted returns of policy 0, epsilon-greedy with
    ``hp.eval_epsilon``, for at most ``cfg.eval_steps`` steps of fresh episodes."""
    shape = _obs_shape(env, env_params)
    net = q_network(cfg, env, env_params)

    def episode(key):
        k_reset, k_steps = jax.random.split(key)
        obs, env_state = env.reset(k_reset, env_params)

        def one(carry, k):
            obs, env_state, total, alive = carry
            k_eps, k_random, k_step = jax.random.split(k, 3)
            x = _flat(obs, shape)[None]
            q = net.apply(state.q_params, x, jnp.zeros((1,), jnp.int32))[0]
            random_action = jax.random.randint(k_random, (), 0, q.shape[-1])
            explore = jax.random.uniform(k_eps) < hp.eval_epsilon
            action = jnp.where(explore, random_action, jnp.argmax(q)).astype(jnp.int32)
            obs, env_state, step = env.step(k_step, env_state, action, env_params)
            total = total + jnp.where(alive, step.reward, 0.0)
            return (obs, env_state, total, alive & ~step.done), None

        init = (obs, env_state, jnp.zeros(()), jnp.ones((), bool))
        (_, _, total, _), _ = jax.lax.scan(one, init, jax.random.split(k_steps, cfg.eval_steps))
        return total

    return jax.vmap(episode)(jax.random.split(key, cfg.eval_episodes))


def train(cfg: Config, env: Env, state: State, hp: HParams, env_params=None):
    """A whole run: ``cfg.steps`` vector steps, an evaluation of policy 0 after every
    ``cfg.eval_every``. Returns the final state and metrics, one row per evaluation:

    * ``eval/return [R]``: mean return of policy 0 (:func:`evaluate`);
    * ``train/return_by_policy [R, N]``: mean return of the episodes each policy finished
      in the window (NaN where none);
    * ``train/intrinsic [R]``: mean intrinsic reward; ``loss/* [R]``: mean losses.
    """
    env_params = env.default_params() if env_params is None else env_params
    policy = policy_indices(cfg)

    def window(state, _):
        state, m = jax.lax.scan(
            lambda s, _: train_step(cfg, env, env_params, s, hp), state, None, cfg.eval_every
        )
        key, k_eval = jax.random.split(state.key)
        state = state.replace(key=key)
        done = m["done"].astype(jnp.float32)  # [T, E]
        by_policy = jax.nn.one_hot(policy, cfg.num_policies)  # [E, N]
        returns = jnp.einsum("te,en->n", m["episode_return"] * done, by_policy)
        episodes = jnp.einsum("te,en->n", done, by_policy)
        row = {
            "eval/return": jnp.mean(evaluate(cfg, env, env_params, state, hp, k_eval)),
            "train/return_by_policy": jnp.where(
                episodes > 0, returns / jnp.maximum(episodes, 1), jnp.nan
            ),
            "train/intrinsic": jnp.mean(m["intrinsic"]),
        } | {k: jnp.mean(v) for k, v in m.items() if k.startswith("loss/")}
        return state, row

    return jax.lax.scan(window, state, None, cfg.steps // cfg.eval_every)
