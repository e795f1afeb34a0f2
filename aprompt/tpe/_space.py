"""The search space: parameter distributions, their validation, and the internal coordinates the
estimators work in.

Internally a point is two rows: the categorical indices (``int64``) and the numeric values (``float64``).
Numeric values live in *internal coordinates*: ``log(x)`` for a log-scaled float, ``x`` otherwise. An
integer ``IntRange(low, high)`` spans ``[low - 0.5, high + 0.5]`` there, so each integer owns a bin of
width one and rounding a sample gives every integer the same share of a uniform draw.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from typing import TypeAlias

import attrs
import numpy as np
import numpy.typing as npt

from aprompt._errors import ConfigError

IntArray: TypeAlias = npt.NDArray[np.int64]
FloatArray: TypeAlias = npt.NDArray[np.float64]
ParamValue: TypeAlias = int | float


def _as_labels(labels: Iterable[str] | None) -> tuple[str, ...] | None:
    if labels is None:
        return None
    # A string is iterable too: its characters would label the choices one each.
    if isinstance(labels, str) or not isinstance(labels, Iterable):
        raise ConfigError(f"Categorical labels must be a collection of strings, got {labels!r}")
    labels = tuple(labels)
    if not all(isinstance(label, str) for label in labels):
        raise ConfigError(f"Categorical labels must be strings, got {labels!r}")
    return labels


@attrs.frozen
class Categorical:
    """A choice among ``n_choices`` options, suggested as its index ``0 .. n_choices - 1``.

    ``labels``, if given, name the options (one per choice) for reports; suggestions stay indices.

    Example::

        Categorical(3, labels=("none", "labeled", "bootstrapped"))
    """

    n_choices: int
    labels: tuple[str, ...] | None = attrs.field(default=None, converter=_as_labels)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.n_choices, bool) or not isinstance(self.n_choices, int):
            raise ConfigError(f"Categorical n_choices must be an int, got {self.n_choices!r}")
        if self.n_choices < 1:
            raise ConfigError(f"Categorical needs at least one choice, got n_choices={self.n_choices}")
        if self.labels is not None and len(self.labels) != self.n_choices:
            raise ConfigError(f"Categorical has {self.n_choices} choices but {len(self.labels)} labels")

    def label(self, index: int) -> str:
        """The label of choice ``index`` (its index as text when the choices have no labels)."""
        if not 0 <= index < self.n_choices:
            raise ConfigError(f"choice {index} is outside 0..{self.n_choices - 1}")
        return self.labels[index] if self.labels is not None else str(index)


@attrs.frozen
class IntRange:
    """An integer in ``[low, high]`` (both included); nearby integers are treated as similar."""

    low: int
    high: int

    def __attrs_post_init__(self) -> None:
        for name, value in (("low", self.low), ("high", self.high)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"IntRange {name} must be an int, got {value!r}")
        if self.low > self.high:
            raise ConfigError(f"IntRange low={self.low} is above high={self.high}")
        if max(abs(self.low), abs(self.high)) > _MAX_INT:
            raise ConfigError(
                f"IntRange [{self.low}, {self.high}] reaches beyond ±2**52, where float64 no longer holds "
                "each integer's bin; narrow it, or search a wide positive range with "
                "FloatRange(..., log=True)"
            )


@attrs.frozen
class FloatRange:
    """A float in ``[low, high]`` (``low < high``); ``log=True`` searches a log scale (needs ``low > 0``)."""

    low: float
    high: float
    log: bool = False

    def __attrs_post_init__(self) -> None:
        for name, value in (("low", self.low), ("high", self.high)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"FloatRange {name} must be a number, got {value!r}")
            if abs(value) > _MAX_FLOAT or not math.isfinite(value):
                raise ConfigError(f"FloatRange {name} must be a finite float, got {value!r}")
        if self.low >= self.high:
            raise ConfigError(f"FloatRange needs low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ConfigError(f"FloatRange with log=True needs low > 0, got low={self.low}")
        if not self.log:
            _check_float_span("FloatRange", self.low, self.high)


Distribution: TypeAlias = Categorical | IntRange | FloatRange

_MAX_FLOAT = sys.float_info.max
#: The largest integer magnitude of an :class:`IntRange`: below it float64 holds every integer ``k`` and
#: its bin's edges ``k ± 0.5`` exactly.
_MAX_INT = 2**52


def _check_float_span(kind: str, low: float, high: float) -> None:
    """The estimators work in float64: the range's bounds and its width must be finite floats."""
    # Compared before any conversion: float() of an int beyond the largest float raises OverflowError.
    if abs(low) > _MAX_FLOAT or abs(high) > _MAX_FLOAT or not math.isfinite(float(high) - float(low)):
        raise ConfigError(
            f"{kind} [{low}, {high}] is wider than a float can hold (its width overflows); narrow it, or "
            "search a wide positive range with FloatRange(..., log=True)"
        )


@attrs.frozen
class EncodedSpace:
    """A validated space split into its categorical and numeric parameters, in internal coordinates.

    ``cat_names``/``n_choices`` list the categorical parameters; ``num_names``, ``low``, ``high``,
    ``is_int`` and ``is_log`` the numeric ones (bounds in internal coordinates).
    """

    cat_names: tuple[str, ...]
    n_choices: IntArray
    num_names: tuple[str, ...]
    low: FloatArray
    high: FloatArray
    is_int: npt.NDArray[np.bool_]
    is_log: npt.NDArray[np.bool_]

    @property
    def n_dims(self) -> int:
        return len(self.cat_names) + len(self.num_names)


def encode_space(space: Mapping[str, Distribution]) -> EncodedSpace:
    """Validate ``space`` and lay it out for the estimators (parameters in the mapping's order)."""
    if not isinstance(space, Mapping):
        raise ConfigError(f"the search space must be a mapping of name -> distribution, got {space!r}")
    if not space:
        raise ConfigError("the search space is empty: give at least one parameter")
    cat_names: list[str] = []
    n_choices: list[int] = []
    num_names: list[str] = []
    bounds: list[tuple[float, float, bool, bool]] = []
    for name, dist in space.items():
        if not isinstance(name, str):
            raise ConfigError(f"parameter names must be strings, got {name!r}")
        if isinstance(dist, Categorical):
            cat_names.append(name)
            n_choices.append(dist.n_choices)
        elif isinstance(dist, IntRange):
            num_names.append(name)
            bounds.append((dist.low - 0.5, dist.high + 0.5, True, False))
        elif isinstance(dist, FloatRange):
            num_names.append(name)
            low, high = (math.log(dist.low), math.log(dist.high)) if dist.log else (dist.low, dist.high)
            bounds.append((float(low), float(high), False, dist.log))
        else:
            raise ConfigError(
                f"parameter {name!r}: expected Categorical, IntRange or FloatRange, got {dist!r}"
            )
    columns = list(zip(*bounds, strict=True)) if bounds else [(), (), (), ()]
    return EncodedSpace(
        cat_names=tuple(cat_names),
        n_choices=np.asarray(n_choices, dtype=np.int64),
        num_names=tuple(num_names),
        low=np.asarray(columns[0], dtype=np.float64),
        high=np.asarray(columns[1], dtype=np.float64),
        is_int=np.asarray(columns[2], dtype=np.bool_),
        is_log=np.asarray(columns[3], dtype=np.bool_),
    )


def encode_params(space: EncodedSpace, params: Mapping[str, object]) -> tuple[IntArray, FloatArray]:
    """One point's internal rows; raises :class:`ConfigError` for missing, extra or out-of-range values."""
    # A string would pass the name check below as its characters, then fail on indexing with a TypeError.
    if not isinstance(params, Mapping):
        raise ConfigError(f"params must be a mapping of name -> value, got {params!r}")
    expected = set(space.cat_names) | set(space.num_names)
    if set(params) != expected:
        missing = sorted(expected - set(params))
        extra = sorted(set(params) - expected)
        raise ConfigError(f"params do not match the space: missing {missing}, unexpected {extra}")
    cats = np.empty(len(space.cat_names), dtype=np.int64)
    for i, name in enumerate(space.cat_names):
        value = params[name]
        if not _is_integral(value) or not 0 <= int(value) < space.n_choices[i]:  # type: ignore[call-overload]
            raise ConfigError(f"{name}={value!r} is not a choice in 0..{space.n_choices[i] - 1}")
        cats[i] = int(value)  # type: ignore[call-overload]
    nums = np.empty(len(space.num_names), dtype=np.float64)
    for j, name in enumerate(space.num_names):
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise ConfigError(f"{name}={value!r} is not a number")
        x = float(value)
        if space.is_int[j] and not _is_integral(value):
            raise ConfigError(f"{name}={value!r} is not an integer")
        y = math.log(x) if space.is_log[j] and x > 0 else x
        if not (space.low[j] <= y <= space.high[j]) or (space.is_log[j] and x <= 0):
            raise ConfigError(f"{name}={value!r} is outside the parameter's range")
        nums[j] = y
    return cats, nums


def decode_params(space: EncodedSpace, cats: IntArray, nums: FloatArray) -> dict[str, ParamValue]:
    """The user-facing params of one internal point: ints for categorical and integer parameters."""
    params: dict[str, ParamValue] = {name: int(cats[i]) for i, name in enumerate(space.cat_names)}
    for j, name in enumerate(space.num_names):
        y = float(np.clip(nums[j], space.low[j], space.high[j]))
        if space.is_int[j]:
            # The bin edges low - 0.5 and high + 0.5 round outwards; pull them back in.
            low, high = space.low[j] + 0.5, space.high[j] - 0.5
            params[name] = int(min(max(round(y), low), high))
        elif space.is_log[j]:
            low, high = math.exp(space.low[j]), math.exp(space.high[j])
            params[name] = min(max(math.exp(y), low), high)
        else:
            params[name] = y
    return params


def sample_uniform(space: EncodedSpace, rng: np.random.Generator, n: int) -> tuple[IntArray, FloatArray]:
    """``n`` points drawn uniformly (log-uniformly for log floats): the start-up trials' distribution."""
    cats = rng.integers(0, space.n_choices, size=(n, len(space.cat_names)), dtype=np.int64)
    nums = rng.uniform(space.low, space.high, size=(n, len(space.num_names)))
    nums = np.where(space.is_int, np.clip(np.round(nums), space.low + 0.5, space.high - 0.5), nums)
    return cats, nums


def _is_integral(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | np.integer):
        return True
    return isinstance(value, float | np.floating) and float(value).is_integer()


def enumerate_points(space: EncodedSpace, limit: int) -> tuple[IntArray, FloatArray] | None:
    """Every point of a finite space (categorical and integer parameters only) in a fixed order, as
    ``(cats, nums)`` rows; ``None`` when the space has a float parameter or more than ``limit`` points."""
    if np.any(~space.is_int):
        return None
    sizes = [int(n) for n in space.n_choices] + [
        int(h - lo) for lo, h in zip(space.low, space.high, strict=True)
    ]
    if math.prod(sizes) > limit:
        return None
    grid = np.indices(sizes).reshape(len(sizes), -1).T
    n_cat = len(space.cat_names)
    cats = grid[:, :n_cat].astype(np.int64)
    nums = grid[:, n_cat:].astype(np.float64) + space.low + 0.5
    return cats, nums
