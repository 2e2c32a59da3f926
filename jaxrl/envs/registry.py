"""``make(name)``: one entry point for every environment backend.

Names:
  * a gymnax id, e.g. ``CartPole-v1``, ``Breakout-MinAtar``, ``Catch-bsuite``; keyword
    arguments go to its constructor (``make("DeepSea-bsuite", size=12)``);
  * ``brax/<name>``, e.g. ``brax/ant`` (needs the ``brax`` extra);
  * ``envpool/<task>``, e.g. ``envpool/CartPole-v1`` (host-side numpy, ``envpool`` extra);
  * ``lpg/<name>``: the 15 LPG training environments (tabular grids, random grids, delayed
    chains; spec section 1.8), e.g. ``lpg/tabular_dense``, ``lpg/chain_short``;
  * ``meta/<name>``: task distributions for meta-RL: ``meta/nav2d`` (MAML's 2D navigation),
    ``meta/cued_nav2d`` (its non-mutually-exclusive variant, the task cue in the observation;
    ``num_tasks=``, ``cue_dim=``), ``meta/bernoulli_bandit`` (RL^2's bandits; ``num_arms=``,
    ``task=``);
  * ``hrl/<name>``: test beds for hierarchical RL: ``hrl/point_maze`` (HIRO's Ant Maze with a
    point mass; ``layout=``, ``max_step=``), ``hrl/four_rooms`` (the four-rooms world seen
    as the agent's coordinates; ``slip=``, ``max_steps=``);
  * ``pomdp/<gymnax id>``: a gymnax env with its velocities hidden, e.g.
    ``pomdp/CartPole-v1`` (cart position and pole angle only): memory tasks for recurrent
    agents;
  * ``probe/<name>``: tiny probe environments for tests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from jaxrl.envs import bandits, delayed_chain, four_rooms, gridworld, nav2d, point_maze, probe
from jaxrl.envs.base import Env, EnvParams
from jaxrl.envs.gymnax import ENV_IDS as GYMNAX_IDS
from jaxrl.envs.gymnax import GymnaxEnv
from jaxrl.envs.wrappers import SelectObs

# Observation entries that are positions (the velocities are left out).
POSITIONS = {"CartPole-v1": (0, 2), "Pendulum-v1": (0, 1), "Acrobot-v1": (0, 1, 2, 3)}


def _pomdp(gymnax_id: str, **kwargs) -> Env:
    return SelectObs(GymnaxEnv(gymnax_id, tuple(sorted(kwargs.items()))), POSITIONS[gymnax_id])


# In-package families: prefix -> {name without prefix: constructor(**kwargs) -> Env}.
FAMILIES: dict[str, dict[str, Callable[..., Env]]] = {
    "lpg/": {
        **{name.removeprefix("lpg/"): ctor for name, ctor in gridworld.NAMES.items()},
        **{
            f"chain_{variant}": functools.partial(delayed_chain.make, variant)
            for variant in delayed_chain.VARIANTS
        },
    },
    "meta/": {
        "nav2d": nav2d.Nav2D,
        "cued_nav2d": nav2d.CuedNav2D,
        "bernoulli_bandit": bandits.BernoulliBandit,
    },
    "hrl/": {"point_maze": point_maze.PointMaze, "four_rooms": four_rooms.coordinate_four_rooms},
    "pomdp/": {name: functools.partial(_pomdp, name) for name in POSITIONS},
    "probe/": dict(probe.PROBES),
}
PREFIXES = ("brax/", "envpool/", *FAMILIES)


def _family_names(prefix: str) -> list[str]:
    return [prefix + name for name in FAMILIES[prefix]]


def list_envs() -> list[str]:
    """Every name ``make`` accepts without an optional extra, plus the extra prefixes."""
    family_names = [n for prefix in FAMILIES for n in _family_names(prefix)]
    return [*GYMNAX_IDS, *family_names, "brax/<name>", "envpool/<task>"]


def _unknown(name: str, valid) -> ValueError:
    return ValueError(
        f"unknown environment {name!r}; valid names: {', '.join(valid)}; "
        f"or a prefix: {', '.join(p + '<name>' for p in PREFIXES)}"
    )


def _family(name: str) -> tuple[str, str] | None:
    """``(prefix, key)`` for a name in an in-package family; ``None`` otherwise."""
    for prefix in FAMILIES:
        if name.startswith(prefix):
            return prefix, name.removeprefix(prefix)
    return None


def check_name(name: str) -> None:
    """Raises the ``make`` error for a bad name without building anything heavy."""
    if name in GYMNAX_IDS or name.startswith(("brax/", "envpool/")):
        return
    family = _family(name)
    if family is None:
        raise _unknown(name, GYMNAX_IDS)
    prefix, key = family
    if key not in FAMILIES[prefix]:
        raise _unknown(name, _family_names(prefix))


def make(name: str, **kwargs) -> tuple[Env, EnvParams]:
    """Returns ``(env, default_params)`` for an environment name (see module docstring).

    Raises:
        ValueError: for an unknown name; the message lists the valid names and prefixes.
    """
    check_name(name)
    if name in GYMNAX_IDS:  # kwargs go to the gymnax constructor (DeepSea-bsuite: size=)
        env = GymnaxEnv(name, tuple(sorted(kwargs.items())))
    elif name.startswith("brax/"):
        from jaxrl.envs import brax as brax_envs

        env = brax_envs.make(name.removeprefix("brax/"), **kwargs)
    elif name.startswith("envpool/"):
        from jaxrl.envs import envpool as envpool_envs

        env = envpool_envs.make(name.removeprefix("envpool/"), **kwargs)
    else:
        prefix, key = _family(name)
        env = FAMILIES[prefix][key](**kwargs)
    return env, env.default_params()
