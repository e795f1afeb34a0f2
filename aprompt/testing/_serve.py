"""The fake OpenAI server's command line: ``python -m aprompt.testing.fake_openai`` serves one in its own
process (for benchmarks that keep the server's CPU apart from the client's), and :func:`serve_forever`
runs any :class:`~aprompt.testing.fake_openai.FakeOpenAIServer` until SIGINT or SIGTERM.
:mod:`aprompt.testing.fake_openai` exports both names."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from aprompt.testing.fake_openai import FakeOpenAIServer


async def serve_forever(server: FakeOpenAIServer, *, ready: Callable[[str], None]) -> None:
    """Run ``server`` until SIGINT or SIGTERM, calling ``ready(base_url)`` once it listens."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with server:
            ready(server.base_url)
            async for _ in signals:
                return


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m aprompt.testing.fake_openai --port 0 --latency-ms 20``: serve in this process.

    Prints the base URL as the first line of stdout once listening (for benchmarks that run the
    server in a separate process, so that its CPU does not count as the client's), then serves
    until SIGINT or SIGTERM and prints how many chat requests it answered.
    """
    # Here, not above: fake_openai imports this module for its own names.
    from aprompt.testing.fake_openai import FakeOpenAIServer

    parser = argparse.ArgumentParser(prog="python -m aprompt.testing.fake_openai")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay of each answer")
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument("--text", default="Answer: ok", help="the assistant's reply")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    args = parser.parse_args(argv)
    text = args.text
    server = FakeOpenAIServer(
        responder=lambda request: text,
        latency=args.latency_ms / 1000.0,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        record=False,
    )

    def ready(base_url: str) -> None:
        print(base_url, flush=True)

    anyio.run(partial(serve_forever, server, ready=ready), backend=args.backend)
    print(f"answered {server.answered} chat requests", flush=True)
