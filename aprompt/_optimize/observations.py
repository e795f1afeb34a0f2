"""The observations the pooled model of :mod:`aprompt._optimize.pooling` is fitted on, as rows.

An observation is a scored evaluation of a combination: (choice, mean score, number of examples). A fit
reads them as the distinct combinations in order of first appearance, each observation's index among
them, its mean and its examples (:func:`observation_rows`). A search fits the model on every trial at
every decision, so :class:`ObservationRows` keeps these as observations are added, and
:class:`Observations` joins kept parts without reading each observation again.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence

import numpy as np

Key = tuple[tuple[str, int], ...]


def combination_key(choice: Mapping[str, int]) -> Key:
    """A combination as a hashable key: its (parameter, choice) items, sorted."""
    return tuple(sorted((k, int(v)) for k, v in choice.items()))


#: Each choice's key by its items as given (a choice is read again at every decision of a run).
_KEYS: dict[tuple[tuple[str, int], ...], Key] = {}


def observation_rows(
    observations: Sequence[tuple[Mapping[str, int], float, int]],
) -> tuple[list[Key], np.ndarray, np.ndarray, np.ndarray]:
    """The distinct combinations in order of first appearance, each observation's index among them,
    its mean and its examples."""
    if len(_KEYS) > 100_000:  # a long-lived process meets ever new combinations
        _KEYS.clear()
    keys = _KEYS
    codes_of: dict[Key, int] = {}
    by_items: dict[tuple[tuple[str, int], ...], int] = {}
    distinct: list[Key] = []
    codes = []
    for choice, _, _ in observations:
        items = tuple(choice.items())
        code = by_items.get(items)
        if code is None:
            key = keys.get(items)
            if key is None:
                key = keys[items] = combination_key(choice)
            code = codes_of.get(key)
            if code is None:
                code = codes_of[key] = len(distinct)
                distinct.append(key)
            by_items[items] = code
        codes.append(code)
    y = np.array([score for _, score, _ in observations])
    w = np.array([float(n) for _, _, n in observations])
    index = np.array(codes, dtype=np.intp)
    return distinct, index, y, w


class ObservationRows:
    """Observations as :func:`additive_fit` reads them, kept as they are added: each one's
    combination read once, not at every fit."""

    def __init__(self) -> None:
        self.observations: list[tuple[Mapping[str, int], float, int]] = []
        #: The distinct combinations in order of first appearance, and where each first appears.
        self.distinct: list[Key] = []
        self.first: list[int] = []
        self._codes_of: dict[Key, int] = {}
        self.codes: list[int] = []
        self.y: list[float] = []
        self.w: list[float] = []

    def add(self, choice: Mapping[str, int], mean: float, n: int) -> None:
        key = combination_key(choice)
        code = self._codes_of.get(key)
        if code is None:
            code = self._codes_of[key] = len(self.distinct)
            self.distinct.append(key)
            self.first.append(len(self.codes))
        self.observations.append((choice, mean, n))
        self.codes.append(code)
        self.y.append(mean)
        self.w.append(float(n))

    def copy(self) -> ObservationRows:
        """A copy that later additions to either do not reach."""
        copied = ObservationRows()
        copied.observations, copied.distinct, copied.first = (
            [*self.observations],
            [*self.distinct],
            [*self.first],
        )
        copied._codes_of, copied.codes = dict(self._codes_of), [*self.codes]
        copied.y, copied.w = [*self.y], [*self.w]
        return copied


class Observations(list[tuple[Mapping[str, int], float, int]]):
    """The observations of some :class:`ObservationRows` one after another, as they are now: a list
    whose :func:`additive_fit` reads the rows kept, not each observation."""

    def __init__(self, parts: Sequence[ObservationRows]) -> None:
        super().__init__(itertools.chain.from_iterable(part.observations for part in parts))
        self._parts = [(part, len(part.codes)) for part in parts]

    def rows(self) -> tuple[list[Key], np.ndarray, np.ndarray, np.ndarray]:
        """What :func:`observation_rows` gives of the same observations."""
        global_of: dict[Key, int] = {}
        distinct: list[Key] = []
        indexes = []
        ys: list[float] = []
        ws: list[float] = []
        for part, n in self._parts:
            # A part's combinations that first appear within its first n observations, in that order.
            known = bisect.bisect_left(part.first, n)
            mapping = np.empty(known, dtype=np.intp)
            for local, key in enumerate(part.distinct[:known]):
                code = global_of.get(key)
                if code is None:
                    code = global_of[key] = len(distinct)
                    distinct.append(key)
                mapping[local] = code
            indexes.append(mapping[np.array(part.codes[:n], dtype=np.intp)])
            ys.extend(part.y[:n])
            ws.extend(part.w[:n])
        index = np.concatenate(indexes) if indexes else np.zeros(0, dtype=np.intp)
        return distinct, index.astype(np.intp), np.array(ys), np.array(ws)
