"""An undecided final pick is confirmed on training examples that the compared programs do not show as
demos (:mod:`aprompt._optimize.confirmation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt import Example
from aprompt._optimize.confirmation import (
    CONFIRMATION_KEPT_BELOW,
    MAX_CHALLENGERS,
    contenders,
    fresh_examples,
    runs_kept_for_confirmation,
)
from aprompt._optimize.final_pick import FinalPick, describe_choice, key_of
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import (
    SMALL_BUDGET,
    QAProgram,
    exact_match,
    item_of,
    lm_for,
    qa_examples,
)
from tests.optimize.test_labeled_reference import demos_help

pytestmark = pytest.mark.anyio

TRAIN = (0, 40)
VAL = (100, 130)


def proposed_leads(on_training_examples: bool) -> Any:
    """With demos, right on items not a multiple of 3; the proposed instruction also gets the multiples of
    9 among the validation items right (100..129: 23 of 30 against 20 of 30, a lead within the noise), and
    when ``on_training_examples`` every training item (the multiples of 3 among 0..39 too: a clear lead)."""

    def respond(request: ChatRequest) -> str:
        reply = demos_help(request)
        if not reply.startswith("Answer: ans-"):
            return reply
        item = item_of(request.last_user)
        proposed = "about the item" in str(request.messages[0].get("content", ""))
        leads = proposed and (item % 9 == 0 if item >= VAL[0] else on_training_examples)
        return reply if item % 3 != 0 or leads else "Answer: wrong"

    return respond


def proposed_loses_on_training_examples(request: ChatRequest) -> str:
    """As ``proposed_leads(False)``, but the proposed instruction is wrong on every training item."""
    reply = proposed_leads(False)(request)
    proposed = "about the item" in str(request.messages[0].get("content", ""))
    if reply.startswith("Answer: ") and proposed and item_of(request.last_user) < VAL[0]:
        return "Answer: wrong"
    return reply


async def optimize(server: FakeOpenAIServer, **options: Any) -> aprompt.OptimizeResult:
    async with lm_for(server) as lm:
        return await aprompt.optimize(
            QAProgram(),
            qa_examples(*TRAIN),
            exact_match,
            valset=qa_examples(*VAL),
            lm=lm,
            budget=dict(SMALL_BUDGET),
            seed=2,
            strategy="mipro",
            **options,
        )


def demo_ids(result: aprompt.OptimizeResult, choice: Any) -> set[str]:
    assert result.candidates is not None
    return set(result.candidates.demo_sets["answer"][choice.get("answer.demos", 0)].source_ids)


async def test_a_lead_that_holds_on_fresh_training_examples_is_returned() -> None:
    events: list[object] = []
    async with FakeOpenAIServer(responder=proposed_leads(True), api_key=TEST_API_KEY) as server:
        result = await optimize(server, on_event=events.append)
    planned = next(e for e in events if isinstance(e, aprompt.RunPlanned))
    assert 0 < sum(len(c.scores) for c in result.confirmations) <= planned.detail["confirmation_at_most"]
    reference = dict(result.full_evals[1].choice)
    assert result.pick is not None
    # On the validation set alone the lead (3 of 30, no loss) is within the noise; the pick and its
    # challenger ran on the training examples they do not show, and the lead held there.
    assert result.confirmations, result.pick.reason
    assert dict(result.confirmations[0].choice) == reference
    assert dict(result.best_choice) != reference and result.best_choice["answer.instruction"] != 0
    assert f"it replaced {describe_choice(reference)}" in result.pick.reason
    train_ids = {e.id for e in qa_examples(*TRAIN)}
    for confirmation in result.confirmations:
        ran = set(confirmation.scores)
        assert ran and ran <= train_ids
        assert not ran & demo_ids(result, confirmation.choice)  # its own demos are never its evidence
        assert len(ran) <= len(range(*VAL))


async def test_a_lead_on_the_validation_set_alone_is_not_returned() -> None:
    async with FakeOpenAIServer(responder=proposed_leads(False), api_key=TEST_API_KEY) as server:
        result = await optimize(server)
    reference = dict(result.full_evals[1].choice)
    leading = [f for f in result.full_evals[2:] if f.score > result.full_evals[1].score]
    assert leading  # the premise: a search result leads the hand-written prompt on the validation set
    assert result.confirmations  # it was undecided, so it was confirmed ...
    # ... and on the training examples the two tie, so 3 wins of 30 validation examples stay no evidence.
    assert dict(result.best_choice) == reference
    assert result.pick is not None and "labeled demos" in result.pick.reason
    assert "no challenger's lead held there" in result.pick.reason


async def test_a_challenger_that_cannot_win_after_the_first_half_stops_there() -> None:
    async with FakeOpenAIServer(
        responder=proposed_loses_on_training_examples, api_key=TEST_API_KEY
    ) as server:
        result = await optimize(server)
    reference = dict(result.full_evals[1].choice)
    assert result.confirmations and dict(result.best_choice) == reference
    # One stage each: losing every fresh example of the first half, the challenger could not be shown
    # better even by winning the whole second half, so neither runs it.
    runs = [key_of(c.choice) for c in result.confirmations]
    assert len(runs) == len(set(runs)) >= 2
    assert all(len(c.scores) <= len(range(*VAL)) // 2 for c in result.confirmations)


async def test_a_resumed_run_reads_the_confirmation_back(tmp_path: Path) -> None:
    async with FakeOpenAIServer(responder=proposed_leads(True), api_key=TEST_API_KEY) as server:
        first = await optimize(server, run_dir=tmp_path)
        sent = len(server.chat_requests)
        again = await optimize(server, run_dir=tmp_path)
        assert len(server.chat_requests) == sent  # nothing asked again
    assert again.confirmations == first.confirmations and first.confirmations
    assert dict(again.best_choice) == dict(first.best_choice)


async def test_a_limit_that_cannot_pay_for_the_confirmation_returns_the_validation_sets_pick() -> None:
    async with FakeOpenAIServer(responder=proposed_leads(True), api_key=TEST_API_KEY) as server:
        unlimited = await optimize(server)
        total = len(server.chat_requests)
    confirming = sum(len(c.scores) for c in unlimited.confirmations)
    assert confirming > 2
    async with FakeOpenAIServer(responder=proposed_leads(True), api_key=TEST_API_KEY) as server:
        limited = await optimize(server, limits=aprompt.Limits(max_lm_calls=total - confirming + 2))
        assert len(server.chat_requests) <= total - confirming + 2
    assert limited.stopped_by == "max_lm_calls" and limited.confirmations == ()
    # The pick decided on the validation set: the hand-written prompt, the lead there being no evidence.
    assert dict(limited.best_choice) == dict(unlimited.full_evals[1].choice)
    assert limited.pick is not None and "confirmed" not in limited.pick.reason


async def test_a_limit_below_the_plan_keeps_a_first_confirmation_stage_on_a_small_validation_set() -> None:
    async with FakeOpenAIServer(responder=proposed_leads(True), api_key=TEST_API_KEY) as server:
        unlimited = await optimize(server)
        total = len(server.chat_requests)
    confirming = sum(len(c.scores) for c in unlimited.confirmations)
    # The limit leaves less than the plan's confirmation: before, the trials spent it and the pick was
    # decided on the 30 validation examples alone (the hand-written prompt). On fewer than
    # CONFIRMATION_KEPT_BELOW validation examples the trials keep the first stage's runs, and the lead
    # is confirmed on training examples.
    limit = total - confirming // 2 - 1
    assert len(range(*VAL)) < CONFIRMATION_KEPT_BELOW
    async with FakeOpenAIServer(responder=proposed_leads(True), api_key=TEST_API_KEY) as server:
        limited = await optimize(server, limits=aprompt.Limits(max_lm_calls=limit))
        assert len(server.chat_requests) <= limit
    assert limited.stopped_by == "max_lm_calls" and limited.confirmations
    assert limited.best_choice["answer.instruction"] != 0
    assert limited.pick is not None and "confirmed on" in limited.pick.reason


def test_the_contenders_are_the_pick_and_its_strongest_fully_evaluated_challengers() -> None:
    pick = {"a": 0}
    challengers = ({"a": 1}, {"a": 2}, {"a": 3}, {"a": 4})
    current = FinalPick(pick, True, "", challengers=challengers)
    full = {key_of(pick), key_of({"a": 2}), key_of({"a": 3}), key_of({"a": 4})}
    chosen = contenders(current, full)
    assert chosen == [pick, {"a": 2}, {"a": 3}][: 1 + MAX_CHALLENGERS]
    assert contenders(FinalPick(pick, True, "", challengers=({"a": 1},)), full) == []  # none fully evaluated
    # While the baseline is kept, the hand-written reference goes first (it has its own share of the level).
    first = contenders(current, full, references=[{"a": 4}])
    assert first == [pick, {"a": 4}, {"a": 2}][: 1 + MAX_CHALLENGERS]
    # Against a searched pick it has no such share: the order is the challengers' own.
    searched = FinalPick({"a": 5}, False, "", challengers=challengers)
    assert contenders(searched, full, references=[{"a": 4}]) == [{"a": 5}, {"a": 2}, {"a": 3}]


def test_fresh_examples_leave_out_the_validation_set_and_the_programs_own_demos() -> None:
    train = qa_examples(0, 40)
    val = qa_examples(30, 45)  # overlaps the training examples 30..39
    mine = fresh_examples(train, val, {"q1", "q2"}, seed=0)
    theirs = fresh_examples(train, val, {"q3"}, seed=0)
    # 30 fresh ones (40 less the 10 the validation set holds), fewer than a contender may run (30 at least).
    assert (len(mine), len(theirs)) == (30 - 2, 30 - 1)
    ids = [e.id for e in mine]
    assert not {"q1", "q2"} & set(ids) and not {e.id for e in val} & set(ids)
    # One seeded order for every contender: they share every example neither shows as a demo.
    shared = [e.id for e in theirs if e.id not in {"q1", "q2"}]
    assert [i for i in ids if i != "q3"][: len(shared) - 1] == shared[: len(shared) - 1]
    assert fresh_examples(train, val, set(), seed=1) != fresh_examples(train, val, set(), seed=0)


def test_a_small_validation_set_keeps_a_confirmations_runs_under_a_limit() -> None:
    train = qa_examples(0, 40)
    # 30 validation examples, 10 of them training examples too: 30 fresh ones; the first stage runs each
    # contender on half of them.
    assert runs_kept_for_confirmation(train, qa_examples(30, 60)) == (1 + MAX_CHALLENGERS) * 15
    # Fewer fresh training examples than validation examples: half of what there is.
    assert runs_kept_for_confirmation(qa_examples(0, 13), qa_examples(100, 130)) == (1 + MAX_CHALLENGERS) * 7
    # A validation set large enough to settle a lead keeps nothing: the trials are worth more.
    large = qa_examples(100, 100 + CONFIRMATION_KEPT_BELOW)
    assert runs_kept_for_confirmation(train, large) == 0


def test_confirmation_keeps_the_false_replacements_within_the_level_and_finds_more_better_programs() -> None:
    # bench/pick_power.py: the pick and the confirmation protocol on simulated scores (aprompt's functions).
    from bench.pick_power import share

    for k, base in ((3, 0.2), (20, 0.5)):  # null: every combination as good as the baseline
        assert share(k, base, 0.0, 400, True, n_val=30, n_train=26) <= 0.05
    without = share(9, 0.05, 0.2, 400, False, n_val=30, n_train=26)
    with_confirmation = share(9, 0.05, 0.2, 400, True, n_val=30, n_train=26)
    assert with_confirmation >= 2 * without > 0.0


def test_the_hand_written_prompts_share_of_the_level_keeps_false_replacements_within_it() -> None:
    # bench/pick_power.py: one of the k combinations is the hand-written reference, tested first at its own
    # share of the level (the fallback procedure).
    from bench.pick_power import share

    for k, base in ((3, 0.2), (9, 0.5)):  # null: the reference too is as good as the baseline
        assert share(k, base, 0.0, 400, True, n_val=30, n_train=26, reference="other") <= 0.05
    # A better hand-written prompt is found more often than the same program found by the search.
    as_reference = share(9, 0.05, 0.2, 400, True, n_val=30, n_train=26, reference="better")
    searched = share(9, 0.05, 0.2, 400, True, n_val=30, n_train=26)
    assert as_reference > searched + 0.1


def test_fresh_examples_leave_out_copies_of_a_demo_under_another_id() -> None:
    """A training set that repeats a row gives the copy another id: run as a fresh example, the program
    would be scored on the very example it shows as a demo."""
    train = qa_examples(0, 40)
    copies = [Example(e.inputs, e.labels, id=f"{e.id}-again") for e in train[:5]]
    val = qa_examples(100, 120)
    fresh = fresh_examples([*train, *copies], val, {"q1", "q2"}, seed=0)
    ids = {e.id for e in fresh}
    assert not {"q1", "q2", "q1-again", "q2-again"} & ids
    # A copy of a row no contender shows is fresh as any other.
    assert len(fresh_examples(copies, val, set(), seed=0)) == len(copies)
