"""One token-free check of an endpoint: ``GET {base_url}/models`` (the base URL's query kept after the
path) with the client's own headers.

A refused connection or a timeout raises :class:`~aprompt._errors.LMConnectionError` (a refused TLS
certificate its :class:`~aprompt._errors.TLSCertificateError`), a 401 or 403
raises :class:`~aprompt._errors.AuthenticationError`; both name the endpoint and never the key. Any other
answer (200, a 404 from a server without that route, a transient 5xx) passes: the probe only rules out
the failures that would make every later call fail.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import anyio
import httpx

from aprompt._errors import AuthenticationError, LMConnectionError, TLSCertificateError
from aprompt.lm._transport import (
    HttpxTransport,
    Transport,
    TransportError,
    UntrustedCertificate,
    request_url,
)

__all__ = ["probe_endpoint"]

# The longest answer body read: the probe needs only an error message out of it.
_MAX_PROBE_BYTES = 2**20
# The server's message in our error is cut to this many characters (after the keys are scrubbed).
_MESSAGE_CHARS = 300


async def probe_endpoint(
    url: str,
    headers: Mapping[str, str],
    *,
    transport: Transport | None = None,
    within: float = 5.0,
    target: str | None = None,
    path: str = "/models",
    secrets: Sequence[str] = (),
) -> None:
    """Probe the endpoint at base URL ``url`` once, through ``transport`` (a temporary httpx client's
    by default), asking for ``path`` after it. ``target``: the base URL to send to when it differs from
    the one shown, ``url`` (a credential in its query); ``secrets``: more texts its errors never show (such
    a credential), besides the header values.

    Raises:
        LMConnectionError: it refused the connection or did not answer within ``within`` seconds.
        AuthenticationError: it answered 401 or 403.
    """
    if transport is None:
        async with httpx.AsyncClient(timeout=within) as own_client:
            own = HttpxTransport(own_client, owned=False)
            return await probe_endpoint(
                url, headers, transport=own, within=within, target=target, path=path, secrets=secrets
            )
    problem = ""
    kind: type[LMConnectionError] = LMConnectionError
    with anyio.move_on_after(within) as deadline:
        try:
            reply = await transport.request(
                "GET", request_url(target or url, path), headers, b"", _MAX_PROBE_BYTES
            )
        except TransportError as exc:
            # Its message names host and port, never the headers.
            problem = _scrub(str(exc), headers, secrets)
            if isinstance(exc, UntrustedCertificate):
                kind = TLSCertificateError
    if deadline.cancelled_caught:
        problem = f"no answer within {within:g} s"
    if problem:
        raise kind(f"cannot reach the LM endpoint ({problem})", endpoint=url)
    if reply.status in (401, 403):
        # Scrubbed whole, then cut: a cut inside an echoed key would leave its first part unscrubbed.
        detail = _scrub(_server_message(reply.content), headers, secrets)[:_MESSAGE_CHARS]
        raise AuthenticationError(
            f"the LM endpoint refused the API key (HTTP {reply.status}" + (f": {detail})" if detail else ")"),
            status_code=reply.status,
            server_message=detail,
            endpoint=url,
        )


def _server_message(content: bytes) -> str:
    try:
        error = json.loads(content)["error"]
        message = error["message"] if isinstance(error, dict) else error
        return str(message)
    except (ValueError, KeyError, TypeError):
        return content.decode("utf-8", "replace").strip()


def _scrub(text: str, headers: Mapping[str, str], secrets: Sequence[str] = ()) -> str:
    """``text`` without any part of the header values nor any of ``secrets`` (servers may echo a key
    back)."""
    for value in headers.values():
        for token in value.split():
            if len(token) >= 8:
                text = text.replace(token, "***")
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
