"""Reflective proposals: new instructions written from the current pick's failures, mid-search.

GEPA (Agrawal et al., 2025, arXiv 2507.19457) proposes by *reflection*: the proposer reads runs that
went wrong — each module's inputs and outputs, the expected answer, and the metric's own text feedback
— and writes an instruction that would avoid those mistakes. Here that lever is a hook of the MIPRO
search (``SearchLoop.after_evaluation``): after each periodic full evaluation,

1. a seeded sample of ``2 * k`` training examples is drawn — never a validation example, whose labels
   shown to the proposer would let an instruction carry them into the scores that pick it, nor one
   the pick shows as a demo (by id or by inputs) — and run under the pick's prompts with traces;
2. up to ``k`` of those it fails are kept, those the metric gave feedback on first (a metric may return
   ``(score, feedback)``, see :func:`aprompt._optimize.metric_values.metric_feedback`);
3. for each predictor, the proposer gets its current instruction and, per failure, that module's inputs
   and outputs, the program's final output, the expected labels and the feedback, and replies with an
   improved instruction, cleaned and validated like every proposal
   (:func:`~aprompt._optimize.proposal_cleaning.clean_reply`,
   :func:`~aprompt._optimize.proposal_cleaning.validate_instruction`); a reply cut at its budget or
   longer than an instruction may be keeps its whole sentences within the limit;
4. each usable reply becomes a new candidate of the running search (``SearchLoop.add_instruction``;
   a :class:`~aprompt._optimize.events.CandidateProposed` event), which later trials may choose; the
   failures it was written from (and those of the instruction it revised) are kept with it
   (``Candidates.seen``), and a confirmation of the final pick does not run it on them.

Each reflection is journaled (kind ``"reflection"``, key ``"<predictor>:<full evaluations so far>"``),
so a resumed run replays it with no LM call. Its LM calls and program runs are admitted against the
run's limits first; a reflection the limits cannot pay for is skipped (and the skip journaled), the
search goes on. New candidates are not screened: a screen costs more program runs than the reflection.

The strategy ``mipro_reflective`` is MIPRO with this hook.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from aprompt._errors import EndpointDownError, LMError, ParseError
from aprompt._optimize.candidates import Choice
from aprompt._optimize.confirmation import shown_as_demos
from aprompt._optimize.evaluate import Evaluation, ExampleResult, evaluate
from aprompt._optimize.events import CandidateDropped, CandidateProposed
from aprompt._optimize.examples import Example, inputs_key
from aprompt._optimize.outage import OutageGuard
from aprompt._optimize.proposal_cleaning import (
    MAX_INSTRUCTION_CHARS,
    clean_reply,
    instruction_key,
    validate_instruction,
)
from aprompt._optimize.proposal_filter import clean_proposal, finished_part, whole_sentences
from aprompt._optimize.proposer_text import PROPOSER_SENTENCES
from aprompt._optimize.search import SearchLoop
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm._limit_reached import LimitReached
from aprompt.lm._replies import accepting_cut_replies, is_cut
from aprompt.program.predictor import Predict
from aprompt.run.journal import journaled_text

if TYPE_CHECKING:
    from aprompt._optimize.run_context import RunContext

logger = logging.getLogger("aprompt")

#: Failing examples shown per reflection (GEPA reflects on mini-batches of about this size).
K_FAILURES = 4
#: Characters of one shown value; longer ones are cut.
MAX_VALUE_CHARS = 400
#: Proposer attempts per reflection (a reply that is unusable or a duplicate is asked again).
ATTEMPTS = 2

_ROLE = PROPOSER_SENTENCES[0]  # "You write instructions for one module of a language-model program."
_GOAL = (
    "Below are runs of the program where it failed, with what this module received and produced, the "
    "expected final answer and any feedback on it. Work out what the module did wrong and write an "
    "improved instruction that avoids these mistakes on new inputs."
)
_REPLY = PROPOSER_SENTENCES[-1]  # "Reply with the instruction only."
#: Labels of the reflection prompt; a reply line starting with one is an echo, not the instruction.
_LABELS = ("Failing Runs", "Failing Run", "Run", "Expected", "Feedback", "Program Output", "Module Inputs")


@attrs.frozen
class Reflection:
    """One reflective proposal for one predictor: the instruction, or why there is none.

    ``example_ids`` are the failing examples shown; ``cleaned`` says what was cut from the reply.
    """

    predictor: str
    number: int
    instruction: str | None
    reason: str = ""
    example_ids: tuple[str, ...] = ()
    cleaned: str = ""


def reflection_to_json(reflection: Reflection) -> dict[str, Any]:
    return attrs.asdict(reflection)


def reflection_from_json(data: Mapping[str, Any]) -> Reflection:
    return Reflection(**{**data, "example_ids": tuple(data["example_ids"])})


def reflection_sample(
    trainset: Sequence[Example], valset: Sequence[Example], shown: Sequence[Example], n: int, seed: str
) -> list[str]:
    """Ids of ``n`` training examples to reflect on, a seeded sample in training-set order: none with the
    inputs of a validation example (the pick's score) or of an example ``shown`` as the pick's demos."""
    excluded = {inputs_key(e) for e in (*valset, *shown)}
    pool = [e.id for e in trainset if inputs_key(e) not in excluded]
    if len(pool) <= n:
        return pool
    chosen = set(random.Random(seed).sample(pool, n))
    return [i for i in pool if i in chosen]


def prefer_feedback(results: Sequence[ExampleResult], k: int) -> list[ExampleResult]:
    """Up to ``k`` failures (score below 1: a program error scores 0 and is one; a run left unscored by
    an LM failure, score ``None``, is not), those with feedback first."""
    failed = [r for r in results if r.score is not None and r.score < 1.0]
    return sorted(failed, key=lambda r: r.feedback is None)[:k]


def _show(value: object) -> str:
    text = " ".join(journaled_text(value).split())
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _fields(values: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}: {_show(v)}" for k, v in values.items())


def render_failure(number: int, name: str, example: Example, result: ExampleResult) -> str:
    """One failing run as the reflection prompt shows it to the proposer of predictor ``name``."""
    lines = [f"Run {number} (score {result.score or 0.0:.2f})"]
    calls = [entry for entry in result.trace if entry.predictor_name == name]
    for call in calls[:2]:
        lines.append(f"- module inputs: {_fields(call.inputs)}")
        lines.append(f"- module outputs: {_fields(call.outputs)}")
    if not calls:
        lines.append(f"- module inputs: {_fields(example.inputs)}")
        lines.append("- this module was not called in this run (or failed before it answered)")
    if result.error is not None:
        lines.append(f"- error: {_show(result.error)}")
    prediction = result.prediction
    if prediction is not None:
        shown = prediction.to_dict() if hasattr(prediction, "to_dict") else prediction
        lines.append(f"- program output: {_fields(shown) if isinstance(shown, Mapping) else _show(shown)}")
    lines.append(f"- expected: {_fields(example.labels)}")
    if result.feedback:
        lines.append(f"- feedback: {_show(result.feedback)}")
    return "\n".join(lines)


def build_reflection(
    name: str, predictor: Predict, instruction: str, failures: Sequence[tuple[Example, ExampleResult]]
) -> tuple[Predict, dict[str, Any]]:
    """The reflection proposer for predictor ``name`` and its inputs. What stays the same across a
    run's reflections comes first (instruction, module), what changes last, so an LM's prefix cache
    can reuse the start of the prompt."""
    inputs = {
        "module": f"{name}: {predictor.signature}",
        "current_instruction": instruction,
        "failing_runs": "\n\n".join(
            render_failure(position, name, example, result)
            for position, (example, result) in enumerate(failures, start=1)
        ),
    }
    proposer = Predict(
        "module, current_instruction, failing_runs -> proposed_instruction",
        instruction=f"{_ROLE} {_GOAL} {_REPLY}",
        max_parse_retries=1,
        max_tokens=300,
    )
    return proposer, inputs


def clean_reflection(text: str, predictor: Predict) -> tuple[str | None, str]:
    """A reflection reply as an instruction (``None`` and the reason when nothing usable is left) and a
    note of what was cut: :func:`~aprompt._optimize.proposal_cleaning.clean_reply`, then echoed reflection
    labels and the reflection's own sentence removed."""
    first = clean_reply(text, predictor)
    if first.text is None:
        return None, first.reason
    second = clean_proposal(first.text, _LABELS, (_GOAL,))
    if second.text is None:
        return None, second.reason
    removed = (*first.removed, *second.removed)
    return second.text, (f"cleaned: removed {', '.join(dict.fromkeys(removed))}" if removed else "")


@attrs.define
class ReflectiveProposals:
    """The search hook (``SearchLoop.after_evaluation``) adding reflective proposals; see the module."""

    ctx: RunContext
    k: int = K_FAILURES
    _failures: list[tuple[Example, ExampleResult]] | None = attrs.field(default=None, init=False)
    _lock: anyio.Lock = attrs.field(factory=anyio.Lock, init=False)
    #: Periodic evaluations seen: numbers each reflection (a race need not add a full evaluation).
    _points: int = attrs.field(default=0, init=False)

    async def __call__(self, loop: SearchLoop) -> None:
        self._points += 1
        number = self._points
        if loop.stopped is not None or loop.should_stop() is not None:
            return
        choice = dict(loop.decide().choice)
        shown_ids = shown_as_demos(loop.candidates, choice)
        shown = [e for e in self.ctx.trainset if e.id in shown_ids]
        ids = reflection_sample(
            self.ctx.trainset, loop.valset, shown, 2 * self.k, f"{self.ctx.seed}:reflection:{number}"
        )
        if not ids:
            return  # no training example left to learn from
        self._failures = None
        found: dict[str, Reflection] = {}

        async def for_predictor(name: str) -> None:
            found[name] = await self.ctx.memo(
                "reflection",
                f"{name}:{number}",
                partial(self._reflect, loop, choice, ids, name, number),
                reflection_to_json,
                reflection_from_json,
            )

        async with plain_errors_task_group() as group:
            for name, _ in self.ctx.predictors:
                group.start_soon(for_predictor, name)
        # Added in predictor order, whatever order the proposals came back in: the search stays a
        # function of the seed.
        for name, _ in self.ctx.predictors:
            reflection = found[name]
            if reflection.instruction is None:
                index = len(loop.candidates.instructions[name])
                self.ctx.dropped.append((name, index, f"reflection {number}: {reflection.reason}"))
                await self.ctx.emit(
                    CandidateDropped(name, index, f"reflection {number}: {reflection.reason}")
                )
                continue
            if instruction_key(reflection.instruction) in {
                instruction_key(i) for i in loop.candidates.instructions[name]
            }:
                continue  # proposed again by a later reflection: already a candidate
            # Written from these training examples' labels, and from those the revised instruction was:
            # a confirmation must not score the candidate on them.
            revised = choice.get(f"{name}.instruction", 0)
            seen = {*reflection.example_ids, *loop.candidates.seen.get((name, revised), ())}
            index = loop.add_instruction(name, reflection.instruction, seen)
            logger.info("aprompt: reflective proposal %d for %s: %s", index, name, reflection.instruction)
            await self.ctx.emit(CandidateProposed(name, "instruction", index, reflection.instruction))

    async def _reflect(
        self, loop: SearchLoop, choice: Choice, ids: Sequence[str], name: str, number: int
    ) -> Reflection:
        ctx = self.ctx
        failures = await self._failures_of(loop, choice, ids, number)
        refusal = (
            failures
            if isinstance(failures, str)
            else self._refused(
                f"a reflective proposal for {name}", [("reflection", f"{name}:{number}", 1)], calls=True
            )
        )
        if refusal is not None or isinstance(failures, str):
            # Like the screen: never worth a trial. The skip is journaled, so a resumed run (with a
            # higher limit) searches the same candidates.
            return Reflection(name, number, None, f"not afforded: {refusal}")
        shown = tuple(example.id for example, _ in failures)
        if not failures:
            return Reflection(name, number, None, "the pick failed none of the training examples drawn")
        predictor = dict(ctx.predictors)[name]
        instruction = loop.candidates.prompts_for(choice)[name].instruction
        proposer, inputs = build_reflection(name, predictor, instruction, failures)
        existing = loop.candidates.instructions[name]
        guard = OutageGuard((ctx.proposer_lm,), ctx.outage)
        reason = ""
        for attempt in range(ATTEMPTS):
            try:
                # A reply cut at its budget keeps its whole sentences, as a grounded proposal does.
                with accepting_cut_replies(lambda text: True):
                    prediction = await guard.call(
                        partial(proposer, lm=ctx.proposer_lm, rollout=number * 100 + attempt, **inputs),
                        f"reflection {number} for {name}",
                    )
            except EndpointDownError:
                raise
            except (ParseError, LMError) as exc:  # the request's own failure: the LM answers
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            reply = str(prediction["proposed_instruction"])
            if prediction.completion is not None and is_cut(prediction.completion.finish_reason):
                reply = finished_part(reply)
            text, note = clean_reflection(reply, predictor)
            if text is None:
                reason = note
                continue
            # A long reflection keeps its first sentences, like a grounded proposal, not nothing.
            if (whole := whole_sentences(text, MAX_INSTRUCTION_CHARS)) != text:
                text, note = whole, f"{note}; cut to whole sentences".lstrip("; ")
            problem = validate_instruction(text, existing)
            if problem is None:
                return Reflection(name, number, text, example_ids=shown, cleaned=note)
            reason = problem
        return Reflection(name, number, None, f"dropped after {ATTEMPTS} attempt(s): {reason}", shown)

    def _refused(
        self, what: str, parts: Sequence[tuple[str, str, int]], *, calls: bool = False
    ) -> str | None:
        """Why the run's limits refuse a step (``None`` when they admit it); a refusal does not stop
        the run."""
        stopped_by = self.ctx.stopped_by
        try:
            self.ctx.admit_step(what, parts, calls=calls)
        except LimitReached as refusal:
            self.ctx.stopped_by = stopped_by
            logger.info("aprompt: %s is skipped: %s", what, refusal)
            return str(refusal)
        return None

    async def _failures_of(
        self, loop: SearchLoop, choice: Choice, ids: Sequence[str], number: int
    ) -> list[tuple[Example, ExampleResult]] | str:
        """The failures shown by this reflection, run once and shared by every predictor's proposal; or
        why the run's limits refuse to run them."""
        async with self._lock:
            if self._failures is None:
                by_id = {e.id: e for e in self.ctx.trainset}
                examples = [by_id[i] for i in ids]
                refusal = self._refused(
                    f"running {len(examples)} training examples to reflect on",
                    [("reflection", f"{self.ctx.predictors[0][0]}:{number}", len(examples))],
                )
                if refusal is not None:
                    return refusal
                evaluation = await loop.outage.evaluate(
                    partial(_traced, loop, choice), examples, f"reflection {number}'s training examples"
                )
                kept = prefer_feedback(evaluation.results, self.k)
                self._failures = [(by_id[r.example_id], r) for r in kept]
            return self._failures


async def _traced(loop: SearchLoop, choice: Choice, examples: Sequence[Example]) -> Evaluation:
    return await evaluate(
        loop.program,
        examples,
        loop.metric,
        prompts=loop.candidates.prompts_for(choice),
        lm=loop.lm,
        concurrency=loop.concurrency,
        collect_traces=True,
    )
