"""Our HTTP/1.1 transport against raw loopback servers with scripted replies (plain and TLS), and the
choice of httpx when the environment names a proxy."""

from __future__ import annotations

import contextlib
import gc
import gzip
import importlib.util
import json
import socket
import ssl
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest
import uvloop
from anyio.streams.tls import TLSListener

from aprompt._errors import ConfigError, LMConnectionError, LMStatusError, UnreadableResponseError
from aprompt.lm._connections import LaneTransports, proxy_applies
from aprompt.lm._http11 import IDLE_CLOSE_MIN, KEEPALIVE_EXPIRY, STALE_FAILURE_WITHIN, HTTP11Transport
from aprompt.lm._transport import HttpxTransport, NotHTTP1, TransportError, UnreadableBody, request_url
from aprompt.lm.anthropic import AnthropicLM
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.retry import RetryPolicy, raw_retry_after

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Every test on asyncio's loop (where a connection is our own protocol), on trio and on uvloop
    (where it is an anyio stream)."""
    if request.param == "uvloop":
        return ("asyncio", {"loop_factory": uvloop.new_event_loop})
    return request.param


CERTIFICATE = Path(__file__).with_name("loopback_tls.pem")
CAP = 1000
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-wire-test-0123456789"}
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
COMPLETION = json.dumps(
    {
        "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()


class Peer:
    """The server's side of one connection: reads requests, sends scripted bytes."""

    def __init__(self, stream: anyio.abc.ByteStream, server: ScriptedServer) -> None:
        self.stream = stream
        self._server = server
        self._buffer = b""

    async def read_request(self) -> bytes | None:
        """The next request (head and body), or None when the client closed the connection."""
        while b"\r\n\r\n" not in self._buffer:
            try:
                self._buffer += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return None
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += await self.stream.receive()
        self._buffer = rest[length:]
        request = head + b"\r\n\r\n" + rest[:length]
        self._server.requests.append(request)
        return request

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)


Script = Callable[[Peer], Awaitable[None]]


class ScriptedServer:
    """A loopback server that runs ``script`` on each connection it accepts, counting connections and
    recording requests."""

    def __init__(self, script: Script, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"):
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self._tls = tls
        self._host = host
        self.url = httpx.URL()

    async def __aenter__(self) -> ScriptedServer:
        listener: anyio.abc.Listener[anyio.abc.ByteStream] = await anyio.create_tcp_listener(
            local_host=self._host
        )
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        if self._tls is not None:
            listener = TLSListener(listener, self._tls, standard_compatible=False)
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "https" if self._tls else "http"
        self.url = httpx.URL(f"{scheme}://{host}:{port}/v1/chat/completions?api-version=2")
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(listener.serve, self._serve)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._group.cancel_scope.cancel()
        await self._group.__aexit__(None, None, None)

    async def _serve(self, stream: anyio.abc.ByteStream) -> None:
        self.connections += 1
        async with stream:
            try:
                await self.script(Peer(stream, self))
            except (anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError):
                pass


def replying(*replies: bytes, close: bool = False) -> Script:
    """A script: the server's n-th request, on whichever connection, gets the n-th reply (the last one
    repeats); with ``close`` the server closes each connection after one reply."""
    served = 0

    async def script(peer: Peer) -> None:
        nonlocal served
        while await peer.read_request() is not None:
            served += 1
            await peer.send(replies[min(served, len(replies)) - 1])
            if close:
                return

    return script


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[ScriptedServer]]]:
    async with contextlib.AsyncExitStack() as stack:

        async def start(script: Script, **options: object) -> ScriptedServer:
            return await stack.enter_async_context(ScriptedServer(script, **options))  # type: ignore[arg-type]

        yield start


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def post(transport: HTTP11Transport, server: ScriptedServer, body: bytes = b"{}", cap: int = CAP):
    return await transport.request("POST", server.url, HEADERS, body, cap)


# -- requests and replies ------------------------------------------------------------------------
async def test_a_request_carries_host_length_agent_identity_encoding_the_headers_and_the_url_s_path_and_query(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    server = await serve(
        replying(b"HTTP/1.1 200 OK\r\nX-Ratelimit-Limit-Requests: 60\r\nContent-Length: 5\r\n\r\nhello")
    )
    transport = HTTP11Transport(server.url)
    reply = await post(transport, server, b'{"a": 1}')
    await transport.aclose()
    assert reply.status == 200
    assert reply.headers == [(b"X-Ratelimit-Limit-Requests", b"60"), (b"Content-Length", b"5")]
    assert (reply.content, reply.too_large) == (b"hello", False)
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions?api-version=2 HTTP/1.1"
    assert set(lines[1:]) == {
        b"Host: 127.0.0.1:%d" % server.url.port,
        b"Content-Type: application/json",
        b"Authorization: Bearer sk-wire-test-0123456789",
        b"Content-Length: 8",
        b"Accept-Encoding: identity",
        b"User-Agent: aprompt",
    }
    assert body == b'{"a": 1}'


async def test_sequential_requests_reuse_one_keep_alive_connection(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    server = await serve(replying(OK))
    transport = HTTP11Transport(server.url)
    replies = [await post(transport, server) for _ in range(3)]
    await transport.aclose()
    assert [reply.content for reply in replies] == [b"ok"] * 3
    assert server.connections == 1


async def test_a_chunked_body_is_joined_and_its_trailers_skipped(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: yes\r\nX-Other: 1\r\n\r\n"
    )
    server = await serve(replying(chunked))
    transport = HTTP11Transport(server.url)
    first = await post(transport, server)
    second = await post(transport, server)
    await transport.aclose()
    assert first.content == second.content == b"hello world"
    assert server.connections == 1  # the trailers were read to their end: the connection is reusable


async def test_a_chunked_reply_that_also_gives_a_length_is_read_as_chunked_on_a_connection_not_reused(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # Its framing is ambiguous (a proxy on the way may have read it by its length): what follows on the
    # connection cannot be trusted to start the next reply.
    both = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    server = await serve(replying(both))
    transport = HTTP11Transport(server.url)
    with anyio.fail_after(5):
        replies = [await post(transport, server) for _ in range(2)]
    await transport.aclose()
    assert [reply.content for reply in replies] == [b"ok", b"ok"]
    assert server.connections == 2


async def test_a_chunked_http_1_0_reply_is_read_as_chunked_on_a_connection_not_reused_even_kept_alive(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # HTTP/1.0 has no chunked coding: its framing is faulty (RFC 9112 6.1), whatever keep-alive says.
    chunked = (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )
    server = await serve(replying(chunked))
    transport = HTTP11Transport(server.url)
    with anyio.fail_after(5):
        replies = [await post(transport, server) for _ in range(2)]
    await transport.aclose()
    assert [reply.content for reply in replies] == [b"ok", b"ok"]
    assert server.connections == 2


async def test_a_chunk_size_with_many_leading_zeros_is_read_as_its_value(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # HTTP's chunk size is 1*HEXDIG: its leading zeros, however many, do not count against its 16 digits.
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"0" * 20
        + b"5\r\nhello\r\n"
        + b"0" * 20
        + b"\r\n\r\n"
    )
    server = await serve(replying(chunked))
    transport = HTTP11Transport(server.url)
    replies = [await post(transport, server) for _ in range(2)]
    await transport.aclose()
    assert [reply.content for reply in replies] == [b"hello", b"hello"]
    assert server.connections == 1


@pytest.mark.parametrize("end", [b"0\r\n", b"0\r\nX-Trailer: cut"])
async def test_a_chunked_body_whose_server_closes_after_its_last_chunk_is_whole(
    serve: Callable[..., Awaitable[ScriptedServer]], end: bytes
) -> None:
    # The last (zero-size) chunk ends the body (RFC 9112 8): a close in the trailers that follow it, before
    # their final line, cuts nothing of the body. It was a failure, and the paid reply was sent again.
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n" + end
    server = await serve(replying(chunked, close=True))
    transport = HTTP11Transport(server.url)
    replies = [await post(transport, server) for _ in range(2)]
    await transport.aclose()
    assert [reply.content for reply in replies] == [b"ok", b"ok"]
    assert server.connections == 2


@pytest.mark.parametrize("framing", [b"2\nok\n0\n\n", b"2\r\nok\r\n0\r\nX-Trailer: 1\n\n"])
async def test_a_chunk_or_trailer_line_ended_by_a_bare_line_feed_is_a_transport_error_not_a_wait(
    serve: Callable[..., Awaitable[ScriptedServer]], framing: bytes
) -> None:
    # Its CRLF was waited for, on a connection the server keeps open: the call hung until its timeout.
    async def bare_line_feeds(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + framing)
        await anyio.sleep_forever()

    server = await serve(bare_line_feeds)
    transport = HTTP11Transport(server.url)
    with pytest.raises(TransportError, match="bare line feed"), anyio.fail_after(5):
        await post(transport, server)
    await transport.aclose()


@pytest.mark.parametrize("size", [b"0x5", b"0_5", b"+5", b"-5", b" ", b"5 5"])
async def test_a_chunk_size_that_is_not_hex_digits_is_a_transport_error(
    serve: Callable[..., Awaitable[ScriptedServer]], size: bytes
) -> None:
    # int(text, 16) alone takes "0x5", "0_5" and "+5": a malformed reply read as a normal one.
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n0\r\n\r\n"
    server = await serve(replying(chunked))
    transport = HTTP11Transport(server.url)
    with pytest.raises(TransportError, match="malformed chunk size"):
        await post(transport, server)
    await transport.aclose()


@pytest.mark.parametrize("chunk", [b"3\r\nabcd\r\n", b"5\r\nabc\r\n"])
async def test_a_chunk_longer_or_shorter_than_its_size_is_a_transport_error(
    serve: Callable[..., Awaitable[ScriptedServer]], chunk: bytes
) -> None:
    # Unchecked, "abcd" under size 3 was read as "abc": the rest ran into the next size line, whose
    # "\n0" stripped to the last chunk's.
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + b"0\r\n\r\n"
    server = await serve(replying(chunked))
    transport = HTTP11Transport(server.url)
    with pytest.raises(TransportError, match="longer or shorter than its size"):
        await post(transport, server)
    await transport.aclose()


async def test_content_lengths_that_differ_are_a_transport_error(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # The last one was taken: "okok" read as the body, where the first says "ok".
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 4\r\n\r\nokok"
    server = await serve(
        replying(reply, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok")
    )
    transport = HTTP11Transport(server.url)
    with pytest.raises(TransportError, match="Content-Length headers differ"):
        await post(transport, server)
    repeated = await post(transport, server)  # the same length twice is no ambiguity
    await transport.aclose()
    assert repeated.content == b"ok"


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"gzip\r\nTransfer-Encoding: chunked"])
async def test_a_transfer_coding_besides_chunked_is_a_transport_error(
    serve: Callable[..., Awaitable[ScriptedServer]], coding: bytes
) -> None:
    # Only the chunked framing was undone: the gzip bytes came back as the body.
    packed = gzip.compress(b"an answer")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %b\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (
        coding,
        len(packed),
        packed,
    )
    server = await serve(replying(chunked))
    transport = HTTP11Transport(server.url)
    with pytest.raises(TransportError, match="unsupported transfer-encoding b'gzip, chunked'"):
        await post(transport, server)
    await transport.aclose()


async def test_a_chunked_reply_arriving_a_byte_at_a_time_is_read_whole(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"

    async def trickle(peer: Peer) -> None:
        while await peer.read_request() is not None:
            for byte in chunked:
                await peer.send(bytes([byte]))

    server = await serve(trickle)
    transport = HTTP11Transport(server.url)
    replies = [await post(transport, server) for _ in range(2)]
    await transport.aclose()
    assert [reply.content for reply in replies] == [b"abcde"] * 2


async def test_a_body_without_length_is_read_until_close_and_its_connection_not_reused(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    server = await serve(replying(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close=True))
    transport = HTTP11Transport(server.url)
    replies = [await post(transport, server) for _ in range(2)]
    await transport.aclose()
    assert [reply.content for reply in replies] == [b"until the end"] * 2
    assert server.connections == 2


async def test_interim_100_continue_replies_are_skipped(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    server = await serve(
        replying(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)
    )
    transport = HTTP11Transport(server.url)
    reply = await post(transport, server)
    await transport.aclose()
    assert (reply.status, reply.content) == (200, b"ok")


async def test_a_gzip_body_is_decoded(serve: Callable[..., Awaitable[ScriptedServer]]) -> None:
    packed = gzip.compress(b"a compressed answer " * 20)
    server = await serve(
        replying(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b"
            % (len(packed), packed)
        )
    )
    transport = HTTP11Transport(server.url)
    reply = await post(transport, server)
    await transport.aclose()
    assert reply.content == b"a compressed answer " * 20


@pytest.mark.parametrize(
    ("packed", "problem"),
    [
        (gzip.compress(b"a compressed answer " * 20)[:-12], "compressed body is cut short"),
        (
            gzip.compress(b"first part, ") + gzip.compress(b"second part"),
            "runs on past its compressed stream",
        ),
    ],
    ids=["cut", "two-members"],
)
async def test_a_gzip_body_cut_short_or_running_on_is_a_transport_error(
    serve: Callable[..., Awaitable[ScriptedServer]], packed: bytes, problem: str
) -> None:
    # Either was returned as a whole body: the cut one without its end, the two members' without the
    # second.
    server = await serve(
        replying(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b"
            % (len(packed), packed),
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n",
        )
    )
    transport = HTTP11Transport(server.url)
    with pytest.raises(TransportError, match=problem):
        await post(transport, server)
    empty = await post(transport, server)  # an empty body has nothing to decode
    await transport.aclose()
    assert empty.content == b""


async def test_content_encodings_on_several_lines_are_read_as_one_list(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # Only the last line counted: a body coded twice came back decoded once, still gzip, as if it were
    # the body, and a line "identity" after "gzip" left a gzip body undecoded.
    twice = gzip.compress(gzip.compress(b"ok"))
    once = gzip.compress(b"ok")
    server = await serve(
        replying(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(twice), twice),
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Encoding: identity\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(once), once),
        )
    )
    transport = HTTP11Transport(server.url)
    with pytest.raises(UnreadableBody, match="gzip, gzip"):
        await post(transport, server)
    reply = await post(transport, server)
    await transport.aclose()
    assert reply.content == b"ok"


async def test_an_error_status_with_a_body_in_an_unread_encoding_keeps_its_status_and_is_retried(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # A proxy's 503 page in brotli was an unreadable reply, never retried: the run stopped on a passing
    # outage. A 2xx in brotli still is (every answer would come so).
    busy = b"HTTP/1.1 503 Unavailable\r\nContent-Encoding: br\r\nContent-Length: 4\r\n\r\n\x1b\x0b\x00\xf8"
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(COMPLETION), COMPLETION)
    server = await serve(replying(busy, busy, answer))
    transport = HTTP11Transport(server.url)
    reply = await post(transport, server)
    assert (reply.status, reply.content) == (503, b"")
    await transport.aclose()
    base_url = str(server.url.copy_with(path="/v1", query=None))
    async with OpenAICompatibleLM("m", base_url, api_key="k", retry=RetryPolicy(initial_backoff=0.01)) as lm:
        completion = await lm.chat([{"role": "user", "content": "hi"}])
    assert completion.text == "hi"
    assert len(server.requests) == 3


async def test_a_reply_with_connection_close_or_http_1_0_is_not_reused(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    old = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    old_kept = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    server = await serve(replying(closing, old, old_kept, old_kept))
    transport = HTTP11Transport(server.url)
    for _ in range(4):
        await post(transport, server)
    await transport.aclose()
    # closing, then old (a new connection each), then old_kept twice on a third connection
    assert server.connections == 3


# -- the size cap --------------------------------------------------------------------------------
async def test_a_declared_length_over_the_cap_is_not_read_and_the_connection_is_dropped(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    server = await serve(replying(big, OK))
    transport = HTTP11Transport(server.url)
    capped = await post(transport, server)
    after = await post(transport, server)
    await transport.aclose()
    assert (capped.status, capped.content, capped.too_large) == (200, b"", True)
    assert (after.content, server.connections) == (b"ok", 2)


async def test_a_chunked_body_over_the_cap_is_cut_at_the_cap(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    piece = b"y" * 600
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"258\r\n%b\r\n" % piece) * 4
        + b"0\r\n\r\n"
    )
    server = await serve(replying(chunked))
    transport = HTTP11Transport(server.url)
    reply = await post(transport, server)
    await post(transport, server)
    await transport.aclose()
    assert (reply.content, reply.too_large) == (b"y" * CAP, True)
    assert server.connections == 2


async def test_one_chunk_longer_than_the_cap_is_cut_at_the_cap_without_waiting_for_the_rest(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # A chunk was read whole before the cap was applied: one declaring a gigabyte was held in memory
    # (or waited for until the timeout) however small max_response_bytes was.
    async def huge_chunk(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40000000\r\n" + b"y" * 2 * CAP)
        await anyio.sleep_forever()

    server = await serve(huge_chunk)
    transport = HTTP11Transport(server.url)
    with anyio.fail_after(5):
        reply = await post(transport, server)
    await transport.aclose()
    assert (reply.content, reply.too_large) == (b"y" * CAP, True)


async def test_a_gzip_body_decoding_over_the_cap_is_cut_at_the_cap(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    packed = gzip.compress(b"z" * 50_000)  # a few hundred bytes that decode to 50 kB
    server = await serve(
        replying(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b"
            % (len(packed), packed)
        )
    )
    transport = HTTP11Transport(server.url)
    reply = await post(transport, server)
    await transport.aclose()
    assert (reply.content, reply.too_large) == (b"z" * CAP, True)


# -- stale and broken connections ----------------------------------------------------------------
async def test_a_connection_the_server_closed_while_idle_is_replaced_before_the_request(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    closed = anyio.Event()

    async def one_then_close(peer: Peer) -> None:
        await replying(OK, close=True)(peer)
        await peer.stream.aclose()
        closed.set()

    server = await serve(one_then_close)
    transport = HTTP11Transport(server.url)
    await post(transport, server)
    await closed.wait()
    await anyio.sleep(0.05)  # the FIN reaches the client's socket
    reply = await post(transport, server)
    await transport.aclose()
    assert (reply.content, server.connections, len(server.requests)) == (b"ok", 2, 2)


async def test_bytes_the_server_sent_while_the_connection_was_idle_keep_it_from_reuse(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # Unasked-for bytes would be read as the next reply's head: the connection is dropped instead, on
    # asyncio (whose protocol reads while idle) as on trio (whose socket is peeked at).
    sent = anyio.Event()

    async def reply_then_junk(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(OK)
            if not sent.is_set():
                await anyio.sleep(0.05)  # after the client has read its reply
                await peer.send(b"HTTP/1.1 500 Stray\r\nContent-Length: 0\r\n\r\n")
                sent.set()

    server = await serve(reply_then_junk)
    transport = HTTP11Transport(server.url)
    await post(transport, server)
    await sent.wait()
    await anyio.sleep(0.05)  # the stray bytes reach the client
    reply = await post(transport, server)
    await transport.aclose()
    assert (reply.status, reply.content, server.connections) == (200, b"ok", 2)


async def test_a_request_failing_without_a_reply_after_a_long_idle_is_sent_once_more_on_a_fresh_connection(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    clock = Clock()
    server = await serve(close_on_second_request())
    transport = HTTP11Transport(server.url, clock=clock)
    await post(transport, server)
    clock.now += IDLE_CLOSE_MIN  # long enough for a server to close it for idling
    reply = await post(transport, server)
    await transport.aclose()
    assert (reply.content, server.connections, len(server.requests)) == (b"ok", 2, 3)


async def test_a_request_dropped_without_a_reply_soon_after_the_last_is_a_failure_sent_once(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    server = await serve(close_on_second_request())
    transport = HTTP11Transport(server.url, clock=Clock())
    await post(transport, server)
    with pytest.raises(TransportError, match="closed the connection without replying"):
        await post(transport, server)
    await transport.aclose()
    assert (server.connections, len(server.requests)) == (1, 2)


async def test_a_request_the_server_took_and_dropped_after_a_long_idle_is_a_failure_sent_once(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # The server read the request and worked on it before it dropped the connection: sent again, it
    # would be paid twice, past the rate limits and the retry count. Only a failure within a round trip
    # of sending is the server's idle close.
    clock = Clock()
    server = await serve(close_on_second_request(then=lambda: setattr(clock, "now", clock.now + 2.0)))
    transport = HTTP11Transport(server.url, clock=clock)
    await post(transport, server)
    clock.now += IDLE_CLOSE_MIN
    assert STALE_FAILURE_WITHIN < 2.0
    with pytest.raises(TransportError, match="closed the connection without replying"):
        await post(transport, server)
    await transport.aclose()
    assert (server.connections, len(server.requests)) == (1, 2)


def close_on_second_request(then: Callable[[], None] = lambda: None) -> Script:
    """Answers a connection's first request, reads its second, calls ``then`` and closes without a
    reply."""

    async def script(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.send(OK)
            if await peer.read_request() is not None:
                then()

    return script


async def test_an_idle_connection_past_the_keep_alive_expiry_is_not_reused(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    clock = Clock()
    server = await serve(replying(OK))
    transport = HTTP11Transport(server.url, clock=clock)
    await post(transport, server)
    clock.now += KEEPALIVE_EXPIRY
    await post(transport, server)
    await transport.aclose()
    assert server.connections == 2


async def test_a_reset_within_the_body_fails_the_request_once_without_resending(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    async def reset_mid_body(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
            raw = peer.stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            await peer.stream.aclose()  # linger 0: a reset, not a FIN
            return

    server = await serve(reset_mid_body)
    transport = HTTP11Transport(server.url, clock=Clock())
    with pytest.raises(TransportError):
        await post(transport, server)
    async with OpenAICompatibleLM(
        "m", str(server.url.copy_with(path="/v1", query=None)), max_retries=0
    ) as lm:
        with pytest.raises(LMConnectionError, match="connection failed"):
            await lm.chat([{"role": "user", "content": "hi"}])
    await transport.aclose()
    assert (server.connections, len(server.requests)) == (2, 2)


async def test_a_malformed_status_line_is_a_transport_error(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    server = await serve(replying(b"HTTP/1.1 OK 200\r\nContent-Length: 2\r\n\r\nok"))
    transport = HTTP11Transport(server.url)
    with pytest.raises(TransportError, match="malformed status line"):
        await post(transport, server)
    await transport.aclose()


# An HTTP/2-only server's SETTINGS and GOAWAY frames (it then waits), an SSH server's banner (it waits
# for ours), and another protocol's lines ending in an empty line.
FOREIGN_REPLIES = [
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"+OK POP3 server ready\r\n\r\n",
]


def waiting_after(data: bytes) -> Script:
    """A script: the server answers the first request with ``data`` and then waits without closing."""

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(data)
        await anyio.sleep_forever()

    return script


@pytest.mark.parametrize("reply", FOREIGN_REPLIES, ids=["http2", "ssh", "lines"])
async def test_a_server_of_another_protocol_fails_at_once_and_is_not_retried(
    serve: Callable[..., Awaitable[ScriptedServer]], reply: bytes
) -> None:
    # It was a dropped connection (or a timeout, from a server that waits), retried for 20 s and more.
    server = await serve(waiting_after(reply))
    transport = HTTP11Transport(server.url)
    with anyio.fail_after(2), pytest.raises(NotHTTP1, match=r"does not start as an HTTP/1\.x one does"):
        await post(transport, server)
    await transport.aclose()
    url = str(server.url.copy_with(path="/v1", query=None))
    slow = RetryPolicy(initial_backoff=10.0)
    async with OpenAICompatibleLM("m", url, api_key="k-0123456789", retry=slow, timeout=10) as lm:
        with anyio.fail_after(4), pytest.raises(UnreadableResponseError, match=r"scheme .* and port"):
            await lm.chat([{"role": "user", "content": "hi"}])
    assert lm.usage.requests == 1 and server.connections == 2


@pytest.mark.parametrize("split", [False, True], ids=["one read", "two reads"])
async def test_a_stray_line_end_before_the_status_line_is_a_broken_reply_not_another_protocol(
    serve: Callable[..., Awaitable[ScriptedServer]], split: bool
) -> None:
    # A server that writes a line end too many after a body breaks one reply: retried like any broken
    # reply, never taken for a server of another protocol (which stops a run at once).
    async def stray_line_end(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"\r\n")
        if split:
            await anyio.sleep(0.05)
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await anyio.sleep_forever()

    server = await serve(stray_line_end)
    transport = HTTP11Transport(server.url)
    with anyio.fail_after(2), pytest.raises(TransportError) as caught:
        await post(transport, server)
    assert not isinstance(caught.value, NotHTTP1)
    assert "malformed status line" in str(caught.value)
    await transport.aclose()


async def test_https_to_a_plain_http_server_fails_at_once_and_is_not_retried(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    async def answering_a_client_hello(peer: Peer) -> None:
        await peer.stream.receive()  # the TLS client hello, read as a request that is not HTTP
        await peer.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    server = await serve(answering_a_client_hello)
    url = server.url.copy_with(scheme="https")
    transport = HTTP11Transport(url)
    with anyio.fail_after(2), pytest.raises(NotHTTP1, match="WRONG_VERSION_NUMBER"):
        await transport.request("POST", url, HEADERS, b"{}", CAP)
    await transport.aclose()
    slow = RetryPolicy(initial_backoff=10.0)
    base = str(url.copy_with(path="/v1", query=None))
    async with OpenAICompatibleLM("m", base, api_key="k-0123456789", retry=slow, timeout=10) as lm:
        with anyio.fail_after(4), pytest.raises(UnreadableResponseError, match="does not speak TLS"):
            await lm.chat([{"role": "user", "content": "hi"}])
    assert lm.usage.requests == 1 and server.connections == 2


async def test_a_head_whose_lines_end_in_bare_line_feeds_is_read_as_its_server_meant(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # Searched for CRLF CRLF alone, such a head never ended (the call waited out its timeout), or ended
    # in the body at its first CRLF CRLF: the body's start was read as the status line's reason.
    server = await serve(
        replying(
            b"HTTP/1.1 200 OK\nContent-Length: 12\n\nabcd\r\n\r\nefgh",
            b"HTTP/1.1 200 OK\r\nX-Mixed: yes\nContent-Length: 2\r\n\nok",
        )
    )
    transport = HTTP11Transport(server.url)
    with anyio.fail_after(5):
        bare = await post(transport, server)
        mixed = await post(transport, server)
    await transport.aclose()
    assert (bare.status, bare.headers, bare.content) == (
        200,
        [(b"Content-Length", b"12")],
        b"abcd\r\n\r\nefgh",
    )
    assert (mixed.headers, mixed.content) == ([(b"X-Mixed", b"yes"), (b"Content-Length", b"2")], b"ok")
    assert server.connections == 1


async def test_a_carriage_return_within_a_header_line_is_a_transport_error(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # Kept within the value, it hid the Content-Length that a client ending lines at CR would read.
    server = await serve(replying(b"HTTP/1.1 200 OK\r\nX-A: a\rContent-Length: 5\r\n\r\nhello"))
    transport = HTTP11Transport(server.url)
    with pytest.raises(TransportError, match="malformed header line"), anyio.fail_after(5):
        await post(transport, server)
    await transport.aclose()


async def test_a_folded_header_line_is_joined_to_its_header_with_a_space(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # Read as a header of its own, " second: part" became a header named " second"; without a colon
    # the whole reply failed.
    server = await serve(
        replying(
            b"HTTP/1.1 200 OK\r\nX-Note: first\r\n second: part\r\n"
            b"X-Empty:\r\n\tfolded\r\nContent-Length: 2\r\n\r\nok"
        )
    )
    transport = HTTP11Transport(server.url)
    with anyio.fail_after(5):
        reply = await post(transport, server)
    await transport.aclose()
    assert reply.headers == [
        (b"X-Note", b"first second: part"),
        (b"X-Empty", b"folded"),
        (b"Content-Length", b"2"),
    ]
    assert reply.content == b"ok"


async def test_a_folded_line_before_any_header_is_a_transport_error(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    server = await serve(replying(b"HTTP/1.1 200 OK\r\n Content-Length: 2\r\nContent-Length: 2\r\n\r\nok"))
    transport = HTTP11Transport(server.url)
    with pytest.raises(TransportError, match="malformed header line"), anyio.fail_after(5):
        await post(transport, server)
    await transport.aclose()


async def test_a_head_over_64_kib_is_a_transport_error_even_when_it_arrives_in_one_read(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # The size was checked only while the head's end was still to come: one that ended in the read
    # crossing 64 KiB was taken whole, up to twice the limit.
    def head(size: int) -> bytes:
        start = b"HTTP/1.1 200 OK\r\nX-Padding: "
        return start + b"a" * (size - len(start) - 25) + b"\r\nContent-Length: 2\r\n\r\nok"

    server = await serve(replying(head(60 * 1024), head(64 * 1024 + 64)))
    transport = HTTP11Transport(server.url)
    assert (await post(transport, server)).content == b"ok"
    with pytest.raises(TransportError, match="head is longer than 64 KiB"):
        await post(transport, server)
    await transport.aclose()


async def test_endless_interim_replies_or_trailers_are_a_transport_error_not_a_wait_for_the_timeout(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    async def endless(peer: Peer) -> None:
        await peer.read_request()
        while True:
            await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def trailing(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
        while True:
            await peer.send(b"X-Trailer: " + b"t" * 1000 + b"\r\n")

    for script, problem in [(endless, "more than 16 interim"), (trailing, "trailers are longer than 64 KiB")]:
        server = await serve(script)
        transport = HTTP11Transport(server.url)
        with pytest.raises(TransportError, match=problem), anyio.fail_after(5):
            await post(transport, server)
        await transport.aclose()


async def test_a_refused_connection_is_a_transport_error_naming_no_header() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    transport = HTTP11Transport(httpx.URL(f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(TransportError) as caught:
        await transport.request("POST", httpx.URL(f"http://127.0.0.1:{port}/v1"), HEADERS, b"{}", CAP)
    assert "sk-wire-test" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_an_ipv6_literal_is_connected_to_and_named_in_brackets(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = await serve(replying(OK), host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    transport = HTTP11Transport(server.url)
    reply = await post(transport, server)
    await transport.aclose()
    assert reply.content == b"ok"
    assert b"\r\nHost: [::1]:%d\r\n" % server.url.port in server.requests[0]


# -- TLS -----------------------------------------------------------------------------------------
def server_tls() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERTIFICATE)
    return context


async def test_an_internationalized_host_name_is_looked_up_in_its_ascii_form() -> None:
    # Its Unicode form went into the Host header: a UnicodeEncodeError out of chat(), not an LMError.
    async with OpenAICompatibleLM("m", "http://bücher.invalid:1/v1", max_retries=0, timeout=10) as lm:
        with pytest.raises(LMConnectionError, match=r"connection failed: .*xn--bcher-kva\.invalid"):
            await lm.chat([{"role": "user", "content": "hi"}])


async def test_tls_requests_are_verified_and_reuse_their_connection(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    server = await serve(replying(OK), tls=server_tls())
    url = server.url.copy_with(host="localhost")
    trusting = ssl.create_default_context(cafile=str(CERTIFICATE))
    transport = HTTP11Transport(url, ssl_context=lambda: trusting)
    replies = [await transport.request("POST", url, HEADERS, b"{}", CAP) for _ in range(2)]
    await transport.aclose()
    assert [reply.content for reply in replies] == [b"ok", b"ok"]
    assert server.connections == 1


async def test_over_tls_a_body_read_until_a_close_without_close_notify_is_whole_and_an_idle_close_is_seen(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # The server (anyio's TLS, not standard-compatible) closes without TLS's close_notify: the body
    # ends there, as on a plain connection; the next request opens a new connection.
    server = await serve(replying(b"HTTP/1.1 200 OK\r\n\r\nuntil close", close=True), tls=server_tls())
    url = server.url.copy_with(host="localhost")
    trusting = ssl.create_default_context(cafile=str(CERTIFICATE))
    transport = HTTP11Transport(url, ssl_context=lambda: trusting)
    first = await transport.request("POST", url, HEADERS, b"{}", CAP)
    second = await transport.request("POST", url, HEADERS, b"{}", CAP)
    await transport.aclose()
    assert (first.status, first.content, second.content) == (200, b"until close", b"until close")
    assert server.connections == 2


async def test_a_tls_certificate_not_trusted_is_a_transport_error(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    server = await serve(replying(OK), tls=server_tls())
    transport = HTTP11Transport(server.url, ssl_context=ssl.create_default_context)
    with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED") as caught:
        await post(transport, server)
    await transport.aclose()
    assert "set SSL_CERT_FILE to that CA's certificate" in str(caught.value)


async def test_a_tls_certificate_for_another_host_is_a_transport_error_saying_what_to_do(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # The certificate names localhost, 127.0.0.1 and ::1, not 127.0.0.2.
    server = await serve(replying(OK), tls=server_tls(), host="127.0.0.2")
    trusting = ssl.create_default_context(cafile=str(CERTIFICATE))
    transport = HTTP11Transport(server.url, ssl_context=lambda: trusting)
    with pytest.raises(TransportError, match=r"not valid for '127\.0\.0\.2'") as caught:
        await post(transport, server)
    await transport.aclose()
    assert "give the base URL a host it names" in str(caught.value)
    assert server.requests == []


async def test_an_https_lm_uses_the_lanes_tls_context_which_honours_ssl_cert_file(
    serve: Callable[..., Awaitable[ScriptedServer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(CERTIFICATE))
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(COMPLETION), COMPLETION)
    server = await serve(replying(answer), tls=server_tls())
    async with OpenAICompatibleLM("m", f"https://localhost:{server.url.port}/v1", api_key="k") as lm:
        completions = [await lm.chat([{"role": "user", "content": f"hi {i}"}]) for i in range(2)]
    assert [completion.text for completion in completions] == ["hi", "hi"]
    assert server.connections == 1


# -- proxies select httpx ------------------------------------------------------------------------
async def test_with_a_proxy_in_the_environment_requests_go_through_it_with_httpx(
    serve: Callable[..., Awaitable[ScriptedServer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(COMPLETION), COMPLETION)
    proxy = await serve(replying(answer))
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.url.port}")
    endpoint = httpx.URL("http://llm.invalid:8000/v1")
    assert proxy_applies(endpoint)
    assert isinstance(LaneTransports(timeout=1.0).for_endpoint(endpoint)(1), HttpxTransport)
    async with OpenAICompatibleLM("m", str(endpoint), api_key="k") as lm:
        completion = await lm.chat([{"role": "user", "content": "hi"}])
    assert completion.text == "hi"
    assert proxy.requests[0].startswith(b"POST http://llm.invalid:8000/v1/chat/completions HTTP/1.1\r\n")


def test_an_endpoint_no_proxy_bypasses_uses_our_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    assert not proxy_applies(httpx.URL("http://127.0.0.1:8000/v1"))
    assert proxy_applies(httpx.URL("http://gpu-1:8000/v1"))
    assert isinstance(
        LaneTransports(timeout=1.0).for_endpoint(httpx.URL("http://127.0.0.1:8000/v1"))(1), HTTP11Transport
    )


@pytest.mark.parametrize("proxy", ["socks5://127.0.0.1:1080", "ftp://proxy.invalid:21"])
def test_a_proxy_in_the_environment_that_cannot_be_used_is_a_config_error_when_the_client_is_made(
    monkeypatch: pytest.MonkeyPatch, proxy: str
) -> None:
    # It was an ImportError (SOCKS without socksio) or a ValueError out of the first chat() call.
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", proxy)
    if proxy.startswith("socks") and importlib.util.find_spec("socksio") is not None:
        OpenAICompatibleLM("m", "http://llm.invalid:8000/v1", api_key="k")  # httpx can use it: no error
        return
    with pytest.raises(ConfigError, match=r"proxy for http://llm\.invalid:8000/v1 that cannot be used"):
        OpenAICompatibleLM("m", "http://llm.invalid:8000/v1", api_key="k")


# -- what the LM path reads from a reply ---------------------------------------------------------
def test_the_request_url_appends_the_path_to_the_base_path_and_keeps_the_query() -> None:
    assert str(request_url("https://host/v1?api-version=2", "/chat/completions")) == (
        "https://host/v1/chat/completions?api-version=2"
    )
    assert str(request_url("http://[::1]:8000/v1/", "/messages")) == "http://[::1]:8000/v1/messages"


async def test_an_encoded_slash_in_the_base_path_is_sent_encoded(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # Decoded, "deploy%2Fone" became two path segments: a request to another route than the base URL's.
    assert request_url("http://h/deploy%2Fone/v1/?q=a%2Fb", "/x").raw_path == b"/deploy%2Fone/v1/x?q=a%2Fb"
    server = await serve(
        replying(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(COMPLETION), COMPLETION))
    )
    base = str(server.url.copy_with(raw_path=b"/deploy%2Fone/v1"))
    async with OpenAICompatibleLM("m", base, max_retries=0) as lm:
        await lm.chat([{"role": "user", "content": "hi"}])
    assert server.requests[0].startswith(b"POST /deploy%2Fone/v1/chat/completions HTTP/1.1\r\n")


async def test_a_redirect_is_not_followed_and_its_error_names_where_it_points(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # It was a bare "HTTP 308": nothing said that the base URL had moved, nor where.
    moved = b"HTTP/1.1 308 Permanent Redirect\r\nlocation: https://api.example.com/v1/chat/completions\r\n"
    server = await serve(replying(moved + b"Content-Length: 9\r\n\r\nRedirect."))
    async with OpenAICompatibleLM("m", str(server.url.copy_with(path="/v1", query=None)), api_key="k") as lm:
        with pytest.raises(LMStatusError, match="HTTP 308") as caught:
            await lm.chat([{"role": "user", "content": "hi"}])
    assert "redirects to https://api.example.com/v1/chat/completions" in str(caught.value)
    assert "give the endpoint the base URL it redirects to" in str(caught.value)
    assert len(server.requests) == 1  # neither followed nor retried


async def test_a_caller_s_client_that_follows_redirects_does_not_follow_one_with_the_key(
    serve: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    # The client's own setting was used: a 307 to another host got the POST again, with the key in a
    # header httpx does not strip (x-api-key), and its answer came back as the endpoint's.
    elsewhere = await serve(replying(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
    target = str(elsewhere.url.copy_with(host="localhost", query=None)).encode()
    moved = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: %b\r\nContent-Length: 0\r\n\r\n" % target
    server = await serve(replying(moved))
    base_url = str(server.url.copy_with(path="/v1", query=None))
    async with (
        httpx.AsyncClient(follow_redirects=True) as client,
        AnthropicLM("m", base_url, api_key="sk-ant-wire-0123456789", http_client=client) as lm,
    ):
        with pytest.raises(LMStatusError, match="HTTP 307") as caught:
            await lm.chat([{"role": "user", "content": "hi"}])
    assert "redirects are not followed" in str(caught.value)
    assert (len(server.requests), elsewhere.requests) == (1, [])


def test_retry_after_is_read_from_raw_headers_in_any_case() -> None:
    assert raw_retry_after([(b"Retry-After", b"3")]) == 3.0
    assert raw_retry_after([(b"retry-after", b"3"), (b"Retry-After-Ms", b"250")]) == 0.25
    assert raw_retry_after([(b"Content-Length", b"2")]) is None


@pytest.mark.parametrize(
    ("first", "then"), [("asyncio", "asyncio"), ("asyncio", "trio"), ("trio", "asyncio"), ("trio", "trio")]
)
def test_a_client_kept_across_event_loops_answers_and_closes_on_each(first: str, then: str) -> None:
    """``asyncio.run`` called again, or trio after asyncio, with one client: its idle connection belongs to
    the loop that ended, which alone could use it (a request on it waited forever, or its close raised)."""
    from aprompt.testing.fake_openai import FakeOpenAIServer

    def reply(request: object) -> str:
        return "hi"

    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(FakeOpenAIServer(responder=reply, api_key="sk-loops")) as server,
    ):
        lm = OpenAICompatibleLM("fake-model", server.base_url, api_key="sk-loops", cache=None)

        async def ask(text: str) -> str:
            with anyio.fail_after(10):
                return (await lm.chat([{"role": "user", "content": text}])).text

        assert anyio.run(ask, "one", backend=first) == "hi"
        assert anyio.run(ask, "two", backend=then) == "hi"
        anyio.run(lm.aclose, backend=first)  # its idle connection is the ended loop's
        assert len(server.chat_requests) == 2


@pytest.mark.parametrize(
    ("first", "then"), [("asyncio", "asyncio"), ("asyncio", "trio"), ("trio", "asyncio"), ("trio", "trio")]
)
def test_a_client_kept_across_event_loops_answers_through_a_proxy(
    first: str, then: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, through the httpx client a proxy in the environment selects: its pool's connections are
    the ended loop's too (the second loop's request raised RuntimeError: "Event loop is closed")."""
    from aprompt.testing.fake_openai import FakeOpenAIServer

    def reply(request: object) -> str:
        return "hi"

    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(FakeOpenAIServer(responder=reply, api_key="sk-loops")) as server,
    ):
        # The fake server answers the proxy's form of a request (the whole URL as its path) itself.
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
        endpoint = "http://llm.invalid:8000/v1"
        lm = OpenAICompatibleLM("fake-model", endpoint, api_key="sk-loops", cache=None)

        async def ask(text: str) -> str:
            with anyio.fail_after(10):
                return (await lm.chat([{"role": "user", "content": text}])).text

        assert anyio.run(ask, "one", backend=first) == "hi"
        assert anyio.run(ask, "two", backend=then) == "hi"
        anyio.run(lm.aclose, backend=first)
    assert [r.path for r in server.chat_requests] == [f"{endpoint}/chat/completions"] * 2


@pytest.mark.parametrize(
    ("first", "then"), [("asyncio", "asyncio"), ("asyncio", "trio"), ("trio", "asyncio")]
)
def test_a_caller_s_client_kept_across_event_loops_is_a_config_error_that_says_what_to_do(
    first: str, then: str
) -> None:
    """A caller's httpx client holds the connections of the loop it was used on, which no other loop can
    use: the next loop's call raised a bare RuntimeError ("Event loop is closed")."""
    from aprompt.testing.fake_openai import FakeOpenAIServer

    def reply(request: object) -> str:
        return "hi"

    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(FakeOpenAIServer(responder=reply, api_key="sk-loops")) as server,
    ):
        client = httpx.AsyncClient()
        lm = OpenAICompatibleLM(
            "fake-model", server.base_url, api_key="sk-loops", cache=None, http_client=client
        )

        async def ask(text: str) -> str:
            with anyio.fail_after(10):
                return (await lm.chat([{"role": "user", "content": text}])).text

        assert anyio.run(ask, "one", backend=first) == "hi"
        with pytest.raises(ConfigError, match="http_client") as caught:
            anyio.run(ask, "two", backend=then)
    assert "sk-loops" not in str(caught.value)
    assert len(server.chat_requests) == 1


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize(
    ("first", "then"), [("asyncio", "asyncio"), ("asyncio", "trio"), ("trio", "asyncio"), ("trio", "trio")]
)
def test_the_connections_of_an_ended_loop_are_closed_without_a_resource_warning(
    first: str, then: str, tls: bool
) -> None:
    """A client used on a loop that ended lets go of that loop's idle connection on the next loop (a
    request, or its close): closed there, not left to the collector, which warned of an unclosed
    transport or socket (an error under ``-W error``)."""
    gc.collect()  # what earlier tests left to the collector warns before this one's record starts
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(
            ScriptedServer(replying(OK), tls=server_tls() if tls else None)
        ) as server,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always", ResourceWarning)
        url = server.url.copy_with(host="localhost")
        trusting = ssl.create_default_context(cafile=str(CERTIFICATE))
        transport = HTTP11Transport(url, ssl_context=lambda: trusting)

        async def ask() -> bytes:
            with anyio.fail_after(10):
                return (await transport.request("POST", url, HEADERS, b"{}", CAP)).content

        assert anyio.run(ask, backend=first) == b"ok"
        assert anyio.run(ask, backend=then) == b"ok"  # lets go of the first loop's connection
        anyio.run(transport.aclose, backend=first)  # and of the second's
        gc.collect()
    # The test server's side of a connection is its own (anyio's TLS listener may leave it to the collector).
    servers = f"laddr=('127.0.0.1', {server.url.port})"
    warned = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert [text for text in warned if servers not in text] == []
    assert server.connections == 2
