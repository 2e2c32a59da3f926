"""The settings every algorithm shares are checked alike, when the ``Config`` is made: a
value that does not fit a field's type (a bool that is not True/False, a count that is not
whole, a float that is not finite, a layer size below 1), a count below zero, and a named
choice that does not exist (listing the valid ones) are each a ``ConfigError`` naming the
field, and each default passes. An image torso given vector observations is a
``ConfigError`` when ``init`` is traced, before anything compiles."""

import dataclasses
import typing

import jax
import pytest

from jaxrl.algorithms import ALGORITHMS, hiro
from jaxrl.envs import registry
from jaxrl.errors import ConfigError
from jaxrl.meta import lpg, maml, metagenrl, mql

CONFIGS = {name: module.Config for name, module in sorted(ALGORITHMS.items())} | {
    "hiro": hiro.Config,
    "lpg": lpg.Config,
    "maml": maml.Config,
    "metagenrl": metagenrl.Config,
    "mql-adapt": mql.AdaptConfig,
}
COUNTS = ("learning_starts", "context_len", "lag", "replay_ratio", "replay_start", "anneal_steps")
CHOICES = ("torso", "activation", "optimizer", "loss", "objective", "distribution", "exploration",
           "noise", "statistics", "estimation_mode", "algo", "cell", "outer")  # fmt: skip
# A value of the wrong kind for each annotation, with what the message says it must be.
WRONG = {
    bool: [(1, "True or False"), ("yes", "True or False")],
    int: [(2.0, "an integer"), (True, "an integer")],
    float: [(float("nan"), "a finite number"), (float("inf"), "a finite number")],
    tuple[int, ...]: [((0,), r"a tuple of integers >= 1"), ((64, -4), r"a tuple of integers >= 1")],
}


def _fields(config) -> dict:
    hints = typing.get_type_hints(config)
    return {f.name: hints[f.name] for f in dataclasses.fields(config)}


def _cases(names):
    return [
        pytest.param(algo, field, id=f"{algo}-{field}")
        for algo, config in CONFIGS.items()
        for field in names
        if field in _fields(config)
    ]


def _typed_cases():
    return [
        pytest.param(algo, field, bad, want, id=f"{algo}-{field}-{bad!r}")
        for algo, config in CONFIGS.items()
        for field, kind in _fields(config).items()
        for bad, want in WRONG.get(kind, [])
    ]


@pytest.mark.parametrize("algo", CONFIGS)
def test_defaults_pass(algo):
    CONFIGS[algo]()


@pytest.mark.parametrize("algo, field, bad, want", _typed_cases())
def test_a_value_of_the_wrong_kind_is_rejected(algo, field, bad, want):
    with pytest.raises(ConfigError, match=rf"^{field} must be {want}, got "):
        CONFIGS[algo](**{field: bad})


@pytest.mark.parametrize("algo, field", _cases(COUNTS))
def test_a_count_below_zero_is_rejected(algo, field):
    with pytest.raises(ConfigError, match=rf"^{field} must be an integer >= 0, got -1$"):
        CONFIGS[algo](**{field: -1})


@pytest.mark.parametrize("algo, field", _cases(CHOICES))
def test_an_unknown_choice_is_rejected_with_the_valid_names(algo, field):
    config = CONFIGS[algo]
    default = getattr(config(), field)
    with pytest.raises(ConfigError, match=rf"^{field} must be one of \(.*\), got 'no-such'$") as e:
        config(**{field: "no-such"})
    assert repr(default) in str(e.value)  # the default is among the names listed


@pytest.mark.parametrize("algo", ["ppo", "a2c", "trpo", "acktr", "impala"])
def test_reward_scaling_discount_must_be_a_discount(algo):
    with pytest.raises(ConfigError, match=r"^reward_scaling_discount must lie in \[0.0, 1.0\]"):
        CONFIGS[algo](reward_scaling_discount=1.5)


def test_an_empty_hidden_tuple_is_a_linear_network_and_passes():
    ALGORITHMS["ppo"].Config(hidden=())


def test_the_cases_cover_every_algorithm():
    assert {p.values[0] for p in _typed_cases()} == set(CONFIGS)
    assert {p.values[0] for p in _cases(CHOICES)} >= set(ALGORITHMS) - {"sac", "td3"}  # no choices


# The image torso of each algorithm that has one.
IMAGE_TORSO = dict.fromkeys(
    ["a2c", "acer", "acktr", "gail", "icm", "impala", "npg", "ppo", "trpo", "vpg"], "cnn"
)
IMAGE_TORSO |= dict.fromkeys(["apex", "dqn", "fun", "r2d2", "rainbow", "recurrent_ppo"], "minatar")


@pytest.mark.parametrize("algo", sorted(IMAGE_TORSO))
def test_an_image_torso_on_vector_observations_is_a_config_error(algo):
    module = ALGORITHMS[algo]
    cfg = module.Config(torso=IMAGE_TORSO[algo])
    env, _ = registry.make("CartPole-v1")
    hp = module.HParams.make()
    match = r"^torso='\w+' needs image .*; CartPole-v1's have shape \(4,\)"
    with pytest.raises(ConfigError, match=match):
        jax.eval_shape(lambda key: module.init(cfg, env, key, hp), jax.random.key(0))


def test_every_algorithm_with_a_torso_choice_is_checked_for_image_observations():
    assert {a for a, c in CONFIGS.items() if a in ALGORITHMS and "torso" in _fields(c)} == set(
        IMAGE_TORSO
    )


def test_a_subclass_with_an_unresolvable_annotation_is_still_checked():
    def make():
        class Local:
            pass

        @dataclasses.dataclass(frozen=True)
        class Subclass(ALGORITHMS["ppo"].Config):
            extra: "Local | None" = None  # noqa: UP037  (a name get_type_hints cannot see)

        return Subclass

    config = make()
    assert config(num_envs=4).num_envs == 4
    with pytest.raises(ConfigError, match="num_envs must be a positive integer"):
        config(num_envs=4.5)


@pytest.mark.parametrize("algo", ["td3", "ddpg"])
def test_a_context_without_the_history_wrapper_is_a_config_error(algo):
    module = ALGORITHMS[algo]
    cfg = module.Config(context_len=3)
    env, _ = registry.make("Pendulum-v1")
    hp = module.HParams.make()
    with pytest.raises(ConfigError, match=r"context_len=3 .*wrappers\.History\(env, 3\)"):
        jax.eval_shape(lambda key: module.init(cfg, env, key, hp), jax.random.key(0))


def _variants():
    """``(algo, overrides)``: each bool switch flipped, each other valid choice, and (with
    ``--runslow``) each count at 1, one at a time from the defaults."""
    cases = []
    for algo, module in sorted(ALGORITHMS.items()):
        default = module.Config()
        for field, kind in _fields(module.Config).items():
            if kind is bool:
                values = [not getattr(default, field)]
            elif field in CHOICES:
                with pytest.raises(ConfigError) as e:
                    module.Config(**{field: "no-such"})
                valid = e.value.args[0].split("one of (")[1].split("), got")[0]
                values = [v.strip(" '") for v in valid.split(",") if v.strip()]
            elif kind is int and field not in ("total_timesteps", "data_shards"):
                values = [1]
            else:
                continue
            marks = [pytest.mark.slow] if kind is int else []  # counts: --runslow (time)
            for value in values:
                if value != getattr(default, field):
                    case_id = f"{algo}-{field}={value}"
                    cases.append(pytest.param(algo, {field: value}, id=case_id, marks=marks))
    return cases


@pytest.mark.parametrize("algo, overrides", _variants())
def test_every_setting_the_config_accepts_traces_or_is_a_config_error(algo, overrides):
    """A setting the ``Config`` accepts either traces through ``init`` and ``update`` or is
    a ``ConfigError`` there (e.g. an image torso on CartPole): never another error from
    inside tracing."""
    module = ALGORITHMS[algo]
    try:
        cfg = module.Config(**overrides)
    except ConfigError:
        return  # refused when made: as clear as it gets
    env, _ = registry.make("Pendulum-v1" if algo in ("ddpg", "sac", "td3") else "CartPole-v1")
    hp = module.HParams.make()
    try:
        state = jax.eval_shape(lambda key: module.init(cfg, env, key, hp), jax.random.key(0))
        jax.eval_shape(lambda s: module.update(cfg, env, s, hp), state)
    except ConfigError:
        pass
