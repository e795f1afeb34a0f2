"""One attempt of an HTTP chat client's request on an endpoint: the slots, the lease, the rate limiters'
admission, the exchange and the settling of what it used (see :class:`~aprompt.lm._http.HTTPChatLM`).

An attempt, in order: the end of any 429 pause, the client-wide concurrency slot, an endpoint
(least-loaded available), one of its slots (when there are several: the client's own bound a lone one)
and a connection (:mod:`aprompt.lm._connections`), the endpoint's rate limiter, the client-wide rate
limiter, and only then the HTTP request, through our own HTTP/1.1 transport (:mod:`aprompt.lm._http11`),
or httpx behind a proxy or with a caller's ``http_client``, whose reply :mod:`aprompt.lm._exchange`
reads. Retry back-offs and pauses (:mod:`aprompt.lm._pacing`) are waited outside every slot.

Endpoints. A failed attempt cools its endpoint down (see :mod:`aprompt.lm.endpoints`), so that a retry
goes to another, as it does, when another is available, after a failure that cools none down (an empty
or filtered reply: a replica serving a broken model would otherwise take every try of a request, and an
evaluation would score it 0). One of several that answers 404 (a replica lacking the route or model) is
not the request's fault: the request goes at once to another endpoint (each one once at most), outside the
retries; when every other one is cooling down or paused by a 429, to one of them all the same, waiting
out its pause (raised, the 404 would lose a request another replica answers). A lone endpoint's 404, or
one from every endpoint, is raised. Another refusal of the request (a 400 or 422: a prompt longer than
this replica's context, a parameter its server version lacks), and a reply cut by this replica's context
window, go on to the other endpoints the same way, the refusing one staying in use: replicas configured
differently would otherwise make the answer depend on which one a request happened to reach (a refusal
from every one is raised, one of those that are not a 404 rather than a 404). A refusal of the key
(401/403) by one of several (its key revoked), its account's quota or credit spent (a 402, OpenAI's
``insufficient_quota`` 429: no pause clears it), a refused TLS certificate, or a reply in a form the client
never reads (a proxy in front of that one replica streams or encodes every reply), takes that endpoint out
of rotation, with one warning naming it, and the request goes on to the others; it is raised when every
endpoint failed so (a lone endpoint's at once): such a replica would otherwise fail a share of the
requests, taken for the prompts' failures or for an LM that fails every request, depending on which
replica they reached.

Pauses. A 429 pauses its endpoint until its ``Retry-After`` (and the client, when it has limits of its
own); one INFO line is logged per pause, not per 429. The attempts a pause held are released at its end
spread over ``RetryPolicy.pause_jitter`` of its length, so that they do not arrive all at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from aprompt._errors import (
    AuthenticationError,
    LMError,
    LMStatusError,
    QuotaExhaustedError,
    RateLimitError,
    RequestRejectedError,
    TLSCertificateError,
    TruncatedResponseError,
    UnreadableResponseError,
)
from aprompt._slots import Slots
from aprompt.lm._exchange import ReplyReader
from aprompt.lm._meter_context import admit_request
from aprompt.lm._pacing import pause_after_rate_limit, wait_out_pause
from aprompt.lm._replies import incomplete_reply
from aprompt.lm._reservations import Reservations
from aprompt.lm._token_estimate import completion_budget
from aprompt.lm.adaptive import ConcurrencyController
from aprompt.lm.endpoints import EndpointPool, EndpointState, is_endpoint_fault
from aprompt.lm.limits import RateLimiter
from aprompt.lm.retry import RetryPolicy
from aprompt.lm.types import Completion
from aprompt.lm.usage import UsageCounter, note_request

__all__ = ["Attempts"]

logger = logging.getLogger("aprompt.lm")


@attrs.frozen
class Attempts:
    """How a client makes one attempt of a request: the parts of it an attempt goes through.

    Attributes:
        model: the client's model (metered and named in logs).
        pool: the client's endpoints.
        limiter: the client-wide rate limiter.
        reservations: the token reservations on the client's and its endpoints' limiters.
        concurrency: the client's concurrency controller.
        slots: its slots, one of which each attempt holds.
        usage: the client's counters (requests, retries, tokens, 429s).
        reader: reads each exchange's reply.
        request_urls: each endpoint's request URL.
        retry: the client's retry policy (its pauses after a 429).
        rng: draws the spread of the attempts a pause released.
    """

    model: str
    pool: EndpointPool
    limiter: RateLimiter
    reservations: Reservations
    concurrency: ConcurrencyController
    slots: Slots
    usage: UsageCounter
    reader: ReplyReader
    # Never in a repr (see ReplyReader.secrets): a URL's query may hold a key.
    request_urls: Mapping[EndpointState, httpx.URL] = attrs.field(repr=False)
    retry: RetryPolicy
    rng: random.Random

    async def routed(
        self,
        payload: bytes,
        estimate: int,
        params: Mapping[str, Any],
        *,
        is_retry: bool,
        failed_on: set[EndpointState] | None = None,
    ) -> Completion:
        """One attempt, sent on at once to another endpoint while the one it went to answers 404 (a
        replica lacking the route or model, now cooling down), refuses the request otherwise, refuses its
        key, has its account's quota spent, has its TLS certificate refused or replies unreadably (now out
        of rotation), or cuts its reply at its context window: another replica may answer it. Each
        endpoint is tried once at most (one paused by a 429 is waited for); when every one refused, the
        first refusal of the request is raised if one came, else the first failure of the endpoint itself,
        else the 404.

        ``failed_on``: the endpoints the request failed on before (see :meth:`attempt`)."""
        # The endpoints themselves, not their URLs: several may share one (a server, a key each).
        tried: set[EndpointState] = set()
        refusal: LMError | None = None  # the first refusal of the request itself (not a 404)
        out: LMError | None = None  # the first that took its endpoint out of rotation
        while True:
            try:
                return await self.attempt(
                    payload, estimate, params, is_retry=is_retry, tried=tried, failed_on=failed_on
                )
            except (
                LMStatusError,
                TruncatedResponseError,
                UnreadableResponseError,
                TLSCertificateError,
            ) as error:
                url = error.endpoint
                if url is None or not _another_may_answer(error):
                    raise
                status = error.status_code if isinstance(error, LMStatusError) else None
                if _takes_out(error):
                    out = out or error
                elif refusal is None and status != 404:
                    refusal = error
                if len(tried) >= len(self.pool.endpoints):
                    final = refusal or out
                    if final is None or final is error:
                        raise
                    raise final from None
                what = type(error).__name__ if status is None else f"HTTP {status}"
            is_retry = True
            logger.debug("%s: %s, sending the request to another endpoint", url, what)

    async def attempt(
        self,
        payload: bytes,
        estimate: int,
        params: Mapping[str, Any],
        *,
        is_retry: bool,
        tried: set[EndpointState] | None = None,
        failed_on: set[EndpointState] | None = None,
    ) -> Completion:
        """``payload`` sent once, to an endpoint not in ``tried`` when one is available (the one it goes
        to is added to ``tried``), and, among the available ones, not in ``failed_on`` when one is (the
        one it goes to is added to ``failed_on`` if it fails)."""
        await self.wait_out_pause()
        # The client's slots number at most the endpoints' total capacity (the controller's maximum).
        async with (
            self.reservations.first_open_reply(params),
            self.slots,
            self.pool.lease(capped=True, avoid=tried or (), shun=failed_on or ()) as lease,
        ):
            endpoint = lease.endpoint
            if tried is not None:
                tried.add(endpoint)
            # Reserved per attempt: a retry reserves what the replies since have taught.
            reserved = self.reservations.reserve(estimate, params)
            admitted = await endpoint.limiter.acquire(reserved)
            admitted_here = None
            # Tokens settled on the limiters: a request refused before it is sent, or answered with an
            # error status (not billed), is refunded; one sent and not answered (a timeout, a dropped
            # connection, a cancellation) keeps its reservation, as the server counts what it received.
            used = 0
            meter = None
            sent: float | None = None
            try:
                admitted_here = await self.limiter.acquire(reserved)
                # Counted by the endpoint from when it goes, should the client's limits have held it.
                endpoint.limiter.refresh(admitted)
                meter = admit_request(self.model, retry=is_retry)  # may refuse: a run limit is spent
                self.usage.requests += 1
                if is_retry:
                    self.usage.retries += 1
                sent = time.monotonic()
                used = reserved
                completion = await self.reader.exchange(
                    lease.transport, endpoint, self.request_urls[endpoint], payload
                )
                if meter is not None:
                    meter.settle(self.model, completion.usage)
                self.reservations.observe(estimate, params, completion.usage)
                # A server that reports no usage keeps the estimate charged.
                used = completion.usage.total_tokens or reserved
                self.concurrency.completed(time.monotonic() - sent, used)
                # Counted before the check: an incomplete reply is billed too.
                self.usage.prompt_tokens += completion.usage.prompt_tokens
                self.usage.completion_tokens += completion.usage.completion_tokens
                incomplete = incomplete_reply(
                    completion,
                    endpoint.url,
                    completion_budget(params) if completion.finish_reason == "length" else None,
                    scrub=self.reader.scrub,
                )
                if incomplete is not None:
                    raise incomplete
                return completion
            except LMError as error:
                if isinstance(error, LMStatusError):
                    used = 0
                self.note_failure(endpoint, error)
                if failed_on is not None:
                    failed_on.add(endpoint)
                if meter is not None:
                    meter.note_failure(error)
                raise
            finally:
                if sent is not None:  # for the report's chart of requests in flight
                    note_request(sent, time.monotonic())
                endpoint.limiter.settle(admitted, used)
                if admitted_here is not None:
                    self.limiter.settle(admitted_here, used)

    async def wait_out_pause(self) -> None:
        """Wait, holding no slot, until a 429 pause lets requests through (see :func:`wait_out_pause`)."""
        await wait_out_pause(
            self.limiter,
            [endpoint.limiter for endpoint in self.pool.endpoints],
            pause_jitter=self.retry.pause_jitter,
            rng=self.rng,
        )

    def note_failure(self, endpoint: EndpointState, error: LMError) -> None:
        """Count a failed attempt: a 429 pauses (see :mod:`aprompt.lm._pacing`), an endpoint's fault
        cools the endpoint down, a refused key, a spent quota or an unreadable reply takes one of
        several out of rotation."""
        if isinstance(error, RateLimitError):
            self.usage.rate_limited += 1
            pause = pause_after_rate_limit(error, endpoint.limiter, self.limiter, self.retry)
            if pause is not None:
                self.concurrency.paused()
                logger.info(
                    "%s: HTTP 429, pausing requests for %.2f s (concurrency cap now %d)",
                    endpoint.url,
                    pause,
                    self.concurrency.cap,
                )
            else:
                logger.debug("%s: HTTP 429 within a pause", endpoint.url)
        elif _takes_out(error) and len(self.pool.endpoints) > 1:
            if self.pool.take_out(endpoint):
                # The URL only: a refusal's message may quote what the server made of the key.
                endpoints = self.pool.endpoints
                logger.warning(
                    "%s (endpoint %d of %d) %s: no more requests go there while another endpoint answers; %s",
                    endpoint.url,  # with its place: endpoints may share a URL, a key each
                    endpoints.index(endpoint) + 1,
                    len(endpoints),
                    *_out_of_rotation_why(error),
                )
        elif is_endpoint_fault(error):
            self.pool.mark_unhealthy(endpoint)


def _another_may_answer(
    error: LMStatusError | TruncatedResponseError | UnreadableResponseError | TLSCertificateError,
) -> bool:
    """Whether another replica may answer a request ``error`` refused: a 404, another refusal of the
    request or of the key, an unreadable reply, a refused TLS certificate, or a reply cut by the context
    window (replicas may differ in context, model version, route, key, certificate or the proxy in front of
    them)."""
    if isinstance(error, UnreadableResponseError | TLSCertificateError | QuotaExhaustedError):
        return True
    if isinstance(error, TruncatedResponseError):
        return error.by_window
    return error.status_code == 404 or isinstance(error, RequestRejectedError)


def _out_of_rotation_why(error: LMError) -> tuple[str, str]:
    """What an endpoint taken out of rotation did, and what to do about it."""
    if isinstance(error, AuthenticationError):
        return f"refused the API key (HTTP {error.status_code})", "check that endpoint's key"
    if isinstance(error, TLSCertificateError):
        return "has its TLS certificate refused", "give it a host its certificate names, or trust its CA"
    if isinstance(error, QuotaExhaustedError):
        return (
            f"has its account's quota or credit spent (HTTP {error.status_code})",
            "add credit to that endpoint's account or raise its spending limit",
        )
    return (
        "replies in a form the client never reads",
        "have it send replies as one unencoded, gzip or deflate JSON body",
    )


def _takes_out(error: LMError) -> bool:
    """Whether ``error`` shows its endpoint fails every request: its key refused, its account's quota
    spent, its TLS certificate refused, its replies unreadable."""
    return isinstance(
        error, AuthenticationError | QuotaExhaustedError | UnreadableResponseError | TLSCertificateError
    )
