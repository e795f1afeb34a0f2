"""Connection lanes: one endpoint's keep-alive connections split over several small httpx clients.

Why: httpcore's connection pool re-scans all its connections (and, for each idle one, all of them
again, with a socket poll each) whenever a request starts or finishes, so one pool of 256
connections costs about 30 ms of CPU per request. Giving each lane its own small pool (by default
one connection: the cheapest, measured in ``bench/lm_client.py``) keeps that cost constant. Each
request holds one place in a lane for as long as it holds one of its endpoint's concurrency slots,
so a lane never has more requests than connections and its pool never queues.

Places are handed out last-in first-out: at low concurrency the same warm connections are reused.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable
from typing import Any

# httpx imports httpcore (and httpcore imports trio, when it is installed) only when its first client
# is built: 0.1-0.4 s of CPU in the middle of a run, ahead of its first request. Imported here instead,
# with the rest of the client.
import httpcore  # noqa: F401
import httpx

__all__ = ["DEFAULT_LANE_SIZE", "ConnectionLanes", "LaneClientFactory"]

#: Connections per lane: 1 makes httpcore's per-request pool scans cheapest (0.53 ms of client CPU
#: per call at 256 concurrent, against 0.65 ms with 4 and 0.92 ms with 8).
DEFAULT_LANE_SIZE = 1


class ConnectionLanes:
    """Places in ``capacity / lane_size`` small httpx clients, created on first use.

    Args:
        capacity: requests in flight at once (the endpoint's concurrency cap).
        make_client: builds one lane's client for ``max_connections`` connections.
        lane_size: connections per lane.
        shared_client: use this one client for every place instead (a caller's own client).
    """

    def __init__(
        self,
        capacity: int,
        make_client: Callable[[int], httpx.AsyncClient],
        *,
        lane_size: int = DEFAULT_LANE_SIZE,
        shared_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._shared = shared_client
        self._make_client = make_client
        self._lane_size = lane_size
        if shared_client is not None:
            lanes, lane_size = 1, capacity
        else:
            lanes = math.ceil(capacity / lane_size)
        self._clients: list[httpx.AsyncClient | None] = [shared_client] * lanes
        # Free places, one per connection, lanes interleaved so that concurrent requests spread
        # over them; the first lane's are on top of the stack.
        self._free = [lane for _ in range(lane_size) for lane in reversed(range(lanes))]
        del self._free[:-capacity]

    @property
    def shared_client(self) -> httpx.AsyncClient | None:
        """The caller's own client when one was given, else None."""
        return self._shared

    def take(self) -> int:
        """Reserve a place; the caller must hold a concurrency slot (so one is always free)."""
        return self._free.pop()

    def idle_client(self) -> httpx.AsyncClient | None:
        """The client of the place the next request takes (its connection then serves that request), or
        None when every place is taken; the shared client when there is one."""
        if self._shared is not None:
            return self._shared
        return self.client(self._free[-1]) if self._free else None

    def give(self, lane: int) -> None:
        self._free.append(lane)

    def client(self, lane: int) -> httpx.AsyncClient:
        client = self._clients[lane]
        if client is None:
            client = self._clients[lane] = self._make_client(self._lane_size)
        return client

    async def aclose(self) -> None:
        """Close the lanes' clients (a shared client is the caller's to close)."""
        if self._shared is not None:
            return
        for index, client in enumerate(self._clients):
            if client is not None:
                self._clients[index] = None
                await client.aclose()


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


class LaneClientFactory:
    """Builds lane clients with one timeout and one TLS context (built once: it costs ~20 ms)."""

    def __init__(self, timeout: float) -> None:
        self._timeout = httpx.Timeout(timeout)
        self._ssl: ssl.SSLContext | None = None

    def __call__(self, connections: int) -> httpx.AsyncClient:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return _CookielessClient(
            verify=self._ssl,
            timeout=self._timeout,
            limits=httpx.Limits(
                max_connections=connections,
                max_keepalive_connections=connections,
                keepalive_expiry=30.0,
            ),
        )
