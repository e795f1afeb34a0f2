"""A key echoed in a server's error message is scrubbed out before the message is cut to length, so no
part of it is left at the cut: both clients, on asyncio and trio."""

from __future__ import annotations

import base64
import html
import json
import pickle
import urllib.parse
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import pytest

from aprompt._errors import AuthenticationError, BadResponseError, ContentFilteredError, LMStatusError
from aprompt.lm._http import HTTPChatLM
from aprompt.lm.anthropic import AnthropicLM
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.retry import RetryPolicy
from aprompt.testing.fake_anthropic import FakeAnthropicServer
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, Fault

pytestmark = pytest.mark.anyio

NONE = RetryPolicy(max_retries=0)

#: A 164-character key, as some providers issue.
LONG_KEY = "sk-proj-" + "".join(f"{i:03d}Zq" for i in range(30)) + "end1xy"

Client = Callable[[FakeOpenAIServer], HTTPChatLM]
CLIENTS: dict[str, tuple[type[FakeOpenAIServer], Client]] = {
    "openai": (
        FakeOpenAIServer,
        lambda s: OpenAICompatibleLM("m", s.base_url, api_key=LONG_KEY, max_retries=0),
    ),
    "anthropic": (
        FakeAnthropicServer,
        lambda s: AnthropicLM("m", s.base_url, api_key=LONG_KEY, max_retries=0),
    ),
}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _pieces(secret: str, size: int = 12) -> set[str]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


@pytest.mark.parametrize("provider", sorted(CLIENTS))
# The messages are cut at 500 characters: at these offsets the cut falls inside the key.
@pytest.mark.parametrize("offset", [325, 337, 400, 450])
async def test_no_part_of_an_echoed_key_is_left_in_the_error(provider: str, offset: int) -> None:
    server_type, client = CLIENTS[provider]
    async with server_type(api_key=LONG_KEY) as server:
        server.queue_faults(
            Fault.reply("x" * offset + f"invalid key {LONG_KEY} for this project", status=400)
        )
        async with client(server) as lm:
            with pytest.raises(LMStatusError) as caught:
                await lm.chat([{"role": "user", "content": "Hi"}])
    error = caught.value
    shown = " ".join([str(error), repr(error), error.server_message])
    assert len(LONG_KEY) == 164
    assert [piece for piece in _pieces(LONG_KEY) if piece in shown] == []
    assert "***" in shown


class EchoingServer(FakeOpenAIServer):
    """Every route needs the key, and a wrong one is echoed back after ``padding`` characters."""

    padding = 0

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> tuple[int, bytes, dict[str, str], str | None]:
        given = headers.get("authorization", "").removeprefix("Bearer ")
        if given != self.api_key:
            message = "x" * self.padding + f"invalid key {given} for this project"
            return 401, json.dumps({"error": {"message": message}}).encode(), {}, None
        return await super()._answer(method, path, headers, body)


# The probe cuts the server's message at 300 characters: at these offsets the cut falls inside the key.
@pytest.mark.parametrize("offset", [150, 200, 250])
async def test_no_part_of_an_echoed_key_is_left_in_the_probes_error(offset: int) -> None:
    async with EchoingServer(api_key="sk-the-right-one") as server:
        server.padding = offset
        async with OpenAICompatibleLM("m", server.base_url, api_key=LONG_KEY) as lm:
            with pytest.raises(AuthenticationError) as caught:
                await lm.probe()
    error = caught.value
    shown = " ".join([str(error), repr(error), error.server_message])
    assert [piece for piece in _pieces(LONG_KEY) if piece in shown] == []
    assert "***" in shown


class TrimmingEchoServer(FakeOpenAIServer):
    """Refuses every key, echoing it as it reads it: the header value's surrounding spaces dropped."""

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> tuple[int, bytes, dict[str, str], str | None]:
        given = headers.get("authorization", "").removeprefix("Bearer").strip()
        return (
            401,
            json.dumps({"error": {"message": f"Incorrect API key provided: {given}"}}).encode(),
            {},
            None,
        )


@pytest.mark.parametrize("key", [f"{LONG_KEY} ", f"  {LONG_KEY}  "])
async def test_a_key_given_with_spaces_around_it_is_scrubbed_as_the_server_echoes_it(key: str) -> None:
    """The server reads the header value without its surrounding spaces and echoes the key that way,
    which the error showed whole: only the key as given was scrubbed."""
    async with TrimmingEchoServer() as server:
        async with OpenAICompatibleLM("m", server.base_url, api_key=key, max_retries=0) as lm:
            with pytest.raises(AuthenticationError) as caught:
                await lm.chat([{"role": "user", "content": "Hi"}])
    error = caught.value
    shown = " ".join([str(error), repr(error), error.server_message])
    assert [piece for piece in _pieces(LONG_KEY) if piece in shown] == []
    assert "Incorrect API key provided: ***" in shown


class EchoingPageServer(FakeOpenAIServer):
    """Answers every request 200 with a web page that echoes its Authorization header after ``padding``
    characters (a misrouted proxy's debug page)."""

    padding = 0

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> tuple[int, bytes, dict[str, str], str | None]:
        page = "<html><body>" + "x" * self.padding + " " + headers.get("authorization", "") + "</body></html>"
        return 200, page.encode(), {"Content-Type": "text/html"}, None


# The start of a body that is not JSON is shown cut at 120 characters: at these offsets the cut falls
# inside the key.
@pytest.mark.parametrize("offset", [60, 90, 100])
async def test_no_part_of_a_key_echoed_in_a_page_for_an_answer_is_left_in_the_error(offset: int) -> None:
    async with EchoingPageServer(api_key=LONG_KEY) as server:
        server.padding = offset
        async with OpenAICompatibleLM("m", server.base_url, api_key=LONG_KEY, max_retries=0) as lm:
            with pytest.raises(BadResponseError) as caught:
                await lm.chat([{"role": "user", "content": "Hi"}])
    shown = " ".join([str(caught.value), repr(caught.value)])
    assert "not JSON" in shown
    assert [piece for piece in _pieces(LONG_KEY, size=8) if piece in shown] == []


class PathEchoingServer(FakeOpenAIServer):
    """Refuses every request, echoing the request's path and query (where a key may be)."""

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> tuple[int, bytes, dict[str, str], str | None]:
        message = f"API key not valid for {method} {path}"
        return 401, json.dumps({"error": {"message": message}}).encode(), {}, None


@pytest.mark.parametrize(
    ("name", "credential"), [("key", "QSECRET-abcdef123456"), ("sig", "Zq7"), ("sig", "Zq7x9w")]
)
async def test_a_credential_in_the_base_urls_query_is_scrubbed_from_errors(
    name: str, credential: str
) -> None:
    """A key in the query, and a signature or token of a few characters as well as a long one (a header
    key of any length is scrubbed): the server's echo of the request's query showed it."""
    async with PathEchoingServer() as server:
        async with OpenAICompatibleLM("m", f"{server.base_url}?{name}={credential}", api_key="") as lm:
            with pytest.raises(AuthenticationError) as caught:
                await lm.probe()
            with pytest.raises(AuthenticationError) as in_a_call:
                await lm.chat([{"role": "user", "content": "Hi"}])
    for error in (caught.value, in_a_call.value):
        shown = " ".join([str(error), repr(error), error.server_message])
        assert credential not in shown and f"{name}=***" in shown


class RefusalEchoServer(FakeOpenAIServer):
    """Answers every request with an OpenAI ``refusal`` that quotes the request's Authorization header
    after ``padding`` characters (a guard in front of the model that words its refusal so)."""

    padding = 0

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> tuple[int, bytes, dict[str, str], str | None]:
        refusal = "x" * self.padding + f" refused for {headers.get('authorization', '')} and more"
        message = {"role": "assistant", "content": None, "refusal": refusal}
        reply = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        return 200, json.dumps(reply).encode(), {}, None


# The refusal is quoted cut at 200 characters: at these offsets the cut falls inside the key.
@pytest.mark.parametrize("offset", [0, 100, 150])
async def test_a_key_echoed_in_a_refusal_is_in_neither_the_error_nor_its_text(offset: int) -> None:
    async with RefusalEchoServer() as server:
        server.padding = offset
        async with OpenAICompatibleLM("m", server.base_url, api_key=LONG_KEY, max_retries=0) as lm:
            with pytest.raises(ContentFilteredError) as caught:
                await lm.chat([{"role": "user", "content": "Hi"}])
    error = caught.value
    shown = " ".join([str(error), repr(error), error.text, repr(pickle.loads(pickle.dumps(error)).__dict__)])
    assert "the model refused to answer" in shown and "***" in error.text
    assert [piece for piece in _pieces(LONG_KEY, size=8) if piece in shown] == []


async def test_a_key_echoed_in_a_withheld_anthropic_reply_is_not_in_its_error() -> None:
    def echo(request: ChatRequest) -> Fault:
        return Fault.reply(f"blocked: {request.headers.get('x-api-key')}", finish_reason="content_filter")

    async with FakeAnthropicServer(responder=echo) as server:
        async with AnthropicLM("m", server.base_url, api_key=LONG_KEY, max_retries=0) as lm:
            with pytest.raises(ContentFilteredError) as caught:
                await lm.chat([{"role": "user", "content": "Hi"}])
    error = caught.value
    assert error.text == "blocked: ***"
    assert LONG_KEY not in repr(pickle.loads(pickle.dumps(error)).__dict__)


#: A key with characters that URLs, HTML and JSON write otherwise.
ODD_KEY = 'sk-a/b+c&d<e>f"g=h%i'


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(lambda key: urllib.parse.quote(key, safe=""), id="percent-encoded"),
        pytest.param(lambda key: urllib.parse.quote_plus(key, safe=""), id="form-encoded"),
        pytest.param(html.escape, id="html-escaped"),
        pytest.param(lambda key: json.dumps(key)[1:-1], id="json-escaped"),
    ],
)
async def test_a_key_echoed_in_an_encoded_form_is_scrubbed(echo: Callable[[str], str]) -> None:
    """A server may echo the key as a URL, an HTML page or a JSON string writes it."""
    shown_key = echo(ODD_KEY)
    assert shown_key != ODD_KEY
    async with FakeOpenAIServer(api_key=ODD_KEY) as server:
        server.queue_faults(Fault.reply(f"invalid key {shown_key} for this project", status=400))
        async with OpenAICompatibleLM("m", server.base_url, api_key=ODD_KEY, max_retries=0) as lm:
            with pytest.raises(LMStatusError) as caught:
                await lm.chat([{"role": "user", "content": "Hi"}])
    error = caught.value
    shown = " ".join([str(error), repr(error), error.server_message, repr(pickle.dumps(error))])
    assert shown_key not in shown and "invalid key *** for" in shown


#: A proxy password with characters its URL writes percent-encoded.
PROXY_PASSWORD = "pr0xy-S3cret/p@ss"


async def _echoing_proxy(listener: anyio.abc.SocketListener, status: bytes, proxy_url: str) -> None:
    """Answers every request ``status`` with a page quoting its Proxy-Authorization header, decoded too,
    and ``proxy_url`` (a proxy's own 407, or a 502 naming the way the request came)."""

    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive()
            sent = [line for line in head.split(b"\r\n") if line.lower().startswith(b"proxy-authorization:")]
            token = sent[0].split()[-1] if sent else b""
            page = b"<html>%b %b, decoded %b, via %b</html>" % (
                status,
                b" ".join(sent),
                base64.b64decode(token),
                proxy_url.encode(),
            )
            await stream.send(
                b"HTTP/1.1 %b Refused\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: close"
                b"\r\n\r\n%b" % (status, len(page), page)
            )

    await listener.serve(answer)


@pytest.mark.parametrize("status", [b"407", b"502"])
async def test_a_proxys_credentials_quoted_in_its_error_page_are_scrubbed(
    status: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy named by the environment with a password answers with a page quoting it (its URL, the
    Proxy-Authorization header sent to it), which the call's error showed."""
    quoted = urllib.parse.quote(PROXY_PASSWORD, safe="")
    forms = {PROXY_PASSWORD, quoted, base64.b64encode(f"alice:{PROXY_PASSWORD}".encode()).decode()}
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    proxy_url = f"http://alice:{quoted}@127.0.0.1:{listener.extra(anyio.abc.SocketAttribute.local_port)}"
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_echoing_proxy, listener, status, proxy_url)
        async with OpenAICompatibleLM("m", "http://llm.invalid:8000/v1", api_key="k1", max_retries=0) as lm:
            with pytest.raises(LMStatusError) as in_a_call:
                await lm.chat([{"role": "user", "content": "Hi"}])
        tasks.cancel_scope.cancel()
    error = in_a_call.value
    shown = " ".join(
        [str(error), repr(error), error.server_message, repr(pickle.loads(pickle.dumps(error)).__dict__)]
    )
    assert status.decode() in shown and "Basic ***" in shown
    assert [form for form in forms if form in shown] == []
