"""The provider-independent half of the HTTP chat clients: pooled keep-alive connections,
concurrency caps, rate limits, retries, endpoint routing, the response cache and usage accounting.

A provider client subclasses :class:`HTTPChatLM` and supplies only its wire format: the request
path, authentication headers, request body, response parsing and error-message extraction (see
:class:`~aprompt.lm.openai.OpenAICompatibleLM`).

One call, in order: the cache (identical in-flight calls share one computation), then per attempt
the end of any 429 pause, the client-wide concurrency slot, an endpoint (least-loaded available), one of
its slots (when there are several: the client's own bound a lone one) and a connection
(:mod:`aprompt.lm._connections`), the endpoint's rate limiter, the client-wide
rate limiter, and only then the HTTP request, through our own HTTP/1.1 transport
(:mod:`aprompt.lm._http11`), or httpx behind a proxy or with a caller's ``http_client``, whose reply
:mod:`aprompt.lm._exchange` reads. Retry back-offs and pauses (:mod:`aprompt.lm._pacing`) are waited
outside every slot.

Concurrency. An explicit ``max_concurrency`` is a fixed cap. Without one (the default) the cap adapts
(:mod:`aprompt.lm.adaptive`): from the rate limits and the measured latency (Little's law) when a limit
is known, else additive increase / multiplicative decrease on 429s. Limits the server states in its
``x-ratelimit-*`` headers become the endpoint's (:mod:`aprompt.lm.ratelimit_headers`), never above
them.

Endpoints. A failed attempt cools its endpoint down (see :mod:`aprompt.lm.endpoints`), so that a retry
goes to another; one of several that answers 404 (a replica lacking the route or model) is not the
request's fault: the request goes at once to another endpoint (each one once at most), outside the
retries; when every other one is cooling down or paused by a 429, to one of them all the same, waiting
out its pause (raised, the 404 would lose a request another replica answers). A lone endpoint's 404, or
one from every endpoint, is raised.

Pauses. A 429 pauses its endpoint until its ``Retry-After`` (and the client, when it has limits of its
own); one INFO line is logged per pause, not per 429. The attempts a pause held are released at its end
spread over ``RetryPolicy.pause_jitter`` of its length, so that they do not arrive all at once.

A provider fault is never an answer. Besides error statuses, timeouts and malformed bodies, a 2xx reply that
is empty or null (:class:`~aprompt._errors.EmptyResponseError`), filtered (``finish_reason:
"content_filter"``, :class:`~aprompt._errors.ContentFilteredError`) or cut at its token budget (``"length"``,
:class:`~aprompt._errors.TruncatedResponseError`) or by the context window (Anthropic's
``"model_context_window_exceeded"``, Mistral's ``"model_length"``, or a ``"length"`` reply that reports fewer
completion tokens than its budget, as llama.cpp and vLLM end a full context window; the same error, with
``by_window`` set) fails the attempt, and is never cached. Empty and filtered replies are retried like any
transient fault; one the context window cut is raised at once (no budget would finish it); one cut at its
budget is re-sent once, at once, with twice its ``max_tokens`` (or ``max_completion_tokens``; with
:data:`TRUNCATION_RETRY_MAX_TOKENS` when the request set neither), saying so (a warning for the client's
first, DEBUG for the rest), and raises if it is cut again. Their tokens count in :attr:`~HTTPChatLM.usage`
(they are billed), and their re-sends in its ``requests`` and ``retries``.

``timeout`` bounds each attempt as a whole (connecting, sending and reading the entire body), and a
body longer than ``max_response_bytes`` is not read on: the attempt fails with a
:class:`~aprompt._errors.BadResponseError` (retried like a malformed body).
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

import anyio
import attrs
import httpx
import tenacity

from aprompt._errors import (
    AuthenticationError,
    ConfigError,
    LMError,
    LMStatusError,
    RateLimitError,
    RequestRejectedError,
    TruncatedResponseError,
)
from aprompt.lm._endpoint_setup import EndpointSpec, set_up_endpoints
from aprompt.lm._exchange import ReplyReader
from aprompt.lm._loop_owner import LoopOwner
from aprompt.lm._messages import check_messages
from aprompt.lm._metering import admit_request
from aprompt.lm._pacing import pause_after_rate_limit, pooled_rates, wait_out_pause
from aprompt.lm._probe import probe_endpoint
from aprompt.lm._replies import (
    DEFAULT_MAX_RESPONSE_BYTES,
    TRUNCATION_RETRY_MAX_TOKENS,
    incomplete_reply,
    is_cut,
    larger_budget,
)
from aprompt.lm._reservations import Reservations
from aprompt.lm._token_estimate import completion_budget
from aprompt.lm._transport import request_url
from aprompt.lm.adaptive import ConcurrencyController
from aprompt.lm.cache import ResponseCache, request_key
from aprompt.lm.cache._run_caches import lent_cache
from aprompt.lm.endpoints import (
    EndpointPool,
    EndpointState,
    is_endpoint_fault,
)
from aprompt.lm.limits import RateLimiter, estimate_prompt_tokens
from aprompt.lm.ratelimit_headers import StatedLimits, read_raw_rate_limit_headers
from aprompt.lm.retry import RetryPolicy
from aprompt.lm.types import Completion, Message, canonical_params
from aprompt.lm.usage import UsageCounter, UsageSnapshot, note_request

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "TRUNCATION_RETRY_MAX_TOKENS",
    "EndpointSpec",
    "HTTPChatLM",
]

logger = logging.getLogger("aprompt.lm")

#: ``max_concurrency`` when not given: None, an adaptive cap (see :mod:`aprompt.lm.adaptive`).
DEFAULT_MAX_CONCURRENCY: int | None = None

# Body fields a request parameter would replace (sent as given, parameters follow them in the body).
_BODY_FIELDS = ("model", "messages")


class HTTPChatLM(abc.ABC):
    """Base of the HTTP chat clients; implements the :class:`~aprompt.lm.types.LM` protocol.

    Subclasses set :attr:`path` and implement the ``_auth_headers``, ``_request_body``,
    ``_parse_completion`` and ``_server_message`` hooks. See
    :class:`~aprompt.lm.openai.OpenAICompatibleLM` for the arguments.
    """

    #: Appended to each endpoint's base URL, e.g. ``"/chat/completions"``.
    path: ClassVar[str]
    #: Keeps cached answers of different wire protocols apart when model names coincide (OpenAI's
    #: protocol keeps the empty namespace, so caches written before it existed stay valid).
    cache_namespace: ClassVar[str] = ""
    #: What :meth:`probe` asks for, after the base URL: a listing that checks the key and costs nothing.
    probe_path: ClassVar[str] = "/models"
    #: Each HTTP request is admitted by the run's meter (:mod:`aprompt.lm._metering`), retries included.
    meters_requests: ClassVar[bool] = True

    def __init__(
        self,
        model: str,
        endpoints: EndpointSpec,
        *,
        api_key: str | None,
        api_key_env: str | None,
        timeout: float,
        max_concurrency: int | None,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        max_retries: int | None,
        retry: RetryPolicy | None,
        cache: ResponseCache | None,
        default_params: Mapping[str, Any] | None,
        http_client: httpx.AsyncClient | None,
        endpoint_cooldown: float,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if not model:
            raise ConfigError("a model name is required")
        if max_response_bytes < 1:
            raise ConfigError(f"max_response_bytes must be at least 1, got {max_response_bytes}")
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1
        ):
            raise ConfigError(f"max_concurrency must be an integer of at least 1, got {max_concurrency!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if (
            isinstance(endpoint_cooldown, bool)
            or not isinstance(endpoint_cooldown, int | float)
            or not endpoint_cooldown >= 0
        ):
            # NaN would keep an endpoint that failed once out of use for good; a string would fail later.
            raise ConfigError(
                f"endpoint_cooldown must be a number of seconds >= 0, got {endpoint_cooldown!r}"
            )
        self._model = model
        setup = set_up_endpoints(
            endpoints,
            api_key=api_key,
            api_key_env=api_key_env,
            max_concurrency=max_concurrency,
            timeout=timeout,
            http_client=http_client,
            auth_headers=self._auth_headers,
        )
        states = setup.states
        self._secrets = setup.secrets
        # Parsed once: httpx would parse a string URL again for every request.
        self._request_urls = {state: request_url(state.target, self.path) for state in states}
        self._pool = EndpointPool(states, cooldown=endpoint_cooldown)
        self._limiter = RateLimiter(requests_per_minute, tokens_per_minute)
        # Reservations calibrated by the usage reported, on the client's and its endpoints' limiters.
        self._reservations = Reservations(
            model, [self._limiter, *(endpoint.limiter for endpoint in self._pool.endpoints)]
        )
        self._concurrency = ConcurrencyController(
            max_concurrency, maximum=self._pool.capacity, rates=self._rates
        )
        self._slots = self._concurrency.slots
        self._rng = random.Random()
        policy = retry if retry is not None else RetryPolicy()
        self._retry = policy if max_retries is None else attrs.evolve(policy, max_retries=max_retries)
        self._cache = cache
        self._default_params = dict(default_params or {})
        self._usage = UsageCounter()
        self._reader = ReplyReader(
            model=model,
            path=self.path,
            timeout=timeout,
            max_response_bytes=max_response_bytes,
            max_hold=self._retry.max_retry_after,
            secrets=self._secrets,
            keyless=setup.keyless,
            # A refusal of a request sent without a key says so: the server's own words ("Unauthorized")
            # do not tell a first run that the variable was never set.
            unset_key=f"no API key was sent: ${api_key_env} is not set (set it, or pass api_key=)",
            parse_completion=self._parse_completion,
            server_message=self._server_message,
            stated_limits=self._stated_limits,
        )
        self._cut_replies = 0  # replies re-sent with a larger token budget (only the first is a warning)
        self._closed = False
        self._loop_owner = LoopOwner()

    # -- wire-format hooks ------------------------------------------------------------------
    @abc.abstractmethod
    def _auth_headers(self, api_key: str | None) -> dict[str, str]:
        """Headers authenticating with ``api_key`` (None: no key configured)."""

    @abc.abstractmethod
    def _request_body(self, messages: Sequence[Message], params: Mapping[str, Any]) -> Any:
        """The JSON body of one request (``params`` are canonical and never hold ``rollout``)."""

    @abc.abstractmethod
    def _parse_completion(self, content: bytes) -> Completion:
        """A 2xx body as a completion; raises ValueError, KeyError, IndexError, TypeError or
        AttributeError (a field of another JSON type than expected) if it is malformed."""

    @abc.abstractmethod
    def _server_message(self, content: bytes) -> str:
        """The human-readable error message in an error body (or the body's text), uncut: the
        caller scrubs the keys out of it first and cuts it after, so no key is left half-cut."""

    def _sent_params(self, params: Mapping[str, Any], rollout: int) -> Mapping[str, Any]:
        """The parameters sent for a request of ``rollout`` (the cache key uses ``params`` alone)."""
        return params

    def _stated_limits(self, raw: list[tuple[bytes, bytes]]) -> StatedLimits | None:
        """The rate limits an answer's raw headers state (OpenAI's ``x-ratelimit-*`` here), or None."""
        return read_raw_rate_limit_headers(raw)

    # -- public surface ---------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self._model

    @property
    def usage(self) -> UsageSnapshot:
        """Counters since creation (see :class:`~aprompt.lm.usage.UsageSnapshot`); cheap to read."""
        return self._usage.snapshot()

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoints' base URLs, without credentials."""
        return tuple(endpoint.url for endpoint in self._pool.endpoints)

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._retry

    @property
    def capacity(self) -> int:
        """Requests this client lets in flight now (its concurrency cap across endpoints).

        With an explicit ``max_concurrency`` it is that number (at most the endpoints' total) and never
        changes. Without one it is the adaptive cap (:mod:`aprompt.lm.adaptive`): it starts from the
        rate limits (or 64 when none is known) and changes as latencies are measured, limits learned
        and 429s met, so read it again rather than keep it. Calls beyond it wait in the client.
        """
        return self._concurrency.cap

    @property
    def planned_concurrency(self) -> int | None:
        """Requests in flight this client plans for from its configuration alone, the same before and
        after any call: an explicit ``max_concurrency`` (at most the endpoints' total), or, adaptive,
        the cap the configured ``requests_per_minute`` / ``tokens_per_minute`` give at a 1 s latency
        guess (:mod:`aprompt.lm.adaptive`); None when adaptive with no limit configured (it finds its cap
        as it goes). The optimizer sizes its window of trials from it, which must not depend on timing.
        """
        return self._concurrency.planned(self._configured_rates())

    #: An optimization lends this client its run's cache through the run's context (see
    #: :mod:`aprompt.lm.cache._run_caches`) rather than by setting :attr:`cache`.
    takes_lent_cache: ClassVar[bool] = True

    @property
    def cache(self) -> ResponseCache | None:
        """The response cache the client was given, or ``None``. Assignable. Without one, an optimization
        lends the client its run's cache (its ``run_dir``'s, or one in memory) for the calls it makes,
        leaving this attribute as it is, so that runs sharing the client each keep their own."""
        return self._cache

    @cache.setter
    def cache(self, cache: ResponseCache | None) -> None:
        self._cache = cache

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self._model!r}, endpoints={list(self.endpoints)!r})"

    async def chat(self, messages: Sequence[Message], *, rollout: int = 0, **params: Any) -> Completion:
        """Answer one chat request, from the cache when one is configured and holds it.

        ``params`` (merged over ``default_params``; ``None`` values dropped) are sent to the server;
        ``rollout`` tells otherwise identical requests apart in the cache; it is sent only as a sampling
        seed, by a client told to (``OpenAICompatibleLM(seed_rollouts=True)``).

        Raises:
            ConfigError: ``messages`` is not a list of ``{"role": str, "content": str}`` mappings, a
                parameter has no JSON form or would replace ``model`` or ``messages``, ``max_tokens`` (or
                ``max_completion_tokens``) is negative or not finite, or ``stream`` is set (before any
                request).
            AuthenticationError: HTTP 401/403 (not retried).
            RequestRejectedError: another 4xx (not retried).
            RateLimitError, ServerError, LMTimeoutError, LMConnectionError, BadResponseError: the
                last failure, once retries are exhausted.
        """
        if self._closed:
            raise LMError(f"{type(self).__name__} for {self._model!r} is closed")
        check_messages(messages)
        request_params = canonical_params({**self._default_params, **params})
        for name in _BODY_FIELDS:
            if name in request_params:
                raise ConfigError(
                    f"{name!r} cannot be a request parameter: it would replace the request's own "
                    f"({type(self).__name__} for {self._model!r}); make another client for another model"
                    if name == "model"
                    else f"{name!r} cannot be a request parameter: pass the messages to chat()"
                )
        if request_params.get("stream"):
            # A streamed answer is a series of events, not one body: each attempt would be paid for and
            # then fail as malformed.
            raise ConfigError("stream=True is not supported: the client reads each reply whole")
        sent = self._sent_params(request_params, rollout)
        # The client's own cache, else the one the optimization this call belongs to lent it.
        cache = self._cache if self._cache is not None else lent_cache(self)
        self._loop_owner.enter(self)  # the error's text is made only when it is raised
        try:
            if cache is None:
                completion = await self._complete(messages, sent)
            else:
                key = request_key(
                    model=self._model,
                    messages=messages,
                    params=request_params,
                    rollout=rollout,
                    namespace=self.cache_namespace,
                )
                completion, hit = await cache.get_or_compute(key, lambda: self._complete(messages, sent))
                if hit and is_cut(completion.finish_reason) and incomplete_reply(completion, "") is not None:
                    # A cut reply a caller that accepts it had stored is no answer here: the server is
                    # asked, as without the cache (and re-sent with a larger budget); the entry is kept
                    # for the callers that accept it.
                    completion, hit = await self._complete(messages, sent), False
                if hit:
                    self._usage.cache_hits += 1
        except LMError:
            self._usage.errors += 1
            raise
        finally:
            self._loop_owner.leave()
        self._usage.calls += 1
        return completion

    async def probe(self, *, within: float = 5.0, skip: set[str] | None = None) -> None:
        """Check, without spending tokens, that every endpoint answers and accepts the key: one
        ``GET {base_url}/models`` each (see :mod:`aprompt.lm._probe`).

        Args:
            within: seconds each endpoint gets to answer.
            skip: identities (URL plus a digest of its headers) of endpoints already probed, e.g. by
                another client on the same server; this call skips those and adds its own.

        Raises:
            LMConnectionError: an endpoint refused the connection or did not answer within ``within`` s.
            AuthenticationError: an endpoint answered 401 or 403.
        """
        skip = set() if skip is None else skip
        for state in self._pool.endpoints:
            credentials = [state.target, sorted(state.headers.items())]
            digest = hashlib.sha256(json.dumps(credentials).encode()).hexdigest()
            identity = f"{state.url} {digest}"
            if identity in skip:
                continue
            skip.add(identity)
            # Through the connection the first call will take: it stays open for it.
            try:
                await probe_endpoint(
                    state.url,
                    state.headers,
                    transport=state.lanes.idle_transport(),
                    within=within,
                    target=state.target,
                    path=self.probe_path,
                    secrets=self._secrets,  # a key in the URL's query, which the headers do not hold
                )
            except AuthenticationError as refused:
                raise self._reader.explained(refused) from None

    async def aclose(self) -> None:
        """Close the connections this object opened (an ``http_client`` passed in stays open).

        Later calls raise :class:`~aprompt._errors.LMError`.
        """
        self._closed = True
        with anyio.CancelScope(shield=True):  # closing must finish even when the caller is cancelled
            await self._pool.aclose()

    async def _release_connections(self) -> None:
        """Close the idle keep-alive connections, which belong to the running event loop; the client
        stays open and opens new ones on the loop of its next call."""
        with anyio.CancelScope(shield=True):
            for endpoint in self._pool.endpoints:
                await endpoint.lanes.release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- one call, its attempts -------------------------------------------------------------
    async def _complete(self, messages: Sequence[Message], params: Mapping[str, Any]) -> Completion:
        try:
            payload = json.dumps(self._request_body(messages, params)).encode()
        except (TypeError, ValueError) as exc:
            problem = str(exc)
        else:
            problem = ""
        if problem:
            raise ConfigError(f"request cannot be sent as JSON: {problem}")
        # Made once: the reservations and the calibration after the answer use the same estimate.
        estimate = estimate_prompt_tokens(messages)
        self._reservations.estimator.reservation(estimate, params)  # a budget it cannot reserve: raised
        attempts = 0
        enlarged = False

        async def attempt() -> Completion:
            nonlocal attempts, payload, enlarged
            attempts += 1
            try:
                return await self._routed_attempt(payload, estimate, params, is_retry=attempts > 1)
            except TruncatedResponseError as truncated:
                # A reply the context window cut would be cut at the same place with any budget.
                if enlarged or truncated.by_window:
                    raise
                cut = truncated
            # Re-sent at once, outside the back-off: the same request would be cut the same way.
            name, given, larger = larger_budget(params)
            larger_params = {**params, name: larger}
            payload = json.dumps(self._request_body(messages, larger_params)).encode()
            enlarged = True
            self._cut_replies += 1
            # A small model rambles past its budget often, and the re-send is the designed answer: the
            # first is a warning (it may mean max_tokens is set too low), the rest are counted at DEBUG.
            first = self._cut_replies == 1
            logger.log(
                logging.WARNING if first else logging.DEBUG,
                "%s: reply cut at its token budget (%s=%s, finish_reason %r); re-sending once with %s=%d%s",
                self._model,
                name,
                given,
                cut.finish_reason,
                name,
                larger,
                "; further cut replies are logged at DEBUG" if first else f" ({self._cut_replies} so far)",
            )
            attempts += 1
            try:
                return await self._routed_attempt(payload, estimate, larger_params, is_retry=True)
            except TruncatedResponseError as again:
                final, detail = again, f"cut again with {name}={larger}"
            except RequestRejectedError as rejected:  # e.g. more than the model's output limit
                final, detail = cut, f"a re-send with {name}={larger} was rejected: {rejected.args[0]}"
            raise TruncatedResponseError(
                f"{final.args[0]}; {detail}",
                finish_reason=final.finish_reason,
                text=final.text,
                endpoint=final.endpoint,
            )

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

            completion = await self._retry.retrying(self._log_retry)(resumed)
        return completion

    async def _routed_attempt(
        self, payload: bytes, estimate: int, params: Mapping[str, Any], *, is_retry: bool
    ) -> Completion:
        """One attempt, sent on at once to another endpoint while the one it went to answers 404: a
        replica lacking the route or model (now cooling down) is not the request's fault. Each endpoint
        is tried once at most (one paused by a 429 is waited for); a 404 from every one is raised."""
        tried: frozenset[str] = frozenset()
        while True:
            try:
                return await self._attempt(payload, estimate, params, is_retry=is_retry, avoid=tried)
            except LMStatusError as error:
                url = error.endpoint
                if error.status_code != 404 or url is None:
                    raise
                tried |= {url}
                if len(tried) >= len(self._pool.endpoints):
                    raise
            is_retry = True
            logger.debug("%s: HTTP 404, sending the request to another endpoint", url)

    async def _attempt(
        self,
        payload: bytes,
        estimate: int,
        params: Mapping[str, Any],
        *,
        is_retry: bool,
        avoid: frozenset[str] = frozenset(),
    ) -> Completion:
        await self._wait_out_pause()
        # The client's slots number at most the endpoints' total capacity (the controller's maximum).
        async with (
            self._reservations.first_open_reply(params),
            self._slots,
            self._pool.lease(capped=True, avoid=avoid) as lease,
        ):
            endpoint = lease.endpoint
            # Reserved per attempt: a retry reserves what the replies since have taught.
            reserved = self._reservations.reserve(estimate, params)
            admitted = await endpoint.limiter.acquire(reserved)
            admitted_here = None
            # Tokens settled on the limiters: a request refused before it is sent, or answered with an
            # error status (not billed), is refunded; one sent and not answered (a timeout, a dropped
            # connection, a cancellation) keeps its reservation, as the server counts what it received.
            used = 0
            meter = None
            sent: float | None = None
            try:
                admitted_here = await self._limiter.acquire(reserved)
                # Counted by the endpoint from when it goes, should the client's limits have held it.
                endpoint.limiter.refresh(admitted)
                meter = admit_request(self._model, retry=is_retry)  # may refuse: a run limit is spent
                self._usage.requests += 1
                if is_retry:
                    self._usage.retries += 1
                sent = time.monotonic()
                used = reserved
                completion = await self._reader.exchange(
                    lease.transport, endpoint, self._request_urls[endpoint], payload
                )
                if meter is not None:
                    meter.settle(self._model, completion.usage)
                self._reservations.observe(estimate, params, completion.usage)
                # A server that reports no usage keeps the estimate charged.
                used = completion.usage.total_tokens or reserved
                self._concurrency.completed(time.monotonic() - sent, used)
                # Counted before the check: an incomplete reply is billed too.
                self._usage.prompt_tokens += completion.usage.prompt_tokens
                self._usage.completion_tokens += completion.usage.completion_tokens
                incomplete = incomplete_reply(
                    completion,
                    endpoint.url,
                    completion_budget(params) if completion.finish_reason == "length" else None,
                    scrub=self._reader.scrub,
                )
                if incomplete is not None:
                    raise incomplete
                return completion
            except LMError as error:
                if isinstance(error, LMStatusError):
                    used = 0
                self._note_failure(endpoint, error)
                if meter is not None:
                    meter.note_failure(error)
                raise
            finally:
                if sent is not None:  # for the report's chart of requests in flight
                    note_request(sent, time.monotonic())
                endpoint.limiter.settle(admitted, used)
                if admitted_here is not None:
                    self._limiter.settle(admitted_here, used)

    async def _wait_out_pause(self) -> None:
        """Wait, holding no slot, until a 429 pause lets requests through (see :func:`wait_out_pause`)."""
        await wait_out_pause(
            self._limiter,
            [endpoint.limiter for endpoint in self._pool.endpoints],
            pause_jitter=self._retry.pause_jitter,
            rng=self._rng,
        )

    def _rates(self) -> tuple[float | None, float | None]:
        """The fastest the limits let requests and tokens go (per second, over a burst window): the
        client's, or the endpoints' sum when each has a limit, whichever is lower; None where unknown."""
        return pooled_rates(
            self._limiter.peak_rates, [endpoint.limiter.peak_rates for endpoint in self._pool.endpoints]
        )

    def _configured_rates(self) -> tuple[float | None, float | None]:
        """:meth:`_rates` of the configured limits alone (nothing learned from the server)."""
        return pooled_rates(
            self._limiter.configured_peak_rates,
            [endpoint.limiter.configured_peak_rates for endpoint in self._pool.endpoints],
        )

    def _note_failure(self, endpoint: EndpointState, error: LMError) -> None:
        if isinstance(error, RateLimitError):
            self._usage.rate_limited += 1
            pause = pause_after_rate_limit(error, endpoint.limiter, self._limiter, self._retry)
            if pause is not None:
                self._concurrency.paused()
                logger.info(
                    "%s: HTTP 429, pausing requests for %.2f s (concurrency cap now %d)",
                    endpoint.url,
                    pause,
                    self._concurrency.cap,
                )
            else:
                logger.debug("%s: HTTP 429 within a pause", endpoint.url)
        elif is_endpoint_fault(error):
            self._pool.mark_unhealthy(endpoint)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        sleep = state.next_action.sleep if state.next_action is not None else 0.0
        logger.debug(
            "%s: attempt %d of %d failed (%s); retrying in %.3f s",
            self._model,
            state.attempt_number,
            self._retry.max_retries + 1,
            error,
            sleep,
        )
