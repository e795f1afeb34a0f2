"""What a search records: its trials, race rungs, full evaluations and outcome as frozen values, their
journal forms, and the memo that journals each step (:mod:`aprompt.run.journal` replays them on resume);
with the pure helpers every step shares (the seeded mini-batch, the baseline's check)."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import attrs

from aprompt._errors import OptimizationError
from aprompt._optimize.evaluate import Evaluation
from aprompt._optimize.examples import Example
from aprompt._optimize.final_pick import FinalPick

T = TypeVar("T")


class Memo(Protocol):
    """``RunContext.memo``: compute, or read back a journaled result (see :mod:`aprompt.run.journal`)."""

    async def __call__(
        self,
        kind: str,
        key: str,
        compute: Callable[[], Awaitable[T]],
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
    ) -> T: ...


async def no_memo(
    kind: str,
    key: str,
    compute: Callable[[], Awaitable[T]],
    encode: Callable[[T], Any],
    decode: Callable[[Any], T],
) -> T:
    """The memo of a run without a journal: always compute."""
    return await compute()


def trial_to_json(trial: Trial) -> dict[str, Any]:
    return attrs.asdict(trial)


def trial_from_json(data: Mapping[str, Any]) -> Trial:
    return Trial(**{**data, "example_ids": tuple(data["example_ids"])})


def full_eval_to_json(full: FullEval) -> dict[str, Any]:
    return attrs.asdict(full)


def full_eval_from_json(data: Mapping[str, Any]) -> FullEval:
    return FullEval(**data)


@attrs.frozen
class Trial:
    """One mini-batch trial; ``score`` is ``None`` when LM failures left it unscored.

    ``lm_failures`` maps each example left unscored (it failed at the LM while the LM answered checks,
    see :mod:`aprompt._optimize.outage`) to its error; likewise in :class:`FullEval`.

    ``stopped_early``: the trial was clearly losing to the current pick after the first stage of its
    mini-batch and stopped there (:mod:`aprompt._optimize.racing`); ``example_ids`` are then the examples
    it ran and ``score`` is its mean on them.
    """

    number: int
    choice: Mapping[str, int]
    example_ids: tuple[str, ...]
    scores: Mapping[str, float]
    score: float | None
    n_failed: int
    n_unscored: int
    seconds: float
    lm_failures: Mapping[str, str] = attrs.field(factory=dict)
    stopped_early: bool = False


@attrs.frozen
class FullEval:
    """A full evaluation of one combination on the validation set.

    ``reused``: how many of its scores come from the combination's earlier trials and race rungs (the
    same program on the same examples) instead of being run again; ``n_failed`` and ``n_unscored`` count
    the examples it ran.
    """

    choice: Mapping[str, int]
    score: float
    scores: Mapping[str, float]
    n_failed: int
    n_unscored: int
    after_trial: int
    lm_failures: Mapping[str, str] = attrs.field(factory=dict)
    reused: int = 0


@attrs.frozen
class RungEval:
    """One racer's evaluation in one rung of a race: the rung's examples it lacked.

    ``score`` is the mean on ``scores`` (``None`` when LM failures left every example unscored).
    """

    race: int
    rung: int
    choice: Mapping[str, int]
    example_ids: tuple[str, ...]
    scores: Mapping[str, float]
    score: float | None
    n_failed: int
    n_unscored: int
    lm_failures: Mapping[str, str] = attrs.field(factory=dict)


def rung_to_json(rung: RungEval) -> dict[str, Any]:
    return attrs.asdict(rung)


def rung_from_json(data: Mapping[str, Any]) -> RungEval:
    return RungEval(**{**data, "example_ids": tuple(data["example_ids"])})


@attrs.frozen
class SearchOutcome:
    """What a search returns: the picked combination, its full-validation score, and the record.

    ``pick`` says why that combination was returned (see :mod:`aprompt._optimize.final_pick`);
    ``rungs`` are the races' partial evaluations (:mod:`aprompt._optimize.racing`).
    """

    best_choice: Mapping[str, int]
    best_score: float
    baseline_score: float
    trials: tuple[Trial, ...]
    full_evals: tuple[FullEval, ...]
    pick: FinalPick | None = None
    rungs: tuple[RungEval, ...] = ()
    #: Runs on training examples that confirmed an undecided pick (:mod:`aprompt._optimize.confirmation`).
    confirmations: tuple[FullEval, ...] = ()


def full_eval_of(
    choice: Mapping[str, int],
    scores: Mapping[str, float],
    evaluation: Evaluation,
    after_trial: int,
    reused: int = 0,
) -> FullEval:
    """The record of ``choice`` scored ``scores`` (``evaluation``'s, with ``reused`` earlier ones), its
    mean 0 when nothing scored though the LM works (every example failed for this prompt alone)."""
    return FullEval(
        choice=dict(choice),
        score=math.fsum(scores.values()) / len(scores) if scores else 0.0,
        scores=dict(scores),
        n_failed=evaluation.n_failed,
        n_unscored=evaluation.n_unscored,
        after_trial=after_trial,
        lm_failures=lm_failures_of(evaluation),
        reused=reused,
    )


def lm_failures_of(evaluation: Evaluation) -> dict[str, str]:
    """Example id -> error of the examples an LM failure left unscored."""
    return {r.example_id: r.error or "LM failure" for r in evaluation.results if r.lm_failure}


def minibatch(valset: Sequence[Example], size: int, seed: int, trial: int) -> list[Example]:
    """The trial's mini-batch: a seeded sample, a pure function of (seed, trial number)."""
    if size >= len(valset):
        return list(valset)
    return random.Random(f"{seed}:minibatch:{trial}").sample(list(valset), size)


#: How the errors of a program run that are the prompt's doing begin (an unreadable reply, one cut at its
#: token budget even at twice the budget, one empty or filtered after the retries): a search may fix them.
PROMPTS_FAULTS = ("ParseError:", "TruncatedResponseError:", "EmptyResponseError:", "ContentFilteredError:")

#: How the error of a prompt refused as longer than the model's context begins.
CONTEXT_OVERFLOW = "ContextOverflowError:"


def check_baseline(evaluation: Evaluation) -> None:
    """Refuse to search when the unoptimized program ran cleanly on no example because the program or
    the metric raised, or when LM failures left every example unscored (after the outage guard found
    the program's LMs answering: an LM the metric or the program asks on its own fails), so that no
    search could score anything. Parse errors, replies cut at their token budget and replies that are not
    answers (empty, filtered), all scored 0, alone do not count: they are the prompt's fault, which the
    search may fix; neither do LM failures of some examples, which leave those unscored.

    A prompt longer than the model's context on any example refuses the search too: the example is too
    long for the model as the program stands, and candidates (most adding demos) would score 0 there for
    the data's length, not for their prompts."""
    overflowed = {
        r.example_id: r.error for r in evaluation.results if r.error and r.error.startswith(CONTEXT_OVERFLOW)
    }
    if overflowed:
        first = dict(list(overflowed.items())[:3])
        raise OptimizationError(
            f"the unoptimized program's prompt is longer than the model's context window on "
            f"{len(overflowed)} of the {len(evaluation.results)} validation examples, so no candidate "
            "could be scored there: use a model or server with a larger context (for the embedded model, "
            "local_lm(ctx_per_slot=...)), or shorten or leave out those examples; first errors: "
            + "; ".join(f"{example_id}: {error}" for example_id, error in first.items()),
            errors=first,
        )
    if len(evaluation.errors) < len(evaluation.results):
        return
    if evaluation.results and all(r.lm_failure and not r.lm_answered for r in evaluation.results):
        first = {r.example_id: r.error or "LM failure" for r in evaluation.results[:3]}
        raise OptimizationError(
            f"an LM failure left every one of the {len(evaluation.results)} validation examples of the "
            "unoptimized program unscored, though the program's LMs answer; if the metric (or the "
            "program) calls an LM of its own, check that it answers; first errors: "
            + "; ".join(f"{example_id}: {error}" for example_id, error in first.items()),
            errors=first,
        )
    failures = {
        r.example_id: r.error for r in evaluation.results if r.error is not None and r.score is not None
    }
    if all(error.startswith(PROMPTS_FAULTS) for error in failures.values()):
        return
    first = dict(list(failures.items())[:3])
    raise OptimizationError(
        f"the program or the metric failed on every one of the {len(evaluation.results)} validation "
        "examples of the unoptimized program; first errors: "
        + "; ".join(f"{example_id}: {error}" for example_id, error in first.items()),
        errors=first,
    )
