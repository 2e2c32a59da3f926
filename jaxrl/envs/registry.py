"""``make(name)``: one entry point for every environment backend.

Names:
  * a gymnax id, e.g. ``CartPole-v1``, ``Breakout-MinAtar``, ``Catch-bsuite``;
  * ``brax/<name>``, e.g. ``brax/ant`` (needs the ``brax`` extra);
  * ``envpool/<task>``, e.g. ``envpool/CartPole-v1`` (host-side numpy, ``envpool`` extra);
  * ``probe/<name>``: tiny probe environments for tests.
"""

from __future__ import annotations

from jaxrl.envs import probe
from jaxrl.envs.base import Env, EnvParams
from jaxrl.envs.gymnax import ENV_IDS as GYMNAX_IDS
from jaxrl.envs.gymnax import GymnaxEnv

PREFIXES = ("brax/", "envpool/", "probe/")


def list_envs() -> list[str]:
    """Every name ``make`` accepts without an optional extra, plus the extra prefixes."""
    return [*GYMNAX_IDS, *(f"probe/{n}" for n in probe.PROBES), "brax/<name>", "envpool/<task>"]


def _unknown(name: str, valid) -> ValueError:
    return ValueError(
        f"unknown environment {name!r}; valid names: {', '.join(valid)}; "
        f"or a prefix: {', '.join(p + '<name>' for p in PREFIXES)}"
    )


def make(name: str, **kwargs) -> tuple[Env, EnvParams]:
    """Returns ``(env, default_params)`` for an environment name (see module docstring).

    Raises:
        ValueError: for an unknown name; the message lists the valid names and prefixes.
    """
    if name in GYMNAX_IDS:
        env = GymnaxEnv(name, **kwargs)
    elif name.startswith("probe/"):
        key = name.removeprefix("probe/")
        if key not in probe.PROBES:
            raise _unknown(name, [f"probe/{n}" for n in probe.PROBES])
        env = probe.PROBES[key](**kwargs)
    elif name.startswith("brax/"):
        from jaxrl.envs import brax as brax_envs

        env = brax_envs.make(name.removeprefix("brax/"), **kwargs)
    elif name.startswith("envpool/"):
        from jaxrl.envs import envpool as envpool_envs

        env = envpool_envs.make(name.removeprefix("envpool/"), **kwargs)
    else:
        raise _unknown(name, GYMNAX_IDS)
    return env, env.default_params()


def check_name(name: str) -> None:
    """Raises the ``make`` error for a bad name without building anything heavy."""
    if name in GYMNAX_IDS or name.startswith(("brax/", "envpool/")):
        return
    if name.startswith("probe/"):
        if name.removeprefix("probe/") in probe.PROBES:
            return
        raise _unknown(name, [f"probe/{n}" for n in probe.PROBES])
    raise _unknown(name, GYMNAX_IDS)
