"""Several endpoints: routing by load, per-endpoint limits and keys, health and fail-over."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from aprompt._errors import (
    AuthenticationError,
    ConfigError,
    ContextOverflowError,
    QuotaExhaustedError,
    RequestRejectedError,
    ServerError,
    TruncatedResponseError,
    UnreadableResponseError,
)
from aprompt.lm._connections import ConnectionLanes, LaneTransports
from aprompt.lm._transport import HttpxTransport
from aprompt.lm.endpoints import Endpoint, EndpointPool, EndpointState, public_url
from aprompt.lm.limits import RateLimiter
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.retry import RetryPolicy
from aprompt.lm.types import Message
from aprompt.testing.fake_openai import FakeOpenAIServer, Fault
from tests.conftest import TEST_API_KEY

pytestmark = pytest.mark.anyio
both_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])

QUICK = RetryPolicy(initial_backoff=0.005, max_backoff=0.02)


@pytest.fixture
async def second_server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(api_key=TEST_API_KEY) as server:
        yield server


async def run_calls(lm: OpenAICompatibleLM, count: int) -> None:
    async with anyio.create_task_group() as tg:
        for index in range(count):
            tg.start_soon(lm.chat, question(index))


def question(index: int) -> list[Message]:
    return [{"role": "user", "content": f"Question {index}"}]


def state(url: str, capacity: int = 4) -> EndpointState:
    lanes = ConnectionLanes(capacity, LaneTransports(timeout=1.0).httpx_transport)
    return EndpointState(url, headers={}, capacity=capacity, limiter=RateLimiter(), lanes=lanes)


# -- configuration -------------------------------------------------------------------------------
def test_endpoint_repr_hides_its_api_key() -> None:
    endpoint = Endpoint("http://gpu-1:8000/v1", max_concurrency=4, api_key=TEST_API_KEY)
    assert TEST_API_KEY not in repr(endpoint)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pw-SECRET-123456@gpu-1:8000/v1?api-key=SECRET-654321",
        "gpu-1:8000/v1?key=SECRET-654321",  # no scheme: refused by a client, still shown safely
    ],
)
def test_endpoint_repr_hides_the_credentials_in_its_url(url: str) -> None:
    shown = repr(Endpoint(url, api_key=TEST_API_KEY))
    assert "SECRET" not in shown and TEST_API_KEY not in shown
    assert "gpu-1:8000/v1" in shown


def test_public_url_drops_credentials_and_trailing_slash() -> None:
    assert public_url("http://user:secret@gpu-1:8000/v1/") == "http://gpu-1:8000/v1"


QUERY_KEY = "AIzaSy-query-key-DO-NOT-LEAK-81c4"


@pytest.mark.parametrize("name", ["key", "api-key", "api_key", "access_token", "sig"])
async def test_a_key_in_the_base_urls_query_is_sent_but_never_shown(
    fake_server: FakeOpenAIServer, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Some gateways take the key as a query parameter (Google's ?key=, Azure's ?api-key=, signed URLs).
    caplog.set_level("DEBUG")
    url = f"{fake_server.base_url}?api-version=2&{name}={QUERY_KEY}"
    fake_server.queue_faults(Fault.http_status(500))
    async with OpenAICompatibleLM("m", url, api_key=TEST_API_KEY, retry=QUICK, max_retries=0) as lm:
        await lm.probe()
        with pytest.raises(ServerError) as caught:
            await lm.chat(question(0))
        answer = await lm.chat(question(1))
        shown = " ".join([repr(lm), *lm.endpoints, str(caught.value), repr(caught.value), caplog.text])
    assert answer.text == "Answer: ok"
    assert [request.path.partition("?")[2] for request in fake_server.requests] == [
        f"api-version=2&{name}={QUERY_KEY}"
    ] * 3
    assert QUERY_KEY not in shown
    assert lm.endpoints == (f"{fake_server.base_url}?api-version=2&{name}=***",)


MISPLACED_KEY = "sk-proj-given-as-its-variable-9f3a"


@pytest.mark.parametrize("where", ["client", "endpoint"])
async def test_a_key_given_as_its_variables_name_is_refused_without_being_shown(
    fake_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """``api_key_env="sk-..."`` (the key in place of its variable's name) was echoed by the errors naming
    the unset variable: the 401's hint and the endpoint's ConfigError."""
    monkeypatch.delenv(MISPLACED_KEY, raising=False)
    with pytest.raises(ConfigError, match="no variable's name") as caught:
        if where == "client":
            lm = OpenAICompatibleLM("m", fake_server.base_url, api_key_env=MISPLACED_KEY, max_retries=0)
        else:
            lm = OpenAICompatibleLM("m", [Endpoint(fake_server.base_url, api_key_env=MISPLACED_KEY)])
        async with lm:
            await lm.chat(question(0))
    assert MISPLACED_KEY not in str(caught.value) + repr(caught.value)
    assert fake_server.requests == []


@pytest.mark.parametrize("value", [0, -1, 2.5, "4", True])
def test_an_endpoint_concurrency_that_is_not_a_positive_integer_is_a_config_error(value: object) -> None:
    # 0 is not "the client's default" (that is None): it is refused, like any other non-positive cap.
    with pytest.raises(ConfigError, match="max_concurrency"):
        OpenAICompatibleLM("m", [Endpoint("http://gpu-1:8000/v1", max_concurrency=value)], api_key="")  # type: ignore[arg-type]


@pytest.mark.parametrize("cooldown", [float("nan"), -1.0, True, "5"])
def test_an_endpoint_cooldown_that_is_not_a_number_of_seconds_is_a_config_error(cooldown: object) -> None:
    with pytest.raises(ConfigError, match="endpoint_cooldown"):
        OpenAICompatibleLM("m", "http://gpu-1:8000/v1", api_key="", endpoint_cooldown=cooldown)  # type: ignore[arg-type]


@pytest.mark.parametrize("port", [0, 65536, 99999])
def test_a_url_port_out_of_range_is_a_config_error(port: int) -> None:
    with pytest.raises(ConfigError, match=f"port {port} is not one of 1 to 65535"):
        OpenAICompatibleLM("m", f"http://user:SECRET-123456@gpu-1:{port}/v1", api_key="")


@pytest.mark.parametrize(
    "url", ["my-resource.example.com/openai?api-key=SECRET-123456", "https:///v1?key=SECRET-123456"]
)
def test_a_url_without_scheme_or_host_is_a_config_error_that_shows_no_credential(url: str) -> None:
    with pytest.raises(ConfigError, match="needs a scheme and a host") as caught:
        public_url(url)
    assert "SECRET" not in str(caught.value) and "SECRET" not in repr(caught.value)


@pytest.mark.parametrize("scheme", ["ftp", "ws", "grpc"])
def test_a_url_of_a_scheme_other_than_http_is_a_config_error_when_the_client_is_made(scheme: str) -> None:
    # It was a raw ValueError out of the first chat() call (unsupported URL scheme).
    with pytest.raises(ConfigError, match=r"http:// or https://") as caught:
        OpenAICompatibleLM("m", f"{scheme}://user:SECRET-123456@gpu-1:8000/v1", api_key="")
    assert f"{scheme}://gpu-1:8000/v1" in str(caught.value) and "SECRET" not in str(caught.value)


def test_url_without_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        public_url("gpu-1:8000/v1")


# -- routing (pool alone) ------------------------------------------------------------------------
def test_pool_routes_to_the_least_loaded_endpoint_relative_to_capacity() -> None:
    small, large = state("http://a/v1", capacity=2), state("http://b/v1", capacity=8)
    pool = EndpointPool([small, large])
    small.in_flight, large.in_flight = 1, 3  # 50 % versus 37.5 %
    assert pool.choose() is large


def test_pool_avoids_an_endpoint_cooling_down_after_a_failure() -> None:
    first, second = state("http://a/v1"), state("http://b/v1")
    pool = EndpointPool([first, second], cooldown=60.0)
    second.in_flight = 3
    pool.mark_unhealthy(first)
    assert [pool.choose() for _ in range(4)] == [second] * 4


def test_pool_still_routes_when_every_endpoint_is_unhealthy() -> None:
    first, second = state("http://a/v1"), state("http://b/v1")
    pool = EndpointPool([first, second], cooldown=60.0)
    pool.mark_unhealthy(first)
    pool.mark_unhealthy(second)
    first.in_flight = 2
    assert pool.choose() is second


async def test_a_capped_lease_of_a_lone_endpoint_leaves_its_slots_alone() -> None:
    # The caller's own slots (at most the pool's capacity) already bound a lone endpoint.
    lone = state("http://a/v1", capacity=2)
    async with EndpointPool([lone]).lease(capped=True) as lease:
        assert lease.endpoint is lone and lone.in_flight == 1
        assert lone.slots.borrowed_tokens == 0
    assert lone.in_flight == 0


async def test_a_capped_lease_among_several_endpoints_holds_one_of_the_endpoints_slots() -> None:
    first, second = state("http://a/v1", capacity=2), state("http://b/v1", capacity=2)
    async with EndpointPool([first, second]).lease(capped=True) as lease:
        assert lease.endpoint.slots.borrowed_tokens == 1
    assert first.slots.borrowed_tokens == second.slots.borrowed_tokens == 0


async def test_an_uncapped_lease_of_a_lone_endpoint_holds_one_of_its_slots() -> None:
    lone = state("http://a/v1", capacity=1)
    async with EndpointPool([lone]).lease():
        assert lone.slots.borrowed_tokens == 1
    assert lone.slots.borrowed_tokens == 0


def test_lanes_hand_out_places_last_in_first_out_and_spread_when_busy() -> None:
    lanes = ConnectionLanes(4, LaneTransports(timeout=1.0).httpx_transport, lane_size=2)
    first = lanes.take()
    lanes.give(first)
    assert lanes.take() == first  # a lone caller keeps its warm connection
    assert {first, lanes.take()} == {0, 1}  # concurrent callers spread over the lanes


async def test_lanes_over_a_shared_client_give_every_slot_that_client() -> None:
    async with httpx.AsyncClient() as client:
        shared = HttpxTransport(client, owned=False)
        lanes = ConnectionLanes(3, LaneTransports(timeout=1.0).httpx_transport, shared=shared)
        places = [lanes.take() for _ in range(3)]
        assert {id(lanes.transport(place)) for place in places} == {id(shared)}
        await lanes.aclose()
        assert not client.is_closed


# -- routing against two servers -----------------------------------------------------------------
@both_backends
async def test_load_spreads_across_two_endpoints(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer
) -> None:
    for server in (fake_server, second_server):
        server.latency = 0.01
    urls = [fake_server.base_url, second_server.base_url]
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, max_concurrency=16) as lm:
        await run_calls(lm, 80)
    counts = [len(fake_server.chat_requests), len(second_server.chat_requests)]
    assert sum(counts) == 80 and min(counts) >= 30


@both_backends
async def test_calls_fail_over_when_one_endpoint_drops_every_connection(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer
) -> None:
    fake_server.fault_rates = [(Fault.drop_connection(), 1.0)]
    second_server.latency = 0.01
    urls = [fake_server.base_url, second_server.base_url]
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, max_concurrency=8, retry=QUICK) as lm:
        await run_calls(lm, 40)
    assert lm.usage.calls == 40 and lm.usage.errors == 0
    assert len(second_server.chat_requests) == 40
    # Once marked unhealthy, the broken endpoint only saw the requests routed before that.
    assert 1 <= len(fake_server.chat_requests) <= 8


@pytest.mark.parametrize(
    "fault",
    [Fault.html_page(), Fault.invalid_json(), Fault.reply("Half a repl", finish_reason="abort")],
    ids=["html_page", "invalid_json", "stopped_on_a_fault"],
)
async def test_calls_fail_over_when_one_endpoint_answers_no_reply(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer, fault: Fault
) -> None:
    """A replica answering 200 with no chat reply (a misrouted proxy's page, a generation stopped on a
    fault) is avoided like one that fails with a 5xx, not sent about half the requests, each re-sent."""
    fake_server.fault_rates = [(fault, 1.0)]
    for server in (fake_server, second_server):
        server.latency = 0.01
    urls = [fake_server.base_url, second_server.base_url]
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, max_concurrency=8, retry=QUICK) as lm:
        await run_calls(lm, 40)
    assert lm.usage.calls == 40 and lm.usage.errors == 0
    assert len(second_server.chat_requests) == 40
    assert 1 <= len(fake_server.chat_requests) <= 8


@pytest.mark.parametrize("fault", [Fault.empty_content(), Fault.content_filter()], ids=["empty", "filtered"])
async def test_a_retry_goes_to_another_replica_than_the_one_whose_reply_was_no_answer(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer, fault: Fault
) -> None:
    """A replica serving a broken model answers every request with nothing (it is not cooled down: an empty
    reply may be the prompt's): a retry sent to it again made the call fail (an evaluation scores it 0)
    though the other replica answers."""
    fake_server.fault_rates = [(fault, 1.0)]
    for server in (fake_server, second_server):
        server.latency = 0.005
    urls = [fake_server.base_url, second_server.base_url]
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, max_concurrency=8, max_retries=1) as lm:
        await run_calls(lm, 40)
    assert (lm.usage.calls, lm.usage.errors) == (40, 0)
    assert len(second_server.chat_requests) == 40


@both_backends
async def test_a_replica_answering_404_is_avoided_and_its_requests_are_answered_by_the_others(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer
) -> None:
    """One replica lacks the route or the model: the requests it answers 404 go on at once to the other
    (even with no retries), and after its first 404 the calls go there first, rather than failing."""
    fake_server.fault_rates = [(Fault.http_status(404), 1.0)]
    for server in (fake_server, second_server):
        server.latency = 0.01
    urls = [fake_server.base_url, second_server.base_url]
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, max_concurrency=8, max_retries=0) as lm:
        await run_calls(lm, 20)
    assert (lm.usage.calls, lm.usage.errors) == (20, 0)
    assert len(second_server.chat_requests) == 20
    assert 1 <= len(fake_server.chat_requests) <= 8
    assert lm.usage.requests == 20 + len(fake_server.chat_requests)


@both_backends
async def test_a_request_a_replica_answers_404_waits_for_the_other_while_a_429_pauses_it(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer
) -> None:
    """Raised because the other replica was paused, the 404 lost requests that replica answers a second
    later (and told the user to check the base URL)."""
    fake_server.fault_rates = [(Fault.http_status(404), 1.0)]
    second_server.queue_faults(Fault.rate_limited("1"))
    urls = [second_server.base_url, fake_server.base_url]
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, max_concurrency=4, retry=QUICK) as lm:
        with anyio.fail_after(10):
            await run_calls(lm, 4)
    assert (lm.usage.calls, lm.usage.errors) == (4, 0)
    assert len(second_server.chat_requests) == 5  # the 429 and the four answers


async def test_a_404_from_every_replica_is_raised_after_each_was_tried_once(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer
) -> None:
    for server in (fake_server, second_server):
        server.fault_rates = [(Fault.http_status(404), 1.0)]
    urls = [fake_server.base_url, second_server.base_url]
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, retry=QUICK) as lm:
        with pytest.raises(RequestRejectedError) as caught:
            await lm.chat(question(0))
    assert caught.value.status_code == 404 and "check the base URL" in str(caught.value)
    assert (len(fake_server.chat_requests), len(second_server.chat_requests)) == (1, 1)


async def test_a_404_from_endpoints_sharing_a_url_is_raised_after_each_was_tried_once() -> None:
    """One server given twice, a key each (two keys' rate limits): a 404 went from one to the other for
    good, thousands of requests a second, as both count as one URL tried."""
    async with FakeOpenAIServer() as server:
        server.fault_rates = [(Fault.http_status(404), 1.0)]
        endpoints = [Endpoint(server.base_url, api_key=key) for key in ("sk-one-1111", "sk-two-2222")]
        async with OpenAICompatibleLM("m", endpoints, max_concurrency=4, max_retries=0) as lm:
            with anyio.fail_after(5), pytest.raises(RequestRejectedError) as caught:
                await lm.chat(question(0))
    assert caught.value.status_code == 404
    assert sorted(r.headers["authorization"] for r in server.chat_requests) == [
        "Bearer sk-one-1111",
        "Bearer sk-two-2222",
    ]


@both_backends
async def test_a_request_one_replica_refuses_is_answered_by_another_that_accepts_it(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer
) -> None:
    """One replica serves a smaller context: a prompt it refuses as too long is no prompt's failure (an
    evaluation would score it 0) while the other answers it, whichever replica the request reached."""
    fake_server.context_tokens = 50
    urls = [fake_server.base_url, second_server.base_url]
    long_question = "word " * 100
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, max_concurrency=4, max_retries=0) as lm:
        for index in range(6):
            completion = await lm.chat([{"role": "user", "content": f"{index} {long_question}"}])
            assert completion.text == "Answer: ok"
    assert (lm.usage.calls, lm.usage.errors) == (6, 0)
    assert len(second_server.chat_requests) == 6
    assert {r.status for r in fake_server.chat_requests} == {400}


@both_backends
async def test_a_reply_one_replicas_context_window_cut_is_asked_of_another(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer
) -> None:
    """One replica serves a smaller context and cuts the reply where it fills it: raised at once as the
    prompt's failure (an evaluation scores it 0) though the other replica finishes it."""
    fake_server.fault_rates = [(Fault.reply("Half an answ", finish_reason="model_length"), 1.0)]
    urls = [fake_server.base_url, second_server.base_url]
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, max_concurrency=4, max_retries=0) as lm:
        for index in range(6):
            assert (await lm.chat(question(index))).text == "Answer: ok"
    assert len(second_server.chat_requests) == 6
    second_server.fault_rates = fake_server.fault_rates  # cut by both: raised, each asked once
    for server in (fake_server, second_server):
        server.reset_records()
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, max_retries=0) as lm:
        with pytest.raises(TruncatedResponseError) as caught:
            await lm.chat(question(0))
    assert caught.value.by_window
    assert (len(fake_server.chat_requests), len(second_server.chat_requests)) == (1, 1)


async def test_a_request_every_replica_refuses_raises_the_refusal_not_a_404(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer
) -> None:
    """One replica lacks the model, the other refuses the prompt as too long: each is asked, and the
    prompt's refusal is raised (an evaluation scores it), not the 404 that came last."""
    fake_server.fault_rates = [(Fault.http_status(404), 1.0)]
    second_server.context_tokens = 50
    urls = [fake_server.base_url, second_server.base_url]  # the second is asked first
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, max_retries=0) as lm:
        with pytest.raises(ContextOverflowError):
            await lm.chat([{"role": "user", "content": "word " * 100}])
    assert (len(fake_server.chat_requests), len(second_server.chat_requests)) == (1, 1)


@both_backends
async def test_endpoint_with_a_lower_concurrency_limit_gets_proportionally_fewer_calls(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer
) -> None:
    for server in (fake_server, second_server):
        server.latency = 0.01
    endpoints = [
        Endpoint(fake_server.base_url, max_concurrency=2),
        Endpoint(second_server.base_url, max_concurrency=8),
    ]
    async with OpenAICompatibleLM("m", endpoints, api_key=TEST_API_KEY) as lm:
        await run_calls(lm, 100)
    small = len(fake_server.chat_requests)
    assert len(second_server.chat_requests) + small == 100
    assert 12 <= small <= 28  # capacity share: 2 / 10
    assert fake_server.max_in_flight <= 2 and second_server.max_in_flight <= 8


@both_backends
async def test_a_lone_endpoints_own_lower_concurrency_cap_holds_at_the_server(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.latency = 0.02
    endpoint = Endpoint(fake_server.base_url, max_concurrency=3)
    async with OpenAICompatibleLM("m", [endpoint], api_key=TEST_API_KEY, max_concurrency=8) as lm:
        await run_calls(lm, 30)
        assert lm.capacity == 3
    assert lm.usage.calls == 30
    assert fake_server.max_in_flight == 3


async def test_endpoint_with_a_lower_rate_limit_gets_fewer_calls(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer
) -> None:
    endpoints = [
        Endpoint(fake_server.base_url, max_concurrency=2, requests_per_minute=120),
        Endpoint(second_server.base_url, max_concurrency=4),
    ]
    second_server.latency = 0.01
    async with OpenAICompatibleLM("m", endpoints, api_key=TEST_API_KEY) as lm:
        await run_calls(lm, 60)
    # The limited endpoint admits a burst of 6 in any second (three even shares of 2/s), then its two
    # slots wait for the next second; meanwhile the other does the rest.
    assert len(fake_server.chat_requests) <= 8
    assert len(second_server.chat_requests) >= 52


async def test_each_endpoint_sends_its_own_api_key(lm_kwargs: dict[str, Any]) -> None:
    async with (
        FakeOpenAIServer(api_key="sk-first-1111") as first,
        FakeOpenAIServer(api_key="sk-second-2222") as second,
    ):
        endpoints = [
            Endpoint(first.base_url, api_key="sk-first-1111"),
            Endpoint(second.base_url, api_key="sk-second-2222"),
        ]
        async with OpenAICompatibleLM("m", endpoints, max_concurrency=4) as lm:
            await run_calls(lm, 12)
            assert "sk-first" not in repr(lm) and "sk-second" not in repr(lm)
        assert first.chat_requests and second.chat_requests
        assert {r.status for r in first.chat_requests + second.chat_requests} == {200}


async def test_a_429_from_one_endpoint_sends_the_next_calls_to_the_other(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer
) -> None:
    fake_server.queue_faults(Fault.rate_limited("5"))
    urls = [fake_server.base_url, second_server.base_url]
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, retry=QUICK) as lm:
        with anyio.fail_after(2):
            for index in range(6):
                await lm.chat(question(index))
    assert [r.status for r in fake_server.chat_requests] == [429]
    assert len(second_server.chat_requests) == 6


async def test_an_endpoint_given_an_empty_key_sends_none_not_the_clients(lm_kwargs: dict[str, Any]) -> None:
    """A local server beside a cloud one is given ``api_key=""``: the cloud key must not reach it."""
    async with FakeOpenAIServer() as local:
        async with OpenAICompatibleLM(
            "m", [Endpoint(local.base_url, api_key="")], api_key="sk-cloud-9999"
        ) as lm:
            await lm.chat(question(0))
    assert [r.headers.get("authorization") for r in local.chat_requests] == [None]


def test_an_endpoint_whose_key_variable_is_unset_is_refused_not_sent_the_clients_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The endpoint names its own key's variable: without it, the client's key (another provider's,
    perhaps) must not go there."""
    monkeypatch.delenv("OTHER_PROVIDER_KEY", raising=False)
    endpoint = Endpoint("http://gpu-2:8000/v1", api_key_env="OTHER_PROVIDER_KEY")
    with pytest.raises(ConfigError, match=r"\$OTHER_PROVIDER_KEY, which is not set") as refused:
        OpenAICompatibleLM("m", [endpoint], api_key="sk-client-SECRET-123456")
    assert "sk-client" not in str(refused.value)
    monkeypatch.setenv("OTHER_PROVIDER_KEY", "sk-other-123456")
    OpenAICompatibleLM("m", [endpoint], api_key="sk-client-SECRET-123456")  # set: opens


@both_backends
async def test_a_replica_refusing_its_key_is_taken_out_of_rotation_and_the_others_answer(
    fake_server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    """One replica's key was revoked: its 401 failed the requests that reached it (an evaluation left
    them unscored, or stopped the run when the outage check reached it) while the other replica
    answered. Now it gets no request once one came back refused, is named once in a warning (never its
    key), and the others answer every request."""
    caplog.set_level("WARNING")
    async with FakeOpenAIServer(api_key="sk-revoked-elsewhere-0000") as revoked:
        urls = [revoked.base_url, fake_server.base_url]
        async with OpenAICompatibleLM(
            "m", urls, api_key=TEST_API_KEY, max_concurrency=8, max_retries=0
        ) as lm:
            await run_calls(lm, 20)
            refused = len(revoked.chat_requests)  # those sent before the first 401 came back
            for index in range(10):
                await lm.chat(question(100 + index))
    assert (lm.usage.calls, lm.usage.errors) == (30, 0)
    assert 1 <= refused <= 8 and len(revoked.chat_requests) == refused
    assert {r.status for r in revoked.chat_requests} == {401}
    assert len(fake_server.chat_requests) == 30
    warnings = [r.getMessage() for r in caplog.records if "refused the API key" in r.getMessage()]
    assert len(warnings) == 1 and revoked.base_url.rstrip("/") in warnings[0]
    assert TEST_API_KEY not in caplog.text


async def test_a_key_every_replica_refuses_is_raised_after_each_was_tried_once(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer
) -> None:
    urls = [fake_server.base_url, second_server.base_url]
    async with OpenAICompatibleLM("m", urls, api_key="sk-wrong-key-1234", retry=QUICK) as lm:
        for _ in range(2):
            with pytest.raises(AuthenticationError) as caught:
                await lm.chat(question(0))
            assert "sk-wrong" not in str(caught.value)
    assert (len(fake_server.chat_requests), len(second_server.chat_requests)) == (2, 2)


@pytest.mark.parametrize("fault", [Fault.event_stream(), Fault.encoded("br")], ids=["sse", "brotli"])
async def test_a_replica_replying_in_a_form_never_read_is_taken_out_of_rotation(
    fake_server: FakeOpenAIServer,
    second_server: FakeOpenAIServer,
    fault: Fault,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A proxy in front of one replica streams or encodes every reply: the requests that reached it
    failed unretried (an evaluation left them unscored, or the outage check reaching it stopped the run)
    while the other replica answered. Now they go on to the other, and it gets no more after that."""
    caplog.set_level("WARNING")
    fake_server.fault_rates = [(fault, 1.0)]
    urls = [fake_server.base_url, second_server.base_url]
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, max_concurrency=8, max_retries=0) as lm:
        await run_calls(lm, 20)
        unread = len(fake_server.chat_requests)
        for index in range(10):
            await lm.chat(question(100 + index))
        assert (lm.usage.calls, lm.usage.errors) == (30, 0)
        assert 1 <= unread <= 8 and len(fake_server.chat_requests) == unread
        assert len(second_server.chat_requests) == 30
        second_server.fault_rates = fake_server.fault_rates  # every replica: raised, each asked once
        fake_server.reset_records()
        second_server.reset_records()
        with pytest.raises(UnreadableResponseError):
            await lm.chat(question(0))
    assert (len(fake_server.chat_requests), len(second_server.chat_requests)) == (1, 1)
    warnings = [r.getMessage() for r in caplog.records if "never reads" in r.getMessage()]
    assert len(warnings) == 2 and fake_server.base_url.rstrip("/") in warnings[0]


async def test_a_revoked_key_among_keys_sharing_a_url_is_named_by_its_endpoints_place(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One server given twice, a key each: the warning named only the URL, the same for both, so it
    did not say which key to replace."""
    caplog.set_level("WARNING")
    async with FakeOpenAIServer(api_key="sk-one-1111") as server:
        endpoints = [Endpoint(server.base_url, api_key=key) for key in ("sk-one-1111", "sk-two-2222")]
        async with OpenAICompatibleLM("m", endpoints, max_concurrency=4, max_retries=0) as lm:
            for index in range(6):
                await lm.chat(question(index))
    assert lm.usage.errors == 0
    warnings = [r.getMessage() for r in caplog.records if "refused the API key" in r.getMessage()]
    assert len(warnings) == 1 and "(endpoint 2 of 2)" in warnings[0]
    assert "sk-one" not in caplog.text and "sk-two" not in caplog.text


async def test_a_replica_whose_accounts_quota_is_spent_is_taken_out_of_rotation(
    fake_server: FakeOpenAIServer, second_server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    """One replica's account spent its quota (OpenAI's 429 ``insufficient_quota``): it was paused as if
    rate limited and kept its share of the requests, each failing once its pauses ran out (an
    evaluation left them unscored) while the other replica answered."""
    caplog.set_level("WARNING")
    fake_server.fault_rates = [(Fault.quota_exhausted(), 1.0)]
    urls = [fake_server.base_url, second_server.base_url]
    async with OpenAICompatibleLM("m", urls, api_key=TEST_API_KEY, max_concurrency=8, max_retries=0) as lm:
        await run_calls(lm, 20)
        spent = len(fake_server.chat_requests)
        for index in range(10):
            await lm.chat(question(100 + index))
        assert (lm.usage.calls, lm.usage.errors, lm.usage.rate_limited) == (30, 0, 0)
        assert 1 <= spent <= 8 and len(fake_server.chat_requests) == spent
        assert len(second_server.chat_requests) == 30
        second_server.fault_rates = fake_server.fault_rates  # every replica: raised, each asked once
        fake_server.reset_records()
        second_server.reset_records()
        with pytest.raises(QuotaExhaustedError):
            await lm.chat(question(0))
    assert (len(fake_server.chat_requests), len(second_server.chat_requests)) == (1, 1)
    warnings = [r.getMessage() for r in caplog.records if "quota or credit spent" in r.getMessage()]
    assert len(warnings) == 2 and fake_server.base_url.rstrip("/") in warnings[0]
    assert "add credit" in warnings[0] and TEST_API_KEY not in caplog.text
