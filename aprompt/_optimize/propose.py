"""The grounded instruction proposer (MIPRO stage 2).

For one predictor it asks a proposer LM for new instructions, each prompt grounded in some of: the run's
grounding texts (the data summary, the program description; :mod:`aprompt._optimize.grounding`), demos of
this predictor, a random style tip and the instructions (with scores, for OPRO) proposed so far (a
predictor's candidates are drawn at once, so these are the original and, for a draw made again because it
repeated a sibling, the siblings: :func:`propose_instructions`). Each
reply is cleaned (:func:`clean_reply`: echoed scaffolding and field-label lines removed, see
:mod:`aprompt._optimize.proposal_filter`); one that fails to parse, has nothing usable left, or fails
validation is retried with another rollout and then dropped with a recorded reason; the original
instruction is always candidate 0.
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

import attrs

from aprompt._errors import EndpointDownError, LMError, ParseError
from aprompt._optimize import grounding as grounding_sources
from aprompt._optimize.field_text import CUT_MARK, fields_line
from aprompt._optimize.outage import DEFAULT_OUTAGE_POLICY, OutageGuard, OutagePolicy
from aprompt._optimize.proposal_filter import (
    Cleaned,
    clean_proposal,
    content_words,
    field_labels,
    finished_part,
    reads_as_instruction,
    sentences_of,
    task_vocabulary,
    text_length,
    unfenced_prose,
    whole_sentences,
)
from aprompt._optimize.quotes import unquoted
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm._replies import accepting_cut_replies, is_cut
from aprompt.lm.types import LM
from aprompt.program.predictor import Predict
from aprompt.program.values import Demo
from aprompt.run.journal import journaled_text

TIPS: dict[str, str] = {
    "none": "",
    "creative": "Don't be afraid to be creative when writing the instruction.",
    "simple": "Keep the instruction clear and concise.",
    "description": "Make the instruction informative: describe the task precisely.",
    "high_stakes": "Spell out the high stakes of getting this task right.",
    "persona": "Start the instruction with a persona relevant to the task (e.g. 'You are a ...').",
    "format": "Say exactly what form the answer must take.",
}

MIN_INSTRUCTION_CHARS = 12
MAX_INSTRUCTION_CHARS = 600
#: Room for an instruction of ``MAX_INSTRUCTION_CHARS``; a reply cut there is kept, to its last whole
#: sentence (re-sending it with a larger budget would only buy a longer ramble from a small model).
PROPOSAL_MAX_TOKENS = 160


#: Attempts at one proposal (a reply dropped as unusable is asked again).
PROPOSAL_ATTEMPTS = 3


@attrs.frozen
class Grounding:
    """Which grounding pieces a proposal prompt includes, and the proposer's temperature.

    ``data_summary`` and ``program_summary`` switch the run-level sources of the same names
    (:mod:`aprompt._optimize.grounding`); ``demos``, ``tip`` and ``history`` the per-proposal pieces;
    ``worked_example`` the proposer's own demo (:data:`WORKED_EXAMPLE`, another task's call and a good
    instruction for it), which a small proposer needs to write an instruction at all.
    """

    data_summary: bool = True
    program_summary: bool = True
    demos: bool = True
    tip: bool = True
    history: bool = True
    temperature: float = 1.0
    worked_example: bool = True


@attrs.frozen
class ProposalContext:
    """What a proposer may be grounded in, for one predictor.

    ``texts`` holds the run's grounding texts by source name (:mod:`aprompt._optimize.grounding`);
    ``data_summary`` and ``program_summary`` are the same as ``texts`` entries of those names, for a
    context built by hand.
    """

    predictor_name: str
    predictor: Predict
    data_summary: str | None = None
    program_summary: str | None = None
    texts: Mapping[str, str | None] = attrs.field(factory=dict)

    def grounding_texts(self) -> dict[str, str]:
        """Every usable grounding text, by source name (an entry of ``texts`` wins)."""
        found = {"data_summary": self.data_summary, "program_summary": self.program_summary, **self.texts}
        return {name: text for name, text in found.items() if text}


#: The proposer's one demo: a call for another task (every grounding field filled) and a good instruction
#: for it, keyed by the proposer's field names. A small proposer copies the form of a worked example far
#: better than it follows a description of one: on the embedded model, 21 of 30 proposals for three bench
#: tasks started with an imperative verb with it, 5 of 30 without, most of those remarks, chat or made-up
#: examples (``bench/results/proposals_worked_example.md``). Its sentences are cut from a proposal that
#: repeats them.
WORKED_EXAMPLE: Mapping[str, str] = {
    "module": "translate: english_text -> french_text",
    "current_instruction": "Translate the text.",
    "dataset_summary": "Short English sentences from travel phrasebooks, each with its French translation.",
    "program_description": "The program translates an English sentence into French with one module.",
    "examples_of_good_calls": "- english_text: Where is the station?; french_text: Où est la gare ?",
    "previous_instructions": "- Translate the text.",
    "tip": "Keep the instruction clear and concise.",
    "proposed_instruction": (
        "Translate the English sentence into natural French. "
        "Keep its meaning and tone, and reply with the French sentence only."
    ),
}
_EXAMPLE_SENTENCES = tuple(sentences_of(WORKED_EXAMPLE["proposed_instruction"]))
#: Words of the worked example's topic that no other task's instruction needs: a proposal sentence with
#: one, for a task that does not use it, copies the example ("... translated into a French sentence.").
#: General words of the example ("translate", "sentence", "English") are not listed: other tasks use them.
WORKED_EXAMPLE_TOPIC = content_words("French phrasebook")
_ROLE = "You write instructions for one module of a language-model program."
_GOAL_SCORED = "Propose a new instruction that scores higher than the previous ones."
_GOAL = "Propose a better instruction for this module."
_REPLY = "Reply with the instruction only."
#: The sentences of the proposer's own instruction: a proposal that repeats one has it removed.
PROPOSER_SENTENCES: tuple[str, ...] = (_ROLE, _GOAL_SCORED, _GOAL, _REPLY)


@attrs.frozen
class Proposal:
    """One proposal attempt's outcome: an instruction, or the reason it was dropped.

    ``cleaned`` says what was cut from the reply to get the instruction (empty when nothing was);
    journals written before it existed read back with ``""``.
    """

    index: int
    instruction: str | None
    reason: str = ""
    tip: str = "none"
    cleaned: str = ""


#: The proposer introducing its instruction: "Sure! Here's an improved instruction:", "Below is my new
#: instruction for the module:".
_INTRODUCTION = re.compile(
    r"^(?:(?:sure|certainly|okay|ok|of course)\b[!,.]?\s*)?(?:here is|here's|below is|this is)\s+"
    r"(?:the|an|my|a)\s+(?:[\w-]+\s+){0,3}?instructions?"
    r"(?:\s+for\s+(?:[\w-]+\s+){0,3}?[\w-]+)?\s*:[*_]*[ \t]*",
    re.IGNORECASE,
)


def clean_instruction(text: str) -> str:
    """Strip a leading label (``Instruction:``), the fences of a block tagged as prose
    (:func:`~aprompt._optimize.proposal_filter.unfenced_prose`), quotes around the whole reply (never one
    of its own: :func:`~aprompt._optimize.quotes.unquoted`) and whitespace from a proposer reply."""
    # "Sure! Here is the improved instruction: Answer ...": the proposer introducing its answer on the
    # instruction's own line; the line reads as a labeled example and would be dropped whole.
    value = _INTRODUCTION.sub("", text.strip(), count=1).strip()
    for label in ("proposed instruction:", "instruction:", "new instruction:"):
        if value.lower().startswith(label):
            value = value[len(label) :]
    # Before the quotes: a reply fenced as ```text would lose the fence and keep its "text" tag.
    return unquoted(unfenced_prose(value))


def clean_reply(text: str, predictor: Predict) -> Cleaned:
    """A proposer reply as an instruction for ``predictor``: :func:`clean_instruction`, then echoed
    scaffolding, the proposer's own sentences and lines starting with ``predictor``'s field labels removed
    (:func:`aprompt._optimize.proposal_filter.clean_proposal`)."""
    addressed = (*PROPOSER_SENTENCES, *(tip for tip in TIPS.values() if tip))
    sentences = (*addressed, *_EXAMPLE_SENTENCES)
    foreign = WORKED_EXAMPLE_TOPIC - task_vocabulary(predictor)
    # The worked example's sentences are removed only word for word: a proposal is meant to copy their
    # form ("Keep its meaning and tone, and reply with the negated sentence only.").
    names = frozenset(field.name.lower() for field in predictor.signature.fields)
    cleaned = clean_proposal(
        clean_instruction(text), field_labels(predictor), sentences, foreign, addressed, names
    )
    if _INTRODUCTION.match(text.strip()) and "preamble" not in cleaned.removed:
        cleaned = attrs.evolve(cleaned, removed=("preamble", *cleaned.removed))
    return cleaned


def instruction_key(text: str) -> str:
    """What two instructions must share to be one candidate: their words, case, runs of spaces, markdown
    emphasis and a final full stop aside ("Answer the question." and "**answer the question**" are one)."""
    flat = " ".join(re.sub(r"[*`]+", "", text).split()).casefold()
    return flat.rstrip(" .!\u3002")


def validate_instruction(text: str, existing: Sequence[str]) -> str | None:
    """Return why ``text`` is not a usable instruction, or ``None`` when it is."""
    if text_length(text) < MIN_INSTRUCTION_CHARS:  # (a wide character counts for a few Latin ones)
        return f"too short ({len(text)} chars)"
    if len(text) > MAX_INSTRUCTION_CHARS:
        return f"too long ({len(text)} chars)"
    if instruction_key(text) in {instruction_key(e) for e in existing}:
        return "duplicate of an existing candidate"
    if not reads_as_instruction(text):  # (cut to whole sentences, it may have lost its directive one)
        return "reads as no instruction"
    return None


def _render_demos(demos: Sequence[Demo], limit: int = 3, max_chars: int = 300) -> str:
    # Each field cut to its share: a long input cut off the line's end would take the answer with it.
    lines = [
        f"- {fields_line({k: journaled_text(v) for k, v in demo.items()}, max_chars)}"
        for demo in list(demos)[:limit]
    ]
    return "\n".join(lines)


#: How much of each earlier instruction the proposer is shown (prompt tokens dominate a small model's time).
HISTORY_CHARS = 300


def _render_history(history: Sequence[tuple[str, float | None]]) -> str:
    lines = []
    for instruction, score in history:
        suffix = f" (score {score:.2f})" if score is not None else ""
        if len(instruction) > HISTORY_CHARS:  # marked, so that the proposer does not copy a cut sentence
            instruction = instruction[: HISTORY_CHARS - len(CUT_MARK)].rstrip() + CUT_MARK
        lines.append(f"- {instruction}{suffix}")
    return "\n".join(lines)


def build_proposer(
    context: ProposalContext,
    grounding: Grounding,
    *,
    demos: Sequence[Demo],
    tip: str,
    history: Sequence[tuple[str, float | None]],
) -> tuple[Predict, dict[str, Any]]:
    """The proposer predictor for one proposal and its inputs (only the grounding pieces in use)."""
    inputs: dict[str, Any] = {
        "module": f"{context.predictor_name}: {context.predictor.signature}",
        "current_instruction": context.predictor.instruction,
    }
    texts = context.grounding_texts()
    for source in grounding_sources.GROUNDING_SOURCES:
        if source.name in texts and source.enabled(grounding):
            inputs[source.field] = texts[source.name]
    if grounding.demos and demos:
        inputs["examples_of_good_calls"] = _render_demos(demos)
    if grounding.history and history:
        inputs["previous_instructions"] = _render_history(history)
    if grounding.tip and TIPS.get(tip):
        inputs["tip"] = TIPS[tip]
    scored = any(score is not None for _, score in history)
    goal = _GOAL_SCORED if scored and grounding.history else _GOAL
    predictor = Predict(
        f"{', '.join(inputs)} -> proposed_instruction",
        instruction=f"{_ROLE} {goal} {_REPLY}",
        max_parse_retries=1,
        temperature=grounding.temperature,
        max_tokens=PROPOSAL_MAX_TOKENS,
    )
    if grounding.worked_example:  # the same fields as the call, so that its form is the one to copy
        fields = (*inputs, "proposed_instruction")  # a source of the user's own has no example text
        predictor.demos = [{name: WORKED_EXAMPLE[name] for name in fields if name in WORKED_EXAMPLE}]
    return predictor, inputs


async def propose_instruction(
    context: ProposalContext,
    lm: LM,
    *,
    index: int,
    grounding: Grounding,
    demos: Sequence[Demo],
    existing: Sequence[str],
    history: Sequence[tuple[str, float | None]] = (),
    seed: int = 0,
    attempts: int = PROPOSAL_ATTEMPTS,
    outage: OutagePolicy = DEFAULT_OUTAGE_POLICY,
    first_rollout: int = 0,
) -> Proposal:
    """Propose candidate ``index`` for one predictor; a bad reply is retried, then dropped.

    Attempt ``k`` samples rollout ``index * 100 + first_rollout + k`` (a draw made again for another
    reason passes another ``first_rollout``).

    An attempt that fails at the LM is sent again once the LM answers (:mod:`aprompt._optimize.outage`):
    an outage is not the proposal's fault, and dropping it would be journaled and kept by a resumed run.

    Raises:
        EndpointDownError: the LM stayed down longer than ``outage.tolerance``.
    """
    tip = random.Random(f"{seed}:{context.predictor_name}:{index}").choice(sorted(TIPS))
    tip = tip if grounding.tip else "none"
    predictor, inputs = build_proposer(context, grounding, demos=demos, tip=tip, history=history)
    reason = ""
    guard = OutageGuard((lm,), outage)
    for attempt in range(attempts):
        rollout = index * 100 + first_rollout + attempt
        try:
            with accepting_cut_replies(lambda text: True):
                prediction = await guard.call(
                    partial(predictor, lm=lm, rollout=rollout, **inputs),
                    f"proposal {index} for {context.predictor_name}",
                )
        except EndpointDownError:
            raise
        except (ParseError, LMError) as exc:  # an LMError here is the request's own: the LM answers
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            continue
        reply = str(prediction["proposed_instruction"])
        finished = reply
        if prediction.completion is not None and is_cut(prediction.completion.finish_reason):
            finished = finished_part(reply)  # cut at its budget: its last sentence is unfinished
        if not finished.strip():
            reason = f"cut at its token budget inside its first sentence: {reply[:80]!r}"
            continue
        cleaned = clean_reply(finished, context.predictor)
        if finished != reply.rstrip() and cleaned.text is not None:
            cleaned = attrs.evolve(cleaned, removed=(*cleaned.removed, "the sentence the budget cut"))
        if cleaned.text is None:
            reason = cleaned.reason
            continue
        text = whole_sentences(cleaned.text, MAX_INSTRUCTION_CHARS)
        note = cleaned.note
        if text != cleaned.text:
            note = f"{note}; cut to whole sentences".lstrip("; ")
        problem = validate_instruction(text, existing)
        if problem is None:
            return Proposal(index, text, tip=tip, cleaned=note)
        reason = problem
    return Proposal(index, None, reason=f"dropped after {attempts} attempt(s): {reason}", tip=tip)


async def draw_candidate(
    context: ProposalContext,
    lm: LM,
    *,
    index: int,
    grounding: Grounding,
    demos: Sequence[Demo],
    existing: Sequence[str],
    seed: int,
    outage: OutagePolicy = DEFAULT_OUTAGE_POLICY,
    wave: int = 0,
) -> Proposal:
    """One draw of :func:`propose_instructions`: candidate ``index`` showing ``demos``, seeing
    ``existing`` (the original instruction in the first wave) as its history, in ``wave``'s rollouts."""
    return await propose_instruction(
        context,
        lm,
        index=index,
        grounding=grounding,
        demos=demos,
        existing=existing,
        history=[(text, None) for text in existing],
        seed=seed,
        outage=outage,
        first_rollout=wave * 50,
    )


async def propose_instructions(
    context: ProposalContext,
    lm: LM,
    *,
    n_candidates: int,
    grounding: Grounding,
    demo_sets: Sequence[Sequence[Demo]],
    seed: int = 0,
    outage: OutagePolicy = DEFAULT_OUTAGE_POLICY,
) -> list[Proposal]:
    """Candidates 1..n-1 for one predictor, drawn at once, in two waves.

    First every candidate at once, each with its own style tip and demo set (candidate ``i`` shows set
    ``i`` of ``demo_sets``, in turn) and the original instruction as its only history: a draw cannot see
    siblings that do not exist yet. Then each candidate that repeated an earlier one
    (:func:`instruction_key`, in index order) is drawn again, at once, seeing the original and every
    instruction kept from the first wave (and on other rollouts), so it is asked for something else; one
    still repeating is dropped. A pure function of the seed and the inputs, like the draws it is made of.

    Candidate 0 (the original instruction) is not proposed; the returned list holds every attempt,
    usable or dropped, in index order.
    """
    original = context.predictor.instruction
    indices = list(range(1, n_candidates))

    async def draw(index: int, existing: Sequence[str], wave: int) -> Proposal:
        demos = demo_sets[index % len(demo_sets)] if demo_sets else ()
        return await draw_candidate(
            context,
            lm,
            index=index,
            grounding=grounding,
            demos=demos,
            existing=existing,
            seed=seed,
            outage=outage,
            wave=wave,
        )

    first = await _all_at_once([partial(draw, index, [original], 0) for index in indices])
    kept, repeats = _first_of_each([original], first)
    second = await _all_at_once([partial(draw, index, kept, 1) for index in repeats])
    again = {p.index: p for p in second}
    _, still = _first_of_each(kept, second)
    proposals = []
    for proposal in first:
        if proposal.index in still:
            reason = "duplicate of an earlier proposal, drawn twice"
            proposal = Proposal(proposal.index, None, reason=reason, tip=proposal.tip)
        elif proposal.index in again:
            proposal = again[proposal.index]
        proposals.append(proposal)
    return proposals


def _first_of_each(existing: Sequence[str], proposals: Sequence[Proposal]) -> tuple[list[str], list[int]]:
    """``existing`` plus each proposal's instruction not seen before (:func:`instruction_key`), and the
    indices of the proposals that repeated one."""
    kept = list(existing)
    seen = {instruction_key(text) for text in existing}
    repeats = []
    for proposal in proposals:
        if proposal.instruction is None:
            continue
        if instruction_key(proposal.instruction) in seen:
            repeats.append(proposal.index)
        else:
            seen.add(instruction_key(proposal.instruction))
            kept.append(proposal.instruction)
    return kept, repeats


async def _all_at_once(draws: Sequence[Callable[[], Awaitable[Proposal]]]) -> list[Proposal]:
    """Every draw at once; the proposals in the order of ``draws``."""
    out: list[Proposal | None] = [None] * len(draws)

    async def one(position: int) -> None:
        out[position] = await draws[position]()

    async with plain_errors_task_group() as group:
        for position in range(len(draws)):
            group.start_soon(one, position)
    return [p for p in out if p is not None]
