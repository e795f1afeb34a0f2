import json

import anyio
import httpx
import pytest

from aprompt.testing.fake_anthropic import FakeAnthropicServer
from aprompt.testing.fake_openai import FakeOpenAIServer, Fault
from tests.conftest import TEST_API_KEY

pytestmark = pytest.mark.anyio


async def _post(client: httpx.AsyncClient, server: FakeOpenAIServer) -> httpx.Response:
    return await client.post(
        f"{server.base_url}/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    )


async def test_fake_server_answers_with_the_responder_text(fake_server: FakeOpenAIServer) -> None:
    fake_server.responder = lambda req: f"echo {req.last_user}"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TEST_API_KEY}"}) as client:
        response = await _post(client, fake_server)
    assert response.json()["choices"][0]["message"]["content"] == "echo hi"
    assert response.json()["usage"]["prompt_tokens"] == 1


async def test_fake_server_rejects_a_wrong_key(fake_server: FakeOpenAIServer) -> None:
    async with httpx.AsyncClient(headers={"Authorization": "Bearer nope"}) as client:
        response = await _post(client, fake_server)
    assert response.status_code == 401


async def test_fake_server_applies_queued_faults_in_order(fake_server: FakeOpenAIServer) -> None:
    fake_server.queue_faults(Fault.rate_limited("3"), Fault.http_status(503))
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TEST_API_KEY}"}) as client:
        first, second, third = [await _post(client, fake_server) for _ in range(3)]
    assert (first.status_code, first.headers["retry-after"]) == (429, "3")
    assert second.status_code == 503
    assert third.status_code == 200


# -- fault modes: outages, scripts, replies that are not answers, slow and huge bodies ---------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(headers={"Authorization": f"Bearer {TEST_API_KEY}"}, timeout=30.0)


def _content(response: httpx.Response) -> tuple[str | None, str]:
    choice = response.json()["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


async def test_an_outage_answers_503_until_it_ends(fake_server: FakeOpenAIServer) -> None:
    fake_server.outage(seconds=0.3)
    async with _client() as client:
        during = await _post(client, fake_server)
        await anyio.sleep(0.35)
        after = await _post(client, fake_server)
    assert during.status_code == 503
    assert after.status_code == 200
    assert fake_server.refused_in_outage == 1
    assert [r.fault for r in fake_server.requests] == ["outage:503", None]


async def test_an_outage_in_close_mode_drops_every_connection(fake_server: FakeOpenAIServer) -> None:
    fake_server.outage(seconds=10.0, mode="close")
    async with _client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await _post(client, fake_server)
        fake_server.end_outage()
        assert (await _post(client, fake_server)).status_code == 200


async def test_an_outage_can_start_later(fake_server: FakeOpenAIServer) -> None:
    fake_server.outage(seconds=10.0, after=0.2)
    async with _client() as client:
        before = await _post(client, fake_server)
        await anyio.sleep(0.25)
        during = await _post(client, fake_server)
    assert (before.status_code, during.status_code) == (200, 503)
    assert fake_server.in_outage


async def test_an_outage_refuses_every_path(fake_server: FakeOpenAIServer) -> None:
    fake_server.outage(seconds=10.0)
    async with _client() as client:
        response = await client.get(f"{fake_server.base_url}/models")
    assert response.status_code == 503


def test_an_outage_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        FakeOpenAIServer().outage(seconds=1.0, mode="404")


async def test_a_script_gives_each_request_its_entry_then_falls_back(fake_server: FakeOpenAIServer) -> None:
    fake_server.script([Fault.http_status(500), None, Fault.content_filter()])
    fake_server.queue_faults(Fault.http_status(502))
    async with _client() as client:
        responses = [await _post(client, fake_server) for _ in range(5)]
    assert [r.status_code for r in responses] == [500, 502, 200, 200, 200]
    assert _content(responses[2]) == ("", "content_filter")
    assert _content(responses[3]) == ("Answer: ok", "stop")


async def test_a_script_may_be_a_function_of_the_request_number(fake_server: FakeOpenAIServer) -> None:
    fake_server.script(lambda n: Fault.http_status(503) if n % 2 else None)
    async with _client() as client:
        statuses = [(await _post(client, fake_server)).status_code for _ in range(4)]
    assert statuses == [200, 503, 200, 503]


async def test_scripted_replies_set_content_finish_reason_and_delay(fake_server: FakeOpenAIServer) -> None:
    fake_server.script(
        [
            Fault.null_content(),
            Fault.empty_content(),
            Fault.truncated("Value: 91"),
            Fault.reply("slow", delay=0.3),
            Fault.reply("gone", status=500),
        ]
    )
    async with _client() as client:
        responses = [await _post(client, fake_server) for _ in range(5)]
    assert [_content(r) for r in responses[:4]] == [
        (None, "stop"),
        ("", "stop"),
        ("Value: 91", "length"),
        ("slow", "stop"),
    ]
    slow = fake_server.requests[3]
    assert slow.finished - slow.started >= 0.3
    assert (responses[4].status_code, responses[4].json()["error"]["message"]) == (500, "gone")


async def test_a_slow_body_trickles_after_the_headers(fake_server: FakeOpenAIServer) -> None:
    fake_server.queue_faults(Fault.slow_body(chunk_bytes=40, every=0.1))
    async with _client() as client:
        started = anyio.current_time()
        async with client.stream(
            "POST",
            f"{fake_server.base_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        ) as response:
            headers_after = anyio.current_time() - started
            pieces = [piece async for piece in response.aiter_raw()]
        total = anyio.current_time() - started
    body = b"".join(pieces)
    assert headers_after < 0.1
    assert total >= 0.1 * (len(body) // 40 - 1)
    assert len(pieces) >= 3
    assert json.loads(body)["choices"][0]["message"]["content"] == "Answer: ok"


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_huge_body_is_streamed_to_its_size(fake_server: FakeOpenAIServer, chunked: bool) -> None:
    fake_server.queue_faults(Fault.huge_body(megabytes=3, chunked=chunked))
    async with _client() as client:
        async with client.stream(
            "POST",
            f"{fake_server.base_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        ) as response:
            body = await response.aread()
    assert len(body) == 3 * 2**20
    assert ("content-length" in response.headers) is not chunked
    assert json.loads(body)["choices"][0]["message"]["content"] == "Answer: ok"


async def test_the_anthropic_fake_sends_scripted_stop_reasons_and_outages_in_its_format() -> None:
    async with FakeAnthropicServer() as server, _client() as client:
        server.script([Fault.truncated("Value: 91"), Fault.content_filter(), Fault.null_content()])
        headers = {"anthropic-version": "2023-06-01"}
        body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        url = f"{server.base_url}/v1/messages"
        replies = [(await client.post(url, json=body, headers=headers)).json() for _ in range(3)]
        server.outage(seconds=10.0, mode="529")
        refused = await client.post(url, json=body, headers=headers)
    assert [(r["content"], r["stop_reason"]) for r in replies] == [
        ([{"type": "text", "text": "Value: 91"}], "max_tokens"),
        ([{"type": "text", "text": ""}], "refusal"),
        ([], "end_turn"),
    ]
    assert refused.status_code == 529
    assert refused.json()["error"]["type"] == "overloaded_error"
