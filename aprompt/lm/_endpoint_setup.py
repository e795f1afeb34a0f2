"""The endpoints of an HTTP chat client as it is created: each one's key (its own, its variable's or the
client's), its request headers, concurrency cap, rate limiter and connection lanes, refusing a
configuration that would send a key where it does not belong or could not be sent (see
:mod:`aprompt.lm._http`)."""

from __future__ import annotations

import html
import json
import os
import re
import urllib.parse
from collections.abc import Callable, Sequence

import attrs
import httpx

from aprompt._errors import ConfigError
from aprompt.lm._connections import ConnectionLanes, LaneTransports, proxy_credentials
from aprompt.lm._transport import HttpxTransport
from aprompt.lm.adaptive import MAX_CONCURRENCY
from aprompt.lm.endpoints import Endpoint, EndpointState, endpoint_urls, shown_url
from aprompt.lm.limits import RateLimiter

__all__ = ["EndpointSetup", "EndpointSpec", "set_up_endpoints"]

#: What a client accepts as its endpoints: a base URL, an :class:`Endpoint`, or several of them.
EndpointSpec = str | Endpoint | Sequence[str | Endpoint]


@attrs.frozen
class EndpointSetup:
    """A client's endpoints as created.

    Attributes:
        states: each endpoint's runtime state, in the order given.
        secrets: every key sent (as given and stripped), every credential in a URL's query and those of
            the proxies the environment names for the endpoints, to scrub from messages.
        keyless: the endpoints sent no key because the client's ``api_key_env`` is not set.
    """

    states: list[EndpointState]
    secrets: tuple[str, ...]
    keyless: frozenset[str]


def set_up_endpoints(
    endpoints: EndpointSpec,
    *,
    api_key: str | None,
    api_key_env: str | None,
    max_concurrency: int | None,
    timeout: float,
    http_client: httpx.AsyncClient | None,
    auth_headers: Callable[[str | None], dict[str, str]],
) -> EndpointSetup:
    """The endpoints of a client given ``endpoints``, its key (or the variable holding it), its
    concurrency cap and timeout, and ``auth_headers``, the headers that authenticate with a key (None:
    none). Raises :class:`~aprompt._errors.ConfigError` for an endpoint whose key variable is unset,
    a key with a control character or one not ASCII, or an endpoint concurrency that is not a positive
    integer."""
    default_key = api_key if api_key is not None else _env(api_key_env)
    specs = [endpoints] if isinstance(endpoints, str | Endpoint) else list(endpoints)
    transports = LaneTransports(timeout)
    shared = HttpxTransport(http_client, owned=False) if http_client is not None else None
    states: list[EndpointState] = []
    keys: list[str | None] = []
    keyless: set[str] = set()  # endpoints sent no key because api_key_env is not set
    for spec in specs:
        endpoint = spec if isinstance(spec, Endpoint) else Endpoint(spec)
        # "" is a key given as none (a local server beside a cloud one): not the client's.
        if endpoint.api_key is not None:
            key: str | None = endpoint.api_key
        elif endpoint.api_key_env is not None:
            key = _env(endpoint.api_key_env)
            if key is None:
                # Falling back to the client's key would send it to a server meant to get another.
                raise ConfigError(
                    f"endpoint {shown_url(endpoint.url)} reads its key from ${endpoint.api_key_env}, "
                    'which is not set: set it, or give the endpoint api_key ("" for none)'
                )
        else:
            key = default_key
        target, url, hidden = endpoint_urls(endpoint.url)
        parsed = httpx.URL(url)
        if http_client is None and parsed.scheme not in ("http", "https"):
            # Our connections (and httpx's, behind a proxy) speak HTTP alone: the first call would fail.
            raise ConfigError(f"endpoint URL {url!r} must start with http:// or https://")
        if key is None and api_key is None and api_key_env:
            keyless.add(url)
        keys.extend(hidden)  # scrubbed from messages too, whatever their length, as a key is
        # A proxy's own error page (a 407, a 502) may quote its credentials: a caller's client may read
        # the environment's proxies too.
        keys.extend(proxy_credentials(parsed))
        if key and any(ord(char) < 32 or ord(char) >= 127 for char in key):
            # Sent as is, a line break would end the request's head early or add a header; a character
            # not ASCII is in no key (httpx refuses it with an error that holds the whole header).
            raise ConfigError(
                f"the API key for {url} contains a control character or one not ASCII (a line break "
                "read with it from a file, a quote pasted with it?); remove it"
            )
        keys.append(key)
        own = endpoint.max_concurrency
        if own is not None and (isinstance(own, bool) or not isinstance(own, int) or own < 1):
            raise ConfigError(
                f"the max_concurrency of endpoint {url} must be an integer of at least 1, got {own!r}"
            )
        capacity = own or max_concurrency or MAX_CONCURRENCY
        make_transport = transports.for_endpoint(parsed)
        states.append(
            EndpointState(
                url,
                headers=auth_headers(key),
                capacity=capacity,
                limiter=RateLimiter(endpoint.requests_per_minute, endpoint.tokens_per_minute),
                lanes=ConnectionLanes(capacity, make_transport, shared=shared),
                target=target,
            )
        )
    # A key is also scrubbed as the server saw it: a header value's surrounding spaces are not its
    # own (a key pasted with a trailing space comes back without it).
    plain = {secret for key in keys if key for secret in (key, key.strip()) if secret}
    # Longest first: an encoded form holds the plain one's parts, and a part replaced first would
    # leave the rest of the longer form in the text.
    secrets = tuple(
        sorted({form for secret in plain for form in encoded_forms(secret)}, key=len, reverse=True)
    )
    return EndpointSetup(states, secrets, frozenset(keyless))


def encoded_forms(secret: str) -> set[str]:
    """``secret`` as a server may echo it: as it is, percent-encoded (a URL, a redirect's Location),
    HTML-escaped (an error page) and JSON-escaped (a message quoted inside a JSON string). Keys of
    letters, digits, ``-`` and ``_`` read the same in every form."""
    return {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
        html.escape(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }


#: What an environment variable's name looks like (a shell's): a key given in its place (``sk-...``) does not.
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env(name: str | None) -> str | None:
    """The value of the variable ``name``, or None when it is not set; raises ConfigError for an unset
    ``name`` that is no variable's name, without showing it: it may be the key itself, given in place of
    its variable's name, which the errors naming an unset variable would print."""
    if not name:
        return None
    value = os.environ.get(name)
    if value is None and not _VARIABLE_NAME.fullmatch(name):
        raise ConfigError(
            "api_key_env (--api-key-env on the command line) takes the name of the environment variable "
            "holding the key, and the value given is no variable's name (not shown: it may be the key "
            "itself): pass the key as api_key=, or put it in a variable and name that"
        )
    return value
