"""Several endpoints behind one client: their configuration, runtime state, routing and health.

Each request goes to the least-loaded *available* endpoint, load being ``in_flight /
max_concurrency`` (requests routed to it, waiting for a slot included), so an endpoint with a
quarter of the capacity gets about a quarter of the traffic. An endpoint is unavailable while it
cools down after a connection error, timeout, 5xx or malformed reply (a body that is no chat reply,
or one the server stopped on a fault), or while its limiter is paused by a 429; a
retry therefore fails over to another one. One of several that answers 404 (a replica serving
another route or model) cools down too, so that the next requests go to the others, and the client
sends the request that got the 404 to one of them, waiting out its pause if every other one is paused
(see :mod:`aprompt.lm._http`). One of several that refuses its key (401/403: a key revoked on that
replica) or replies in a form the client never reads (a proxy's setting) is taken out of rotation for
good, while another is not. When every endpoint is
unavailable the least-loaded one is used anyway (the retry back-off spaces those).
"""

from __future__ import annotations

import math
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType

import attrs
import httpx

from aprompt._errors import (
    BadResponseError,
    ConfigError,
    LMConnectionError,
    LMError,
    LMStatusError,
    LMTimeoutError,
    ServerError,
)
from aprompt._slots import Slots
from aprompt.lm._connections import ConnectionLanes
from aprompt.lm._replies import is_answered_failure
from aprompt.lm.limits import RateLimiter

__all__ = [
    "SECRET_QUERY_NAMES",
    "Endpoint",
    "EndpointLease",
    "EndpointPool",
    "EndpointState",
    "endpoint_urls",
    "is_endpoint_fault",
    "public_url",
    "shown_url",
]


@attrs.frozen
class Endpoint:
    """One server speaking the provider's API, with its own limits and, optionally, its own key.

    Attributes:
        url: the base URL (e.g. ``http://gpu-1:8000/v1``).
        max_concurrency: requests in flight here at once (default: the client's).
        requests_per_minute, tokens_per_minute: this endpoint's own rate limits (see
            :mod:`aprompt.lm.limits`), in addition to any client-wide ones.
        api_key: this endpoint's key (never shown in ``repr``, nor are credentials in ``url``); default:
            ``api_key_env``, else the client's key.
        api_key_env: an environment variable holding this endpoint's key; unset, making the client raises
            :class:`~aprompt.ConfigError` rather than send this endpoint the client's key.

    Example:
        >>> Endpoint("http://gpu-1:8000/v1", max_concurrency=16, api_key="sk-...").url
        'http://gpu-1:8000/v1'
    """

    # Shown without the credentials a URL may carry (user info, a key in its query), as the clients do.
    url: str = attrs.field(repr=lambda url: repr(shown_url(url)))
    max_concurrency: int | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    api_key: str | None = attrs.field(default=None, repr=False)
    api_key_env: str | None = None


#: Query parameters whose values are credentials (compared in lower case): Google's ``key``, Azure's
#: ``api-key``, bearer tokens, signed URLs' ``sig``. Sent as given, shown as ``***``.
SECRET_QUERY_NAMES = frozenset(
    {
        "key",
        "api-key",
        "api_key",
        "apikey",
        "x-api-key",
        "access_token",
        "token",
        "sig",
        "signature",
        "secret",
    }
)


def public_url(url: str) -> str:
    """``url`` without credentials or a trailing slash: safe to show in errors and logs (a credential
    in its query, see :data:`SECRET_QUERY_NAMES`, shows as ``***``)."""
    return endpoint_urls(url)[1]


def shown_url(url: str) -> str:
    """``url`` as an error or a ``repr`` may show it, whatever it is: :func:`public_url`, or for a URL that
    refuses (no scheme or host), the part after any user info and before any query."""
    try:
        return public_url(url)
    except ConfigError:
        return str(url).split("@")[-1].split("?")[0]


def endpoint_urls(url: str) -> tuple[str, str, tuple[str, ...]]:
    """``url`` as requests go to it (without user info or a trailing slash), as it is shown (the values
    of its query's credentials replaced by ``***`` too), and those values (to scrub from messages)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise ConfigError("invalid endpoint URL") from None
    if not parsed.scheme or not parsed.host:
        # Shown without user info or query, either of which may hold a credential.
        visible = url.split("@")[-1].split("?")[0]
        raise ConfigError(f"endpoint URL needs a scheme and a host: {visible!r}")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        # httpx parses any digits: the socket would refuse only at the first request, untyped.
        raise ConfigError(f"endpoint URL port {parsed.port} is not one of 1 to 65535")
    if parsed.userinfo:
        parsed = parsed.copy_with(username=None, password=None)
    target = str(parsed).rstrip("/")
    if not parsed.query:
        return target, target, ()
    shown: list[bytes] = []
    secrets: list[str] = []
    for part in parsed.query.split(b"&"):
        name, equals, value = part.partition(b"=")
        if value and urllib.parse.unquote(name.decode("ascii")).lower() in SECRET_QUERY_NAMES:
            secrets.extend({value.decode("ascii"), urllib.parse.unquote(value.decode("ascii"))})
            part = name + equals + b"***"
        shown.append(part)
    return target, str(parsed.copy_with(query=b"&".join(shown))).rstrip("/"), tuple(secrets)


def is_endpoint_fault(error: LMError) -> bool:
    """Whether ``error`` is its endpoint's fault, for which it cools down: a connection error, a timeout,
    a 5xx, or a body that is no reply or one the server stopped on a fault (an empty, filtered or cut
    reply is the model's, and says nothing of the endpoint)."""
    return (
        isinstance(error, LMConnectionError | LMTimeoutError)
        or (isinstance(error, ServerError) and error.status_code >= 500)
        or (isinstance(error, BadResponseError) and not is_answered_failure(error))
    )


class EndpointState:
    """The runtime state of one endpoint: its slots, rate limiter, load and health.

    Attributes:
        url: the credential-free base URL (also what errors and logs show).
        target: the base URL requests go to: ``url`` with any credential in its query.
        headers: request headers for this endpoint, authentication included (never shown).
        capacity: its concurrency cap.
        slots: the :class:`~aprompt._slots.Slots` enforcing ``capacity`` (not taken by a capped lease
            of a pool of one endpoint: see :meth:`EndpointPool.lease`).
        limiter: its :class:`~aprompt.lm.limits.RateLimiter` (the one a 429 from here pauses).
        lanes: its keep-alive connections (see :mod:`aprompt.lm._connections`).
        in_flight: requests routed here and not yet finished (including those waiting for a slot).
        unhealthy_until: clock reading until which it cools down after a failure.
        out_of_rotation: it refused its key or replied unreadably (see :meth:`EndpointPool.take_out`).
    """

    __slots__ = (
        "capacity",
        "headers",
        "in_flight",
        "lanes",
        "limiter",
        "out_of_rotation",
        "slots",
        "target",
        "unhealthy_until",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        capacity: int,
        limiter: RateLimiter,
        lanes: ConnectionLanes,
        target: str | None = None,
    ) -> None:
        if capacity < 1:
            raise ConfigError(f"max_concurrency must be at least 1, got {capacity}")
        self.url = url
        self.target = url if target is None else target
        self.headers = dict(headers)
        self.capacity = capacity
        self.slots = Slots(capacity)
        self.limiter = limiter
        self.lanes = lanes
        self.in_flight = 0
        self.unhealthy_until = -math.inf
        self.out_of_rotation = False

    def __repr__(self) -> str:
        return f"EndpointState({self.url!r}, in_flight={self.in_flight}, capacity={self.capacity})"


class EndpointPool:
    """Routes requests over several :class:`EndpointState` and tracks their health.

    Args:
        endpoints: at least one endpoint.
        cooldown: seconds an endpoint is avoided after a connection error, timeout, 5xx or malformed
            reply (or, one of several, a 404).
        clock: a monotonic clock in seconds.
    """

    def __init__(
        self,
        endpoints: Sequence[EndpointState],
        *,
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ConfigError("at least one endpoint is needed")
        self._endpoints = tuple(endpoints)
        self._cooldown = cooldown
        self._clock = clock
        self._turn = 0

    @property
    def endpoints(self) -> tuple[EndpointState, ...]:
        return self._endpoints

    @property
    def capacity(self) -> int:
        """Total concurrency over all endpoints."""
        return sum(endpoint.capacity for endpoint in self._endpoints)

    def is_available(self, endpoint: EndpointState) -> bool:
        """Not cooling down after a failure and not paused by a 429."""
        now = self._clock()
        return now >= endpoint.unhealthy_until and now >= endpoint.limiter.paused_until

    def choose(
        self, avoid: Collection[EndpointState] = (), shun: Collection[EndpointState] = ()
    ) -> EndpointState:
        """The least-loaded available endpoint (ties rotate), or the least-loaded one if none is; one in
        ``avoid`` only when every one is, and among the available ones, one in ``shun`` (those a retried
        request failed on) only when every one is. One out of rotation only when every one is."""
        endpoints = self._endpoints
        if len(endpoints) == 1:
            return endpoints[0]
        if avoid:
            endpoints = tuple(e for e in endpoints if e not in avoid) or endpoints
        start = self._turn = (self._turn + 1) % len(self._endpoints)
        start %= len(endpoints)
        best = endpoints[start]
        best_rank = self._rank(best, shun)
        for offset in range(1, len(endpoints)):
            candidate = endpoints[(start + offset) % len(endpoints)]
            rank = self._rank(candidate, shun)
            if rank < best_rank:
                best, best_rank = candidate, rank
        return best

    def _rank(
        self, endpoint: EndpointState, shun: Collection[EndpointState]
    ) -> tuple[bool, bool, bool, float]:
        # It fails again after any cool-down: below every other, unavailable or not.
        return (
            endpoint.out_of_rotation,
            not self.is_available(endpoint),
            endpoint in shun,
            endpoint.in_flight / endpoint.capacity,
        )

    def lease(
        self,
        *,
        capped: bool = False,
        avoid: Collection[EndpointState] = (),
        shun: Collection[EndpointState] = (),
    ) -> EndpointLease:
        """``async with pool.lease() as lease:`` routes a request and holds one of its slots.

        ``avoid``, ``shun``: endpoints this request should not go to, and those it would rather not (see
        :meth:`choose`); several may share a URL (one server, a key each).

        ``capped``: the caller already holds one of at most :attr:`capacity` slots of its own. A lone
        endpoint's slots could then never make a request wait, so they are not taken (one limiter,
        with its checkpoint, fewer per request); with several endpoints each one's own cap binds.
        """
        take_slot = not capped or len(self._endpoints) > 1
        return EndpointLease(self, take_slot=take_slot, avoid=avoid, shun=shun)

    async def aclose(self) -> None:
        """Close every endpoint's connections."""
        for endpoint in self._endpoints:
            await endpoint.lanes.aclose()

    def take_out(self, endpoint: EndpointState) -> bool:
        """Take ``endpoint`` out of rotation (see :meth:`choose`): it fails every request (its key
        refused, its replies unreadable). ``True`` the first time only."""
        first = not endpoint.out_of_rotation
        endpoint.out_of_rotation = True
        return first

    def mark_unhealthy(self, endpoint: EndpointState) -> None:
        """Avoid ``endpoint`` for the cool-down (only matters when there is another to use)."""
        endpoint.unhealthy_until = self._clock() + self._cooldown


class EndpointLease:
    """An async context manager: choose an endpoint, count it in flight, hold one of its slots and a
    place in one of its connection lanes (:attr:`endpoint`, :attr:`transport`)."""

    __slots__ = ("_avoid", "_lane", "_pool", "_shun", "_take_slot", "endpoint", "transport")

    def __init__(
        self,
        pool: EndpointPool,
        *,
        take_slot: bool = True,
        avoid: Collection[EndpointState] = (),
        shun: Collection[EndpointState] = (),
    ) -> None:
        self._pool = pool
        self._take_slot = take_slot
        self._avoid = avoid
        self._shun = shun

    async def __aenter__(self) -> EndpointLease:
        endpoint = self._pool.choose(self._avoid, self._shun)
        endpoint.in_flight += 1
        if self._take_slot:
            try:
                await endpoint.slots.acquire()
            except BaseException:
                endpoint.in_flight -= 1
                raise
        self.endpoint = endpoint
        self._lane = endpoint.lanes.take()
        self.transport = endpoint.lanes.transport(self._lane)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        endpoint = self.endpoint
        if isinstance(exc, LMStatusError) and exc.status_code == 404 and len(self._pool.endpoints) > 1:
            # Not this request's fault when other replicas serve it: this one lacks the route or model.
            self._pool.mark_unhealthy(endpoint)
        endpoint.lanes.give(self._lane)
        if self._take_slot:
            endpoint.slots.release()
        endpoint.in_flight -= 1
