"""The search space: distributions validate their arguments and points map to internal rows and back."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aprompt._errors import ConfigError
from aprompt.tpe import Categorical, Distribution, FloatRange, IntRange
from aprompt.tpe._space import decode_params, encode_params, encode_space, sample_uniform

SPACE: dict[str, Distribution] = {
    "instruction": Categorical(4),
    "k": IntRange(1, 8),
    "temperature": FloatRange(0.0, 1.5),
    "lr": FloatRange(1e-4, 1e-1, log=True),
}


@pytest.mark.parametrize(
    "make",
    [
        lambda: Categorical(0),
        lambda: Categorical(2.0),  # type: ignore[arg-type]
        lambda: Categorical(True),
        lambda: Categorical(2, labels=("only one",)),
        # Labels are a collection of strings, one per choice: not a number, nor a string's characters.
        lambda: Categorical(3, labels=5),  # type: ignore[arg-type]
        lambda: Categorical(3, labels="abc"),
        lambda: Categorical(3, labels=(1, 2, 3)),  # type: ignore[arg-type]
        lambda: IntRange(5, 4),
        lambda: IntRange(0, 1.5),  # type: ignore[arg-type]
        lambda: FloatRange(1.0, 1.0),
        lambda: FloatRange(2.0, 1.0),
        lambda: FloatRange(0.0, math.inf),
        lambda: FloatRange(0.0, 1.0, log=True),
        # Ranges float64 cannot hold: a bound beyond the largest float, or a width that overflows.
        lambda: FloatRange(0, 2**1100),
        lambda: FloatRange(-1e308, 1e308),
        lambda: IntRange(0, 2**1100),
        lambda: IntRange(-(2**1023), 2**1023),
        lambda: IntRange(0, 2**52 + 1),  # beyond it float64 cannot hold an integer's bin
    ],
)
def test_invalid_distributions_raise_config_error(make: object) -> None:
    with pytest.raises(ConfigError):
        make()  # type: ignore[operator]


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="at least one choice"):
        Categorical(0)


@pytest.mark.parametrize(
    "space", [{}, {"x": "not a distribution"}, {1: Categorical(2)}, [("x", Categorical(2))]]
)
def test_invalid_spaces_raise_config_error(space: object) -> None:
    with pytest.raises(ConfigError):
        encode_space(space)  # type: ignore[arg-type]


def test_categorical_labels_name_the_choices() -> None:
    demos = Categorical(3, labels=["none", "labeled", "bootstrapped"])
    assert demos.label(2) == "bootstrapped"
    assert Categorical(3).label(1) == "1"


def test_params_round_trip_through_internal_coordinates() -> None:
    space = encode_space(SPACE)
    params = {"instruction": 3, "k": 8, "temperature": 0.25, "lr": 0.003}
    cats, nums = encode_params(space, params)
    decoded = decode_params(space, cats, nums)
    assert decoded["instruction"] == 3 and decoded["k"] == 8 and decoded["temperature"] == 0.25
    assert decoded["lr"] == pytest.approx(0.003, rel=1e-12)
    assert isinstance(decoded["instruction"], int) and isinstance(decoded["k"], int)


def test_log_floats_live_in_log_coordinates_and_ints_own_unit_bins() -> None:
    space = encode_space(SPACE)
    assert space.num_names == ("k", "temperature", "lr")
    assert space.low.tolist() == pytest.approx([0.5, 0.0, math.log(1e-4)])
    assert space.high.tolist() == pytest.approx([8.5, 1.5, math.log(1e-1)])


@pytest.mark.parametrize(
    "params",
    [
        {"instruction": 4, "k": 1, "temperature": 0.0, "lr": 0.01},
        {"instruction": 0, "k": 9, "temperature": 0.0, "lr": 0.01},
        {"instruction": 0, "k": 1.5, "temperature": 0.0, "lr": 0.01},
        {"instruction": 0, "k": 1, "temperature": 2.0, "lr": 0.01},
        {"instruction": 0, "k": 1, "temperature": 0.0, "lr": 0.0},
        {"instruction": 0, "k": 1, "temperature": 0.0},
        {"instruction": 0, "k": 1, "temperature": 0.0, "lr": 0.01, "extra": 1},
    ],
)
def test_params_outside_the_space_are_rejected(params: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        encode_params(encode_space(SPACE), params)


def test_uniform_samples_cover_each_integer_equally_and_stay_in_bounds() -> None:
    space = encode_space({"k": IntRange(1, 4), "x": FloatRange(-2.0, 3.0)})
    _, nums = sample_uniform(space, np.random.default_rng(0), 40_000)
    counts = np.bincount(nums[:, 0].astype(int), minlength=5)[1:]
    assert counts.sum() == 40_000 and np.all(np.abs(counts / 10_000 - 1) < 0.05)
    assert nums[:, 1].min() >= -2.0 and nums[:, 1].max() <= 3.0
