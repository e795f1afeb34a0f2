"""Our own HTTP/1.1 client, on anyio byte streams: the transport of the LM clients' connection lanes.

Why: httpx and httpcore cost ~1.5-1.9 ms of CPU per request here (locks, cancel scopes, h11's state
machine, per-read timeouts), more than the whole budget of an LM call; one request written and its
reply parsed directly on the socket costs ~0.4 ms (``bench/results/throughput_cpu.md``).

What it speaks: one request at a time per connection (a lane never has more requests in flight than
connections); a reply head's lines ended by CRLF or a bare LF; bodies by ``Content-Length``, chunked
(trailers skipped) or until close; 1xx interim replies skipped; gzip and deflate bodies decoded, though
it asks for ``identity`` (an LM reply is a few kilobytes: decoding would cost CPU to save bytes nobody
waits for); TLS with the caller's context.

Connections are kept alive unless the reply says ``Connection: close``, is HTTP/1.0 without keep-alive,
is read until close, is cut at the size cap or fails. An idle one is dropped after
:data:`KEEPALIVE_EXPIRY` seconds, or when the server has closed it (seen with a non-blocking peek at
its socket before reuse). A request on a connection reused after at least :data:`IDLE_CLOSE_MIN`
seconds idle that fails before any byte of the reply arrives, within :data:`STALE_FAILURE_WITHIN` seconds
of being sent, is sent once more on a fresh connection: the server closed it for idling as we sent
(servers keep idle connections for seconds at least). After a shorter idle, or later after sending, such
a failure is the server's (it dropped the request, or took it and failed) and is reported, so that a
server dropping requests does not get each twice, and a request the server took is retried, if at all,
by the client's retries (limited, counted and admitted by the rate limits).

Timeouts are the caller's: :mod:`aprompt.lm._http` bounds the whole exchange.

On asyncio's own loop a connection (plain or TLS) is a protocol of our own on the loop's transport
(:mod:`aprompt.lm._loop_stream`), not an anyio stream. Under another backend (trio) or loop (uvloop)
connections are anyio streams.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping

import anyio
import anyio.abc
import httpx

from aprompt.lm._http11_body import ReplyBody
from aprompt.lm._loop_stream import LoopStream, running_asyncio_loop
from aprompt.lm._transport import Reply, TransportError

__all__ = ["IDLE_CLOSE_MIN", "KEEPALIVE_EXPIRY", "STALE_FAILURE_WITHIN", "HTTP11Transport"]

#: Seconds an idle connection is kept for reuse.
KEEPALIVE_EXPIRY = 30.0

#: Seconds idle after which a reused connection that fails without a reply byte was closed by its server.
IDLE_CLOSE_MIN = 1.0

#: Seconds after sending within which such a failure is the server's idle close (its end of the connection
#: arrives within a round trip); a later one is a server that took the request.
STALE_FAILURE_WITHIN = 0.5

# The longest status line and headers read, and the most trailer bytes; an LM server's are well under a
# kilobyte.
_MAX_HEAD_BYTES = 64 * 1024
# The most interim (1xx) replies read before the final one: a server sends one or two at most.
_MAX_INTERIM_REPLIES = 16
_RECEIVE_BYTES = 65536
_PEEK_FLAGS = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)
_HEX_DIGITS = re.compile(rb"[0-9A-Fa-f]{1,16}")
# A head's lines end in CRLF, or in a bare LF as some servers send (each CR before an LF is dropped, as
# RFC 9112 lets a recipient): the head ends at its first empty line.
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_STREAM_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)


class _NoReply(TransportError):
    """The connection failed before any byte of the reply arrived."""


class _Connection:
    """One open connection: sends a request, reads its reply, and knows whether it can be reused."""

    __slots__ = ("_buffer", "_received", "_socket", "_stream", "idle_since", "reusable")

    def __init__(self, stream: anyio.abc.ByteStream | LoopStream) -> None:
        self._stream = stream
        # A duplicate of its socket, to peek at while it is idle (asyncio lends out a wrapper that
        # cannot read); closed with the connection.
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        self._socket: socket.socket | None = raw.dup() if raw is not None else None
        if self._socket is not None:
            self._socket.setblocking(False)
        self._buffer = bytearray()
        self._received = False
        self.idle_since = 0.0
        self.reusable = False

    def is_alive(self) -> bool:
        """Whether the server still holds the idle connection open (nothing to read, no end)."""
        if self._buffer or self._socket is None:
            return False
        # Our protocol reads while idle: what the server sent or closed may already be in it.
        if isinstance(self._stream, LoopStream) and not self._stream.quiet():
            return False
        try:
            self._socket.recv(1, _PEEK_FLAGS)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # the end of the stream, or bytes nobody asked for

    async def exchange(self, request: bytes, cap: int) -> Reply:
        """Send ``request`` (head and body) and read its reply, up to ``cap`` body bytes."""
        self.reusable = False
        self._received = False
        try:
            await self._stream.send(request)
            status, version, headers = await self._read_head()
            interim = 0
            while 100 <= status < 200:
                if status == 101:
                    raise TransportError("the server switched protocols (HTTP 101)")
                interim += 1
                if interim > _MAX_INTERIM_REPLIES:
                    raise TransportError(
                        f"malformed reply: more than {_MAX_INTERIM_REPLIES} interim (1xx) replies"
                    )
                status, version, headers = await self._read_head()
            content, too_large, keep_alive = await self._read_body(status, version, headers, cap)
        except TransportError:
            raise
        except _STREAM_ERRORS as exc:
            failure: type[TransportError] = TransportError if self._received else _NoReply
            raise failure(_describe(exc)) from None
        self.reusable = keep_alive and not too_large
        return Reply(status, headers, content, too_large)

    async def aclose(self) -> None:
        if self._socket is not None:
            self._socket.close()
        if isinstance(self._stream, LoopStream):
            await self._stream.aclose()
        elif isinstance(self._stream, anyio.abc.SocketStream):
            # A plain socket closes at once (its transport is aborted), so it needs no forced close, whose
            # cancellation formats the task's repr (a tenth of a millisecond); a TLS close could wait on
            # the peer's close_notify.
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
        else:
            await anyio.aclose_forcefully(self._stream)

    async def _receive(self) -> bytes:
        """The next bytes from the server, or ``b""`` at the end of the stream."""
        try:
            data = await self._stream.receive(_RECEIVE_BYTES)
        except anyio.EndOfStream:
            return b""
        self._received = True
        return data

    async def _read_head(self) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        buffer = self._buffer
        searched = 0
        while (found := _HEAD_END.search(buffer, searched)) is None:
            if len(buffer) > _MAX_HEAD_BYTES:
                raise TransportError("malformed reply: its head is longer than 64 KiB")
            searched = max(len(buffer) - 3, 0)
            data = await self._receive()
            if not data:
                if self._received:
                    raise TransportError("the server closed the connection within the reply's head")
                raise _NoReply("the server closed the connection without replying")
            buffer += data
        end, after = found.span()
        if end > _MAX_HEAD_BYTES:  # arrived whole in one read
            raise TransportError("malformed reply: its head is longer than 64 KiB")
        lines = _LINE_END.split(bytes(buffer[:end]))
        del buffer[:after]
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if version[:7] != b"HTTP/1." or len(code) != 3 or not code.isdigit() or rest[3:4] not in (b"", b" "):
            raise TransportError(f"malformed status line {lines[0][:80]!r}")
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            # A CR left within a line is no line end: read as part of a value, it could hide a header.
            if not colon or not name or name[-1:].isspace() or b"\r" in line:
                raise TransportError("malformed header line in the reply")
            headers.append((name, value.strip()))
        return int(code), version, headers

    async def _read_body(
        self, status: int, version: bytes, headers: list[tuple[bytes, bytes]], cap: int
    ) -> tuple[bytes, bool, bool]:
        """The body (decoded), whether it was cut at ``cap``, and whether the connection can be reused."""
        length = None
        close = version == b"HTTP/1.0"
        encoding = b""
        codings: list[bytes] = []
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                # Lengths that differ leave the body's end unknown: either could cut it or run it on.
                if length is not None and value != length:
                    raise TransportError("malformed reply: its Content-Length headers differ")
                length = value
            elif lower == b"transfer-encoding":
                codings += [coding.strip() for coding in value.lower().split(b",")]
            elif lower == b"connection":
                tokens = {token.strip() for token in value.lower().split(b",")}
                if b"close" in tokens:
                    close = True
                elif b"keep-alive" in tokens:
                    close = False
            elif lower == b"content-encoding":
                encoding = value.lower()
        codings = [coding for coding in codings if coding not in (b"", b"identity")]
        chunked = codings == [b"chunked"]
        if codings and not chunked:
            # Another coding (gzip, compress) would be returned still coded, as if it were the body.
            raise TransportError(f"unsupported transfer-encoding {b', '.join(codings)[:40]!r}")
        body = ReplyBody(cap, encoding)
        if status in (204, 304):
            return b"", False, not close
        if chunked:
            await self._read_chunked(body)
        elif length is not None:
            if not length.isdigit():
                raise TransportError("malformed reply: its Content-Length is not a number")
            if int(length) > cap:
                return b"", True, False
            await self._read_length(body, int(length))
        else:
            await self._read_until_close(body)
            close = True
        content = body.content()
        return content, body.too_large, not close and not body.too_large

    async def _read_length(self, body: ReplyBody, length: int) -> None:
        buffer = self._buffer
        while len(buffer) < length:
            data = await self._receive()
            if not data:
                raise TransportError("the server closed the connection within the reply's body")
            buffer += data
        body.add(bytes(buffer[:length]))
        del buffer[:length]

    async def _read_chunked(self, body: ReplyBody) -> None:
        while True:
            line = await self._read_line()
            size_text = line.split(b";", 1)[0].strip()
            # HTTP's 1*HEXDIG: int() alone would also take "0x5", "1_0", "+5" and "-2".
            if not _HEX_DIGITS.fullmatch(size_text):
                raise TransportError("malformed chunk size in the reply")
            size = int(size_text, 16)
            if size == 0:
                trailers = 0
                while line := await self._read_line():  # trailers, skipped
                    trailers += len(line)
                    if trailers > _MAX_HEAD_BYTES:
                        raise TransportError("malformed reply: its trailers are longer than 64 KiB")
                return
            await self._fill(size + 2)
            # Data longer or shorter than its size would otherwise be cut or run into the next size line.
            if self._buffer[size : size + 2] != b"\r\n":
                raise TransportError("malformed reply: a chunk is longer or shorter than its size")
            if not body.add(bytes(self._buffer[:size])):
                return
            del self._buffer[: size + 2]

    async def _read_until_close(self, body: ReplyBody) -> None:
        if self._buffer:
            if not body.add(bytes(self._buffer)):
                return
            self._buffer.clear()
        while data := await self._receive():
            if not body.add(data):
                return

    async def _read_line(self) -> bytes:
        buffer = self._buffer
        while (end := buffer.find(b"\r\n")) < 0:
            if len(buffer) > _MAX_HEAD_BYTES:
                raise TransportError("malformed reply: a chunk line is longer than 64 KiB")
            await self._fill(len(buffer) + 1)
        line = bytes(buffer[:end])
        del buffer[: end + 2]
        return line

    async def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            data = await self._receive()
            if not data:
                raise TransportError("the server closed the connection within the reply's body")
            self._buffer += data


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
        self._idle: list[_Connection] = []
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
            except _NoReply:
                # A failure long after sending is a server that took the request and then dropped it:
                # sent again, it would be paid twice, past the limiters and the retry count.
                if idled < IDLE_CLOSE_MIN or self._clock() - sent > STALE_FAILURE_WITHIN:
                    raise
            # The server closed it for idling as we sent: once more on a fresh connection.
        return await self._exchange(await self._connect(), message, cap)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()

    def _message(self, method: str, url: httpx.URL, headers: Mapping[str, str], body: bytes) -> bytes:
        lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), url.raw_path, self._host_header)]
        lines.extend(b"%s: %s\r\n" % (name.encode(), value.encode()) for name, value in headers.items())
        if body or method != "GET":
            lines.append(b"Content-Length: %d\r\n" % len(body))
        # Named, as httpx names itself: some gateways turn away requests that give no user agent.
        lines.append(b"User-Agent: aprompt\r\nAccept-Encoding: identity\r\n\r\n")
        lines.append(body)
        return b"".join(lines)

    async def _idle_connection(self) -> _Connection | None:
        """The most recently used idle connection still open and not expired; the others are closed."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if self._clock() - connection.idle_since < KEEPALIVE_EXPIRY and connection.is_alive():
                return connection
            await connection.aclose()
        return None

    async def _exchange(self, connection: _Connection, message: bytes, cap: int) -> Reply:
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

    async def _connect(self) -> _Connection:
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
                return _Connection(protocol)
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
        except (*_STREAM_ERRORS, ssl.SSLError) as exc:
            raise TransportError(_describe(exc)) from None
        return _Connection(stream)


def _describe(exc: BaseException) -> str:
    """``exc`` as ``Name: message``, the message of its cause when it has none of its own (anyio's)."""
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or (f"{type(cause).__name__}: {cause}" if cause is not None else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
