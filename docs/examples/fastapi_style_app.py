"""An async web app answering with optimized prompts: a hand-written ASGI app, no web framework.

``POST /classify`` with ``{"ticket": "..."}`` answers ``{"team": "billing" | "bug" | "account"}``. The app
loads the prompts an optimization saved (``result.save(...)``) once, when it is built; then every request
shares one LM client and one program object: predictors keep no per-call state, so requests need no lock.
A FastAPI or Starlette handler would hold the same three lines (``use_lm``, call the program, return JSON).

Run it (the LM is ``OPENAI_BASE_URL`` + ``APROMPT_MODEL``, else the embedded local model)::

    python docs/examples/fastapi_style_app.py [saved_prompts.json]

That sends the sample tickets to the app in-process and prints the answers. Under an ASGI server the app
opens its own LM at lifespan startup; from ``docs/examples``:
``APROMPT_PROMPTS=saved_prompts.json uvicorn --factory fastapi_style_app:create_app``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import anyio
import httpx

import aprompt

Message = MutableMapping[str, Any]  # an ASGI event or scope
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SAMPLE_TICKETS = [
    "I was charged twice for my subscription this month.",
    "The app crashes with an error when I open settings.",
    "How do I change the email address on my login?",
]


def lm_from_environment() -> contextlib.AbstractAsyncContextManager[aprompt.OpenAICompatibleLM]:
    """``OPENAI_BASE_URL`` (+ ``APROMPT_MODEL``, key from ``OPENAI_API_KEY``), else the local model."""
    if os.environ.get("OPENAI_BASE_URL"):
        # The client reads $OPENAI_BASE_URL and $OPENAI_API_KEY itself.
        return aprompt.OpenAICompatibleLM(os.environ.get("APROMPT_MODEL", "gpt-4o-mini"))
    return aprompt.local_lm()


class TicketRouter:
    """The LM program: one predictor choosing the team for a support ticket."""

    def __init__(self) -> None:
        self.route = aprompt.Predict(
            "ticket -> team: Literal['billing', 'bug', 'account']",
            instruction="Choose the team that should handle this support ticket.",
            temperature=0.0,
        )

    async def __call__(self, ticket: str) -> aprompt.Prediction:
        return await self.route(ticket=ticket)


class RouterApp:
    """The ASGI app. Given no ``lm``, it opens one from the environment at lifespan startup."""

    def __init__(self, lm: aprompt.LM | None = None, prompts: str | os.PathLike[str] | None = None) -> None:
        self.router = TicketRouter()
        if prompts is not None:
            aprompt.load(self.router, prompts)  # a wrong file fails here, at startup, not per request
        self.lm = lm
        self._owned = contextlib.AsyncExitStack()

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        status, answer = await self._classify(scope, receive)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})

    async def _classify(self, scope: Message, receive: Receive) -> tuple[int, dict[str, str]]:
        if (scope.get("method"), scope["path"]) != ("POST", "/classify"):
            return 404, {"error": "only POST /classify is served"}
        try:
            ticket = json.loads(await read_body(receive))["ticket"]
        except (ValueError, KeyError, TypeError):
            return 400, {"error": 'send JSON like {"ticket": "..."}'}
        if self.lm is None:
            return 503, {"error": "the app has no LM yet"}
        try:
            with aprompt.use_lm(self.lm):  # this request's task only: nothing global changes
                prediction = await self.router(ticket=str(ticket))
        except aprompt.APromptError as exc:  # LM down or an unreadable reply: the upstream failed
            return 502, {"error": str(exc)}
        return 200, {"team": prediction.team}

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.lm is None:
                    self.lm = await self._owned.enter_async_context(lm_from_environment())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._owned.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def create_app() -> RouterApp:
    """The factory for an ASGI server; ``APROMPT_PROMPTS`` names a saved prompts file."""
    return RouterApp(prompts=os.environ.get("APROMPT_PROMPTS"))


async def main(
    lm: aprompt.LM, prompts: str | os.PathLike[str] | None = None, tickets: Sequence[str] = SAMPLE_TICKETS
) -> list[dict[str, str]]:
    """Send every ticket to the app at once, in-process through httpx's ASGI transport; the JSON answers."""
    answers: list[dict[str, str]] = [{} for _ in tickets]
    transport = httpx.ASGITransport(app=RouterApp(lm, prompts))
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:

        async def ask(index: int, ticket: str) -> None:
            response = await client.post("/classify", json={"ticket": ticket})
            response.raise_for_status()
            answers[index] = response.json()

        async with anyio.create_task_group() as group:
            for index, ticket in enumerate(tickets):
                group.start_soon(ask, index, ticket)
    return answers


async def run(prompts: str | None) -> None:
    async with lm_from_environment() as lm:
        for ticket, answer in zip(SAMPLE_TICKETS, await main(lm, prompts), strict=True):
            print(f"{answer['team']:>8}  {ticket}")


if __name__ == "__main__":
    anyio.run(run, sys.argv[1] if len(sys.argv) > 1 else None)
