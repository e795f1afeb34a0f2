"""The sampler's record of trials: value objects for callers, and the array table the estimators read."""

from __future__ import annotations

import enum
import math
from collections import Counter

import attrs
import numpy as np

from aprompt._errors import APromptError
from aprompt.tpe._space import FloatArray, IntArray, ParamValue


class TrialError(APromptError, ValueError):
    """A misuse of ask/tell: telling a trial that was never asked or was already told, a value that is
    not a finite number, or a history that does not fit the sampler."""


class TrialState(enum.Enum):
    """Where a trial stands: asked and not yet told, told a value, or told that it failed."""

    PENDING = "pending"
    COMPLETE = "complete"
    FAILED = "failed"


@attrs.frozen(hash=False)
class Suggestion:
    """The parameters to evaluate for trial ``number``; tell the result back with that number.

    ``params`` maps each parameter to an ``int`` (categorical index or integer) or a ``float``. It is the
    caller's own copy: changing it does not change what the sampler recorded.
    """

    number: int
    params: dict[str, ParamValue]


@attrs.frozen(hash=False)
class TrialRecord:
    """One trial as the sampler knows it; a journal of these rebuilds a sampler exactly
    (see :meth:`TPESampler.from_history`). ``value`` is set only when ``state`` is ``COMPLETE``."""

    number: int
    params: dict[str, ParamValue]
    state: TrialState
    value: float | None = None

    def __attrs_post_init__(self) -> None:
        if isinstance(self.number, bool) or not isinstance(self.number, int) or self.number < 0:
            raise TrialError(f"trial number must be a non-negative int, got {self.number!r}")
        if not isinstance(self.state, TrialState):
            raise TrialError(f"trial {self.number}: state must be a TrialState, got {self.state!r}")
        if self.state is TrialState.COMPLETE:
            object.__setattr__(self, "value", check_value(self.number, self.value))
        elif self.value is not None:
            raise TrialError(f"trial {self.number} is {self.state.value} and cannot carry a value")


def check_value(number: int, value: object) -> float:
    """``value`` as a float, or :class:`TrialError` when it is not a finite real number."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TrialError(f"trial {number}: the value must be a real number, got {value!r}")
    try:
        result = float(value)
    except OverflowError:  # an int beyond the largest float
        result = math.inf
    if not math.isfinite(result):
        raise TrialError(
            f"trial {number}: the value must be finite, got {result!r}; "
            "tell a trial that produced no score with tell_failed()"
        )
    return result


_CODES = {TrialState.PENDING: 0, TrialState.COMPLETE: 1, TrialState.FAILED: 2}


class TrialTable:
    """Every trial's internal point, state and value as arrays ordered by trial number.

    Rows are appended (amortised growth), so building the estimators never walks trials in Python.
    """

    PENDING, COMPLETE, FAILED = 0, 1, 2

    def __init__(self, n_cat: int, n_num: int) -> None:
        self._size = 0
        self.cats: IntArray = np.empty((16, n_cat), dtype=np.int64)
        self.nums: FloatArray = np.empty((16, n_num), dtype=np.float64)
        self.values: FloatArray = np.empty(16, dtype=np.float64)
        self.states = np.empty(16, dtype=np.int8)
        self.numbers: IntArray = np.empty(16, dtype=np.int64)
        self.params: list[dict[str, ParamValue]] = []
        self._rows: dict[int, int] = {}
        # How many trials in each state sit at each point: repeat checks without scanning the table.
        self._points: tuple[Counter[bytes], ...] = (Counter(), Counter(), Counter())

    def __len__(self) -> int:
        return self._size

    def view(self) -> tuple[IntArray, FloatArray, FloatArray, np.ndarray, IntArray]:
        """``(cats, nums, values, states, numbers)`` of the filled rows (views, do not modify)."""
        n = self._size
        return self.cats[:n], self.nums[:n], self.values[:n], self.states[:n], self.numbers[:n]

    def add(
        self,
        number: int,
        cats: IntArray,
        nums: FloatArray,
        params: dict[str, ParamValue],
        state: TrialState,
        value: float | None,
    ) -> None:
        """Append a trial; its number must be above every number already in the table."""
        if self._size and number <= self.numbers[self._size - 1]:
            raise TrialError(f"trial {number} is not after trial {self.numbers[self._size - 1]}")
        if self._size == self.values.shape[0]:
            self._grow()
        row = self._size
        self.cats[row], self.nums[row], self.numbers[row] = cats, nums, number
        self.states[row] = _CODES[state]
        self.values[row] = np.nan if value is None else value
        self.params.append(params)
        self._rows[number] = row
        self._points[self.states[row]][point_key(cats, nums)] += 1
        self._size += 1

    def state_of(self, number: int) -> TrialState | None:
        row = self._rows.get(number)
        if row is None:
            return None
        return next(s for s, code in _CODES.items() if code == self.states[row])

    def finish(self, number: int, state: TrialState, value: float | None) -> None:
        row = self._rows[number]
        key = point_key(self.cats[row], self.nums[row])
        self._points[self.states[row]][key] -= 1
        self.states[row] = _CODES[state]
        self._points[self.states[row]][key] += 1
        self.values[row] = np.nan if value is None else value

    def has_point(self, key: bytes, states: tuple[int, ...]) -> bool:
        """Whether a trial in one of ``states`` (codes) sits at the point with this :func:`point_key`."""
        return any(self._points[code][key] > 0 for code in states)

    def records(self) -> tuple[TrialRecord, ...]:
        _, _, values, states, numbers = self.view()
        return tuple(
            TrialRecord(
                number=int(numbers[row]),
                params=dict(self.params[row]),
                state=self.state_of(int(numbers[row])),  # type: ignore[arg-type]
                value=float(values[row]) if states[row] == self.COMPLETE else None,
            )
            for row in range(self._size)
        )

    def _grow(self) -> None:
        capacity = 2 * self.values.shape[0]
        self.cats = _resized(self.cats, capacity)
        self.nums = _resized(self.nums, capacity)
        self.values = _resized(self.values, capacity)
        self.states = _resized(self.states, capacity)
        self.numbers = _resized(self.numbers, capacity)


def point_key(cats: IntArray, nums: FloatArray) -> bytes:
    """A hashable identity of one internal point (``-0.0`` and ``0.0`` are the same point)."""
    return np.ascontiguousarray(cats).tobytes() + np.ascontiguousarray(nums + 0.0).tobytes()


def _resized(array: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.empty((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown
