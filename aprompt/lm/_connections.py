"""Connection lanes: one endpoint's keep-alive connections split over small transports, one per lane.

A lane's transport is our own HTTP/1.1 client (:mod:`aprompt.lm._http11`) by default. It is an httpx
client instead when the environment names a proxy for the endpoint (``HTTP(S)_PROXY``, ``ALL_PROXY``,
not bypassed by ``NO_PROXY``: httpx speaks to proxies, ours does not), and the caller's own
``httpx.AsyncClient`` for every place when one is passed in. Both satisfy
:class:`~aprompt.lm._transport.Transport`.

Why lanes: each request holds one place in a lane for as long as it holds one of its endpoint's
concurrency slots, so a lane never has more requests than connections and never queues; a lane of one
connection needs no pool at all (and httpcore's pool, when httpx serves a lane, re-scans all its
connections whenever a request starts or finishes: ~30 ms of CPU per request with 256 in one pool).

Places are handed out last-in first-out: at low concurrency the same warm connections are reused.
"""

from __future__ import annotations

import base64
import math
import re
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

# httpx imports httpcore (and httpcore imports trio, when it is installed) only when its first client
# is built: 0.1-0.4 s of CPU in the middle of a run, ahead of its first request. Imported here instead,
# with the rest of the client.
import httpcore  # noqa: F401
import httpx

from aprompt._errors import ConfigError
from aprompt.lm._http11 import KEEPALIVE_EXPIRY, HTTP11Transport
from aprompt.lm._transport import HttpxTransport, Transport

__all__ = ["DEFAULT_LANE_SIZE", "ConnectionLanes", "LaneTransports", "proxy_applies", "proxy_credentials"]

#: Connections per lane: 1, so that a lane needs no pool (with httpx lanes, 1 also makes httpcore's
#: per-request pool scans cheapest: 0.53 ms of client CPU per call at 256 concurrent, against 0.65 ms
#: with 4 and 0.92 ms with 8).
DEFAULT_LANE_SIZE = 1


class ConnectionLanes:
    """Places in ``capacity / lane_size`` small transports, created on first use.

    Args:
        capacity: requests in flight at once (the endpoint's concurrency cap).
        make_transport: builds one lane's transport for ``connections`` connections.
        lane_size: connections per lane.
        shared: use this one transport for every place instead (over a caller's own client).
    """

    def __init__(
        self,
        capacity: int,
        make_transport: Callable[[int], Transport],
        *,
        lane_size: int = DEFAULT_LANE_SIZE,
        shared: Transport | None = None,
    ) -> None:
        self._shared = shared
        self._make_transport = make_transport
        self._lane_size = lane_size
        if shared is not None:
            lanes, lane_size = 1, capacity
        else:
            lanes = math.ceil(capacity / lane_size)
        self._transports: list[Transport | None] = [shared] * lanes
        # Free places, one per connection, lanes interleaved so that concurrent requests spread
        # over them; the first lane's are on top of the stack.
        self._free = [lane for _ in range(lane_size) for lane in reversed(range(lanes))]
        del self._free[:-capacity]

    def take(self) -> int:
        """Reserve a place; the caller must hold a concurrency slot (so one is always free)."""
        return self._free.pop()

    def idle_transport(self) -> Transport | None:
        """The transport of the place the next request takes (its connection then serves that
        request), or None when every place is taken; the shared transport when there is one."""
        if self._shared is not None:
            return self._shared
        return self.transport(self._free[-1]) if self._free else None

    def give(self, lane: int) -> None:
        self._free.append(lane)

    def transport(self, lane: int) -> Transport:
        transport = self._transports[lane]
        if transport is None:
            transport = self._transports[lane] = self._make_transport(self._lane_size)
        return transport

    async def release(self) -> None:
        """Close the lanes' own transports; each opens new connections when next used. A connection
        belongs to the event loop it was opened on (a caller's own client stays as it is)."""
        if self._shared is None:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the lanes' transports (a caller's own client stays open)."""
        for index, transport in enumerate(self._transports):
            if transport is not None:
                self._transports[index] = None
                await transport.aclose()


def proxy_applies(url: httpx.URL) -> bool:
    """Whether the environment names a proxy for ``url`` that its ``NO_PROXY`` does not bypass."""
    proxies = urllib.request.getproxies()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(url.netloc.decode("ascii"))


def proxy_credentials(url: httpx.URL) -> tuple[str, ...]:
    """The credentials of the proxies the environment names for ``url`` (its scheme's and ``ALL_PROXY``,
    when one applies), to scrub from messages: each password and ``user:password`` pair, as written in
    the URL and decoded, and the ``Proxy-Authorization`` value sent with them. A proxy's error page may
    quote any of them."""
    if not proxy_applies(url):
        return ()
    proxies = urllib.request.getproxies()
    found: set[str] = set()
    for proxy in {proxies.get(url.scheme, ""), proxies.get("all", "")} - {""}:
        # Read leniently (with or without a scheme): a URL httpx refuses may still hold a password.
        authority = proxy.partition("://")[2] if "://" in proxy else proxy
        userinfo = re.split(r"[/?#]", authority, maxsplit=1)[0].rpartition("@")[0]
        user, colon, password = userinfo.partition(":")
        if not (colon and password):
            continue
        plain_user, plain_password = urllib.parse.unquote(user), urllib.parse.unquote(password)
        pair = f"{plain_user}:{plain_password}"
        found |= {password, plain_password, userinfo, pair, base64.b64encode(pair.encode()).decode("ascii")}
    return tuple(found)


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing an answer sets."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _CookielessClient(httpx.AsyncClient):
    """An httpx client that ignores the cookies answers set: LM APIs need none, and httpx reads every
    answer's headers into its jar through urllib's cookie machinery, a few percent of a call's CPU."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("a lane client keeps no cookies")


class LaneTransports:
    """Builds lane transports with one timeout and one TLS context (built once: it costs ~20 ms).

    ``for_endpoint(url)`` gives the builder of one endpoint's lanes: :class:`HTTP11Transport`, or httpx
    when a proxy applies to ``url`` (decided once, when the endpoint is set up).
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = httpx.Timeout(timeout)
        self._ssl: ssl.SSLContext | None = None

    def for_endpoint(self, url: httpx.URL) -> Callable[[int], Transport]:
        """Raises ConfigError when a proxy applies that httpx cannot speak to (SOCKS without socksio, an
        unknown scheme): found here, when the client is made, rather than as its first call fails."""
        if proxy_applies(url):
            try:
                self.httpx_transport(1)  # the proxy settings are read as the client is built
            except (ImportError, ValueError) as exc:
                raise ConfigError(
                    f"the environment names a proxy for {url} that cannot be used ({exc}); fix or unset "
                    "HTTP_PROXY / HTTPS_PROXY / ALL_PROXY, or add the host to NO_PROXY"
                ) from None
            return self.httpx_transport

        def http11_transport(connections: int) -> Transport:
            return HTTP11Transport(url, connections=connections, ssl_context=self.ssl_context)

        return http11_transport

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of every lane: httpx's (certifi's roots, ``SSL_CERT_FILE`` honoured)."""
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    def httpx_transport(self, connections: int) -> Transport:
        """A lane of an httpx client of its own (which reads the proxy environment)."""

        def make() -> httpx.AsyncClient:
            return _CookielessClient(
                verify=self.ssl_context(),
                timeout=self._timeout,
                limits=httpx.Limits(
                    max_connections=connections,
                    max_keepalive_connections=connections,
                    keepalive_expiry=KEEPALIVE_EXPIRY,
                ),
            )

        return HttpxTransport(make(), owned=True, make=make)
