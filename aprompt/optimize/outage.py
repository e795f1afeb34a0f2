"""Telling an LM outage from examples that fail on their own, before a step's result is journaled.

An example whose LM call fails after the client's retries is left unscored, and the step goes on:
one odd request (a prompt over the context window, a content filter) must not stop a run. But if the
endpoint is down, every later example fails too, and a step recorded then (an empty demo set, a trial
with no score, a full evaluation scored on the few examples that got through) would be journaled and
kept by a resumed run. So after a step with unscored examples, one *canary* re-runs an example known to
work, with the original prompts and a fresh rollout (so no cache answers it): if the LM fails that too,
the step raises :class:`~aprompt._errors.LMError` instead of returning, nothing of it is journaled, and
the run resumes where it stopped once the endpoint works. A single request that failed on every attempt
(a summary, an instruction proposal) is checked the same way with a one-token request.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import anyio

from aprompt._errors import LMError
from aprompt.lm.metering import metered_chat
from aprompt.lm.types import LM
from aprompt.optimize.evaluate import Evaluation, Metric, evaluate
from aprompt.optimize.examples import Example
from aprompt.program.overrides import PromptOverride

__all__ = ["CANARY_ROLLOUTS", "check_for_outage", "raise_if_down"]

#: Canary rollouts are drawn above this, far from the rollouts a run uses for its own samples.
CANARY_ROLLOUTS = 1_000_000_000


async def check_for_outage(
    evaluation: Evaluation,
    what: str,
    *,
    program: object,
    metric: Metric,
    known_good: Example | None,
    lm: LM | None,
    prompts: Mapping[str, PromptOverride] | None = None,
    concurrency: int | anyio.CapacityLimiter = 1,
) -> None:
    """Raise :class:`LMError` when ``evaluation`` (of ``what``) has LM failures and a canary run of
    ``known_good`` fails at the LM as well; return when it has none or the canary passes.

    With no ``known_good`` example, an evaluation in which nothing was scored is taken for an outage.
    """
    failed = [r for r in evaluation.results if r.lm_failure]
    if not failed:
        return
    summary = f"the LM failed on {len(failed)} of {len(evaluation.results)} examples of {what}"
    if known_good is None:
        if evaluation.mean is None:
            raise LMError(f"{summary} (first failure: {failed[0].error}); {_RESUMES}")
        return
    canary = await evaluate(
        program,
        [known_good],
        metric,
        prompts=prompts,
        lm=lm,
        concurrency=concurrency,
        rollout=_fresh_rollout(),
    )
    result = canary.results[0]
    if result.lm_failure:
        raise LMError(
            f"{summary}, and on a check with an example that worked before ({result.error}); {_RESUMES}"
        )


async def raise_if_down(lm: LM, failure: LMError, what: str) -> None:
    """After ``what`` failed at the LM on every attempt with ``failure``: raise :class:`LMError` when a
    one-token request to ``lm`` fails as well (an outage); return when it answers (the failure was
    that request's own, and the caller may drop it)."""
    try:
        await metered_chat(
            lm, [{"role": "user", "content": "Reply OK."}], rollout=_fresh_rollout(), max_tokens=1
        )
    except LMError as down:
        problem = f"{type(down).__name__}: {down}"
    else:
        return
    raise LMError(
        f"the LM failed on {what} ({type(failure).__name__}: {failure}), and on a one-token check "
        f"({problem}): it is down or refuses every request. {_RESUMES_AFTER_FIX}"
    )


def _fresh_rollout() -> int:
    return CANARY_ROLLOUTS + random.SystemRandom().randrange(CANARY_ROLLOUTS)


_RESUMES_AFTER_FIX = (
    "Answers already received stay cached (and journaled with a run_dir), so the run resumes from here "
    "once the endpoint works"
)
_RESUMES = (
    "the endpoint looks down: answers already received stay cached (and journaled with a run_dir), "
    "so the run resumes from here once it works"
)
