"""The search's evidence, kept up to date as its records come in.

The pick is decided again after every trial (a racing trial is compared with it), from every record so
far: merging each combination's scores over all the records at each decision makes a run's bookkeeping
grow with the square of its trials. An :class:`EvidenceBook` reads each record once, when it is new, and
keeps each combination's merged scores per record list (a *shelf*), so a decision costs the combinations,
not the records. What it gives is exactly what a pass over all the records gives (:func:`collect_evidence`
is a book read once): scores merged in shelf order and then record order (a later record's score of an
example wins), each combination named by its first record, the evidence in the order the combinations
first appear.

A shelf that changed other than by records added at its end (records renamed, a list replaced) is read
again from its start.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aprompt._optimize.final_pick import Evidence, Key, StampedEvidence, key_of, mean_of
from aprompt._optimize.observations import ObservationRows, Observations
from aprompt._optimize.pooling import pooled_estimates

#: A record as the evidence takes it: (choice, example id -> score, mean or ``None`` when the mean is not
#: evidence for the pooled model).
Entry = tuple[Mapping[str, int], Mapping[str, float], "float | None"]


class _Shelf:
    """One record list's share of the evidence: per combination, its merged scores and first choice, and
    the scored records as the pooled model takes them."""

    def __init__(self, entry: Callable[[Any], Entry]) -> None:
        self._entry = entry
        self._records: Sequence[Any] = ()
        self._read: list[Any] = []
        self.scores: dict[Key, dict[str, float]] = {}
        self.choices: dict[Key, Mapping[str, int]] = {}
        self.observations = ObservationRows()

    def take(self, records: Sequence[Any]) -> set[Key] | None:
        """Read the records not read yet; the combinations they changed, or ``None`` when the shelf was
        read again from its start."""
        n = len(self._read)
        again = records is not self._records or len(records) < n or list(records[:n]) != self._read
        if again:
            self._records, self._read = records, []
            self.scores, self.choices, self.observations = {}, {}, ObservationRows()
            n = 0
        changed: set[Key] = set()
        for record in records[n:]:
            choice, scores, mean = self._entry(record)
            key = key_of(choice)
            self.choices.setdefault(key, choice)
            self.scores.setdefault(key, {}).update(scores)
            if mean is not None and scores:
                self.observations.add(choice, mean, len(scores))
            changed.add(key)
            self._read.append(record)
        return None if again else changed


class EvidenceBook:
    """The evidence of records kept in shelves, one per record list, weighed in the shelves' order.

    Args:
        entries: per shelf, how a record reads as an :data:`Entry`.
    """

    def __init__(self, *entries: Callable[[Any], Entry]) -> None:
        self._shelves = [_Shelf(entry) for entry in entries]
        # Per combination: its scores merged over every shelf, and (mean, examples) of them.
        self._merged: dict[Key, dict[str, float]] = {}
        self._own: dict[Key, tuple[float, int]] = {}
        # Each merged dict's stamp (a new dict, a new stamp: the book never changes one it gave), and the
        # pick's comparisons kept by stamps (StampedEvidence).
        self._stamps: dict[Key, int] = {}
        self._next_stamp = itertools.count()
        self._leads: dict[tuple[int, int], bool] = {}
        # Every combination in the shelves' order (None: to be listed again, a shelf has a new one or was
        # read again), and those whose merged scores are to be made again (None: all).
        self._choices: dict[Key, Mapping[str, int]] | None = None
        self._stale: set[Key] | None = None
        # The evidence last given and the full set it was given for, while no record has changed since.
        self._given: tuple[frozenset[Key], StampedEvidence] | None = None

    def update(self, *record_lists: Sequence[Any]) -> EvidenceBook:
        """Bring the shelves up to ``record_lists`` (one per shelf, in order); returns the book."""
        for shelf, records in zip(self._shelves, record_lists, strict=True):
            combinations = len(shelf.choices)
            changed = shelf.take(records)
            if changed != set():
                self._given = None
            if changed is None:
                self._merged.clear()
                self._own.clear()
                self._choices = self._stale = None
                continue
            if len(shelf.choices) != combinations:
                self._choices = None
            for key in changed:
                self._merged.pop(key, None)
                self._own.pop(key, None)
            if self._stale is not None:
                self._stale |= changed
        return self

    def scores(self, choice: Mapping[str, int], shelves: int | None = None) -> dict[str, float]:
        """``choice``'s scores merged over the first ``shelves`` shelves (all by default): a new dict."""
        return self._merge(key_of(choice), shelves)

    def _merge(self, key: Key, shelves: int | None = None) -> dict[str, float]:
        merged: dict[str, float] = {}
        for shelf in self._shelves[:shelves]:
            scores = shelf.scores.get(key)
            if scores:
                merged.update(scores)
        return merged

    def evidence(self, full: set[Key]) -> StampedEvidence:
        """One :class:`~aprompt._optimize.final_pick.Evidence` per combination, stamped; ``full``: the
        combinations with a full evaluation; the same object again while no record and not ``full``
        changed."""
        if self._given is not None and self._given[0] == full:
            return self._given[1]
        choices = self._choices
        if choices is None:
            choices = self._choices = {}
            for shelf in self._shelves:
                for key, choice in shelf.choices.items():
                    choices.setdefault(key, choice)
        # A combination new to the book is a changed one (its shelf's records named it).
        stale = choices.keys() if self._stale is None else self._stale
        self._stale = set()
        for key in stale:
            merged = self._merged[key] = self._merge(key)
            self._stamps[key] = next(self._next_stamp)
            if merged:
                self._own[key] = (mean_of(merged), len(merged))
        if len(self._leads) > max(10_000, 50 * len(choices)):  # answers of stamps gone accumulate
            self._leads.clear()
        observations = Observations([shelf.observations for shelf in self._shelves])
        estimates = pooled_estimates(observations, self._own, choices)
        stamps = self._stamps
        given = StampedEvidence(
            [
                Evidence(choice, self._merged[key], estimates[key], key in full, key=key, stamp=stamps[key])
                for key, choice in choices.items()
            ],
            self._leads,
        )
        self._given = (frozenset(full), given)
        return given


def collect_evidence(evaluations: Sequence[Entry], full: set[Key]) -> StampedEvidence:
    """One :class:`~aprompt._optimize.final_pick.Evidence` per combination from its evaluations.

    Args:
        evaluations: every trial and full evaluation as (choice, example id -> score, mean or ``None``
            when unscored).
        full: the combinations that have a full evaluation.
    """
    return EvidenceBook(lambda entry: entry).update(evaluations).evidence(full)
