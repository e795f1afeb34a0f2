"""The grounded instruction proposer (MIPRO stage 2).

For one predictor it asks a proposer LM for new instructions, each prompt grounded in some of: the run's
grounding texts (the data summary, the program description; :mod:`aprompt._optimize.grounding`), demos of
this predictor, a random style tip and the instructions (with scores, for OPRO) proposed so far (a
predictor's candidates are drawn at once, so these are the original and, for a draw made again because it
repeated a sibling, the siblings: :func:`propose_instructions`). Each reply is cleaned
(:func:`~aprompt._optimize.proposal_cleaning.clean_reply`: echoed scaffolding and field-label lines
removed, see :mod:`aprompt._optimize.proposal_filter`); one that fails to parse, has nothing usable
left, or fails validation is retried with another rollout and then dropped with a recorded reason; the
original instruction is always candidate 0.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

import attrs

from aprompt._errors import EndpointDownError, LMError, ParseError
from aprompt._optimize import grounding as grounding_sources
from aprompt._optimize.field_text import CUT_MARK, fields_line
from aprompt._optimize.outage import DEFAULT_OUTAGE_POLICY, OutageGuard, OutagePolicy
from aprompt._optimize.proposal_cleaning import (
    MAX_INSTRUCTION_CHARS,
    clean_reply,
    instruction_key,
    validate_instruction,
)
from aprompt._optimize.proposal_filter import (
    finished_part,
    whole_sentences,
)
from aprompt._optimize.proposer_text import GOAL, GOAL_SCORED, REPLY, ROLE, TIPS, WORKED_EXAMPLE
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm._replies import accepting_cut_replies, is_cut
from aprompt.lm.types import LM
from aprompt.program.predictor import Predict
from aprompt.program.values import Demo
from aprompt.run.journal import journaled_text

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
    goal = GOAL_SCORED if scored and grounding.history else GOAL
    predictor = Predict(
        f"{', '.join(inputs)} -> proposed_instruction",
        instruction=f"{ROLE} {goal} {REPLY}",
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
