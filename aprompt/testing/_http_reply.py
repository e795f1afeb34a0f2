"""Writing a fake server's HTTP/1.1 reply: a JSON body whole, or streamed piece by piece (trickled or
padded to a huge size, as a :class:`~aprompt.testing._wire.Fault` asks), with its status line and headers
(:mod:`aprompt.testing.fake_openai` names :class:`StreamedBody`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.abc
import attrs

from aprompt.testing._wire import Fault


@attrs.frozen
class StreamedBody:
    """A response body sent piece by piece: ``head``, ``padding`` filler bytes, then ``tail``, in
    ``chunk_bytes`` pieces ``every`` seconds apart (chunked transfer encoding when ``chunked``)."""

    head: bytes
    tail: bytes = b""
    padding: int = 0
    chunk_bytes: int = 65536
    every: float = 0.0
    chunked: bool = False

    @property
    def length(self) -> int:
        return len(self.head) + self.padding + len(self.tail)

    async def pieces(self) -> AsyncIterator[bytes]:
        step = max(1, self.chunk_bytes)
        filler = b"x" * min(step, self.padding)
        first = True
        for segment, size in ((self.head, len(self.head)), (None, self.padding), (self.tail, len(self.tail))):
            for start in range(0, size, step):
                if not first and self.every:
                    await anyio.sleep(self.every)
                first = False
                end = min(size, start + step)
                yield segment[start:end] if segment is not None else filler[: end - start]


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def shaped(payload: bytes, fault: Fault | None) -> bytes | StreamedBody:
    """A JSON answer as ``fault`` sends it: trickled, padded to a huge size, or whole."""
    if fault is not None and fault.kind == "slow_body":
        return StreamedBody(payload, chunk_bytes=fault.chunk_bytes, every=fault.seconds)
    if fault is not None and fault.kind == "huge_body":
        # Still a valid answer when read whole: the padding is one more string field.
        head, tail = payload[:-1] + b', "padding": "', b'"}'
        padding = max(0, fault.body_bytes - len(head) - len(tail))
        return StreamedBody(head, tail, padding, fault.chunk_bytes, chunked=fault.chunked)
    return payload


#: A fake server's answer: status (negative: the connection is dropped), body, extra headers, and the
#: name of the fault it carries (None: a normal answer).
Answer = tuple[int, bytes | StreamedBody, dict[str, str], str | None]


def error_body(message: str, code: str) -> bytes:
    return json_bytes({"error": {"message": message, "type": code, "code": code}})


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
}


async def send_reply(
    stream: anyio.abc.SocketStream,
    status: int,
    payload: bytes | StreamedBody,
    extra_headers: dict[str, str],
    *,
    before_last: Callable[[], None],
) -> None:
    """Send one reply; ``before_last`` is called just before its last piece is sent (a streamed body
    without chunks excepted: its last piece is not known in advance)."""
    reason = _REASONS.get(status, "Error" if status >= 400 else "OK")
    chunked = isinstance(payload, StreamedBody) and payload.chunked
    length = payload.length if isinstance(payload, StreamedBody) else len(payload)
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}",
        "Connection: keep-alive",
    ]
    head += [f"{name}: {value}" for name, value in extra_headers.items()]
    head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    if not isinstance(payload, StreamedBody):
        before_last()
        await stream.send(head_bytes + payload)
        return
    await stream.send(head_bytes)
    async for piece in payload.pieces():
        await stream.send(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
    if chunked:
        before_last()
        await stream.send(b"0\r\n\r\n")
