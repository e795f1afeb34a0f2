"""A TCP connection (plain or TLS) as a protocol of our own on the running asyncio loop's transport: the
byte stream of :mod:`aprompt.lm._http11`'s connections on asyncio's own loop.

Why not an anyio stream there: anyio's send yields to the loop once more after writing, and each receive
resumes and pauses the transport's reading (two selector changes); per LM call that was a tenth of the
client's function calls. Under another backend (trio) or loop (uvloop) connections are anyio streams.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
from typing import Any

import anyio
import anyio.abc

__all__ = ["READ_AHEAD", "LoopStream", "running_asyncio_loop", "running_loop"]

#: Bytes a :class:`LoopStream` holds unread before it stops reading from its socket.
READ_AHEAD = 256 * 1024


class LoopStream(asyncio.Protocol):
    """A TCP connection (plain or TLS) on the running asyncio loop's transport, with the byte-stream methods
    a connection uses (``send``, ``receive``, ``aclose``, ``extra``) and anyio's exceptions (end of
    stream, broken and closed resource). One reader and one writer at a time, as a connection
    has. Reading pauses while more than :data:`READ_AHEAD` bytes wait unread."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._unread = 0
        self._reading = True
        self._eof = False
        self._lost: BaseException | None = None
        self._closed = False
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    # -- the protocol (called by the loop) ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._unread += len(data)
        if self._unread > READ_AHEAD and self._reading and self._transport is not None:
            self._reading = False
            self._transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_reader(self) -> None:
        waiter, self._readable = self._readable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the stream (called by the connection) ---------------------------------------------------
    def quiet(self) -> bool:
        """Open, with nothing received unread and no end of stream (an idle connection fit for reuse)."""
        return not (self._chunks or self._eof or self._closed)

    def extra(self, attribute: object, default: Any = None) -> Any:
        if attribute is anyio.abc.SocketAttribute.raw_socket and self._transport is not None:
            return self._transport.get_extra_info("socket", default)
        return default

    async def send(self, data: bytes) -> None:
        self._check_open()
        assert self._transport is not None
        self._transport.write(data)
        while self._writable is not None:  # the transport's buffer is full: wait until it drains
            await self._writable
            self._check_open()

    async def receive(self, max_bytes: int) -> bytes:
        while not self._chunks:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._lost is not None:
                raise anyio.BrokenResourceError from self._lost
            if self._eof:
                raise anyio.EndOfStream
            self._readable = asyncio.get_running_loop().create_future()
            await self._readable
        chunk = self._chunks.popleft()
        if len(chunk) > max_bytes:
            chunk, rest = chunk[:max_bytes], chunk[max_bytes:]
            self._chunks.appendleft(rest)
        self._unread -= len(chunk)
        if not self._reading and self._unread <= READ_AHEAD and self._transport is not None:
            self._reading = True
            self._transport.resume_reading()
        return chunk

    async def aclose(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.abort()  # at once, as anyio closes a plain socket stream

    def close_without_loop(self) -> None:
        """Close the connection of a loop that is closed: asyncio's ``close`` and ``abort`` hand the end to
        the transport's loop, which a closed loop refuses, and its socket was left to the collector (a
        ResourceWarning). The transport's own end runs here instead (under TLS, that of the transport
        beneath the TLS layer, which marks the layer closed as it ends)."""
        self._closed = True
        transport, self._transport = self._transport, None
        beneath = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None) or transport
        end = getattr(beneath, "_call_connection_lost", None)
        if end is not None:
            # Under TLS the layer's own end asks the closed loop to tell its protocol: refused, and moot.
            with contextlib.suppress(RuntimeError):
                end(None)

    def _check_open(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._lost is not None or (self._transport is not None and self._transport.is_closing()):
            raise anyio.BrokenResourceError from self._lost


def running_asyncio_loop() -> asyncio.BaseEventLoop | None:
    """The standard asyncio loop this task runs on, or None under another backend or loop. Another
    loop (uvloop) takes other connection options (no ``happy_eyeballs_delay``): anyio connects there."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if not isinstance(loop, asyncio.BaseEventLoop) or asyncio.current_task(loop) is None:
        return None
    return loop


def running_loop() -> object:
    """The event loop this task runs on: asyncio's loop (any kind), or trio's run (its token)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return sys.modules["trio"].lowlevel.current_trio_token()
