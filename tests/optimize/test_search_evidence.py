"""A search's evidence: naming its records again after a parameter was added to the search."""

from __future__ import annotations

from collections.abc import Mapping

from aprompt._optimize.evidence_book import collect_evidence
from aprompt._optimize.final_pick import key_of
from aprompt._optimize.pooling import Observations
from aprompt._optimize.search_evidence import SearchEvidence
from aprompt._optimize.search_records import FullEval, RungEval, Trial


def _trial(number: int, choice: Mapping[str, int], scores: dict[str, float]) -> Trial:
    score = sum(scores.values()) / len(scores)
    return Trial(number, choice, tuple(scores), scores, score, 0, 0, 0.0)


def _evidence() -> SearchEvidence:
    evidence = SearchEvidence()
    evidence.add_full_eval(FullEval({"a": 0}, 0.5, {"e0": 1.0, "e1": 0.0}, 0, 0, 0))
    evidence.add_trial(_trial(0, {"a": 1}, {"e0": 1.0}))
    evidence.add_rung(RungEval(0, 0, {"a": 1}, ("e1",), {"e1": 1.0}, 1.0, 0, 0))
    evidence.add_trial(_trial(1, {"a": 2}, {"e1": 0.0}))
    return evidence


def _named(choice: Mapping[str, int]) -> Mapping[str, int]:
    return choice if "b" in choice else {"b": 0, **choice}


def test_a_rename_that_names_nothing_new_keeps_the_records_the_book_has_read() -> None:
    evidence = _evidence()
    evidence.rename(_named)
    evidence.book().evidence(evidence.tested)
    lists = (evidence.trials, evidence.rungs, evidence.full_evals, evidence.confirmations)
    pool = evidence.pool
    evidence.rename(_named)  # as at every join of a copy of the search
    assert (evidence.trials, evidence.rungs, evidence.full_evals, evidence.confirmations) == lists
    assert all(
        a is b
        for a, b in zip(
            lists, (evidence.trials, evidence.rungs, evidence.full_evals, evidence.confirmations), strict=True
        )
    )
    assert evidence.pool is pool


def test_a_rename_that_names_a_new_parameter_renames_every_record_and_the_book() -> None:
    evidence = _evidence()
    evidence.book().evidence(evidence.tested)
    evidence.rename(_named)
    assert all("b" in r.choice for r in [*evidence.trials, *evidence.rungs, *evidence.full_evals])
    assert evidence.tested == {key_of({"a": 0, "b": 0})}
    assert set(evidence.pool.scores) == {key_of({"a": 1, "b": 0}), key_of({"a": 2, "b": 0})}
    entries = [
        (r.choice, r.scores, r.score) for r in [*evidence.trials, *evidence.rungs, *evidence.full_evals]
    ]
    expected = collect_evidence(entries, evidence.tested)
    found = evidence.book().evidence(evidence.tested)
    assert [(e.key, dict(e.scores), e.estimate) for e in found] == [
        (e.key, dict(e.scores), e.estimate) for e in expected
    ]


def test_the_observations_kept_are_those_of_the_records_through_a_rename_and_a_join() -> None:
    evidence = _evidence()
    copy = evidence.fork()
    copy.add_rung(RungEval(1, 0, {"a": 3}, ("e0",), {"e0": 1.0}, 1.0, 0, 0))
    evidence.add_trial(_trial(2, {"a": 3}, {"e0": 0.0}))
    evidence.merge(copy, full_evals=1, rungs=1, spent=3)
    evidence.rename(_named)
    scored = [*evidence.trials, *evidence.rungs]
    assert isinstance(evidence.observations(), Observations)  # the rows kept, not read again
    assert list(evidence.observations()) == [(r.choice, r.score, len(r.scores)) for r in scored]
    evidence.add_rung(RungEval(2, 0, {"a": 0, "b": 0}, ("e0",), {"e0": 0.0}, None, 0, 1))  # unscored
    assert list(evidence.observations()) == [(r.choice, r.score, len(r.scores)) for r in scored]
