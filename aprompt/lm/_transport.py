"""What a connection lane sends requests through: one request in, its reply (status, raw headers, body
within a size cap) out, and one error type for every way the exchange can fail on the way.

Two transports satisfy :class:`Transport`: our own HTTP/1.1 client (:mod:`aprompt.lm._http11`, the
default) and :class:`HttpxTransport` over an ``httpx.AsyncClient`` (a caller's own client, or ours when
a proxy applies to the endpoint). :mod:`aprompt.lm._http` does not care which one a lane holds.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from typing import NamedTuple, Protocol

import httpx

from aprompt._errors import ConfigError
from aprompt.lm._loop_stream import running_loop
from aprompt.lm._replies import read_capped

__all__ = [
    "HttpxTransport",
    "NotHTTP1",
    "Reply",
    "Transport",
    "TransportError",
    "TransportTimeout",
    "UnreadableBody",
    "UntrustedCertificate",
    "request_url",
]


class Reply(NamedTuple):
    """One reply: its status, its headers as sent (``(name, value)`` byte pairs, names in the server's
    case), its body (decoded, at most the cap) and whether the body was longer than the cap (then it
    is cut and the rest was not read)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    content: bytes
    too_large: bool


class TransportError(Exception):
    """The exchange failed on the way (connecting, TLS, sending, a broken or malformed reply). Its
    message names the failure and never a header value, so never a key."""


class UnreadableBody(TransportError):
    """A 2xx reply's body is in a content encoding the transport does not decode: a server's setting that
    every answer meets (an error status's body is left out instead, its status kept)."""


class NotHTTP1(TransportError):
    """The server does not speak HTTP/1.1 at this scheme and port: another protocol's bytes came back
    (HTTP/2 only, a TLS port asked in plain text), or plain text to a TLS handshake. A setting no retry
    changes."""


class UntrustedCertificate(TransportError):
    """The server's TLS certificate was refused: a setting no retry changes. Its message says what to do."""

    def __init__(self, failure: str) -> None:
        super().__init__(
            f"{failure}: the server's TLS certificate was refused: if it names another host, give the base "
            "URL a host it names; if a CA of your own signed it, set SSL_CERT_FILE to that CA's certificate "
            "(PEM), or pass http_client=httpx.AsyncClient(verify=...)"
        )


class TransportTimeout(TransportError):
    """The transport's own timeout ran out (httpx's per-operation timeouts)."""


class Transport(Protocol):
    """Sends one request at a time per connection it holds; owned by one connection lane."""

    async def request(
        self, method: str, url: httpx.URL, headers: Mapping[str, str], body: bytes, cap: int
    ) -> Reply:
        """Send ``body`` to ``url`` and read the reply, its body up to ``cap`` bytes.

        Raises:
            TransportError: the exchange failed before a whole reply arrived.
        """
        ...

    async def aclose(self) -> None:
        """Close the connections it holds (a caller's own client stays open)."""
        ...


class HttpxTransport:
    """:class:`Transport` over an ``httpx.AsyncClient``; closes it only when ``owned``.

    ``make`` builds an owned client again: one that outlives its event loop (``asyncio.run`` called
    again, trio after asyncio) holds connections only that loop could use, so a request from another
    loop lets it go and goes through a fresh one. A caller's own client is used as it is: where its
    connections are another loop's, the request is a :class:`ConfigError`.
    """

    __slots__ = ("_client", "_loop", "_make", "_owned")

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        owned: bool,
        make: Callable[[], httpx.AsyncClient] | None = None,
    ) -> None:
        self._client = client
        self._owned = owned
        self._make = make
        self._loop: object = None

    @property
    def client(self) -> httpx.AsyncClient:
        return self._client

    def _same_loop(self) -> bool:
        """Whether the running loop is the one the client's connections belong to (it has none yet)."""
        return self._loop is None or self._loop is running_loop()

    async def request(
        self, method: str, url: httpx.URL, headers: Mapping[str, str], body: bytes, cap: int
    ) -> Reply:
        # Raised outside the except blocks: httpx's exceptions hold the request, whose headers hold
        # the key, and would be chained onto ours.
        failure: TransportError | None = None
        loop = running_loop()
        moved = not self._same_loop()
        if moved and self._make is not None:
            self._client = self._make()  # the ended loop's connections go with the old one
            self._loop, moved = loop, False
        if moved and _asyncio_loop_in(self._loop, loop):
            # Sent on the other loop's connection, the request was paid for and its reply never read.
            raise ConfigError(
                "the http_client given to the LM holds connections of another event loop (one that ended: "
                "asyncio.run called again, trio after asyncio), which this loop cannot use: make the "
                "httpx.AsyncClient in the loop that uses it, or leave http_client out (the LM's own "
                "connections follow it from loop to loop)"
            )
        try:
            # Never followed, whatever a caller's client is set to: a POST sent on to where a reply points
            # could be paid twice, or carry its key to another host (httpx strips only Authorization).
            async with self._client.stream(
                method, url, content=body or None, headers=headers, follow_redirects=False
            ) as response:
                content, too_large = await read_capped(response, cap)
        except httpx.TimeoutException as exc:
            failure = TransportTimeout(f"{type(exc).__name__}: {exc}")
        except httpx.HTTPError as exc:
            refused = _certificate_refusal(exc)
            if refused is not None:
                failure = UntrustedCertificate(f"{type(refused).__name__}: {refused}")
            else:
                failure = TransportError(f"{type(exc).__name__}: {exc}")
        if failure is not None:
            raise failure
        self._loop = loop
        return Reply(response.status_code, response.headers.raw, content, too_large)

    async def aclose(self) -> None:
        # Another loop's connections cannot be closed from this one (its close raised): they are let go.
        if self._owned and self._same_loop():
            await self._client.aclose()


def _asyncio_loop_in(*loops: object) -> bool:
    """Whether any of these loops (as :func:`running_loop` gives them) is asyncio's: an asyncio
    connection serves its own loop alone (trio's sockets serve one trio run after another)."""
    return any(isinstance(loop, asyncio.AbstractEventLoop) for loop in loops)


def _certificate_refusal(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind an httpx error (httpcore's, chained), if one is."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def request_url(base_url: str, path: str) -> httpx.URL:
    """``path`` appended to the base URL's path, the base URL's query kept after it.

    Example:
        >>> str(request_url("https://host/v1?api-version=1", "/chat/completions"))
        'https://host/v1/chat/completions?api-version=1'
    """
    base = httpx.URL(base_url)
    # The raw path, as the caller encoded it: the decoded one would turn an encoded "/" (%2F) into a
    # separator, and send the request elsewhere.
    raw_path = base.raw_path.partition(b"?")[0].rstrip(b"/") + path.encode("ascii")
    return base.copy_with(raw_path=raw_path + (b"?" + base.query if base.query else b""))
