"""The life of an HTTP chat client's request past its cache: its attempts (see
:mod:`aprompt.lm._attempt`), retried by the client's :class:`~aprompt.lm.retry.RetryPolicy`, and the
re-send of a reply cut at its token budget.

A provider fault is never an answer. Besides error statuses, timeouts and malformed bodies, a 2xx reply that
is empty or null (:class:`~aprompt._errors.EmptyResponseError`), filtered (``finish_reason:
"content_filter"``, :class:`~aprompt._errors.ContentFilteredError`) or cut at its token budget (``"length"``,
:class:`~aprompt._errors.TruncatedResponseError`) or by the context window (Anthropic's
``"model_context_window_exceeded"``, Mistral's ``"model_length"``, or a ``"length"`` reply that reports fewer
completion tokens than its budget, as llama.cpp and vLLM end a full context window; the same error, with
``by_window`` set) fails the attempt, and is never cached. Empty and filtered replies are retried like any
transient fault; one the context window cut is raised at once (no budget would finish it); one cut at its
budget is re-sent once, at once, with twice its ``max_tokens`` (or ``max_completion_tokens``; with
:data:`~aprompt.lm._replies.TRUNCATION_RETRY_MAX_TOKENS` when the request set neither), saying so (a warning
for the client's first, DEBUG for the rest), and raises if it is cut again. Their tokens count in
:attr:`~aprompt.lm._http.HTTPChatLM.usage` (they are billed), and their re-sends in its ``requests`` and
``retries``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import tenacity

from aprompt._errors import ConfigError, RequestRejectedError, TruncatedResponseError
from aprompt.lm._attempt import Attempts
from aprompt.lm._replies import larger_budget
from aprompt.lm._reservations import Reservations
from aprompt.lm.endpoints import EndpointState
from aprompt.lm.limits import estimate_prompt_tokens
from aprompt.lm.retry import RetryPolicy
from aprompt.lm.types import Completion, Message

__all__ = ["RequestLife"]

logger = logging.getLogger("aprompt.lm")


@attrs.define
class RequestLife:
    """How a client answers one request its cache did not: attempts, retries and a larger budget.

    Attributes:
        model: the client's model (named in logs).
        request_body: the wire format's JSON body of a request (see
            :class:`~aprompt.lm._http.HTTPChatLM`).
        reservations: the client's token reservations (a budget they cannot reserve is refused).
        attempts: how each attempt is made.
        retry: the client's retry policy.
        cut_replies: replies re-sent with a larger token budget (only the first is a warning).
    """

    model: str
    request_body: Callable[[Sequence[Message], Mapping[str, Any]], Any]
    reservations: Reservations
    attempts: Attempts
    retry: RetryPolicy
    cut_replies: int = 0

    async def complete(self, messages: Sequence[Message], params: Mapping[str, Any]) -> Completion:
        """The completion of ``messages`` sent with ``params``, retried and re-sent as the policy says."""
        try:
            payload = json.dumps(self.request_body(messages, params)).encode()
        except (TypeError, ValueError) as exc:
            problem = str(exc)
        else:
            problem = ""
        if problem:
            raise ConfigError(f"request cannot be sent as JSON: {problem}")
        # Made once: the reservations and the calibration after the answer use the same estimate.
        estimate = estimate_prompt_tokens(messages)
        self.reservations.estimator.reservation(estimate, params)  # a budget it cannot reserve: raised
        attempts = 0
        enlarged = False
        # A retry goes to another endpoint than those this request failed on, when one is available.
        failed_on: set[EndpointState] = set()

        async def attempt() -> Completion:
            nonlocal attempts, payload, enlarged
            attempts += 1
            try:
                return await self.attempts.routed(
                    payload, estimate, params, is_retry=attempts > 1, failed_on=failed_on
                )
            except TruncatedResponseError as truncated:
                # A reply the context window cut would be cut at the same place with any budget.
                if enlarged or truncated.by_window:
                    raise
                cut = truncated
            # Re-sent at once, outside the back-off: the same request would be cut the same way.
            name, given, larger = larger_budget(params)
            larger_params = {**params, name: larger}
            payload = json.dumps(self.request_body(messages, larger_params)).encode()
            enlarged = True
            self.cut_replies += 1
            # A small model rambles past its budget often, and the re-send is the designed answer: the
            # first is a warning (it may mean max_tokens is set too low), the rest are counted at DEBUG.
            first = self.cut_replies == 1
            logger.log(
                logging.WARNING if first else logging.DEBUG,
                "%s: reply cut at its token budget (%s=%s, finish_reason %r); re-sending once with %s=%d%s",
                self.model,
                name,
                given,
                cut.finish_reason,
                name,
                larger,
                "; further cut replies are logged at DEBUG" if first else f" ({self.cut_replies} so far)",
            )
            attempts += 1
            try:
                return await self.attempts.routed(
                    payload, estimate, larger_params, is_retry=True, failed_on=failed_on
                )
            except TruncatedResponseError as again:
                final, detail = again, f"cut again with {name}={larger}"
            except RequestRejectedError as rejected:  # e.g. more than the model's output limit
                final, detail = cut, f"a re-send with {name}={larger} was rejected: {rejected.args[0]}"
            error = TruncatedResponseError(
                f"{final.args[0]}; {detail}",
                finish_reason=final.finish_reason,
                text=final.text,
                endpoint=final.endpoint,
            )
            # The larger budget met the window: a cut no budget would finish, named as such.
            error.by_window = final.by_window
            raise error

        # The first attempt goes without tenacity, whose controller costs a few percent of a call's
        # CPU; only a failure builds one, and replays the failure as its own first attempt, so that
        # retries, back-offs, logs and the error raised are the same as with tenacity from the start.
        try:
            completion: Completion = await attempt()
        except Exception as error:
            first_failure: Exception | None = error

            async def resumed() -> Completion:
                nonlocal first_failure
                if first_failure is not None:
                    failure, first_failure = first_failure, None
                    raise failure
                return await attempt()

            completion = await self.retry.retrying(self._log_retry)(resumed)
        return completion

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        sleep = state.next_action.sleep if state.next_action is not None else 0.0
        logger.debug(
            "%s: attempt %d of %d failed (%s); retrying in %.3f s",
            self.model,
            state.attempt_number,
            self.retry.max_retries + 1,
            error,
            sleep,
        )
