"""Riding out an LM outage, so that every step records what it would have on a working endpoint.

An example whose LM call fails after the client's retries is left unscored, and the evaluation goes on:
one odd request (a content filter, a refusal) must not stop a run. But while an
endpoint is down every example fails, and a step recorded then (a trial scored on the few examples that
got through, an empty demo set, a dropped proposal) would be journaled, kept by a resumed run, and change
the result. So a step is made complete before it is recorded.

After a step (a trial, a full evaluation, a wave of bootstrap runs) with unscored examples, or a single
request (a summary, a proposal) that failed at the LM, an :class:`OutageGuard` checks the step's LMs, and
every LM whose call failed earlier in the run (an LM-judged metric's judge, which the run is never given:
aprompt's clients, and any LM called through a predictor, tell the run's meter of their failures), with
a one-token request (a fresh rollout, so no cache answers it; sent again without that budget when a 4xx
other than 401/403/404 refuses it, as a model that takes no ``max_tokens`` does):

- The check fails with a transient error (5xx, 429, a timeout, a dropped connection): the endpoint is
  down. The guard checks again with exponential back-off (``first_wait`` doubling up to ``max_wait``)
  until it answers, then re-runs only the failed examples (or the request, with its rollout) and merges
  them in. If it still fails ``tolerance`` seconds after the step noticed the failure,
  :class:`~aprompt._errors.EndpointDownError` stops the run: nothing of the step is journaled, and a later
  call with the same ``run_dir`` resumes from it.
- The check is refused (a 4xx such as a bad key, an unknown model, or the account's quota or credit
  spent: :class:`~aprompt._errors.QuotaExhaustedError`, a 429 among them), its reply comes in a form the
  client never reads (:class:`~aprompt._errors.UnreadableResponseError`), or the endpoint's TLS
  certificate is refused (:class:`~aprompt._errors.TLSCertificateError`): waiting cannot help, and
  :class:`~aprompt._errors.EndpointDownError` stops the run at once.
- The check passes: the LM works, so the failures may be the examples' own. They are re-run, up to
  ``reruns`` times (default 2, so that an outage that ended just before the check is not taken for
  them); what still fails is that example's own failure: it stays unscored, is counted, and is reported
  in ``OptimizeResult.failures`` (a single request's ``LMError`` is raised to its caller, which drops it).

A reply that is not an answer (empty, filtered; :class:`~aprompt._errors.IncompleteResponseError`) shows
the endpoint works, and the client has already retried it: to the program's own calls it is the prompt's
failure, scored 0 (:func:`~aprompt.executors.base.unscored_lm_error`), and to another call of the example
(an LM-judged metric's) that example's own failure at once, unscored, with no check and no re-run. A reply
the provider stopped on a fault (``finish_reason`` ``"error"`` or ``"abort"``) is not one of those: like a
5xx it may mean the endpoint is down, and is checked and re-run as above. A reply cut at its token budget
even after the client's larger re-send is no LM failure at all: the prompt's, scored 0, as is a prompt
refused as longer than the model's context; a single request refused so is raised to its caller at once,
unchecked and not re-run.

Re-runs use the prompts and rollouts of the first run, and a response cache answers again what had
succeeded, so a step that lived through an outage records exactly what a clean run records, and the
search sees the same scores in the same order.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio
import attrs

from aprompt._errors import (
    AuthenticationError,
    ConfigError,
    ContextOverflowError,
    EndpointDownError,
    IncompleteResponseError,
    LMError,
    RequestRejectedError,
    TLSCertificateError,
    UnreadableResponseError,
)
from aprompt._optimize.evaluate import Evaluation
from aprompt._optimize.examples import Example
from aprompt.lm._meter_context import current_meter, metered_chat
from aprompt.lm._replies import accepting_cut_replies, is_answered_failure
from aprompt.lm.retry import RETRYABLE_ERRORS
from aprompt.lm.types import LM, Message
from aprompt.program.context import current_lm
from aprompt.program.predictor import Predict

__all__ = [
    "CANARY_ROLLOUTS",
    "DEFAULT_OUTAGE_POLICY",
    "DEFAULT_OUTAGE_TOLERANCE",
    "OutageGuard",
    "OutagePolicy",
    "outage_policy",
]

logger = logging.getLogger("aprompt")

T = TypeVar("T")

#: Check rollouts are drawn above this, far from the rollouts a run uses for its own samples.
CANARY_ROLLOUTS = 1_000_000_000

#: How long (seconds) :func:`aprompt.optimize` waits by default for an LM that went down.
DEFAULT_OUTAGE_TOLERANCE = 300.0


@attrs.frozen
class OutagePolicy:
    """How patiently a run waits out an LM outage; see the module docstring.

    Attributes:
        tolerance: seconds an LM may stay down (from the failed step) before the run stops.
        reruns: re-runs of what failed at the LM while the LM answered a check, before it counts as a
            failure of its own.
        first_wait, max_wait: the back-off between checks while the LM is down, in seconds.
    """

    tolerance: float = attrs.field(default=DEFAULT_OUTAGE_TOLERANCE, validator=attrs.validators.ge(0))
    reruns: int = attrs.field(default=2, validator=attrs.validators.ge(0))
    first_wait: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    max_wait: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))


#: The policy of a step run outside :func:`aprompt.optimize` (which passes its own).
DEFAULT_OUTAGE_POLICY = OutagePolicy()


def outage_policy(outage_tolerance: object) -> OutagePolicy:
    """The policy for ``optimize(outage_tolerance=...)``; :class:`ConfigError` unless it is a finite
    number of seconds >= 0 (0 stops at the first outage without waiting)."""
    if (
        isinstance(outage_tolerance, bool)
        or not isinstance(outage_tolerance, int | float)
        or not math.isfinite(outage_tolerance)
        or outage_tolerance < 0
    ):
        raise ConfigError(
            f"outage_tolerance must be a finite number of seconds >= 0, got {outage_tolerance!r}"
        )
    return OutagePolicy(tolerance=float(outage_tolerance))


@attrs.frozen
class OutageGuard:
    """Completes steps across outages of ``lms`` (none given: the :func:`aprompt.use_lm` default)."""

    lms: tuple[LM, ...]
    policy: OutagePolicy = DEFAULT_OUTAGE_POLICY

    @classmethod
    def for_program(
        cls, predictors: Sequence[tuple[str, Predict]], lm: LM | None, policy: OutagePolicy
    ) -> OutageGuard:
        """A guard of the LMs a program runs on: ``lm`` and the predictors' own."""
        found: dict[int, LM] = {}
        for candidate in (lm, *(predictor.lm for _, predictor in predictors)):
            if candidate is not None:
                found.setdefault(id(candidate), candidate)
        return cls(tuple(found.values()), policy)

    async def evaluate(
        self,
        run: Callable[[Sequence[Example]], Awaitable[Evaluation]],
        examples: Sequence[Example],
        what: str,
    ) -> Evaluation:
        """``run(examples)``, with the examples left unscored by LM failures re-run (see the module)
        and merged in, in the order of ``examples``.

        Raises:
            EndpointDownError: the LMs stayed down longer than the tolerance, or refuse requests.
        """
        results = list((await run(examples)).results)
        passed_checks = 0
        # A reply that is not an answer (cut, empty, filtered) shows the LM works, and the same request
        # gets it again: only the other failures can be an outage worth waiting out and re-running.
        while failed := [
            i for i, result in enumerate(results) if result.lm_failure and not result.lm_answered
        ]:
            failure = results[failed[0]].error or "an LM failure"
            if await self.wait_until_answering(
                f"{len(failed)} of {len(results)} examples of {what}", failure
            ):
                passed_checks += 1
                if passed_checks > self.policy.reruns:
                    break  # the LM works and these keep failing: their own failures
            again = await run([examples[i] for i in failed])
            for position, result in zip(failed, again.results, strict=True):
                results[position] = result
        return Evaluation(tuple(results))

    async def call(self, request: Callable[[], Awaitable[T]], what: str) -> T:
        """``request()``, sent again after an outage; its ``LMError`` is raised once it failed
        ``1 + reruns`` times while the LM answered checks, or at once for a prompt longer than the
        model's context (sent again, it would overflow again).

        Raises:
            EndpointDownError: the LMs stayed down longer than the tolerance, or refuse requests.
        """
        passed_checks = 0
        while True:
            try:
                return await request()
            except (EndpointDownError, ContextOverflowError):
                raise
            except LMError as failure:
                if await self.wait_until_answering(what, f"{type(failure).__name__}: {failure}"):
                    passed_checks += 1
                    if passed_checks > self.policy.reruns:
                        raise

    async def wait_until_answering(self, what: str, failure: str) -> bool:
        """After ``what`` failed at the LM with ``failure``: ``True`` when the LMs answer a check at
        once, ``False`` when they were down and answer again now.

        Raises:
            EndpointDownError: they refuse the check, or still fail it ``tolerance`` seconds on.
        """
        started = anyio.current_time()
        problem = await self._check()
        if problem is None:
            return True
        wait = self.policy.first_wait
        while True:
            waited = anyio.current_time() - started
            # A reply no request can read, or a certificate refused, is a setting: waiting cannot change it.
            if not isinstance(problem, RETRYABLE_ERRORS) or isinstance(
                problem, UnreadableResponseError | TLSCertificateError
            ):
                raise EndpointDownError(
                    f"the LM failed on {what} ({failure}), and on a one-token check "
                    f"({type(problem).__name__}: {problem}): it is down or refuses every request. "
                    f"{_RESUMES_AFTER_FIX}",
                    waited=waited,
                    endpoint=problem.endpoint,
                ) from problem
            if waited >= self.policy.tolerance:
                raise EndpointDownError(
                    f"the LM failed on {what} ({failure}); the endpoint looks down: one-token checks "
                    f"failed for {waited:.1f} s, past outage_tolerance={self.policy.tolerance:g} s "
                    f"(last: {type(problem).__name__}: {problem}). {_RESUMES}",
                    waited=waited,
                    endpoint=problem.endpoint,
                )
            # No later than the run's deadline: the check then is refused by max_time, which stops the
            # run on time rather than a back-off later.
            meter = current_meter()
            deadline = meter.seconds_left() if meter is not None else math.inf
            pause = min(wait, self.policy.tolerance - waited, deadline)
            logger.warning(
                "the LM failed on %s and a check failed too (%s: %s); checking again in %.1f s",
                what,
                type(problem).__name__,
                problem,
                pause,
            )
            await anyio.sleep(pause)
            wait = min(wait * 2, self.policy.max_wait)
            problem = await self._check()
            if problem is None:
                logger.warning(
                    "the LM answers again after %.1f s; re-running what failed on %s",
                    anyio.current_time() - started,
                    what,
                )
                return False

    async def _check(self) -> LMError | None:
        """``None`` when every LM answers a one-token request, else the first failure."""
        lms = self.lms or tuple(lm for lm in (current_lm(),) if lm is not None)
        if not lms:
            return LMError("no LM to check")
        # An LM the step's own are not, whose call failed in this run: an LM-judged metric's judge, known
        # to the run only by its failures. Down, it leaves examples unscored as the program's LM does.
        # One closed since (a judge made for each judgement) is no longer the run's to wait for.
        meter = current_meter()
        if meter is not None:
            own = {id(lm) for lm in lms}
            lms = (*lms, *(lm for key, lm in meter.failed_lms.items() if key not in own and not _closed(lm)))
        for lm in lms:
            problem = await _check_one(lm)
            if problem is not None:
                return problem
        return None


def _closed(lm: LM) -> bool:
    return getattr(lm, "closed", False) is True


async def _check_one(lm: LM) -> LMError | None:
    """``None`` when ``lm`` answers a one-token request, else its failure."""
    problem = await _asked(lm, max_tokens=1)
    if problem is not None and _refuses_the_request(problem):
        # A model that refuses that budget (OpenAI's reasoning models take only max_completion_tokens,
        # Anthropic's extended thinking needs more than its thinking budget) is asked with the budget its
        # own requests are sent with: the refusal is the check's, not the LM's.
        problem = await _asked(lm)
    return problem


async def _asked(lm: LM, **budget: int) -> LMError | None:
    """``None`` when ``lm`` answers the check sent with ``budget``, else its failure."""
    try:
        # A reply cut at its budget is an answer, not re-sent.
        with accepting_cut_replies(lambda text: True):
            await metered_chat(lm, _CHECK, rollout=_fresh_rollout(), **budget)
    except IncompleteResponseError as reply:
        # A cut or empty reply still shows the endpoint answers; one stopped on a fault is down like a 5xx.
        return None if is_answered_failure(reply) else reply
    except LMError as problem:
        return problem
    return None


def _refuses_the_request(problem: LMError) -> bool:
    """Whether ``problem`` is a 4xx refusing the request itself: not the key's (401/403) nor a model or
    route the server lacks (404), which no other request would get past."""
    return (
        isinstance(problem, RequestRejectedError)
        and not isinstance(problem, AuthenticationError)
        and problem.status_code != 404
    )


_CHECK: tuple[Message, ...] = ({"role": "user", "content": "Reply OK."},)


def _fresh_rollout() -> int:
    return CANARY_ROLLOUTS + random.SystemRandom().randrange(CANARY_ROLLOUTS)


_RESUMES_AFTER_FIX = (
    "Answers already received stay cached (and journaled with a run_dir), so calling again with the same "
    "run_dir resumes from here once the endpoint works"
)
_RESUMES = (
    "Answers already received stay cached (and journaled with a run_dir), so calling again with the same "
    "run_dir resumes from here once it works"
)
