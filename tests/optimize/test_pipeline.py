"""A run is a pipeline, not phases: each step starts the moment its inputs exist.

Asserted from the loopback server's request log (arrival and finish times), as orderings, never as
durations: the server answers every request after a fixed latency, so a step that waited for another
would arrive a whole latency later than one that did not.
"""

from __future__ import annotations

import hashlib
import json

import anyio
import pytest

import aprompt
from aprompt._optimize.budget import resolve_budget
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.strategies.steps import leading_demo_sets, leading_sets_of
from aprompt.lm._limit_reached import LimitReached
from aprompt.run._limits import RunLimits
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, RecordedRequest, Responder
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import (
    ORIGINAL_INSTRUCTION,
    QAProgram,
    answers,
    exact_match,
    is_proposal,
    item_of,
    last_user_of,
    lm_for,
    messages_of,
    qa_examples,
    system_of,
)

pytestmark = pytest.mark.anyio

#: Every answer takes this long: long beside the event loop's own delays, even on a loaded machine.
LATENCY = 0.3
BUDGET = {
    "n_candidates": 4,
    "n_trials": 2,
    "minibatch_size": 5,
    "parallel_trials": 2,
    "full_eval_every": 2,
    "max_bootstrapped_demos": 2,
    "max_labeled_demos": 2,
    "screen_size": 5,
}
TRAIN, VAL = (0, 24), (100, 120)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def responder(request: ChatRequest) -> str:
    """The QA program's answers (:func:`~tests.optimize.qa_task.answers`), distinct proposals, and a
    sentence for the grounding texts."""
    system = str(request.messages[0]["content"])
    if system.startswith("You write instructions"):
        k = int(hashlib.sha256(json.dumps(request.messages).encode()).hexdigest()[:6], 16)
        return f"Proposed instruction: Answer the question about the item, style {k}."
    if "Output fields:\n- Answer" in system and "item-" in request.last_user:
        return answers(request)
    return "The questions ask for the answer of numbered items; each answer is short."


async def slow_bootstrap(request: ChatRequest) -> str:
    """:func:`responder`, answering the bootstrap's runs (training items) a second late: the bootstrap
    then ends well after the grounding texts are written."""
    if "item-" in request.last_user and TRAIN[0] <= item_of(request.last_user) < TRAIN[1]:
        await anyio.sleep(1.0)
    return responder(request)


def as_written(record: RecordedRequest, items: tuple[int, int]) -> bool:
    """A call of the program as written (its own instruction, no demos) on an item of ``items``."""
    return (
        system_of(record).startswith(ORIGINAL_INSTRUCTION)
        and len(messages_of(record)) == 2
        and items[0] <= item_of(last_user_of(record)) < items[1]
    )


async def run(
    program: object = None,
    log: list[RecordedRequest] | None = None,
    limits: aprompt.Limits | None = None,
    answer: Responder = responder,
) -> tuple[aprompt.OptimizeResult, list[RecordedRequest]]:
    """A small MIPRO run of the QA program; the result and every chat request, by arrival (also into
    ``log``, when the run raises); ``answer`` answers them."""
    log = [] if log is None else log
    async with (
        FakeOpenAIServer(responder=answer, api_key=TEST_API_KEY, latency=LATENCY) as server,
        lm_for(server) as lm,
    ):
        try:
            result = await aprompt.optimize(
                program or QAProgram(),
                qa_examples(*TRAIN),
                exact_match,
                valset=qa_examples(*VAL),
                lm=lm,
                budget=BUDGET,
                seed=1,
                limits=limits,
            )
        finally:
            log.extend(sorted(server.chat_requests, key=lambda r: r.started))
        return result, log


async def test_the_baselines_evaluation_starts_before_bootstrapping_ends() -> None:
    _, requests = await run()
    bootstrap = [r for r in requests if as_written(r, TRAIN)]
    baseline = [r for r in requests if as_written(r, VAL)]
    assert bootstrap and baseline
    # The baseline needs no demo: its first request arrives before the bootstrap's last answer left.
    assert baseline[0].started < max(r.finished for r in bootstrap)
    assert baseline[0].started < bootstrap[0].finished  # in fact beside its very first wave


async def test_the_first_proposals_of_every_candidate_are_in_flight_together() -> None:
    result, requests = await run()
    proposals = [r for r in requests if is_proposal(r)]
    first_wave = proposals[: BUDGET["n_candidates"] - 1]
    assert len(result.candidates.instructions["answer"]) > 1
    assert len({last_user_of(r) for r in first_wave}) == len(first_wave), "one request per candidate"
    # Each arrived before any of them was answered: none waited for another.
    assert max(r.started for r in first_wave) < min(r.finished for r in first_wave)


async def test_the_hand_written_prompt_is_evaluated_beside_the_proposals_and_their_screen() -> None:
    result, requests = await run()
    proposals = [r for r in requests if is_proposal(r)]
    with_demos = [
        r
        for r in requests
        if system_of(r).startswith(ORIGINAL_INSTRUCTION)
        and len(messages_of(r)) > 2
        and VAL[0] <= item_of(last_user_of(r)) < VAL[1]
    ]
    assert with_demos, "the hand-written prompt (labeled demos) was evaluated"
    assert with_demos[0].started < max(r.finished for r in proposals)
    assert len(result.full_evals) >= 2 and result.full_evals[1].choice["answer.demos"] > 0


class FailsOnValidation(QAProgram):
    """Raises on every validation item: the unoptimized program cannot be scored."""

    async def __call__(self, question: str) -> aprompt.Prediction:
        if item_of(question) >= VAL[0]:
            raise ValueError("this program cannot read validation items")
        return await super().__call__(question)


async def test_a_program_failing_on_every_validation_example_stops_the_run_before_bootstrap_ends() -> None:
    requests: list[RecordedRequest] = []
    with pytest.raises(aprompt.OptimizationError, match="failed on every one of the 20 validation examples"):
        await run(FailsOnValidation(), requests)
    # Stopped as soon as the baseline's evaluation ended (it sends no request), not after the bootstrap
    # and the proposals.
    assert not any(is_proposal(r) for r in requests)


def limited_context(max_lm_calls: int) -> RunContext:
    """A run's context with a call limit and 20 validation examples (no program: steps are only admitted)."""
    return RunContext(
        program=QAProgram(),
        predictors=[],
        trainset=[],
        valset=qa_examples(*VAL),
        metric=exact_match,
        budget=resolve_budget({"minibatch_size": 5}),
        seed=0,
        lm=None,
        proposer_lm=None,  # type: ignore[arg-type]  # nothing is proposed
        teacher_lm=None,
        grounding=aprompt.Grounding(),
        concurrency=4,
        on_event=None,
        limits=RunLimits(max_lm_calls=max_lm_calls),
    )


async def test_the_labeled_set_is_built_once_a_run_for_every_step_that_shows_it() -> None:
    # The warm-up, the hand-written reference and the bootstrap all show set 1: it walks the trainset once.
    program = QAProgram()
    ctx = limited_context(100)
    ctx.predictors = aprompt.named_predictors(program)
    ctx.trainset = qa_examples(*TRAIN)
    first, again = leading_demo_sets(ctx), leading_demo_sets(ctx)
    labeled = first["answer"][-1]
    assert labeled.demos and again["answer"][-1] is labeled
    assert leading_sets_of(ctx, "answer", program.answer)[-1] is labeled


async def test_a_step_is_admitted_only_when_the_steps_in_flight_leave_it_enough() -> None:
    ctx = limited_context(100)
    ctx.admit_step("a full evaluation", [("full_eval", "a", 60)])  # 60 runs, at one call a run so far
    with pytest.raises(LimitReached, match="cannot pay for another"):
        ctx.admit_step("another", [("full_eval", "b", 60)])
    ctx.stopped_by = None

    async def evaluated() -> int:
        return 0

    await ctx.memo("full_eval", "a", evaluated, lambda v: v, lambda v: int(v))  # the first one ends
    ctx.admit_step("another", [("full_eval", "b", 60)])  # then its budget is free again


async def test_every_demo_set_is_bootstrapped_at_once() -> None:
    _, requests = await run()
    bootstrap = [r for r in requests if as_written(r, TRAIN)]
    first_answer = min(r.finished for r in bootstrap)
    before = {item_of(last_user_of(r)) for r in bootstrap if r.started < first_answer}
    # Two bootstrapped sets, each walking its own order in waves of 4: both first waves go at once.
    assert len(before) > 4


async def test_every_proposal_is_screened_at_once() -> None:
    result, requests = await run()
    proposed = result.candidates.instructions["answer"][1:]
    assert len(proposed) >= 2
    screened = [
        r
        for r in requests
        if len(messages_of(r)) == 2 and any(system_of(r).startswith(text) for text in proposed)
    ]
    first_answer = min(r.finished for r in screened)
    before = {system_of(r) for r in screened if r.started < first_answer}
    # Each proposal's screen arrived before any screen call was answered: none waited for another.
    assert all(any(system.startswith(text) for system in before) for text in proposed)


def screened_texts(result: aprompt.OptimizeResult, requests: list[RecordedRequest]) -> dict[str, float]:
    """When each proposal kept by the run had its first screen call sent (no demos, validation items)."""
    return {
        text: min(r.started for r in requests if len(messages_of(r)) == 2 and system_of(r).startswith(text))
        for text in result.candidates.instructions["answer"][1:]
    }


async def test_the_hand_written_prompt_is_evaluated_before_bootstrapping_ends() -> None:
    _, requests = await run()
    bootstrap = [r for r in requests if as_written(r, TRAIN)]
    reference = [
        r
        for r in requests
        if system_of(r).startswith(ORIGINAL_INSTRUCTION)
        and len(messages_of(r)) > 2
        and VAL[0] <= item_of(last_user_of(r)) < VAL[1]
    ]
    # Its demos are the labeled set, which needs no call: it goes once the baseline's evaluation ends,
    # beside the bootstrap.
    assert reference[0].started < max(r.finished for r in bootstrap)


async def test_a_proposal_is_drawn_before_bootstrapping_ends() -> None:
    _, requests = await run(answer=slow_bootstrap)
    bootstrap = [r for r in requests if as_written(r, TRAIN)]
    proposals = [r for r in requests if is_proposal(r)]
    # Proposal 1 shows the labeled set: it needs the grounding texts, not the bootstrapped sets.
    assert proposals[0].started < max(r.finished for r in bootstrap)


async def test_a_proposal_is_screened_as_soon_as_it_and_those_before_it_are_in() -> None:
    result, requests = await run(answer=slow_bootstrap)
    proposals = [r for r in requests if is_proposal(r)]
    screened = screened_texts(result, requests)
    assert len(screened) >= 2
    # Proposal 1 (the labeled set) is screened while those showing bootstrapped sets are being drawn.
    assert min(screened.values()) < max(r.finished for r in proposals)


async def test_sending_ahead_changes_no_call_and_no_result() -> None:
    ahead, ahead_requests = await run()
    # Under a limit that could refuse a step nothing is sent ahead: each step sends its own calls.
    in_turn, in_turn_requests = await run(limits=aprompt.Limits(max_lm_calls=100_000))
    bootstrap = [r for r in in_turn_requests if as_written(r, TRAIN)]
    assert min(r.started for r in in_turn_requests if is_proposal(r)) > max(r.finished for r in bootstrap)

    def bodies(requests: list[RecordedRequest]) -> list[str]:
        return sorted(json.dumps([r.body], sort_keys=True) for r in requests)

    assert bodies(ahead_requests) == bodies(in_turn_requests)
    assert (ahead.best_choice, ahead.score, ahead.candidates) == (
        in_turn.best_choice,
        in_turn.score,
        in_turn.candidates,
    )
