"""One connection of :mod:`aprompt.lm._http11`: sends a request, reads its reply (status line, headers,
interim replies, a body by length, chunked or until close) and knows whether it can be reused."""

from __future__ import annotations

import contextlib
import re
import socket

import anyio
import anyio.abc

from aprompt.lm._http11_body import ReplyBody
from aprompt.lm._loop_stream import LoopStream, running_loop
from aprompt.lm._transport import NotHTTP1, Reply, TransportError, UnreadableBody

__all__ = ["STREAM_ERRORS", "Connection", "NoReply", "describe"]

# The longest status line and headers read, and the most trailer bytes; an LM server's are well under a
# kilobyte.
_MAX_HEAD_BYTES = 64 * 1024
# The most interim (1xx) replies read before the final one: a server sends one or two at most.
_MAX_INTERIM_REPLIES = 16
_RECEIVE_BYTES = 65536
_PEEK_FLAGS = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)
# A chunk size: at most 16 hex digits after any leading zeros (a size past 64 bits is no real chunk).
_HEX_DIGITS = re.compile(rb"0*[0-9A-Fa-f]{1,16}")
# A head's lines end in CRLF, or in a bare LF as some servers send (each CR before an LF is dropped, as
# RFC 9112 lets a recipient): the head ends at its first empty line.
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
STREAM_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)


class NoReply(TransportError):
    """The connection failed before any byte of the reply arrived."""


class Connection:
    """One open connection: sends a request, reads its reply, and knows whether it can be reused."""

    __slots__ = ("_buffer", "_received", "_socket", "_stream", "idle_since", "loop", "reusable")

    def __init__(self, stream: anyio.abc.ByteStream | LoopStream) -> None:
        self._stream = stream
        #: The event loop it was opened on, the only one that can use or close its stream.
        self.loop = running_loop()
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
        except STREAM_ERRORS as exc:
            failure: type[TransportError] = TransportError if self._received else NoReply
            raise failure(describe(exc)) from None
        self.reusable = keep_alive and not too_large
        return Reply(status, headers, content, too_large)

    def abandon(self) -> None:
        """Let go of a connection of another event loop (one that has ended, or runs elsewhere), which
        this loop cannot use or close: its TCP connection is shut down here, so the server is not left
        holding it. A loop that runs elsewhere sees the end and closes its stream; the stream of one that
        has ended is closed here, without it (left to the collector, it warned of an unclosed socket)."""
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
            self._socket.close()
        if isinstance(self._stream, LoopStream):
            if getattr(self.loop, "is_closed", lambda: False)():
                self._stream.close_without_loop()
            return
        raw = self._stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if isinstance(raw, socket.socket):  # trio's stream: a plain socket, which needs no loop to close
            raw.close()

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
            # Seen at once (not on the hot path: a head mostly arrives in one read): a server of another
            # protocol may wait, or close, for good.
            if buffer and not b"HTTP/1.".startswith(buffer[:7]) and buffer[:1] not in b"\r\n":
                raise _not_http1(buffer)
            if len(buffer) > _MAX_HEAD_BYTES:
                raise TransportError("malformed reply: its head is longer than 64 KiB")
            searched = max(len(buffer) - 3, 0)
            data = await self._receive()
            if not data:
                if self._received:
                    raise TransportError("the server closed the connection within the reply's head")
                raise NoReply("the server closed the connection without replying")
            buffer += data
        end, after = found.span()
        if end > _MAX_HEAD_BYTES:  # arrived whole in one read
            raise TransportError("malformed reply: its head is longer than 64 KiB")
        lines = _LINE_END.split(bytes(buffer[:end]))
        del buffer[:after]
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        # A stray line end before the status line (after a previous body) is a broken reply, not another
        # protocol: retried as before.
        if version[:7] != b"HTTP/1." and version:
            raise _not_http1(lines[0])
        if len(code) != 3 or not code.isdigit() or rest[3:4] not in (b"", b" "):
            raise TransportError(f"malformed status line {lines[0][:80]!r}")
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                # An obsolete line folding continues the header before it: joined with a space (RFC 9112
                # 5.2), as its server meant, not read as a header named with a leading space.
                if not headers or b"\r" in line:
                    raise TransportError("malformed header line in the reply")
                name, value = headers[-1]
                headers[-1] = (name, b"%s %s" % (value, line.strip()) if value else line.strip())
                continue
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
        codings: list[bytes] = []
        encodings: list[bytes] = []
        for name, value in headers:
            if name[:1] not in b"cCtT":  # none of the names below: passed over without a call
                continue
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
                # Several lines are one list, as for Transfer-Encoding: the body is coded by each in turn.
                encodings += [coding.strip() for coding in value.lower().split(b",")]
        codings = [coding for coding in codings if coding not in (b"", b"identity")]
        chunked = codings == [b"chunked"]
        if codings and not chunked:
            # Another coding (gzip, compress) would be returned still coded, as if it were the body.
            raise TransportError(f"unsupported transfer-encoding {b', '.join(codings)[:40]!r}")
        encoding = b", ".join(coding for coding in encodings if coding not in (b"", b"identity"))
        undecoded = False
        try:
            body = ReplyBody(cap, encoding)
        except UnreadableBody:
            if 200 <= status < 300:
                raise
            # An error's status says what happened (a 429 or a 503 is waited out and sent again) and its
            # body is only a message: read past undecoded and left out, rather than the status lost.
            body, undecoded = ReplyBody(cap, b""), True
        if status in (204, 304):
            return b"", False, not close
        if chunked:
            ended = await self._read_chunked(body)
            # With a Content-Length too its framing is ambiguous (RFC 9112 6.3), and HTTP/1.0 has no
            # chunked coding (6.1): what follows on the connection, if anything, need not start the next
            # reply.
            close = close or ended or length is not None or version == b"HTTP/1.0"
        elif length is not None:
            if not length.isdigit():
                raise TransportError("malformed reply: its Content-Length is not a number")
            if int(length) > cap:
                return b"", True, False
            await self._read_length(body, int(length))
        else:
            await self._read_until_close(body)
            close = True
        content = b"" if undecoded else body.content()
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

    async def _read_chunked(self, body: ReplyBody) -> bool:
        """Read the chunks into ``body``; True when the server closed the connection in the trailers."""
        while True:
            line = await self._read_line()
            size_text = line.split(b";", 1)[0].strip()
            # HTTP's 1*HEXDIG: int() alone would also take "0x5", "1_0", "+5" and "-2".
            if not _HEX_DIGITS.fullmatch(size_text):
                raise TransportError("malformed chunk size in the reply")
            size = int(size_text, 16)
            if size == 0:
                return await self._skip_trailers()
            # Taken as it arrives, not once whole: a chunk's size is the server's to state, and one
            # stating gigabytes would otherwise be held (or waited for) in full before the cap applies.
            while size > len(self._buffer):
                if self._buffer:
                    size -= len(self._buffer)
                    if not body.add(bytes(self._buffer)):
                        return False
                    self._buffer.clear()
                await self._fill(1)
            await self._fill(size + 2)
            # Data longer or shorter than its size would otherwise be cut or run into the next size line.
            if self._buffer[size : size + 2] != b"\r\n":
                raise TransportError("malformed reply: a chunk is longer or shorter than its size")
            if not body.add(bytes(self._buffer[:size])):
                return False
            del self._buffer[: size + 2]

    async def _read_until_close(self, body: ReplyBody) -> None:
        if self._buffer:
            if not body.add(bytes(self._buffer)):
                return
            self._buffer.clear()
        while data := await self._receive():
            if not body.add(data):
                return

    async def _skip_trailers(self) -> bool:
        """Read past the trailers that follow the last chunk; True when the server closed the connection
        before their end, which cuts none of the body: the last chunk ended it (RFC 9112 8)."""
        buffer = self._buffer
        trailers = 0
        while True:
            end = _crlf(buffer)
            if end == 0:
                del buffer[:2]
                return False
            if end > 0:
                trailers += end
                del buffer[: end + 2]
            elif data := await self._receive():
                buffer += data
            else:
                buffer.clear()
                return True
            if trailers + len(buffer) > _MAX_HEAD_BYTES:
                raise TransportError("malformed reply: its trailers are longer than 64 KiB")

    async def _read_line(self) -> bytes:
        buffer = self._buffer
        while (end := _crlf(buffer)) < 0:
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


def _crlf(buffer: bytearray) -> int:
    """Where the first line of ``buffer`` ends (its CRLF), or -1 before its end has arrived. A line of the
    chunked framing ended by a bare LF is malformed: waited on for its CRLF, it would hold the call until
    its timeout."""
    end = buffer.find(b"\n")
    if end < 0:
        return -1
    if buffer[end - 1 : end] != b"\r":
        raise TransportError("malformed reply: a chunk or trailer line ends in a bare line feed")
    return end - 1


def _not_http1(start: bytes | bytearray) -> NotHTTP1:
    """The error for a reply that starts as no HTTP/1.x status line does: another protocol's."""
    return NotHTTP1(f"the reply does not start as an HTTP/1.x one does, but with {bytes(start[:16])!r}")


def describe(exc: BaseException) -> str:
    """``exc`` as ``Name: message``, the message of its cause when it has none of its own (anyio's)."""
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or (f"{type(cause).__name__}: {cause}" if cause is not None else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
