"""The evidence book: kept up to date record by record, it gives what one pass over all the records gives."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from aprompt._optimize.evidence_book import Entry, EvidenceBook, collect_evidence
from aprompt._optimize.final_pick import Evidence, StampedEvidence, key_of, pick


def _record(rng: random.Random) -> Entry:
    choice = {"a.instruction": rng.randrange(3), "a.demos": rng.randrange(3)}
    ids = rng.sample(range(40), rng.randrange(0, 8))
    scores = {f"e{i}": float(rng.random() < 0.5) for i in ids}
    return choice, scores, (sum(scores.values()) / len(scores) if scores else None)


def _as_tuples(found: list[Evidence]) -> list[tuple[Any, ...]]:
    return [(key_of(e.choice), list(e.scores.items()), e.estimate, e.full) for e in found]


def _book(counted: list[int]) -> EvidenceBook:
    def entry(record: Entry) -> Entry:
        counted.append(1)
        return record

    def confirmation(record: Entry) -> Entry:
        counted.append(1)
        return record[0], record[1], None

    return EvidenceBook(entry, entry, confirmation)


def test_a_decision_reads_only_the_records_added_since_the_last() -> None:
    rng = random.Random(7)
    trials: list[Entry] = []
    fulls: list[Entry] = []
    confirmations: list[Entry] = []
    counted: list[int] = []
    book = _book(counted)
    full = set()
    for step in range(120):
        if step % 15 == 14:
            fulls.append(_record(rng))
            full.add(key_of(fulls[-1][0]))
        elif step % 40 == 39:
            confirmations.append(_record(rng))
        else:
            trials.append(_record(rng))
        before = len(counted)
        found = book.update(trials, fulls, confirmations).evidence(full)
        assert len(counted) - before == 1  # the new record only
        everything = [*trials, *fulls, *[(c, s, None) for c, s, _ in confirmations]]
        assert _as_tuples(found) == _as_tuples(collect_evidence(everything, full))


def test_a_later_shelf_wins_an_example_whatever_order_the_records_came_in() -> None:
    choice = {"a.instruction": 1}
    trials: list[Entry] = [(choice, {"e0": 0.0, "e1": 0.0}, 0.0)]
    fulls: list[Entry] = [(choice, {"e0": 1.0, "e1": 1.0}, 1.0)]
    book = _book([])
    book.update(trials, fulls, [])
    trials.append((choice, {"e0": 0.0}, 0.0))  # a trial recorded after the full evaluation
    found = book.update(trials, fulls, []).evidence({key_of(choice)})
    assert dict(found[0].scores) == {"e0": 1.0, "e1": 1.0}
    assert book.scores(choice, shelves=1) == {"e0": 0.0, "e1": 0.0}


def test_records_changed_in_place_are_read_again() -> None:
    old: Mapping[str, int] = {"a.instruction": 1}
    renamed: Mapping[str, int] = {"a.instruction": 1, "b.instruction": 0}
    trials: list[Entry] = [(old, {"e0": 1.0}, 1.0), (old, {"e1": 0.0}, 0.0)]
    book = _book([])
    assert [key_of(e.choice) for e in book.update(trials, [], []).evidence(set())] == [key_of(old)]
    trials[:] = [(renamed, scores, mean) for _, scores, mean in trials]  # the same list, renamed
    found = book.update(trials, [], []).evidence(set())
    assert [(key_of(e.choice), dict(e.scores)) for e in found] == [(key_of(renamed), {"e0": 1.0, "e1": 0.0})]


def test_the_pick_on_the_books_evidence_is_the_pick_of_one_pass_over_the_records_at_every_decision() -> None:
    # The book keeps the pick's comparisons across decisions by the stamps of the scores compared; a record
    # that changes a combination's scores (the incumbent's among them) gives it a new stamp.
    rng = random.Random(11)
    baseline = {"a.instruction": 0, "a.demos": 0}
    trials: list[Entry] = []
    fulls: list[Entry] = [(baseline, {f"e{i}": float(rng.random() < 0.5) for i in range(40)}, 0.5)]
    confirmations: list[Entry] = []
    full = {key_of(baseline)}
    book = _book([])
    kept = 0
    for step in range(200):
        record = _record(rng)
        if step % 9 == 8:
            record = (record[0], {f"e{i}": float(rng.random() < 0.6) for i in range(40)}, 0.6)
            fulls.append(record)
            full.add(key_of(record[0]))
        elif step % 25 == 24:
            confirmations.append(record)
        else:
            trials.append(record)
        found = book.update(trials, fulls, confirmations).evidence(full)
        everything = [*trials, *fulls, *[(c, s, None) for c, s, _ in confirmations]]
        once = list(collect_evidence(everything, full))  # a plain list: nothing kept
        assert pick(found, baseline, min_shared=5) == pick(once, baseline, min_shared=5)
        assert isinstance(found, StampedEvidence)
        kept = max(kept, len(found.leads))
    assert kept > 0


def test_a_book_whose_records_did_not_change_gives_its_evidence_and_pick_again() -> None:
    rng = random.Random(5)
    baseline = {"a.instruction": 0, "a.demos": 0}
    trials: list[Entry] = [_record(rng) for _ in range(30)]
    fulls: list[Entry] = [(baseline, {f"e{i}": float(rng.random() < 0.5) for i in range(40)}, 0.5)]
    confirmations: list[Entry] = []  # the same list at each update, as a search's
    full = {key_of(baseline)}
    book = _book([])
    found = book.update(trials, fulls, confirmations).evidence(full)
    decided = pick(found, baseline, min_shared=5)
    assert book.update(trials, fulls, confirmations).evidence(full) is found
    assert pick(found, baseline, min_shared=5) is decided
    assert pick(found, baseline, min_shared=6) is not decided  # asked otherwise: decided anew

    def changed(found_before: Any) -> Any:
        found = book.update(trials, fulls, confirmations).evidence(full)
        assert found is not found_before
        everything = [*trials, *fulls]
        assert pick(found, baseline, min_shared=5) == pick(
            list(collect_evidence(everything, full)), baseline, min_shared=5
        )
        return found

    trials.append(_record(rng))  # a record
    found = changed(found)
    fulls.append((trials[0][0], {f"e{i}": 1.0 for i in range(40)}, 1.0))
    full.add(key_of(trials[0][0]))
    found = changed(found)
    full.discard(key_of(trials[0][0]))  # the same records, another full set
    found = changed(found)
