"""Grounded proposals and summaries: what the proposer is shown, and bad replies that never stop a run."""

from __future__ import annotations

import itertools
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt import Demo, Predict
from aprompt._optimize.propose import Grounding, ProposalContext, propose_instruction, propose_instructions
from aprompt._optimize.proposer_text import WORKED_EXAMPLE
from aprompt._optimize.summaries import program_source, summarize_data, summarize_program
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, Fault
from tests.optimize.qa_task import (
    ORIGINAL_INSTRUCTION,
    QAProgram,
    is_proposal,
    last_user_of,
    lm_for,
    messages_of,
    optimize_in_world,
    qa_examples,
)

pytestmark = pytest.mark.anyio

GOOD_PROPOSAL = "Proposed Instruction: Answer with the item's code word only."
LONG_SUMMARY = "The examples ask for the answer of a numbered item; answers are short coded strings."

#: Grounding switch -> the label of its field in the proposer's prompt.
PIECES = {
    "data_summary": "Dataset Summary:",
    "program_summary": "Program Description:",
    "demos": "Examples Of Good Calls:",
    "history": "Previous Instructions:",
    "tip": "Tip:",
}


def context() -> ProposalContext:
    predictor = Predict("question -> answer", instruction=ORIGINAL_INSTRUCTION)
    return ProposalContext("answer", predictor, "A dataset summary.", "A program description.")


async def propose_once(server: FakeOpenAIServer, grounding: Grounding, **options: Any) -> str:
    """Propose candidate 1 (seed 1 draws a tip for it) and return the proposer's user message."""
    async with lm_for(server) as lm:
        proposal = await propose_instruction(
            context(),
            lm,
            index=1,
            grounding=grounding,
            demos=[Demo({"question": "What is item-5?", "answer": "ans-5"})],
            existing=[ORIGINAL_INSTRUCTION],
            history=[(ORIGINAL_INSTRUCTION, 0.25)],
            seed=1,
            **options,
        )
    assert proposal.instruction == "Answer with the item's code word only."
    return last_user_of(server.chat_requests[-1])


async def test_every_grounding_piece_is_shown_when_switched_on(fake_server: FakeOpenAIServer) -> None:
    fake_server.responder = lambda request: GOOD_PROPOSAL
    prompt = await propose_once(fake_server, Grounding())
    for label in PIECES.values():
        assert label in prompt
    assert "ans-5" in prompt and "(score 0.25)" in prompt and "A dataset summary." in prompt


@pytest.mark.parametrize("piece", sorted(PIECES))
async def test_a_grounding_piece_switched_off_is_left_out(fake_server: FakeOpenAIServer, piece: str) -> None:
    fake_server.responder = lambda request: GOOD_PROPOSAL
    prompt = await propose_once(fake_server, Grounding(**{piece: False}))
    assert PIECES[piece] not in prompt
    assert all(label in prompt for other, label in PIECES.items() if other != piece)


async def test_a_demo_with_a_long_input_still_shows_the_proposer_its_answer(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = lambda request: GOOD_PROPOSAL
    long_question = "Read this record carefully. " * 30 + "What is item-5?"
    async with lm_for(fake_server) as lm:
        await propose_instruction(
            context(),
            lm,
            index=1,
            grounding=Grounding(),
            demos=[Demo({"question": long_question, "answer": "ans-5"})],
            existing=[ORIGINAL_INSTRUCTION],
        )
    shown = last_user_of(fake_server.chat_requests[-1])
    demo = shown.split("- question: Read this", 1)[1].split("\n", 1)[0]
    assert demo.endswith("…; answer: ans-5") and len(demo) <= 300  # the question cut, and marked so


async def test_an_earlier_instruction_cut_for_the_proposer_is_marked_as_cut(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = lambda request: GOOD_PROPOSAL
    long_instruction = "Answer with the code word of the item named in the question. " * 8
    async with lm_for(fake_server) as lm:
        await propose_instruction(
            context(),
            lm,
            index=1,
            grounding=Grounding(),
            demos=[],
            existing=[ORIGINAL_INSTRUCTION],
            history=[(long_instruction, 0.5), ("Short and whole.", 0.25)],
        )
    shown = last_user_of(fake_server.chat_requests[-1])
    cut = shown.split("- Answer with the code word", 1)[1].split("\n", 1)[0]
    assert cut.endswith("… (score 0.50)") and len(cut) < 300
    assert "- Short and whole. (score 0.25)" in shown


async def test_the_proposer_is_shown_a_worked_example_with_the_fields_of_its_own_call(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = lambda request: GOOD_PROPOSAL
    await propose_once(fake_server, Grounding(tip=False))
    messages = messages_of(fake_server.chat_requests[-1])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    example, answer = messages[1]["content"], messages[2]["content"]
    assert example.startswith(f"Module: {WORKED_EXAMPLE['module']}\n")
    assert "Tip:" not in example  # the call shows no tip, so neither does its example
    assert answer == f"Proposed Instruction: {WORKED_EXAMPLE['proposed_instruction']}"
    await propose_once(fake_server, Grounding(worked_example=False))
    assert [m["role"] for m in messages_of(fake_server.chat_requests[-1])] == ["system", "user"]


async def test_a_proposal_repeating_the_worked_examples_instruction_has_it_cut(
    fake_server: FakeOpenAIServer,
) -> None:
    copied = WORKED_EXAMPLE["proposed_instruction"]
    replies = iter([f"Proposed Instruction: {copied}", f"Proposed Instruction: {copied} Reply in code."])
    fake_server.responder = lambda request: next(replies)
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=1, grounding=Grounding(), demos=[], existing=[ORIGINAL_INSTRUCTION]
        )
    assert len(fake_server.chat_requests) == 2  # the first was the example's alone: drawn again
    assert proposal.instruction == "Reply in code."


async def test_the_proposer_samples_at_the_groundings_temperature(fake_server: FakeOpenAIServer) -> None:
    fake_server.responder = lambda request: GOOD_PROPOSAL
    await propose_once(fake_server, Grounding(temperature=1.3))
    body = fake_server.chat_requests[-1].body
    assert body is not None and body["temperature"] == 1.3


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("Too short.", "too short (10 chars)"),
        ("Proposed Instruction: " + "very " * 150 + "long.", "too long"),
        (f"Proposed Instruction: {ORIGINAL_INSTRUCTION}", "duplicate of an existing candidate"),
    ],
)
async def test_an_unusable_proposal_is_retried_then_dropped_with_the_reason(
    fake_server: FakeOpenAIServer, reply: str, reason: str
) -> None:
    fake_server.responder = lambda request: reply
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(),
            lm,
            index=1,
            grounding=Grounding(),
            demos=(),
            existing=[ORIGINAL_INSTRUCTION],
            attempts=3,
        )
    assert proposal.instruction is None
    assert proposal.reason.startswith(f"dropped after 3 attempt(s): {reason}")
    assert len(fake_server.chat_requests) == 3


async def test_a_retry_that_gets_a_usable_proposal_keeps_it(fake_server: FakeOpenAIServer) -> None:
    replies = iter(["", "Proposed Instruction: Reply with the code word."])
    fake_server.responder = lambda request: next(replies, "unused")
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=1, grounding=Grounding(), demos=(), existing=[ORIGINAL_INSTRUCTION]
        )
    assert proposal.instruction == "Reply with the code word."


@pytest.mark.parametrize(
    ("reply", "instruction"),
    [
        ('Reply "yes" or "no"', 'Reply "yes" or "no"'),
        ("Answer with 'yes' or 'no'", "Answer with 'yes' or 'no'"),
        ("Wrap the code word in `backticks`", "Wrap the code word in `backticks`"),
        ('"Reply "yes" or "no"."', 'Reply "yes" or "no".'),
        ("“Reply with the item’s code word.”", "Reply with the item’s code word."),
        ("«Répondez par le code de l'article.»", "Répondez par le code de l'article."),
        ("「質問に一言で答えてください。」", "質問に一言で答えてください。"),
    ],
)
async def test_quotes_around_a_proposal_are_removed_and_its_own_quotes_kept(
    fake_server: FakeOpenAIServer, reply: str, instruction: str
) -> None:
    """The instruction searched is the one proposed: a quote that closes a span of it is its own."""
    fake_server.responder = lambda request: f"Proposed Instruction: {reply}"
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=1, grounding=Grounding(), demos=(), existing=[ORIGINAL_INSTRUCTION]
        )
    assert proposal.instruction == instruction
    assert len(fake_server.chat_requests) == 1


@pytest.mark.parametrize("instruction", ["请用一个词回答问题。", "只回答代码。", "質問に短く答えて。"])
async def test_a_short_whole_instruction_in_chinese_or_japanese_is_kept(
    fake_server: FakeOpenAIServer, instruction: str
) -> None:
    """Each says as much as an English instruction well over the minimum length ("Reply with the code
    only."): a wide character is not held to the length of one Latin letter."""
    fake_server.responder = lambda request: f"Proposed Instruction: {instruction}"
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=1, grounding=Grounding(), demos=(), existing=[ORIGINAL_INSTRUCTION]
        )
    assert proposal.instruction == instruction
    assert len(fake_server.chat_requests) == 1


@pytest.mark.parametrize(
    "reply",
    [
        "Here is the instruction: Reply with the item's code word only.",
        "Sure! Here's an improved instruction: Reply with the item's code word only.",
        "Below is my new instruction for the answer module: Reply with the item's code word only.",
        'Certainly, here is the improved instruction: "Reply with the item\'s code word only."',
        "Here is the new instruction:\n```\nReply with the item's code word only.\n```",
    ],
)
async def test_the_proposers_introduction_of_its_instruction_is_removed_not_the_instruction(
    fake_server: FakeOpenAIServer, reply: str
) -> None:
    fake_server.responder = lambda request: f"Proposed Instruction: {reply}"
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=1, grounding=Grounding(), demos=(), existing=[ORIGINAL_INSTRUCTION]
        )
    assert proposal.instruction == "Reply with the item's code word only."
    assert len(fake_server.chat_requests) == 1


@pytest.mark.parametrize(
    "refusal",
    [
        "Sorry, I can't assist with that.",
        "Sorry, I can't assist with that. Please provide more details.",
        "I'm sorry, but I can't help with that. Please rephrase your request.",
        "Unfortunately, I cannot provide an instruction for this module.",
        "Apologies, but I am unable to comply.",
        "Apologies for the confusion.",
    ],
)
async def test_a_refusal_from_the_proposer_is_never_a_candidate_and_is_asked_again(
    fake_server: FakeOpenAIServer, refusal: str
) -> None:
    replies = iter([f"Proposed Instruction: {refusal}", "Proposed Instruction: Reply with the code word."])
    fake_server.responder = lambda request: next(replies)
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=1, grounding=Grounding(), demos=(), existing=[ORIGINAL_INSTRUCTION]
        )
    assert len(fake_server.chat_requests) == 2
    assert proposal.instruction == "Reply with the code word."
    fake_server.responder = lambda request: f"Proposed Instruction: {refusal}"
    async with lm_for(fake_server) as lm:
        dropped = await propose_instruction(
            context(), lm, index=2, grounding=Grounding(), demos=(), existing=[ORIGINAL_INSTRUCTION]
        )
    assert dropped.instruction is None
    assert "refused" in dropped.reason or "reads as no instruction" in dropped.reason
    # An apology word alone is no refusal: an instruction may open with one.
    kept = "Unfortunately, the questions are terse; answer with the item's code word only."
    fake_server.responder = lambda request: f"Proposed Instruction: {kept}"
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=3, grounding=Grounding(), demos=(), existing=[ORIGINAL_INSTRUCTION]
        )
    assert proposal.instruction == kept


@pytest.mark.parametrize(
    "label",
    ["Revised Instruction:", "Updated instruction:", "**Refined Instruction:**", "Final Instruction:"],
)
async def test_an_answer_label_of_other_words_is_removed_whole_from_the_instruction(
    fake_server: FakeOpenAIServer, label: str
) -> None:
    fake_server.responder = lambda request: f"{label} Reply with the item's code word only."
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=1, grounding=Grounding(), demos=(), existing=[ORIGINAL_INSTRUCTION]
        )
    assert proposal.instruction == "Reply with the item's code word only."


@pytest.mark.parametrize(
    "reply",
    [
        "Current instruction: Answer the question. New instruction: Reply with the code word only.",
        "Current Instruction: Answer the question. Revised instruction: Reply with the code word only.",
    ],
)
async def test_an_instruction_after_an_answer_label_in_any_case_on_an_echoed_line_is_kept(
    fake_server: FakeOpenAIServer, reply: str
) -> None:
    fake_server.responder = lambda request: reply
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=1, grounding=Grounding(), demos=(), existing=[ORIGINAL_INSTRUCTION]
        )
    assert len(fake_server.chat_requests) == 1
    assert proposal.instruction == "Reply with the code word only."


class RejectingProposals(FakeOpenAIServer):
    """Answers 400 to every request but the outage check's one-token request."""

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> tuple[int, bytes, dict[str, str], str | None]:
        if body is not None and body.get("max_tokens") != 1:
            self.queue_faults(Fault.http_status(400, "bad request"))
        return await super()._answer(method, path, headers, body)


async def test_an_lm_error_for_one_proposal_drops_it_when_the_lm_still_answers() -> None:
    async with RejectingProposals() as server, lm_for(server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=1, grounding=Grounding(), demos=(), existing=[ORIGINAL_INSTRUCTION]
        )
        assert server.chat_requests[-1].body is not None and server.chat_requests[-1].body["max_tokens"] == 1
    assert proposal.instruction is None
    assert "RequestRejectedError" in proposal.reason


async def test_a_proposal_failing_because_the_lm_is_down_raises_instead_of_being_dropped() -> None:
    async with FakeOpenAIServer(fault_rates=[(Fault.http_status(400, "bad request"), 1.0)]) as server:
        async with lm_for(server) as lm:
            with pytest.raises(aprompt.LMError, match=r"proposal 1 for .* refuses every request"):
                await propose_instruction(
                    context(), lm, index=1, grounding=Grounding(), demos=(), existing=[ORIGINAL_INSTRUCTION]
                )


both_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


@both_backends
async def test_every_proposal_of_a_predictor_is_drawn_at_once_seeing_the_original_only() -> None:
    count = itertools.count()

    def propose(request: ChatRequest) -> str:
        return f"Proposed Instruction: Answer carefully, version {next(count)}."

    async with FakeOpenAIServer(responder=propose, latency=0.3) as server, lm_for(server) as lm:
        proposals = await propose_instructions(
            context(), lm, n_candidates=5, grounding=Grounding(), demo_sets=[()]
        )
    requests = sorted(server.chat_requests, key=lambda r: r.started)
    assert len(requests) == 4 and all(p.instruction for p in proposals)
    # Every request arrived before the first one was answered: none waited for another.
    assert requests[-1].started < min(r.finished for r in requests)
    for request in requests:
        prompt = last_user_of(request)
        assert ORIGINAL_INSTRUCTION in prompt
        assert not any(p.instruction in prompt for p in proposals if p.instruction)


@both_backends
async def test_a_proposal_repeating_an_earlier_one_is_drawn_again_seeing_the_others() -> None:
    count = itertools.count()

    def propose(request: ChatRequest) -> str:
        if "Answer with the code word only." not in request.last_user:
            return "Proposed Instruction: Answer with the code word only."  # the first draw of each
        return f"Proposed Instruction: Give the answer as written, variant {next(count)}."

    async with FakeOpenAIServer(responder=propose) as server, lm_for(server) as lm:
        proposals = await propose_instructions(
            context(), lm, n_candidates=4, grounding=Grounding(), demo_sets=[()], seed=3
        )
    kept = [p.instruction for p in proposals]
    assert kept[0] == "Answer with the code word only."
    assert all(text is not None and text.startswith("Give the answer as written") for text in kept[1:])
    assert len({text.casefold() for text in kept if text}) == 3
    assert [p.index for p in proposals] == [1, 2, 3]
    redrawn = [r for r in server.chat_requests if "Answer with the code word only." in last_user_of(r)]
    assert len(server.chat_requests) - len(redrawn) == 3  # every first draw saw the original only
    assert len(redrawn) == 2  # candidates 2 and 3 drawn again, each once, seeing candidate 1


@pytest.mark.parametrize(
    "repeat", ["Answer the question", "answer  the question!", "Answer the **question**."]
)
async def test_a_proposal_repeating_the_original_but_for_case_spaces_emphasis_or_full_stop_is_drawn_again(
    fake_server: FakeOpenAIServer, repeat: str
) -> None:
    replies = iter([f"Proposed Instruction: {repeat}", "Proposed Instruction: Reply with the code word."])
    fake_server.responder = lambda request: next(replies)
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=1, grounding=Grounding(), demos=(), existing=[ORIGINAL_INSTRUCTION]
        )
    assert len(fake_server.chat_requests) == 2
    assert proposal.instruction == "Reply with the code word."


@both_backends
async def test_siblings_that_differ_only_by_a_full_stop_or_emphasis_are_one_candidate() -> None:
    def propose(request: ChatRequest) -> str:
        if "Reply with the code word" in request.last_user:  # a second draw, seeing the first kept
            return "Proposed Instruction: Give the answer as written."
        return f"Proposed Instruction: {next(first)}"

    first = iter(["Reply with the code word.", "**Reply with the code word**"])
    async with FakeOpenAIServer(responder=propose) as server, lm_for(server) as lm:
        proposals = await propose_instructions(
            context(), lm, n_candidates=3, grounding=Grounding(), demo_sets=[()]
        )
    # The first draws answer in either order: candidate 1 keeps whichever form it got.
    assert proposals[0].instruction in ("Reply with the code word.", "Reply with the code word")
    assert proposals[1].instruction == "Give the answer as written."
    assert len(server.chat_requests) == 3


@both_backends
async def test_a_proposal_repeating_a_sibling_of_its_second_draw_is_dropped() -> None:
    def propose(request: ChatRequest) -> str:
        if "Answer with the code word only." not in request.last_user:
            return "Proposed Instruction: Answer with the code word only."
        return "Proposed Instruction: Give the answer as written."  # every second draw says the same

    async with FakeOpenAIServer(responder=propose) as server, lm_for(server) as lm:
        proposals = await propose_instructions(
            context(), lm, n_candidates=4, grounding=Grounding(), demo_sets=[()]
        )
    assert [p.instruction for p in proposals[:2]] == [
        "Answer with the code word only.",
        "Give the answer as written.",
    ]
    assert proposals[2].instruction is None
    assert proposals[2].reason == "duplicate of an earlier proposal, drawn twice"


async def test_the_data_summary_is_written_from_the_training_examples(fake_server: FakeOpenAIServer) -> None:
    fake_server.responder = lambda request: LONG_SUMMARY
    async with lm_for(fake_server) as lm:
        summary = await summarize_data(qa_examples(0, 10), lm, batch_size=5)
    assert summary.text == LONG_SUMMARY
    observed, condensed = fake_server.chat_requests[:2], fake_server.chat_requests[-1]
    shown = "".join(last_user_of(r) for r in observed)
    assert all(f"question: What is the answer for item-{i}?; answer: ans-{i}" in shown for i in range(10))
    assert LONG_SUMMARY in last_user_of(condensed)


async def test_the_data_summary_is_shown_the_labels_of_examples_with_long_inputs(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = lambda request: LONG_SUMMARY
    examples = [
        aprompt.Example(
            inputs={"question": "Some context. " * 60 + f"What is item-{i}?"}, labels={"answer": f"ans-{i}"}
        )
        for i in range(3)
    ]
    async with lm_for(fake_server) as lm:
        await summarize_data(examples, lm)
    shown = last_user_of(fake_server.chat_requests[0])
    assert all(f"…; answer: ans-{i}" in shown for i in range(3))


@pytest.mark.parametrize(
    ("reply", "summary"),
    [
        ('The answers are "yes" or "no"', 'The answers are "yes" or "no"'),
        ("`code` names open each question.", "`code` names open each question."),
        ('"Short questions with one-word answers."', "Short questions with one-word answers."),
    ],
)
async def test_a_summary_keeps_its_own_quotes_and_loses_those_around_it(
    fake_server: FakeOpenAIServer, reply: str, summary: str
) -> None:
    fake_server.responder = lambda request: reply
    async with lm_for(fake_server) as lm:
        assert (await summarize_data(qa_examples(0, 4), lm)).text == summary


async def test_the_program_summary_shows_the_programs_source_and_signatures(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = lambda request: LONG_SUMMARY
    program = QAProgram()
    async with lm_for(fake_server) as lm:
        summary = await summarize_program(program, aprompt.named_predictors(program), lm)
    assert summary.text == LONG_SUMMARY
    prompt = last_user_of(fake_server.chat_requests[0])
    assert "class QAProgram" in prompt and "- answer: question -> answer" in prompt


class ProgramWithKeysInItsCode:
    """A program whose code holds credentials written out, as quick scripts do."""

    def __init__(self) -> None:
        self.settings = {"api_key": "plain-credential-7d1e5a", "endpoint": "https://example.test/v1"}
        self.answer = Predict("question -> answer", instruction=ORIGINAL_INSTRUCTION)
        self.fallback_key = "sk-test-in-program-source-91c3ab"

    async def __call__(self, question: str) -> aprompt.Prediction:
        return await self.answer(question=question)


async def test_the_program_summary_never_shows_the_proposer_a_credential_written_in_the_code(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = lambda request: LONG_SUMMARY
    program = ProgramWithKeysInItsCode()
    async with lm_for(fake_server) as lm:
        await summarize_program(program, aprompt.named_predictors(program), lm)
    prompt = last_user_of(fake_server.chat_requests[0])
    assert "class ProgramWithKeysInItsCode" in prompt and "https://example.test/v1" in prompt
    assert "plain-credential-7d1e5a" not in prompt and "sk-test-in-program-source-91c3ab" not in prompt
    assert '"api_key": "***"' in prompt


async def test_an_unusable_summary_is_given_up_with_a_reason(fake_server: FakeOpenAIServer) -> None:
    fake_server.responder = lambda request: "ok"
    async with lm_for(fake_server) as lm:
        summary = await summarize_data(qa_examples(0, 4), lm)
    assert summary.text is None
    assert summary.reason == "no usable observations (reply too short: 'ok')"


async def test_a_proposer_answering_junk_leaves_only_the_original_instructions() -> None:
    events: list[aprompt.Event] = []
    async with FakeOpenAIServer(responder=lambda request: "ok") as junk_server:
        async with lm_for(junk_server) as proposer:
            result, _ = await optimize_in_world(proposer_lm=proposer, on_event=events.append)
        assert any(is_proposal(r) for r in junk_server.chat_requests)
    assert result.candidates.instructions == {"extract": ("Find the code.",), "answer": ("Give the answer.",)}
    dropped = [e for e in events if isinstance(e, aprompt.CandidateDropped)]
    assert sorted((e.predictor, e.index) for e in dropped) == [
        (name, index) for name in ("answer", "extract") for index in (-1, 1, 2, 3)
    ]
    assert all("too short" in e.reason for e in dropped if e.index >= 0)
    assert all("every proposal" in e.reason for e in dropped if e.index < 0)
    reasons = {(name, index): reason for name, index, reason in result.dropped}
    assert {(e.predictor, e.index): e.reason for e in dropped}.items() <= reasons.items()
    assert reasons[("*", -1)].startswith(("data summary", "program summary"))
    assert len(result.trials) == 6, "the search still ran over the demo sets"


async def test_a_proposer_refusing_every_request_stops_the_run_before_any_trial() -> None:
    async with FakeOpenAIServer(fault_rates=[(Fault.http_status(400, "model not allowed"), 1.0)]) as server:
        async with lm_for(server) as proposer:
            with pytest.raises(aprompt.LMError) as info:
                await optimize_in_world(proposer_lm=proposer)
        assert server.chat_requests and all(r.status == 400 for r in server.chat_requests)
    assert "model not allowed" in str(info.value) and "refuses every request" in str(info.value)


def test_program_source_is_empty_when_the_named_file_is_not_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\nProse that is not Python, about 135M models.\n\nclass Program: pass\n")
    module = types.ModuleType("snippet")
    module.__file__ = str(page)
    monkeypatch.setitem(sys.modules, "snippet", module)
    exec(compile("class Program:\n    pass\n", str(page), "exec"), vars(module))
    assert program_source(module.Program()) == ""


RAMBLE = "Proposed Instruction: Answer with the item's code word only. " + "".join(
    f"Then think about it more, step {i}. " for i in range(40)
)


async def test_a_proposal_cut_at_its_token_budget_is_kept_to_its_whole_sentences(
    fake_server: FakeOpenAIServer,
) -> None:
    # A small proposer rambles past its budget; re-sending with more tokens only buys a longer ramble.
    fake_server.script([Fault.truncated(RAMBLE)])
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=1, grounding=Grounding(), demos=[], existing=[ORIGINAL_INSTRUCTION]
        )
    assert len(fake_server.chat_requests) == 1
    assert proposal.instruction is not None
    assert proposal.instruction.startswith("Answer with the item's code word only.")
    assert proposal.instruction.endswith(".") and len(proposal.instruction) <= 600
    assert "whole sentences" in proposal.cleaned


async def test_a_proposal_cut_inside_a_sentence_keeps_its_whole_sentences_or_is_drawn_again(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.script(
        [
            Fault.truncated("Proposed Instruction: To write the negation, find the verb and then add it to"),
            Fault.truncated("Proposed Instruction: Negate the main verb. Keep every other word and the"),
        ]
    )
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=1, grounding=Grounding(), demos=[], existing=[ORIGINAL_INSTRUCTION]
        )
    assert len(fake_server.chat_requests) == 2  # the first had no whole sentence: drawn again
    assert proposal.instruction == "Negate the main verb."
    assert proposal.cleaned == "cleaned: removed the sentence the budget cut"
    # An uncut reply without a final period is whole: nothing is cut from it.
    fake_server.script(None)
    uncut = "Proposed Instruction: Negate the main verb. Keep every other word"
    fake_server.responder = lambda request: uncut
    async with lm_for(fake_server) as lm:
        whole = await propose_instruction(
            context(), lm, index=2, grounding=Grounding(), demos=[], existing=[ORIGINAL_INSTRUCTION]
        )
    assert whole.instruction == "Negate the main verb. Keep every other word"


#: A long list of rules, none ending with a full stop: each line is whole.
RULES = "\n".join(
    f"- Check that the answer holds the code word of item {i} as the question names it" for i in range(9)
)


async def test_a_long_list_of_rules_without_full_stops_is_kept_to_its_whole_lines(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = lambda request: f"Proposed Instruction: {RULES}"
    async with lm_for(fake_server) as lm:
        proposal = await propose_instruction(
            context(), lm, index=1, grounding=Grounding(), demos=[], existing=[ORIGINAL_INSTRUCTION]
        )
    assert len(fake_server.chat_requests) == 1
    assert proposal.instruction is not None and len(proposal.instruction) <= 600
    assert RULES.startswith(proposal.instruction) and RULES[len(proposal.instruction)] == "\n"


async def test_a_summary_cut_at_its_token_budget_is_used_without_a_resend(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.script([Fault.truncated(LONG_SUMMARY + " It goes on and")])
    async with lm_for(fake_server) as lm:
        got = await summarize_program(QAProgram(), [("answer", QAProgram().answer)], lm)
    assert len(fake_server.chat_requests) == 1
    assert got.text is not None and got.text.startswith(LONG_SUMMARY[:40])
