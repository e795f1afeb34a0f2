"""Retries: the back-off policy, Retry-After parsing, typed errors, and retries against a server."""

from __future__ import annotations

import contextlib
import email.utils
import json
import random
import ssl
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from anyio.streams.tls import TLSStream

from aprompt._errors import (
    AuthenticationError,
    BadResponseError,
    ContextOverflowError,
    LMConnectionError,
    QuotaExhaustedError,
    RateLimitError,
    RequestRejectedError,
    ServerError,
    TLSCertificateError,
)
from aprompt.lm.endpoints import Endpoint
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.retry import RetryPolicy, error_codes, error_for_status, parse_retry_after
from aprompt.lm.types import Message
from aprompt.testing.fake_openai import FakeOpenAIServer, Fault
from tests.conftest import TEST_API_KEY
from tests.lm.providers import Provider

pytestmark = pytest.mark.anyio
both_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])

QUICK = RetryPolicy(initial_backoff=0.005, max_backoff=0.02)
HELLO: list[Message] = [{"role": "user", "content": "Hello"}]


def assert_no_secret(error: BaseException) -> None:
    """Neither the error nor anything chained to it mentions the key."""
    seen: BaseException | None = error
    while seen is not None:
        assert TEST_API_KEY not in str(seen) and TEST_API_KEY not in repr(seen)
        assert TEST_API_KEY not in repr(vars(seen))
        seen = seen.__cause__ or seen.__context__


# -- the policy alone ----------------------------------------------------------------------------
def test_backoff_doubles_from_the_initial_value_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=4.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_jitter_stays_within_the_jitter_fraction() -> None:
    policy = RetryPolicy(initial_backoff=1.0, jitter=0.5)
    rng = random.Random(7)
    draws = [policy.backoff(1, rng) for _ in range(200)]
    assert 0.5 <= min(draws) < 0.6 and 0.9 < max(draws) <= 1.0


def test_retry_after_in_seconds_is_parsed() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.25 ") == 0.25


def test_retry_after_as_http_date_is_seconds_from_now() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    header = email.utils.format_datetime(now + timedelta(seconds=3), usegmt=True)
    assert parse_retry_after(header, now=now) == 3.0
    assert parse_retry_after(email.utils.format_datetime(now, usegmt=True), now=now + timedelta(1)) == 0


def test_unreadable_or_missing_retry_after_is_none() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None


def test_long_retry_after_is_capped_and_missing_one_uses_the_default_pause() -> None:
    policy = RetryPolicy(max_retry_after=10.0, rate_limit_pause=0.7)
    assert policy.pause_after_rate_limit(3600.0) == 10.0
    assert policy.pause_after_rate_limit(None) == 0.7


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, RateLimitError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (400, RequestRejectedError),
        (404, RequestRejectedError),
        (408, ServerError),
        (409, ServerError),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_each_error_status_maps_to_its_typed_error(status: int, kind: type[Exception]) -> None:
    error = error_for_status(status, "why", endpoint="http://h/v1")
    assert type(error) is kind
    assert "why" in str(error) and "http://h/v1" in str(error)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        # llama.cpp (the embedded model's server, as it words it).
        (400, "request (431 tokens) exceeds the available context size (256 tokens), try increasing it"),
        (400, "the request exceeds the available context size, try increasing it"),
        # OpenAI, vLLM, OpenRouter, Mistral.
        (
            400,
            "This model's maximum context length is 8192 tokens. However, your messages resulted in "
            "9000 tokens. Please reduce the length of the messages.",
        ),
        # Anthropic (its type leads its message here).
        (400, "invalid_request_error: prompt is too long: 210000 tokens > 200000 maximum"),
        # Gemini, Bedrock, TGI.
        (400, "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."),
        (400, "Input is too long for requested model."),
        (422, "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048. Given: 2100"),
    ],
)
def test_a_prompt_over_the_context_window_is_a_context_overflow_error(status: int, message: str) -> None:
    error = error_for_status(status, message, endpoint="http://h/v1")
    assert type(error) is ContextOverflowError
    assert isinstance(error, RequestRejectedError) and error.server_message == message


def test_other_refusals_are_not_context_overflows() -> None:
    for message in ("'temperature' must be at most 2", "max_tokens is too large: 99999", ""):
        assert type(error_for_status(400, message, endpoint="http://h/v1")) is RequestRejectedError


def error_json(**error: Any) -> bytes:
    return json.dumps({"error": error}).encode()


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        # OpenAI: the account's quota spent (billing must fix it), said by the error's code and type.
        (429, error_json(type="insufficient_quota", code="insufficient_quota"), QuotaExhaustedError),
        # Anthropic's billing error; OpenRouter's and DeepSeek's spent credits (a 402, whatever its body).
        (402, error_json(type="billing_error"), QuotaExhaustedError),
        (402, error_json(code=402), QuotaExhaustedError),
        (402, b"Insufficient Balance", QuotaExhaustedError),
        # Per-minute limits worded the same way clear in a minute: rate limits, retried.
        (429, error_json(type="tokens", code="rate_limit_exceeded"), RateLimitError),
        (429, error_json(type="rate_limit_error"), RateLimitError),
        (429, b"You exceeded your current quota", RateLimitError),
    ],
    ids=["openai", "anthropic", "openrouter", "deepseek", "groq-tpm", "anthropic-429", "plain-429"],
)
def test_a_spent_quota_is_told_from_a_rate_limit_by_the_errors_fields_not_its_words(
    status: int, body: bytes, kind: type[Exception]
) -> None:
    words = "You exceeded your current quota, please check your plan and billing details."
    error = error_for_status(status, words, endpoint="http://h/v1", codes=error_codes(body))
    assert type(error) is kind and error.status_code == status and words in str(error)


# -- against the fake server ---------------------------------------------------------------------
def quick_lm(lm_kwargs: dict[str, Any], **options: Any) -> OpenAICompatibleLM:
    return OpenAICompatibleLM(**{**lm_kwargs, "retry": QUICK, **options})


@both_backends
@pytest.mark.parametrize(
    "fault",
    [
        Fault.http_status(500),
        Fault.http_status(503),
        Fault.http_status(408),
        Fault.rate_limited(retry_after="0.05"),
        Fault.rate_limited(retry_after=None),
        Fault.drop_connection(),
        Fault.invalid_json(),
        Fault.missing_choices(),
    ],
    ids=["500", "503", "408", "429", "429-no-retry-after", "drop", "invalid-json", "no-choices"],
)
async def test_transient_failure_is_retried_then_succeeds(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any], fault: Fault
) -> None:
    fake_server.queue_faults(fault, fault)
    async with quick_lm(lm_kwargs, retry=RetryPolicy(initial_backoff=0.005, rate_limit_pause=0.05)) as lm:
        completion = await lm.chat(HELLO)
    assert completion.text == "Answer: ok"
    assert [r.fault is not None for r in fake_server.chat_requests] == [True, True, False]
    assert (lm.usage.requests, lm.usage.retries, lm.usage.errors) == (3, 2, 0)


async def test_response_slower_than_the_timeout_is_retried(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.queue_faults(Fault.delay(2.0))
    async with quick_lm(lm_kwargs, timeout=0.2) as lm:
        started = time.monotonic()
        completion = await lm.chat(HELLO)
    assert completion.text == "Answer: ok"
    assert time.monotonic() - started < 1.0
    assert lm.usage.retries == 1


async def test_retry_after_seconds_delays_the_retry(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.queue_faults(Fault.rate_limited(retry_after="0.3"))
    async with quick_lm(lm_kwargs) as lm:
        await lm.chat(HELLO)
    limited, retried = fake_server.chat_requests
    assert retried.started - limited.finished >= 0.3
    assert lm.usage.rate_limited == 1


async def test_retry_after_http_date_delays_the_retry_until_that_time(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    # HTTP dates have whole seconds: "now + 2 s" truncated lies between 1 and 2 s ahead.
    when = datetime.now(UTC) + timedelta(seconds=2)
    fake_server.queue_faults(Fault.rate_limited(email.utils.format_datetime(when, usegmt=True)))
    async with quick_lm(lm_kwargs) as lm:
        await lm.chat(HELLO)
    limited, retried = fake_server.chat_requests
    assert retried.started - limited.finished >= 0.95
    assert datetime.now(UTC) >= when.replace(microsecond=0)


async def test_exhausted_retries_raise_the_last_typed_error(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.queue_faults(Fault.http_status(500), Fault.drop_connection(), Fault.http_status(503))
    async with quick_lm(lm_kwargs, max_retries=2) as lm:
        with pytest.raises(ServerError) as caught:
            await lm.chat(HELLO)
    assert caught.value.status_code == 503
    assert caught.value.endpoint == fake_server.base_url
    assert (lm.usage.requests, lm.usage.retries, lm.usage.errors, lm.usage.calls) == (3, 2, 1, 0)
    assert_no_secret(caught.value)


async def test_dropped_connections_exhausting_retries_raise_a_connection_error(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.queue_faults(Fault.drop_connection(), Fault.drop_connection())
    async with quick_lm(lm_kwargs, max_retries=1) as lm:
        with pytest.raises(LMConnectionError) as caught:
            await lm.chat(HELLO)
    assert fake_server.base_url in str(caught.value)
    assert_no_secret(caught.value)


async def test_malformed_bodies_exhausting_retries_raise_a_bad_response_error(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.queue_faults(Fault.invalid_json(), Fault.missing_choices())
    async with quick_lm(lm_kwargs, max_retries=1) as lm:
        with pytest.raises(BadResponseError) as caught:
            await lm.chat(HELLO)
    assert "choices" in str(caught.value)
    assert_no_secret(caught.value)


@both_backends
async def test_wrong_key_raises_authentication_error_with_the_server_message_at_once(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    async with quick_lm(lm_kwargs, api_key="sk-wrong-key-123") as lm:
        with pytest.raises(AuthenticationError) as caught:
            await lm.chat(HELLO)
    assert caught.value.status_code == 401
    assert "Incorrect API key provided." in str(caught.value)
    assert fake_server.base_url in str(caught.value)
    assert "sk-wrong-key-123" not in str(caught.value) and "sk-wrong-key-123" not in repr(lm)
    assert lm.usage.requests == 1 and lm.usage.errors == 1


async def test_bad_request_raises_request_rejected_error_with_the_server_message_at_once(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.queue_faults(Fault.http_status(400, "'temperature' must be at most 2"))
    async with quick_lm(lm_kwargs) as lm:
        with pytest.raises(RequestRejectedError) as caught:
            await lm.chat(HELLO, temperature=7)
    assert caught.value.status_code == 400
    assert caught.value.server_message == "'temperature' must be at most 2"
    assert "'temperature' must be at most 2" in str(caught.value)
    assert lm.usage.requests == 1
    assert_no_secret(caught.value)


async def test_a_prompt_over_the_context_window_raises_context_overflow_error_at_once(
    provider: Provider,
) -> None:
    provider.server.context_tokens = 50
    async with provider.make() as lm:
        assert (await lm.chat(HELLO)).text == "Answer: ok"
        with pytest.raises(ContextOverflowError) as caught:
            await lm.chat([{"role": "user", "content": "apples " * 100}])
    assert caught.value.status_code == 400
    assert lm.usage.requests == 2, "never re-sent: the same prompt overflows the same way"


async def test_a_spent_quota_raises_quota_exhausted_error_at_once_saying_what_to_do(
    provider: Provider,
) -> None:
    """OpenAI's 429 ``insufficient_quota`` was retried as a rate limit (about 28 s with the default
    policy) and Anthropic's 402 taken for a refusal of the request; no wait clears either."""
    provider.server.fault_rates = [(Fault.quota_exhausted(), 1.0)]
    async with provider.make() as lm:
        with pytest.raises(QuotaExhaustedError) as caught:
            await lm.chat(HELLO)
    assert caught.value.status_code == (429 if provider.name == "openai" else 402)
    assert lm.usage.requests == 1 and lm.usage.rate_limited == 0, "never re-sent, no pause"
    assert "add credit" in str(caught.value) and provider.server.base_url in str(caught.value)
    assert_no_secret(caught.value)


@both_backends
async def test_a_503_with_retry_after_is_sent_again_no_sooner(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    # The back-off alone would re-send after ~5 ms; the server asked for 0.3 s.
    fake_server.queue_faults(Fault.http_status(503, retry_after="0.3"))
    async with quick_lm(lm_kwargs, retry=RetryPolicy(initial_backoff=0.005)) as lm:
        completion = await lm.chat(HELLO)
    assert completion.text == "Answer: ok"
    first, second = fake_server.requests[-2:]
    assert (first.status, second.status) == (503, 200)
    assert second.started - first.finished >= 0.3


@both_backends
async def test_a_503_asking_for_longer_than_max_retry_after_waits_the_cap(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.queue_faults(Fault.http_status(503, retry_after="3600"))
    policy = RetryPolicy(initial_backoff=0.005, max_retry_after=0.2)
    async with quick_lm(lm_kwargs, retry=policy) as lm:
        with anyio.fail_after(5):
            completion = await lm.chat(HELLO)
    assert completion.text == "Answer: ok"
    first, second = fake_server.requests[-2:]
    assert 0.2 <= second.started - first.finished < 3


# -- a TLS certificate refused -------------------------------------------------------------------
#: Self-signed, for localhost: no default trust store holds it.
CERTIFICATE = Path(__file__).with_name("loopback_tls.pem")
#: A retry after 5-10 s: a test that ends within 4 s made none.
SLOW = RetryPolicy(max_retries=3, initial_backoff=10.0)


@contextlib.asynccontextmanager
async def untrusted_tls_server() -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback HTTPS server whose certificate the client refuses: its base URL, and a list that counts
    the connections it accepted."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERTIFICATE)
    accepted: list[int] = []

    async def handshake(stream: anyio.abc.SocketStream) -> None:
        accepted.append(1)
        with contextlib.suppress(Exception):
            await TLSStream.wrap(stream, server_side=True, ssl_context=context, standard_compatible=False)
        await stream.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, handshake)
        yield f"https://localhost:{port}/v1", accepted
        group.cancel_scope.cancel()


@both_backends
async def test_a_refused_tls_certificate_fails_at_once_saying_what_to_do() -> None:
    # It was retried as a dropped connection: 28 s of back-off under the default policy, to the same end.
    async with untrusted_tls_server() as (url, accepted):
        async with OpenAICompatibleLM("m", url, api_key=TEST_API_KEY, retry=SLOW) as lm:
            with anyio.fail_after(4), pytest.raises(TLSCertificateError) as caught:
                await lm.chat(HELLO)
            assert (lm.usage.requests, lm.usage.retries, len(accepted)) == (1, 0, 1)
            with pytest.raises(TLSCertificateError) as probed:
                await lm.probe()
    for error in (caught.value, probed.value):
        assert isinstance(error, LMConnectionError)
        assert "CERTIFICATE_VERIFY_FAILED" in str(error) and "SSL_CERT_FILE" in str(error)
        assert error.endpoint == url
        assert_no_secret(error)


async def test_a_refused_tls_certificate_through_a_callers_httpx_client_fails_at_once() -> None:
    async with untrusted_tls_server() as (url, accepted), httpx.AsyncClient() as client:
        lm = OpenAICompatibleLM("m", url, api_key=TEST_API_KEY, retry=SLOW, http_client=client)
        with anyio.fail_after(4), pytest.raises(TLSCertificateError) as caught:
            await lm.chat(HELLO)
        await lm.aclose()
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value) and "SSL_CERT_FILE" in str(caught.value)
    assert len(accepted) == 1
    assert_no_secret(caught.value)


async def test_a_request_refused_one_endpoints_tls_certificate_goes_on_to_another_at_once(
    fake_server: FakeOpenAIServer,
) -> None:
    async with untrusted_tls_server() as (url, accepted):
        endpoints = [Endpoint(url), Endpoint(fake_server.base_url)]
        async with OpenAICompatibleLM("m", endpoints, api_key=TEST_API_KEY, retry=SLOW) as lm:
            with anyio.fail_after(4):
                # Ties between idle endpoints rotate: one of the two requests goes to the refused one first.
                completions = [await lm.chat([{"role": "user", "content": f"Hello {n}"}]) for n in (1, 2)]
    assert [completion.text for completion in completions] == ["Answer: ok", "Answer: ok"]
    assert len(accepted) == 1 and len(fake_server.chat_requests) == 2
