"""Sebulba / SEED RL actor-learner for host environments (envpool, any Gymnasium id).

Actor threads step host envs and act with one batched, jitted policy call on the device per
step; fixed-length trajectories go through bounded queues to a learner that calls the
algorithm's own loss and update (PPO, IMPALA with V-trace, DQN with replay). See
``docs/sebulba.md``.

* :mod:`~jaxrl.sebulba.host_envs`: the batched host-env interface (auto-reset, truncation).
* :mod:`~jaxrl.sebulba.agents`: each algorithm's acting and learning halves.
* :mod:`~jaxrl.sebulba.actor`, :mod:`~jaxrl.sebulba.learner`: the two sides.
* :mod:`~jaxrl.sebulba.orchestrator`: :func:`run`, :func:`train`, shutdown and checkpoints.
"""

from jaxrl.sebulba.agents import Agent, Trajectory
from jaxrl.sebulba.agents import make as make_agent
from jaxrl.sebulba.host_envs import EnvSpec, HostEnv, HostStep
from jaxrl.sebulba.host_envs import make as make_env
from jaxrl.sebulba.orchestrator import Result, evaluate, make_envs, run, train

__all__ = [
    "Agent",
    "EnvSpec",
    "HostEnv",
    "HostStep",
    "Result",
    "Trajectory",
    "evaluate",
    "make_agent",
    "make_env",
    "make_envs",
    "run",
    "train",
]
