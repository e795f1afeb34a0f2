import httpx
import pytest

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
