"""Our own HTTP/1.1 client, on anyio byte streams: the transport of the LM clients' connection lanes.

Why: httpx and httpcore cost ~1.5-1.9 ms of CPU per request here (locks, cancel scopes, h11's state
machine, per-read timeouts), more than the whole budget of an LM call; one request written and its
reply parsed directly on the socket costs ~0.4 ms (``bench/results/throughput_cpu.md``).

What it speaks: one request at a time per connection (a lane never has more requests in flight than
connections); a reply head's lines ended by CRLF or a bare LF, a folded header line joined to the one
before with a space; bodies by ``Content-Length``, chunked
(trailers skipped) or until close; 1xx interim replies skipped; gzip and deflate bodies decoded, though
it asks for ``identity`` (an LM reply is a few kilobytes: decoding would cost CPU to save bytes nobody
waits for); TLS with the caller's context.

Connections are kept alive unless the reply says ``Connection: close``, is HTTP/1.0 without keep-alive,
is chunked and gives a length too, is read until close, is cut at the size cap or fails. An idle one is
dropped after :data:`KEEPALIVE_EXPIRY` seconds, or when the server has closed it (seen with a
non-blocking peek at its socket before reuse). A request on a connection reused after at least
:data:`IDLE_CLOSE_MIN` seconds idle that fails before any byte of the reply arrives, within
:data:`STALE_FAILURE_WITHIN` seconds of being sent, is sent once more on a fresh connection: the server
closed it for idling as we sent (servers keep idle connections for seconds at least). After a shorter
idle, or later after sending, such a failure is the server's (it dropped the request, or took it and
failed) and is reported, so that a server dropping requests does not get each twice, and a request the
server took is retried, if at all, by the client's retries (limited, counted and admitted by the rate
limits).

Timeouts are the caller's: :mod:`aprompt.lm._http` bounds the whole exchange.

On asyncio's own loop a connection (plain or TLS) is a protocol of our own on the loop's transport
(:mod:`aprompt.lm._loop_stream`), not an anyio stream. Under another backend (trio) or loop (uvloop)
connections are anyio streams.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections.abc import Callable, Mapping

import anyio
import anyio.abc
import httpx

from aprompt.lm._http11_connection import STREAM_ERRORS, Connection, NoReply, describe
from aprompt.lm._loop_stream import LoopStream, running_asyncio_loop, running_loop
from aprompt.lm._transport import NotHTTP1, Reply, TransportError, UntrustedCertificate

__all__ = ["IDLE_CLOSE_MIN", "KEEPALIVE_EXPIRY", "STALE_FAILURE_WITHIN", "HTTP11Transport"]

#: Seconds an idle connection is kept for reuse.
KEEPALIVE_EXPIRY = 30.0

#: Seconds idle after which a reused connection that fails without a reply byte was closed by its server.
IDLE_CLOSE_MIN = 1.0

#: Seconds after sending within which such a failure is the server's idle close (its end of the connection
#: arrives within a round trip); a later one is a server that took the request.
STALE_FAILURE_WITHIN = 0.5


class HTTP11Transport:
    """A connection lane's transport (:class:`~aprompt.lm._transport.Transport`) to one origin: up to
    ``connections`` keep-alive connections, the last used first.

    Args:
        url: any URL of the origin (scheme, host and port are used).
        connections: idle connections kept at most.
        ssl_context: builds the TLS context of an ``https`` origin (called once per connection: pass a
            function that returns a context built once).
        clock: a monotonic clock in seconds.
    """

    def __init__(
        self,
        url: httpx.URL,
        *,
        connections: int = 1,
        ssl_context: Callable[[], ssl.SSLContext] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if url.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {url.scheme!r}")
        self._tls = url.scheme == "https"
        # The host as it goes on the wire: an internationalized name in its ASCII (IDNA) form.
        self._host = url.raw_host.decode("ascii")
        self._port = url.port or (443 if self._tls else 80)
        self._ssl_context = ssl_context or ssl.create_default_context
        self._connections = connections
        self._clock = clock
        self._idle: list[Connection] = []
        self._closed = False
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = url.port is None or url.port == (443 if self._tls else 80)
        self._host_header = (host if default_port else f"{host}:{self._port}").encode("ascii")
        try:
            ipaddress.ip_address(self._host)
        except ValueError:
            self._eyeballs_delay: float | None = 0.25
        else:
            self._eyeballs_delay = None

    async def request(
        self, method: str, url: httpx.URL, headers: Mapping[str, str], body: bytes, cap: int
    ) -> Reply:
        if self._closed:
            raise TransportError("the connection lane is closed")
        message = self._message(method, url, headers, body)
        connection = await self._idle_connection()
        if connection is not None:
            sent = self._clock()
            idled = sent - connection.idle_since
            try:
                return await self._exchange(connection, message, cap)
            except NoReply:
                # A failure long after sending is a server that took the request and then dropped it:
                # sent again, it would be paid twice, past the limiters and the retry count.
                if idled < IDLE_CLOSE_MIN or self._clock() - sent > STALE_FAILURE_WITHIN:
                    raise
            # The server closed it for idling as we sent: once more on a fresh connection.
        return await self._exchange(await self._connect(), message, cap)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        loop = running_loop()
        for connection in idle:
            if connection.loop is loop:
                await connection.aclose()
            else:
                connection.abandon()

    def _message(self, method: str, url: httpx.URL, headers: Mapping[str, str], body: bytes) -> bytes:
        lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), url.raw_path, self._host_header)]
        lines.extend(b"%s: %s\r\n" % (name.encode(), value.encode()) for name, value in headers.items())
        if body or method != "GET":
            lines.append(b"Content-Length: %d\r\n" % len(body))
        # Named, as httpx names itself: some gateways turn away requests that give no user agent.
        lines.append(b"User-Agent: aprompt\r\nAccept-Encoding: identity\r\n\r\n")
        lines.append(body)
        return b"".join(lines)

    async def _idle_connection(self) -> Connection | None:
        """The most recently used idle connection still open and not expired; the others are closed.

        A client outlives event loops (``asyncio.run`` called again, trio after asyncio): a connection
        opened on another loop is let go, since only its own loop can use it (here a request on it would
        wait forever, or its close would raise)."""
        idle = self._idle
        loop = running_loop()
        while idle:
            connection = idle.pop()
            if connection.loop is not loop:
                connection.abandon()
            elif self._clock() - connection.idle_since < KEEPALIVE_EXPIRY and connection.is_alive():
                return connection
            else:
                await connection.aclose()
        return None

    async def _exchange(self, connection: Connection, message: bytes, cap: int) -> Reply:
        try:
            reply = await connection.exchange(message, cap)
        except BaseException:
            await connection.aclose()
            raise
        if connection.reusable and not self._closed and len(self._idle) < self._connections:
            connection.idle_since = self._clock()
            self._idle.append(connection)
        else:
            await connection.aclose()
        return reply

    async def _connect(self) -> Connection:
        try:
            if (loop := running_asyncio_loop()) is not None:
                # As anyio connects: a host name's addresses in turn, the next after 250 ms (happy
                # eyeballs, which costs tasks of its own); an address literal directly. asyncio's TLS
                # takes a close without TLS's close_notify as the end of the stream, as anyio does below.
                _, protocol = await loop.create_connection(
                    LoopStream,
                    self._host,
                    self._port,
                    ssl=self._ssl_context() if self._tls else None,
                    server_hostname=self._host if self._tls else None,
                    happy_eyeballs_delay=self._eyeballs_delay,
                )
                return Connection(protocol)
            if self._tls:
                stream: anyio.abc.ByteStream = await anyio.connect_tcp(
                    self._host,
                    self._port,
                    ssl_context=self._ssl_context(),
                    tls_hostname=self._host,
                    # Servers often close without TLS's close_notify; a body read until close is
                    # still whole when they do.
                    tls_standard_compatible=False,
                )
            else:
                stream = await anyio.connect_tcp(self._host, self._port)
        except ssl.SSLCertVerificationError as exc:
            # Verification is never turned off here: the message says what to do instead.
            raise UntrustedCertificate(describe(exc)) from None
        except ssl.SSLError as exc:
            if exc.reason == "WRONG_VERSION_NUMBER":  # no TLS record came back: a plain-text server
                raise NotHTTP1(f"{describe(exc)}: the server does not speak TLS on this port") from None
            raise TransportError(describe(exc)) from None
        except STREAM_ERRORS as exc:
            raise TransportError(describe(exc)) from None
        return Connection(stream)
