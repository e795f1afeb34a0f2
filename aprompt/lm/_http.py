"""The provider-independent half of the HTTP chat clients: pooled keep-alive connections,
concurrency caps, rate limits, retries, endpoint routing, the response cache and usage accounting.

A provider client subclasses :class:`HTTPChatLM` and supplies only its wire format: the request
path, authentication headers, request body, response parsing and error-message extraction (see
:class:`~aprompt.lm.openai.OpenAICompatibleLM`).

One call, in order: the cache (identical in-flight calls share one computation), then the request's
attempts, retries and re-sends (:mod:`aprompt.lm._request_life`), each attempt through the client's
slots, an endpoint, its connection and the rate limiters (:mod:`aprompt.lm._attempt`).

Concurrency. An explicit ``max_concurrency`` is a fixed cap. Without one (the default) the cap adapts
(:mod:`aprompt.lm.adaptive`): from the rate limits and the measured latency (Little's law) when a limit
is known, else additive increase / multiplicative decrease on 429s. Limits the server states in its
``x-ratelimit-*`` headers become the endpoint's (:mod:`aprompt.lm.ratelimit_headers`), never above
them.

``timeout`` bounds each attempt as a whole (connecting, sending and reading the entire body), and a
body longer than ``max_response_bytes`` is not read on: the attempt fails with a
:class:`~aprompt._errors.BadResponseError` (retried like a malformed body).
"""

from __future__ import annotations

import abc
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

import anyio
import attrs
import httpx

from aprompt._errors import (
    AuthenticationError,
    ConfigError,
    LMError,
    TruncatedResponseError,
)
from aprompt.lm._attempt import Attempts
from aprompt.lm._endpoint_setup import EndpointSpec, set_up_endpoints
from aprompt.lm._exchange import ReplyReader
from aprompt.lm._loop_owner import LoopOwner
from aprompt.lm._messages import check_messages
from aprompt.lm._meter_context import current_meter, meter_for_own_call, run_deadline
from aprompt.lm._pacing import pooled_rates
from aprompt.lm._probe import probe_endpoint
from aprompt.lm._replies import (
    DEFAULT_MAX_RESPONSE_BYTES,
    TRUNCATION_RETRY_MAX_TOKENS,
    cut_reply_acceptor,
    incomplete_reply,
    is_cut,
)
from aprompt.lm._request_life import RequestLife
from aprompt.lm._reservations import Reservations
from aprompt.lm._transport import request_url
from aprompt.lm.adaptive import ConcurrencyController
from aprompt.lm.cache import ResponseCache, request_key
from aprompt.lm.cache._run_caches import lent_cache, replay_key, replaying
from aprompt.lm.endpoints import EndpointPool
from aprompt.lm.limits import RateLimiter
from aprompt.lm.ratelimit_headers import StatedLimits, read_raw_rate_limit_headers
from aprompt.lm.retry import RetryPolicy
from aprompt.lm.types import Completion, Message, canonical_params
from aprompt.lm.usage import UsageCounter, UsageSnapshot

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "TRUNCATION_RETRY_MAX_TOKENS",
    "EndpointSpec",
    "HTTPChatLM",
]

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
        if (
            isinstance(max_response_bytes, bool)
            or not isinstance(max_response_bytes, int)
            or max_response_bytes < 1
        ):
            raise ConfigError(
                f"max_response_bytes must be an integer of at least 1, got {max_response_bytes!r}"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(
                f"retry must be a RetryPolicy, got {type(retry).__name__} {retry!r:.40}"
                "; a number of re-sends is max_retries="
            )
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
        # Cache keys' namespace: the protocol's, or one a server's settings extend (see LocalLM).
        self._cache_namespace = self.cache_namespace
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
        attempts = Attempts(
            model=model,
            pool=self._pool,
            limiter=self._limiter,
            reservations=self._reservations,
            concurrency=self._concurrency,
            slots=self._concurrency.slots,
            usage=self._usage,
            reader=self._reader,
            request_urls=self._request_urls,
            retry=self._retry,
            rng=random.Random(),
        )
        self._requests = RequestLife(
            model=model,
            request_body=self._request_body,
            reservations=self._reservations,
            attempts=attempts,
            retry=self._retry,
        )
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
        """The parameters sent for a request of ``rollout`` (the cache key uses :meth:`_keyed_params`)."""
        return params

    def _keyed_params(self, params: Mapping[str, Any], sent: Mapping[str, Any]) -> Mapping[str, Any]:
        """The parameters a request's cache key holds, of its own (``params``) and those sent: its own, so
        that the rollout a client sends as a seed changes no key."""
        return params

    def _stated_limits(self, raw: list[tuple[bytes, bytes]]) -> StatedLimits | None:
        """The rate limits an answer's raw headers state (OpenAI's ``x-ratelimit-*`` here), or None."""
        return read_raw_rate_limit_headers(raw)

    # -- public surface ---------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self._model

    @property
    def server_settings(self) -> str | None:
        """The server's settings that change its replies, as the cache keys hold them beside the protocol
        (a local server's slot context), or None: part of a run's identity, so that a run resumed on a
        server that would answer otherwise is refused."""
        own = self._cache_namespace
        return None if own == type(self).cache_namespace else own

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
        # The client's own cache, else the one the optimization this call belongs to lent it, else (a
        # client the run was not given: a metric's judge) the run's, for a step run again to replay.
        cache = self._cache if self._cache is not None else lent_cache(self)
        self._loop_owner.enter(self)  # the error's text is made only when it is raised
        try:
            # The run's max_time ends a call the run does not make through metered_chat (a metric's judge).
            with run_deadline():
                if cache is None and not replaying():
                    completion = await self._requests.complete(messages, sent)
                else:
                    key = request_key(
                        model=self._model,
                        messages=messages,
                        params=self._keyed_params(request_params, sent),
                        rollout=rollout,
                        namespace=self._cache_namespace,
                    )
                    if cache is None:
                        cache, key = replay_key(key, self.endpoints)
                    completion, hit = await self._from_cache(cache, key, messages, sent)
                    if (
                        hit
                        and is_cut(completion.finish_reason)
                        and incomplete_reply(completion, "") is not None
                    ):
                        # A cut reply a caller that accepts it had stored is no answer here: the server is
                        # asked, as without the cache (and re-sent with a larger budget); the entry is kept
                        # for the callers that accept it.
                        completion, hit = await self._requests.complete(messages, sent), False
                    if hit:
                        self._usage.cache_hits += 1
        except LMError as error:
            self._usage.errors += 1
            meter = current_meter()
            if meter is not None:  # a call the run does not make itself (a judge's) tells it of this LM
                meter.note_failed_lm(self, error)
            if (own := meter_for_own_call()) is not None:
                own.note_call(failed=True)
            raise
        finally:
            self._loop_owner.leave()
        self._usage.calls += 1
        if (own := meter_for_own_call()) is not None:  # a judge's call: no metered_chat counts it
            own.note_call(cached=completion.cached)
        return completion

    async def _from_cache(
        self, cache: ResponseCache, key: str, messages: Sequence[Message], sent: Mapping[str, Any]
    ) -> tuple[Completion, bool]:
        """``(completion, hit)`` of this request from ``cache``, asking the server on a miss.

        A call that accepts cut replies (:func:`~aprompt.lm._replies.accepting_cut_replies`) never raises
        the :class:`~aprompt._errors.TruncatedResponseError` of an identical call it waited for: that call
        refused a cut reply this one may take, so it asks again, as it would without the cache.
        """
        asked = False

        async def compute() -> Completion:
            nonlocal asked
            asked = True
            return await self._requests.complete(messages, sent)

        while True:
            try:
                return await cache.get_or_compute(key, compute, owner=self)
            except TruncatedResponseError:
                if asked or cut_reply_acceptor() is None:
                    raise

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

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called (calls raise :class:`~aprompt._errors.LMError`)."""
        return self._closed

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

    # -- the limits' rates ------------------------------------------------------------------
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
