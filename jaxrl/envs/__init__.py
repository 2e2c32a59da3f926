"""Environments: one functional protocol (:mod:`jaxrl.envs.base`) for every backend."""

from jaxrl.envs.base import Env, Step, Wrapper
from jaxrl.envs.registry import list_envs, make
from jaxrl.envs.wrappers import make_vec_env

__all__ = ["Env", "Step", "Wrapper", "list_envs", "make", "make_vec_env"]
