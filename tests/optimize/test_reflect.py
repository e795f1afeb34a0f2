"""Reflective proposals: metric feedback, the reflection prompt, candidates added to the running search,
resume, and the search loop's growing space."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import aprompt
from aprompt import ConfigError, Demo, Example, OpenAICompatibleLM, Prediction
from aprompt._optimize.bootstrap import DemoSet
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.evaluate import evaluate
from aprompt._optimize.events import Event
from aprompt._optimize.outage import DEFAULT_OUTAGE_POLICY, OutageGuard
from aprompt._optimize.proposal_cleaning import MAX_INSTRUCTION_CHARS
from aprompt._optimize.search import SearchLoop
from aprompt.lm.cache import ResponseCache
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, Fault, RecordedRequest
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import (
    SMALL_BUDGET,
    QAProgram,
    answers,
    exact_match,
    is_proposal,
    item_of,
    last_user_of,
    lm_for,
    qa_examples,
)
from tests.optimize.world import TwoStageProgram, World, examples

pytestmark = pytest.mark.anyio

#: Enough trials for three reflections (after trials 4, 8 and 12).
BUDGET = {**SMALL_BUDGET, "n_trials": 14, "full_eval_every": 4}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def is_reflection(record: RecordedRequest) -> bool:
    return is_proposal(record) and "Failing Runs:" in last_user_of(record)


def feedback_metric(example: Example, prediction: Any) -> tuple[bool, str]:
    got = str(prediction.answer).strip()
    right = got == example.labels["answer"]
    return right, "correct" if right else f"the answer should be {example.labels['answer']}, not {got!r}"


def runs_of(prompt: str) -> list[str]:
    """The failing runs a reflection prompt shows, one block each."""
    return re.findall(r"Run \d+ \(score [\d.]+\)\n(?:- .*(?:\n|$))+", prompt)


async def test_a_score_with_feedback_is_scored_and_keeps_its_feedback(fake_server: FakeOpenAIServer) -> None:
    fake_server.responder = answers

    def as_prediction(example: Example, prediction: Any) -> Prediction:
        score, feedback = feedback_metric(example, prediction)
        return Prediction({"score": float(score), "feedback": feedback})

    async with lm_for(fake_server) as lm:
        pairs = await evaluate(QAProgram(), qa_examples(1, 5), feedback_metric, lm=lm)
        objects = await evaluate(QAProgram(), qa_examples(1, 5), as_prediction, lm=lm)
    for evaluation in (pairs, objects):
        # Item 3 is answered wrong.
        assert evaluation.scores == {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 1.0}
        feedback = {r.example_id: r.feedback for r in evaluation.results}
        assert feedback["q3"] == "the answer should be ans-3, not 'wrong'"
        assert feedback["q1"] == "correct"


@pytest.mark.parametrize(
    ("value", "message"),
    [(("x", 1), "returned str 'x'"), ((1.0, 3), "feedback of type int"), ((1.0, "ok", 2), "tuple of 3")],
)
async def test_a_metric_returning_a_bad_pair_is_refused_at_the_label_check(
    fake_server: FakeOpenAIServer, value: object, message: str
) -> None:
    def bad_pair(example: Example, prediction: Any) -> object:
        return value

    async with lm_for(fake_server) as lm:
        with pytest.raises(ConfigError, match=re.escape(message) + ".*own labels"):
            await aprompt.optimize(
                QAProgram(), qa_examples(0, 20), bad_pair, lm=lm, strategy="mipro_reflective"
            )
    assert fake_server.chat_requests == [], "refused before any LM call"


async def test_the_metric_feedback_reaches_the_reflection_prompt() -> None:
    result, requests, _ = await _world(feedback_metric)
    prompts = [last_user_of(r) for r in requests if is_reflection(r)]
    assert prompts, "the search reflected"
    shown = [block for prompt in prompts for block in runs_of(prompt)]
    assert shown
    for block in shown:
        item = item_of(block)
        assert f"- feedback: the answer should be ans-{item}, not " in block
    assert result.score >= result.baseline_score


async def test_a_reflection_shows_training_examples_only_never_the_validation_set_that_scores_it() -> None:
    """A validation example's expected label in the proposer's prompt could be written into an
    instruction, and raise the very scores that pick it."""
    _, requests, _ = await _world(_plain_metric)
    shown = [item_of(b) for r in requests if is_reflection(r) for b in runs_of(last_user_of(r))]
    assert shown, "the search reflected"
    assert all(0 <= int(item) < 60 for item in shown), shown  # examples(0, 60) train, (200, 230) validate


async def test_the_reflection_prompt_holds_each_failing_runs_stage_outputs_and_expected_label() -> None:
    _, requests, world = await _world(_plain_metric)
    reflections = [r for r in requests if is_reflection(r)]
    for stage, outputs in (
        ("extract", r"code: (code-\d+|unknown)"),
        ("answer", r"answer: (ans-\d+|no idea)"),
    ):
        prompts = [last_user_of(r) for r in reflections if last_user_of(r).startswith(f"Module: {stage}:")]
        assert prompts, stage
        for block in (b for prompt in prompts for b in runs_of(prompt)):
            item = item_of(block)
            assert f"- module inputs: question: What is the answer for item-{item}?" in block
            found = re.search(r"- module outputs: (.*)", block)
            assert found is not None and re.fullmatch(outputs, found.group(1)), block
            # The world answered this stage that way for this item.
            assert found.group(1) in world.replies[(stage, item)], block
            assert f"- expected: answer: ans-{item}" in block
            assert "- program output: answer: " in block
            assert "- feedback:" not in block, "a plain metric gives no feedback"


async def test_a_search_too_short_to_reflect_says_so_in_the_log_and_the_search_phase(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No more trials than full_eval_every: no periodic full evaluation, so no reflection, and it is said."""
    events: list[Event] = []
    caplog.set_level("INFO", logger="aprompt")
    async with (
        FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server,
        lm_for(server) as lm,
    ):
        await aprompt.optimize(
            TwoStageProgram(),
            examples(0, 60),
            _plain_metric,
            valset=examples(200, 230),
            lm=lm,
            strategy="mipro_reflective",
            budget={**SMALL_BUDGET, "n_trials": 4, "full_eval_every": 4},
            on_event=events.append,
        )
        assert not any(is_reflection(r) for r in server.chat_requests)
    [search] = [e for e in events if isinstance(e, aprompt.PhaseStarted) and e.phase == "search"]
    assert "no reflective proposal" in search.detail and "full_eval_every" in search.detail
    assert any("mipro_reflective: 4 trials and no reflective proposal" in r.message for r in caplog.records)


async def test_a_reflective_candidate_joins_the_running_search_and_a_trial_chooses_it() -> None:
    events: list[Event] = []
    result, requests, _ = await _world(_plain_metric, on_event=events.append)
    proposed_mid_search = []
    trials_seen = 0
    for event in events:
        if isinstance(event, aprompt.TrialScored):
            trials_seen += 1
        elif isinstance(event, aprompt.CandidateProposed) and event.kind == "instruction" and trials_seen:
            proposed_mid_search.append((event.predictor, event.index, trials_seen))
    assert proposed_mid_search, "reflections added candidates after trials had run"
    for name, index, _ in proposed_mid_search:
        assert 0 < index < len(result.candidates.instructions[name])
    chosen = [
        t
        for t in result.trials
        if any(t.choice.get(f"{name}.instruction") == index for name, index, _ in proposed_mid_search)
    ]
    assert chosen, "a trial chose a reflective candidate"
    first_added = min(after for _, _, after in proposed_mid_search)
    assert all(t.number >= first_added for t in chosen)
    assert sum(1 for r in requests if is_reflection(r)) >= len(proposed_mid_search)


async def test_a_resumed_run_replays_its_journaled_reflections_with_no_proposer_call(tmp_path: Path) -> None:
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server:
        reference = await _cacheless_run(server, tmp_path / "reference")
        reference_reflections = sum(1 for r in server.chat_requests if is_reflection(r))
        server.reset_records()
        trials_seen = 0

        with anyio.CancelScope() as scope:

            def stop_after_first_reflection(event: Event) -> None:
                nonlocal trials_seen
                trials_seen += isinstance(event, aprompt.TrialScored)
                if isinstance(event, aprompt.CandidateProposed) and trials_seen:
                    scope.cancel()

            await _cacheless_run(server, tmp_path / "run", on_event=stop_after_first_reflection)
        assert scope.cancelled_caught, "the run was interrupted after its first reflection"
        before = [last_user_of(r) for r in server.chat_requests if is_reflection(r)]
        assert before
        server.reset_records()
        resumed = await _cacheless_run(server, tmp_path / "run")
        after = [last_user_of(r) for r in server.chat_requests if is_reflection(r)]
    # No LM cache: only the journal keeps the first reflection from being asked again.
    assert not set(before) & set(after)
    assert len(before) + len(after) == reference_reflections
    assert resumed.candidates.describe() == reference.candidates.describe()
    assert [dict(t.choice) for t in resumed.trials] == [dict(t.choice) for t in reference.trials]
    assert resumed.score == reference.score


async def test_add_instruction_grows_the_search_space_mid_run_and_later_trials_choose_the_new_index(
    fake_server: FakeOpenAIServer,
) -> None:
    def by_instruction(request: ChatRequest) -> str:
        item = item_of(request.last_user)
        right = "code" in str(request.messages[0].get("content", "")) or item % 2 == 0
        return f"Answer: {'ans-' + str(item) if right else 'wrong'}"

    fake_server.responder = by_instruction
    async with lm_for(fake_server) as lm:
        first = await _grown_search(lm, seed=5)
        again = await _grown_search(lm, seed=5)
    loop, added_after = first
    assert loop.candidates.instructions["answer"][-1] == "Answer with the code of the item."
    new_index = len(loop.candidates.instructions["answer"]) - 1
    assert all(t.choice["answer.instruction"] < new_index for t in loop.trials[:added_after])
    assert any(t.choice["answer.instruction"] == new_index for t in loop.trials[added_after:])
    assert [dict(t.choice) for t in again[0].trials] == [dict(t.choice) for t in loop.trials]


async def _grown_search(lm: OpenAICompatibleLM, *, seed: int) -> tuple[SearchLoop, int]:
    """A search over two instructions that adds a third after its first periodic full evaluation."""
    added_after: list[int] = []

    async def add_one(loop: SearchLoop) -> None:
        if not added_after:
            added_after.append(len(loop.trials))
            loop.add_instruction("answer", "Answer with the code of the item.")

    async def ignore(event: Event) -> None:
        pass

    candidates = Candidates(
        ("answer",),
        {"answer": ("Answer the question.", "Answer briefly.")},
        {"answer": (DemoSet(()),)},
    )
    loop = SearchLoop(
        program=QAProgram(),
        candidates=candidates,
        valset=qa_examples(0, 12),
        metric=exact_match,
        emit=ignore,
        n_trials=10,
        minibatch_size=4,
        full_eval_every=3,
        parallel_trials=1,
        seed=seed,
        lm=lm,
        outage=OutageGuard((lm,), DEFAULT_OUTAGE_POLICY),
        after_evaluation=add_one,
    )
    await loop.run()
    return loop, added_after[0]


def _plain_metric(example: Example, prediction: Any) -> bool:
    return str(prediction.answer).strip() == example.labels["answer"]


class RecordingWorld(World):
    """The world, remembering its program replies per (stage, item) as ``field: value``."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: dict[tuple[str, int], set[str]] = {}

    def __call__(self, request: ChatRequest) -> str:
        reply = super().__call__(request)
        field, _, value = reply.partition(": ")
        if field in ("Code", "Answer") and not is_proposal_request(request):
            stage = "extract" if field == "Code" else "answer"
            self.replies.setdefault((stage, item_of(request.last_user)), set()).add(
                f"{field.lower()}: {value}"
            )
        return reply


def is_proposal_request(request: ChatRequest) -> bool:
    return str(request.messages[0].get("content", "")).startswith("You write instructions")


async def _world(
    metric: Any, responder: Callable[[ChatRequest], str | Fault] | None = None, **options: Any
) -> tuple[aprompt.OptimizeResult, list[RecordedRequest], RecordingWorld]:
    """Optimize the world's two-stage program with ``mipro_reflective``; ``responder`` (given the world)
    answers in its place when given."""
    world = RecordingWorld()
    async with (
        FakeOpenAIServer(responder=responder or world, api_key=TEST_API_KEY) as server,
        lm_for(server) as lm,
    ):
        result = await aprompt.optimize(
            TwoStageProgram(),
            examples(0, 60),
            metric,
            valset=examples(200, 230),
            lm=lm,
            strategy="mipro_reflective",
            budget=BUDGET,
            seed=1,
            **options,
        )
        return result, server.chat_requests, world


async def _cacheless_run(server: FakeOpenAIServer, run_dir: Path, **options: Any) -> aprompt.OptimizeResult:
    async with OpenAICompatibleLM(
        "world", server.base_url, api_key=TEST_API_KEY, cache=ResponseCache.disabled()
    ) as lm:
        return await aprompt.optimize(
            TwoStageProgram(),
            examples(0, 60),
            _plain_metric,
            valset=examples(200, 230),
            lm=lm,
            strategy="mipro_reflective",
            budget=BUDGET,
            seed=1,
            run_dir=run_dir,
            **options,
        )


async def test_row_index_ids_in_both_splits_keep_each_validation_rows_own_output() -> None:
    """Ids given by row index in each split (0, 1, ... in both) name a training and a validation example
    alike: the reflections' training runs must not stand in the table for the validation rows."""
    train = [Example(e.inputs, e.labels, id=i) for i, e in enumerate(examples(0, 60))]
    val = [Example(e.inputs, e.labels, id=i) for i, e in enumerate(examples(200, 230))]
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        result = await aprompt.optimize(
            TwoStageProgram(),
            train,
            _plain_metric,
            valset=val,
            lm=lm,
            strategy="mipro_reflective",
            budget=BUDGET,
            seed=1,
        )
    assert [row.example_id for row in result.examples.rows] == [str(i) for i in range(30)]
    for row in result.examples.rows:
        item = item_of(row.inputs["question"])
        shown = str((row.outcome.output or {}).get("answer", ""))
        assert shown in (f"ans-{item}", "no idea"), (row.example_id, item, shown)


def _by_instruction_or_demos(request: ChatRequest) -> str:
    """Right when the prompt asks for the code or shows a demo, else for every third item only."""
    item = item_of(request.last_user)
    right = "code" in str(request.messages[0].get("content", "")) or "item-90" in str(request.messages)
    return f"Answer: {'ans-' + str(item) if right or item % 3 == 0 else 'wrong'}"


def _one_instruction_search(lm: OpenAICompatibleLM, **options: Any) -> SearchLoop:
    """A search whose predictor has one instruction (no instruction parameter) and three demo sets."""

    def demos(k: int) -> DemoSet:
        return DemoSet(
            tuple(
                Demo({"question": f"What is the answer for item-{90 + j}?", "answer": f"ans-{90 + j}"})
                for j in range(k)
            )
        )

    async def ignore(event: Event) -> None:
        pass

    return SearchLoop(
        program=QAProgram(),
        candidates=Candidates(
            ("answer",), {"answer": ("Answer the question.",)}, {"answer": (DemoSet(()), demos(1), demos(2))}
        ),
        valset=qa_examples(0, 20),
        metric=exact_match,
        emit=ignore,
        n_trials=12,
        minibatch_size=5,
        full_eval_every=3,
        parallel_trials=1,
        lm=lm,
        outage=OutageGuard((lm,), DEFAULT_OUTAGE_POLICY),
        **options,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_a_first_added_instruction_names_earlier_choices_so_no_program_is_fully_evaluated_twice(
    fake_server: FakeOpenAIServer, seed: int
) -> None:
    """The predictor has one instruction (no instruction parameter) until one is added mid-run: the
    choices recorded before name none, and the same prompts chosen later with index 0 must count as the
    same program, not be fully evaluated (or raced) again as another."""
    fake_server.responder = _by_instruction_or_demos
    added: list[int] = []

    async def add_one(loop: SearchLoop) -> None:
        if not added:
            added.append(len(loop.trials))
            loop.add_instruction("answer", "Answer with the code of the item.")

    async def ignore(event: Event) -> None:
        pass

    async with lm_for(fake_server, cache=ResponseCache.disabled()) as lm:
        loop = _one_instruction_search(lm, seed=seed, after_evaluation=add_one)
        outcome = await loop.run()
    assert added and "answer.instruction" in loop.candidates.parameters()
    programs = [loop.candidates.prompts_for(f.choice)["answer"] for f in loop.full_evals]
    twice = [p for i, p in enumerate(programs) if p in programs[:i]]
    assert not twice, [dict(f.choice) for f in loop.full_evals]
    names = set(loop.candidates.parameters())
    records = [*outcome.trials, *outcome.full_evals, *outcome.rungs]
    assert all(set(r.choice) == names for r in records)


async def test_an_evaluation_beside_the_trials_joins_named_by_a_parameter_added_meanwhile(
    fake_server: FakeOpenAIServer,
) -> None:
    """A proposal hook adds the predictor's first instruction while an evaluation runs on a copy of the
    search: what the copy recorded joins named by the new parameter, as the search's own records are."""
    fake_server.responder = _by_instruction_or_demos
    async with lm_for(fake_server) as lm:
        loop = _one_instruction_search(lm)
        await loop.full_evaluation(loop.candidates.baseline(), is_baseline=True)
        beside = loop.fork(lambda what, parts: None)
        await beside.full_evaluation({"answer.demos": 1})
        loop.add_instruction("answer", "Answer with the code of the item.")
        loop.merge(beside)
    named = [{"answer.instruction": 0, "answer.demos": 0}, {"answer.instruction": 0, "answer.demos": 1}]
    assert [dict(f.choice) for f in loop.full_evals] == named
    assert loop.tested == {tuple(sorted(c.items())) for c in named}


#: A reflection as a reflective proposer may write it: longer than an instruction may be.
LONG_REFLECTION = " ".join(
    f"Rule {i}: check the code of item {i} against the table and reply with its answer label only."
    for i in range(10)
)


@pytest.mark.parametrize("finish_reason", ["stop", "length"])
async def test_a_long_or_cut_reflection_joins_the_search_cut_to_its_whole_sentences(
    finish_reason: str,
) -> None:
    """A reflection paid for (training runs and a proposer call) is kept to its first whole sentences
    within the instruction limit, as a grounded proposal is, not dropped as too long or cut."""
    world = World()

    def responder(request: ChatRequest) -> str | Fault:
        if is_proposal_request(request) and "Failing Runs:" in request.last_user:
            reply = f"Proposed Instruction: {LONG_REFLECTION}"
            return reply if finish_reason == "stop" else Fault.reply(reply[:-30], finish_reason="length")
        return world(request)

    events: list[Event] = []
    result, _, _ = await _world(_plain_metric, responder, on_event=events.append)
    expected = LONG_REFLECTION[: LONG_REFLECTION.rindex(".", 0, MAX_INSTRUCTION_CHARS) + 1]
    for name in ("extract", "answer"):
        assert expected in result.candidates.instructions[name], result.dropped
    proposed = [e for e in events if isinstance(e, aprompt.CandidateProposed) and e.value == expected]
    assert len(proposed) == 2  # one per predictor, the very text the search prompts with


def _remembering(request: ChatRequest) -> str:
    """A reflection's reply names the items of the runs it was shown; a program prompted with such an
    instruction answers every item right (it stands for an instruction that carries the shown labels)."""
    system = str(request.messages[0].get("content", ""))
    if is_proposal_request(request) and "Failing Runs:" in request.last_user:
        items = sorted({int(i) for i in re.findall(r"item-(\d+)", request.last_user)})
        cases = ", ".join(f"item-{i}" for i in items)
        return f"Proposed Instruction: Remember these known cases: {cases}."
    if "known cases:" in system:
        item = item_of(request.last_user)
        return f"Code: code-{item}" if "Output fields:\n- Code" in system else f"Answer: ans-{item}"
    return World()(request)


async def test_a_confirmation_never_scores_a_reflective_candidate_on_the_runs_it_was_written_from() -> None:
    """A reflective instruction was written from failing training runs and their expected labels: scored
    on them when the pick is confirmed, it shows a lead it may owe to having seen the answers."""
    train = examples(0, 60)
    item_by_id = {e.id: item_of(e.inputs["question"]) for e in train}
    async with (
        FakeOpenAIServer(responder=_remembering, api_key=TEST_API_KEY) as server,
        lm_for(server, cache=ResponseCache.disabled()) as lm,
    ):
        result = await aprompt.optimize(
            TwoStageProgram(),
            train,
            _plain_metric,
            valset=examples(200, 206),  # too few to decide: the pick is confirmed on training examples
            lm=lm,
            strategy="mipro_reflective",
            budget=BUDGET,
            seed=2,
        )
    reflective = 0
    for record in result.confirmations:
        written_from: set[int] = set()
        for name in ("extract", "answer"):
            instruction = result.candidates.instructions[name][record.choice.get(f"{name}.instruction", 0)]
            written_from |= {int(i) for i in re.findall(r"item-(\d+)", instruction)}
        reflective += bool(written_from)
        ran = {item_by_id[eid] for eid in record.scores}
        assert not ran & written_from, (dict(record.choice), sorted(ran & written_from))
    assert reflective, "a reflective candidate was confirmed"
