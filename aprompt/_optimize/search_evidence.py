"""The evidence a search keeps: its trials, race rungs, full evaluations and confirmations in record order,
the score pool of the trials and rungs, the combinations fully evaluated or dropped by a race, the program
runs spent, and the book that merges the records' scores for each decision
(:mod:`aprompt._optimize.evidence_book`). ``SearchLoop`` records into one and hands its lists out; a
copy of the search (``SearchLoop.fork``) keeps a copy, merged back at its join.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import attrs

from aprompt._optimize.candidates import choice_key
from aprompt._optimize.evidence_book import EvidenceBook
from aprompt._optimize.final_pick import FinalPick, Key, key_of
from aprompt._optimize.observations import ObservationRows, Observations
from aprompt._optimize.pooling import ScorePool
from aprompt._optimize.search_records import FullEval, RungEval, Trial

#: A record whose choice a search names in full (see ``SearchLoop._named``).
Record = TypeVar("Record", Trial, FullEval, RungEval, FinalPick)

#: How a search names a choice in full (``SearchLoop._named``).
Naming = Callable[[Mapping[str, int]], Mapping[str, int]]


def renamed(record: Record, named: Naming) -> Record:
    """``record`` with its choice ``named`` (itself when the name is its choice)."""
    choice = named(record.choice)
    return record if choice is record.choice else attrs.evolve(record, choice=choice)


def _renamed_all(records: list[Record], named: Naming) -> list[Record]:
    """``records`` with their choices ``named``: the same list when no record's name changes."""
    named_records = [renamed(record, named) for record in records]
    if all(new is old for new, old in zip(named_records, records, strict=True)):
        return records
    return named_records


def _observe(rows: ObservationRows, record: Trial | RungEval) -> None:
    """Add ``record`` to ``rows`` as the pooled model takes it, when it is scored."""
    if record.score is not None:
        rows.add(record.choice, record.score, len(record.scores))


def _new_book() -> EvidenceBook:
    """The book of a search's records: trials, rungs and full evaluations with their means (the pooled
    model's observations), then the confirmations' training examples, evidence for the paired
    comparisons only (not for the model of the validation scores)."""
    return EvidenceBook(
        lambda r: (r.choice, r.scores, r.score),
        lambda r: (r.choice, r.scores, r.score),
        lambda r: (r.choice, r.scores, r.score),
        lambda c: (c.choice, c.scores, None),
    )


@attrs.define
class SearchEvidence:
    """A search's records and what is kept up to date from them; see the module docstring."""

    trials: list[Trial] = attrs.field(factory=list)
    full_evals: list[FullEval] = attrs.field(factory=list)
    rungs: list[RungEval] = attrs.field(factory=list)
    #: The contenders' runs on training examples (evidence for the pick, not full evaluations).
    confirmations: list[FullEval] = attrs.field(factory=list)
    #: Combinations a race dropped.
    raced_out: set[Key] = attrs.field(factory=set)
    #: The combinations with a full evaluation.
    tested: set[Key] = attrs.field(factory=set)
    #: Each combination's scores over its trials and rungs.
    pool: ScorePool = attrs.field(factory=ScorePool)
    #: Program runs of the trials, rungs and full evaluations so far.
    spent: int = 0
    #: The records' evidence, kept up to date as they come in (see ``book``).
    _book: EvidenceBook = attrs.field(factory=_new_book)
    #: The scored trials' and rungs' observations (see ``observations``), kept as they come in.
    _trial_rows: ObservationRows = attrs.field(factory=ObservationRows)
    _rung_rows: ObservationRows = attrs.field(factory=ObservationRows)

    def add_trial(self, trial: Trial) -> None:
        self.trials.append(trial)
        self.spent += len(trial.example_ids)
        self.pool.add(trial.choice, trial.scores)
        _observe(self._trial_rows, trial)

    def add_rung(self, rung: RungEval) -> None:
        self.rungs.append(rung)
        self.spent += len(rung.example_ids)
        self.pool.add(rung.choice, rung.scores)
        _observe(self._rung_rows, rung)

    def add_full_eval(self, result: FullEval) -> int:
        """Add a full evaluation; returns its index."""
        self.full_evals.append(result)
        self.spent += len(result.scores) + result.n_unscored - result.reused
        self.tested.add(choice_key(result.choice))
        return len(self.full_evals) - 1

    def add_confirmation(self, record: FullEval) -> int:
        """Add a confirmation; returns its index."""
        self.confirmations.append(record)
        return len(self.confirmations) - 1

    def book(self) -> EvidenceBook:
        """The book of every record so far (trials, rungs, full evaluations, confirmations, in that
        order: the order their scores merge in)."""
        return self._book.update(self.trials, self.rungs, self.full_evals, self.confirmations)

    def full_score(self, choice: Mapping[str, int]) -> float:
        """The score of ``choice``'s last full evaluation."""
        key = key_of(choice)
        return next(f.score for f in reversed(self.full_evals) if key_of(f.choice) == key)

    def settled(self) -> set[Key]:
        """The combinations with a full evaluation or dropped by a race (by key)."""
        return self.tested | self.raced_out

    def observations(self) -> list[tuple[Mapping[str, int], float, int]]:
        """The scored trials and race rungs as the pooled model takes them: (choice, mean, examples)."""
        return Observations([self._trial_rows, self._rung_rows])

    def _observe(self) -> None:
        """Read the observations of every trial and rung again."""
        self._trial_rows, self._rung_rows = ObservationRows(), ObservationRows()
        for trial in self.trials:
            _observe(self._trial_rows, trial)
        for rung in self.rungs:
            _observe(self._rung_rows, rung)

    def rename(self, named: Naming) -> None:
        """Name every record's choice by ``named`` (a parameter was added to the search). A list, set or
        pool none of whose choices a new name changes is kept as it is: a search names its evidence again
        at every join of a copy (``SearchLoop.merge``), and a list replaced is read again by the book."""
        trials, rungs = self.trials, self.rungs
        self.trials = _renamed_all(self.trials, named)
        self.full_evals = _renamed_all(self.full_evals, named)
        self.rungs = _renamed_all(self.rungs, named)
        self.confirmations = _renamed_all(self.confirmations, named)
        if trials is not self.trials or rungs is not self.rungs:
            self._observe()
        tested = {choice_key(named(dict(key))) for key in self.tested}
        if tested != self.tested:
            self.tested = tested
        raced_out = {key_of(named(dict(key))) for key in self.raced_out}
        if raced_out != self.raced_out:
            self.raced_out = raced_out
        if any(named(choice) is not choice for choice in self.pool.choices.values()):
            pool = ScorePool()
            for key, scores in self.pool.scores.items():
                pool.add(named(self.pool.choices[key]), scores)
            self.pool = pool

    def fork(self) -> SearchEvidence:
        """A copy that records apart from this one (its own lists, sets, pool and book)."""
        return SearchEvidence(
            trials=list(self.trials),
            full_evals=list(self.full_evals),
            rungs=list(self.rungs),
            confirmations=list(self.confirmations),
            raced_out=set(self.raced_out),
            tested=set(self.tested),
            pool=self.pool.copy(),
            spent=self.spent,
            trial_rows=self._trial_rows.copy(),
            rung_rows=self._rung_rows.copy(),
        )

    def merge(self, fork: SearchEvidence, *, full_evals: int, rungs: int, spent: int) -> None:
        """Add what ``fork`` (made by :meth:`fork` when this one had ``full_evals`` full evaluations,
        ``rungs`` rungs and ``spent`` program runs) recorded since: its full evaluations and rungs, runs,
        and the combinations it fully evaluated or dropped."""
        self.full_evals.extend(fork.full_evals[full_evals:])
        for rung in fork.rungs[rungs:]:
            self.rungs.append(rung)
            self.pool.add(rung.choice, rung.scores)
            _observe(self._rung_rows, rung)
        self.spent += fork.spent - spent
        self.tested |= fork.tested
        self.raced_out |= fork.raced_out
