"""Grounding for the proposer: a summary of the training data and a description of the program.

Both are written by an LM. A reply that is empty or unusable is retried with another rollout and then
given up on (``None`` plus a reason): grounding is a help, never a reason to abort a run. A request that
fails at the LM is sent again once the LM answers (:mod:`aprompt._optimize.outage`), so an outage does not
change the text.
"""

from __future__ import annotations

import inspect
import random
import re
from collections.abc import Sequence
from functools import partial
from typing import Any

import attrs

from aprompt._errors import EndpointDownError, LMError, ParseError
from aprompt._optimize.examples import Example
from aprompt._optimize.field_text import fields_line
from aprompt._optimize.outage import DEFAULT_OUTAGE_POLICY, OutageGuard, OutagePolicy
from aprompt._optimize.quotes import unquoted
from aprompt._source import source_of
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm._replies import accepting_cut_replies
from aprompt.lm.types import LM
from aprompt.program.predictor import Predict
from aprompt.run.journal import journaled_text

_OBSERVE = Predict(
    "examples -> observations",
    instruction=(
        "You are studying a dataset. Read the examples and write short observations about the task: "
        "what the inputs look like, what the outputs look like, and any patterns."
    ),
    max_parse_retries=0,
)
_CONDENSE = Predict(
    "observations -> summary",
    instruction="Condense these observations into a two or three sentence description of the dataset.",
    max_parse_retries=0,
)
_DESCRIBE_PROGRAM = Predict(
    "program_code, modules -> program_description",
    instruction=(
        "Describe in two or three sentences what this language-model program does and what the role "
        "of each module is."
    ),
    max_parse_retries=0,
)

MAX_SUMMARY_CHARS = 1200


@attrs.frozen
class Grounded:
    """A grounding text, or why there is none."""

    text: str | None
    reason: str = ""


def clean_text(text: object, max_chars: int = MAX_SUMMARY_CHARS) -> str:
    """Strip quotes around the whole text (never one of its own: :func:`~aprompt._optimize.quotes.unquoted`)
    and surrounding whitespace; cut at ``max_chars`` on a word boundary."""
    value = unquoted(str(text))
    if len(value) > max_chars:
        value = value[:max_chars].rsplit(" ", 1)[0] + " ..."
    return value


def format_example(example: Example, max_chars: int = 400) -> str:
    """``example`` on one line, each field cut to its share of ``max_chars``: its labels are shown
    however long its inputs are (:func:`~aprompt._optimize.field_text.fields_line`)."""
    return fields_line({key: journaled_text(value) for key, value in example.fields().items()}, max_chars)


async def _ask(predict: Predict, lm: LM, attempts: int, outage: OutagePolicy, **inputs: Any) -> Grounded:
    """Call ``predict`` until it yields a usable text, with a new rollout per attempt; a request that
    fails at the LM is sent again once it answers. Raises ``EndpointDownError`` when the LM stays down
    longer than ``outage.tolerance`` (see :mod:`aprompt._optimize.outage`)."""
    reason = ""
    guard = OutageGuard((lm,), outage)
    for rollout in range(attempts):
        try:
            # A summary cut at its token budget is still a summary (clean_text clips it anyway).
            with accepting_cut_replies(lambda text: True):
                prediction = await guard.call(
                    partial(predict, lm=lm, rollout=rollout, **inputs), "a grounding summary"
                )
        except EndpointDownError:
            raise
        except (ParseError, LMError) as exc:  # an LMError here is the request's own: the LM answers
            reason = f"{type(exc).__name__}: {exc}"
            continue
        text = clean_text(next(iter(prediction.values())))
        if len(text) >= 20:
            return Grounded(text)
        reason = f"reply too short: {text!r}"
    return Grounded(None, reason)


async def summarize_data(
    trainset: Sequence[Example],
    lm: LM,
    *,
    seed: int = 0,
    batch_size: int = 8,
    max_batches: int = 3,
    attempts: int = 2,
    temperature: float = 0.7,
    outage: OutagePolicy = DEFAULT_OUTAGE_POLICY,
) -> Grounded:
    """Write a short description of the dataset: observations on a few batches, then a summary."""
    rng = random.Random(seed)
    sample = list(trainset)
    rng.shuffle(sample)
    batches = [sample[i : i + batch_size] for i in range(0, len(sample), batch_size)][:max_batches]
    notes: list[str] = []
    reason = ""
    observe = _with_params(_OBSERVE, temperature)
    observed: list[Grounded | None] = [None] * len(batches)

    async def one(position: int) -> None:  # each batch is observed alone: all at once
        text = "\n".join(f"- {format_example(e)}" for e in batches[position])
        observed[position] = await _ask(observe, lm, attempts, outage, examples=text)

    async with plain_errors_task_group() as group:
        for position in range(len(batches)):
            group.start_soon(one, position)
    for got in observed:
        assert got is not None
        if got.text is not None:
            notes.append(got.text)
        reason = got.reason or reason
    if not notes:
        return Grounded(None, f"no usable observations ({reason})")
    return await _ask(
        _with_params(_CONDENSE, temperature), lm, attempts, outage, observations="\n".join(notes)
    )


#: A string literal given to a name that holds a credential (``api_key="..."``, ``"token": '...'``,
#: ``PASSWORD = "..."``): its text is replaced.
_CREDENTIAL_VALUE = re.compile(
    r"""(\b(?:(?i:(?:[\w-]*[_-])?(?:api_?key|key|token|secret|password|passwd|credentials?|authorization|auth))"""
    r"""|[a-z]+(?:Key|Token|Secret|Password))["']?\s*[:=]\s*[rbu]?)"""
    r"""(["'])[^"'\n]+\2"""
)
#: Key shapes written anywhere in the code (an OpenAI or Anthropic key, a bearer token).
_KEY_SHAPE = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}|(?i:bearer\s+)[A-Za-z0-9._~+/=-]{8,}")


def program_source(program: object) -> str:
    """The program's source when Python can find it (its class, or the function), else ``""``; the text
    of every credential written in it (:func:`without_credentials`) replaced by ``***``: the proposer
    is another provider's model, and what it is sent may be journaled and cached."""
    target: Any = program if inspect.isfunction(program) or inspect.ismethod(program) else type(program)
    try:
        return without_credentials(source_of(target))
    # OSError/TypeError: no source file; SyntaxError and others: inspect parsed a file that is not the
    # code's (a class exec'd from a snippet names the document it came from).
    except Exception:
        return ""


def without_credentials(source: str) -> str:
    """``source`` with the string given to each name of a credential (``api_key="..."``) and every
    API-key-shaped text (``sk-...``, ``Bearer ...``) replaced by ``***``."""
    source = _CREDENTIAL_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}***{m.group(2)}", source)
    return _KEY_SHAPE.sub("***", source)


def describe_modules(predictors: Sequence[tuple[str, Predict]]) -> str:
    return "\n".join(f"- {name}: {predictor.signature}" for name, predictor in predictors)


async def summarize_program(
    program: object,
    predictors: Sequence[tuple[str, Predict]],
    lm: LM,
    *,
    attempts: int = 2,
    temperature: float = 0.7,
    max_source_chars: int = 3000,
    outage: OutagePolicy = DEFAULT_OUTAGE_POLICY,
) -> Grounded:
    """Describe what the program does, from its predictors' signatures and its source."""
    source = program_source(program)[:max_source_chars] or "(source not available)"
    return await _ask(
        _with_params(_DESCRIBE_PROGRAM, temperature),
        lm,
        attempts,
        outage,
        program_code=source,
        modules=describe_modules(predictors),
    )


def _with_params(predict: Predict, temperature: float) -> Predict:
    clone = Predict(
        predict.signature,
        instruction=predict.instruction,
        max_parse_retries=predict.max_parse_retries,
        temperature=temperature,
        max_tokens=256,
    )
    return clone
