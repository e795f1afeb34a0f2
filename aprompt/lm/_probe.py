"""One token-free check of an endpoint: ``GET {base_url}/models`` with the client's own headers.

A refused connection or a timeout raises :class:`~aprompt._errors.LMConnectionError`, a 401 or 403
raises :class:`~aprompt._errors.AuthenticationError`; both name the endpoint and never the key. Any other
answer (200, a 404 from a server without that route, a transient 5xx) passes: the probe only rules out
the failures that would make every later call fail.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from aprompt._errors import AuthenticationError, LMConnectionError

__all__ = ["probe_endpoint"]


async def probe_endpoint(
    url: str, headers: Mapping[str, str], *, client: httpx.AsyncClient | None = None, within: float = 5.0
) -> None:
    """Probe the endpoint at base URL ``url`` once, through ``client`` (a temporary one by default).

    Raises:
        LMConnectionError: it refused the connection or did not answer within ``within`` seconds.
        AuthenticationError: it answered 401 or 403.
    """
    if client is None:
        async with httpx.AsyncClient(timeout=within) as own_client:
            return await probe_endpoint(url, headers, client=own_client, within=within)
    problem = ""
    try:
        response = await client.get(url + "/models", headers=dict(headers), timeout=within)
    except httpx.TimeoutException:
        problem = f"no answer within {within:g} s"
    except httpx.HTTPError as exc:
        # The message of a connection error names host and port, never the headers.
        problem = f"{type(exc).__name__}: {_scrub(str(exc), headers)}"
    if problem:
        # Raised outside the except block: httpx's exceptions hold the request and its headers.
        raise LMConnectionError(f"cannot reach the LM endpoint ({problem})", endpoint=url)
    if response.status_code in (401, 403):
        detail = _scrub(_server_message(response), headers)
        raise AuthenticationError(
            f"the LM endpoint refused the API key (HTTP {response.status_code}"
            + (f": {detail})" if detail else ")"),
            status_code=response.status_code,
            server_message=detail,
            endpoint=url,
        )


def _server_message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        message = error["message"] if isinstance(error, dict) else error
        return str(message)[:300]
    except (ValueError, KeyError, TypeError):
        return response.text.strip()[:300]


def _scrub(text: str, headers: Mapping[str, str]) -> str:
    """``text`` without any part of the header values (servers may echo a key back)."""
    for value in headers.values():
        for token in value.split():
            if len(token) >= 8:
                text = text.replace(token, "***")
    return text
