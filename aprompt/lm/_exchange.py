"""One HTTP exchange of a chat client, read: its reply as a completion, or the typed error for what came
instead (an error status explained, a timeout, a dropped connection, a body too large, not JSON or no
reply), with the client's keys scrubbed out of every message (see :mod:`aprompt.lm._http`)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import attrs
import httpx

from aprompt._errors import (
    AuthenticationError,
    BadResponseError,
    LMConnectionError,
    LMError,
    LMStatusError,
    LMTimeoutError,
    TLSCertificateError,
    UnreadableResponseError,
)
from aprompt.lm._replies import carries_error, redirect_message
from aprompt.lm._transport import (
    NotHTTP1,
    Transport,
    TransportError,
    TransportTimeout,
    UnreadableBody,
    UntrustedCertificate,
    request_url,
)
from aprompt.lm.endpoints import EndpointState
from aprompt.lm.ratelimit_headers import StatedLimits, apply_stated_limits
from aprompt.lm.retry import error_codes, error_for_status, raw_retry_after
from aprompt.lm.types import Completion

__all__ = ["ReplyReader"]

# Server messages in our errors are cut to this many characters (after the keys are scrubbed).
_MESSAGE_CHARS = 500
#: How much of a body that is not JSON an error shows.
_BODY_START_BYTES = 120
# Bytes beyond the shown start scrubbed with it: longer than any key.
_SCRUBBED_BEYOND = 4096


@attrs.frozen
class ReplyReader:
    """How a client reads its exchanges: what it is told at its creation, its wire format's hooks included.

    Attributes:
        model: the client's model (named in a 404's hint).
        path: appended to an endpoint's base URL (named in a 404's hint).
        timeout: seconds an exchange may take as a whole.
        max_response_bytes: the longest body read.
        max_hold: the longest an endpoint is held by the limits a reply's headers state.
        secrets: the keys scrubbed out of every message.
        keyless: the endpoints sent no key because the key's variable is not set.
        unset_key: what a refusal of those says.
        parse_completion, server_message, stated_limits: the wire format's readings of a 2xx body, of an
            error body, and of the raw headers (see :class:`~aprompt.lm._http.HTTPChatLM`).
    """

    model: str
    path: str
    timeout: float
    max_response_bytes: int
    max_hold: float
    # Never in a repr: a traceback printer that shows locals (or an error tracker) prints the reader's.
    secrets: tuple[str, ...] = attrs.field(repr=False)
    keyless: frozenset[str]
    unset_key: str
    parse_completion: Callable[[bytes], Completion]
    server_message: Callable[[bytes], str]
    stated_limits: Callable[[list[tuple[bytes, bytes]]], StatedLimits | None]

    async def exchange(
        self, transport: Transport, endpoint: EndpointState, url: httpx.URL, payload: bytes
    ) -> Completion:
        """``payload`` sent to ``endpoint`` (at ``url``) through ``transport``: its reply as a completion,
        or the typed error for what came instead (the completion may still be an incomplete reply)."""
        # Errors are raised outside the except blocks, so that nothing of the transport's is chained
        # onto ours.
        failure: LMError | None = None
        # The timeout bounds the whole exchange: our HTTP/1.1 transport has none of its own, httpx's
        # bounds each read only, and a server sending a byte at a time would keep the call waiting.
        with anyio.move_on_after(self.timeout) as deadline:
            try:
                reply = await transport.request(
                    "POST",
                    url,
                    endpoint.headers,
                    payload,
                    self.max_response_bytes,
                )
            except TransportTimeout:
                failure = self.timed_out(endpoint)
            except UnreadableBody as exc:
                failure = UnreadableResponseError(
                    f"the server sent a reply in a form the client never reads ({exc}): it sends "
                    "'Accept-Encoding: identity'; have the server or the proxy in front of it send "
                    "replies unencoded, or gzip or deflate",
                    endpoint=endpoint.url,
                )
            except NotHTTP1 as exc:
                failure = UnreadableResponseError(
                    f"the server does not answer in HTTP/1.1 ({self.scrub(str(exc))}): check the base "
                    "URL's scheme (http:// or https://) and port, and that the server speaks HTTP/1.1 "
                    "there (the client does not speak HTTP/2 alone)",
                    endpoint=endpoint.url,
                )
            except UntrustedCertificate as exc:
                failure = TLSCertificateError(self.scrub(f"connection failed: {exc}"), endpoint=endpoint.url)
            except TransportError as exc:
                failure = LMConnectionError(self.scrub(f"connection failed: {exc}"), endpoint=endpoint.url)
        if deadline.cancelled_caught:
            failure = self.timed_out(endpoint)
        if failure is not None:
            raise failure
        status, headers, content, too_large = reply
        stated = self.stated_limits(headers)
        if stated is not None:
            apply_stated_limits(endpoint.limiter, stated, max_hold=self.max_hold)
        if not 200 <= status < 300:
            message = redirect_message(headers) if 300 <= status < 400 else self.server_message(content)
            error = error_for_status(
                status,
                self.scrub(message)[:_MESSAGE_CHARS],
                endpoint=endpoint.url,
                retry_after=raw_retry_after(headers),
                codes=error_codes(content),
            )
            raise self.explained(error)
        if too_large:
            raise BadResponseError(
                f"response body larger than max_response_bytes={self.max_response_bytes}",
                endpoint=endpoint.url,
            )
        try:
            return self.parse_completion(content)
        # OverflowError: a token count of JSON's Infinity, which int() refuses so.
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
        if _is_event_stream(headers, content):
            raise UnreadableResponseError(
                f"HTTP {status} with an event stream (Server-Sent Events), though the request asked for "
                "none: the server or a proxy in front of it streams every reply; turn that off (the "
                "client reads each reply as one JSON body)",
                endpoint=endpoint.url,
            )
        if carries_error(content):  # a router's 200 for an upstream failure: say what the server said
            message = self.scrub(self.server_message(content))[:_MESSAGE_CHARS]
            raise BadResponseError(
                f"HTTP {status} with an error instead of a reply: {message}", endpoint=endpoint.url
            )
        if content.lstrip()[:1] not in (b"{", b"["):  # not JSON at all: a web page, a proxy's notice
            # Scrubbed before it is cut, so that no key is left half-cut (and so unmatched) at the end; the
            # prefix scrubbed holds any key that starts within what is shown.
            head = content[: _BODY_START_BYTES + _SCRUBBED_BEYOND].decode("utf-8", "replace")
            start = " ".join(self.scrub(head).split())[:_BODY_START_BYTES]
            raise BadResponseError(
                f"HTTP {status} with a body that is not JSON, starting {start!r}: is the base "
                "URL the API's own address? (an OpenAI-compatible API's usually ends in /v1)",
                endpoint=endpoint.url,
            )
        raise BadResponseError(f"malformed response body ({self.scrub(detail)[:200]})", endpoint=endpoint.url)

    def timed_out(self, endpoint: EndpointState) -> LMTimeoutError:
        return LMTimeoutError(
            f"no complete response within the {self.timeout:g} s timeout", endpoint=endpoint.url
        )

    def explained(self, error: LMStatusError) -> LMStatusError:
        """``error`` with what to check: the variable of a key never sent, or, for a 404, the URL the
        request went to and the model (a base URL without its ``/v1``, or a mistyped model)."""
        if isinstance(error, AuthenticationError) and error.endpoint in self.keyless:
            hint = self.unset_key
        elif error.status_code == 404 and error.endpoint is not None:
            hint = (
                f"check the base URL (this request went to {request_url(error.endpoint, self.path)}) "
                f"and the model name {self.model!r}"
            )
        else:
            return error
        return type(error)(
            f"{error.args[0]}; {hint}",
            status_code=error.status_code,
            server_message=error.server_message,
            endpoint=error.endpoint,
            retry_after=error.retry_after,
        )

    def scrub(self, text: str) -> str:
        """``text`` with every key the client sends replaced by ``***``."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def _is_event_stream(headers: list[tuple[bytes, bytes]], content: bytes) -> bool:
    """Whether a body that is no chat completion is an event stream: declared so, or its first line a
    Server-Sent Events field."""
    declared = any(
        name.lower() == b"content-type" and value.lower().startswith(b"text/event-stream")
        for name, value in headers
    )
    return declared or content.lstrip().startswith((b"data:", b"event:"))
