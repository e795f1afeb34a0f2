"""The tokens an HTTP chat client reserves on its rate limiters for each attempt (see
:mod:`aprompt.lm._http`): a calibrated prompt estimate plus a completion budget learned from the replies
(:class:`~aprompt.lm.limits.TokenEstimator`), the first reply of unknown length sent alone under a token
limit, and one warning when a request costs more than a token limit in force."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from aprompt._slots import Slots
from aprompt.lm._token_estimate import completion_budget
from aprompt.lm.limits import RateLimiter, TokenEstimator
from aprompt.lm.types import TokenUsage

__all__ = ["Reservations"]

logger = logging.getLogger("aprompt.lm")

# Most attempts wait for nothing: one shared context for them, no generator per request.
_NO_WAIT: AbstractAsyncContextManager[None] = contextlib.nullcontext()


class Reservations:
    """One client's token reservations.

    Under a known token limit, requests without a completion budget wait until one reply to such a
    request has told its length (:meth:`first_open_reply`): sent together with the default reservation,
    replies longer than it would go over the limit at the server before anything was learned.

    Args:
        model: the client's model, for the warning.
        limiters: the client's limiters (its own and its endpoints').
    """

    def __init__(self, model: str, limiters: Sequence[RateLimiter]) -> None:
        self._model = model
        self._limiters = tuple(limiters)
        self.estimator = TokenEstimator()
        # Not an anyio.Lock: one made on a loop is that backend's, and a client may serve another loop after
        # it (trio after asyncio); a slot's waits are made on the loop that waits.
        self._probe = Slots(1)
        self._warned = False

    def reserve(self, estimate: int, params: Mapping[str, Any]) -> int:
        """Tokens to reserve for a request whose prompt's character estimate is ``estimate``; warns
        once when they are more than a token limit in force (each such request is then sent alone in its
        window: one a minute)."""
        reserved = self.estimator.reservation(estimate, params)
        if not self._warned:
            limit = self._token_limit()
            if limit is not None and reserved > limit:
                self._warned = True
                logger.warning(
                    "%s: a request reserves %d tokens, more than tokens_per_minute=%g; each such request "
                    "is sent alone in its minute (one a minute): raise tokens_per_minute or shorten the "
                    "request (max_tokens)",
                    self._model,
                    reserved,
                    limit,
                )
        return reserved

    def _token_limit(self) -> float | None:
        """The lowest token limit in force on the client's limiters (stated ones are learned as the run
        goes), or ``None``."""
        known = [limit for limiter in self._limiters if (limit := limiter.token_window.limit) is not None]
        return min(known) if known else None

    def observe(self, estimate: int, params: Mapping[str, Any], usage: TokenUsage) -> None:
        """Learn from a reply's reported usage (prompt calibration and completion length)."""
        self.estimator.observe_estimate(estimate, usage.prompt_tokens)
        self.estimator.observe_completion(params, usage.completion_tokens)

    def first_open_reply(self, params: Mapping[str, Any]) -> AbstractAsyncContextManager[None]:
        """``async with``: hold a request without a completion budget, under a known token limit, until a
        reply to one has been observed: one such request goes at a time until then."""
        if (
            self.estimator.completion_known
            or completion_budget(params) is not None
            or self._token_limit() is None
        ):
            return _NO_WAIT
        return self._alone()

    @asynccontextmanager
    async def _alone(self) -> AsyncIterator[None]:
        await self._probe.acquire()
        if self.estimator.completion_known:
            self._probe.release()
            yield
            return
        try:
            yield
        finally:
            self._probe.release()
