"""The throughput benchmark's endpoint, run in its own process: a fake OpenAI-compatible server on
loopback with long-tailed latency, a hard rate limit (429 + Retry-After) and the simulated LM.

    .venv/bin/python -m bench.sim_server --task intent --rpm 300 --tpm 150000 --latency-scale 1

prints its base URL as the first line of stdout, serves until SIGTERM or SIGINT, then prints one JSON
line of counts: HTTP requests, 429s, answered calls, and the tokens of the answered calls.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from aprompt.testing.fake_openai import FakeOpenAIServer, ServerRateLimit, estimate_tokens, serve_forever
from bench.simulated_lm import SimulatedLM, gold_answers, message_key
from bench.tasks import DEFAULT_DATA_DIR, TASKS

#: Latency before scaling: 300 ms plus a log-normal tail (median 250 ms), capped at 1,500 ms in all.
LATENCY_FLOOR_S = 0.3
LATENCY_CAP_S = 1.5


def latency_model(scale: float) -> Callable[[random.Random], float]:
    """Seconds per answer: ``scale × min(1.5, 0.3 + lognormal(median 0.25 s, sigma 0.7))``."""

    def draw(rng: random.Random) -> float:
        tail = rng.lognormvariate(math.log(0.25), 0.7)
        return scale * min(LATENCY_CAP_S, LATENCY_FLOOR_S + tail)

    return draw


def mean_latency(scale: float, draws: int = 100_000) -> float:
    """The latency model's mean (a fixed-seed Monte Carlo estimate)."""
    rng = random.Random(0)
    draw = latency_model(scale)
    return sum(draw(rng) for _ in range(draws)) / draws


def simulated_lm(task_name: str, data_dir: str | Path) -> SimulatedLM:
    """A simulated LM that knows the right answer of every example of the task's data."""
    task = TASKS[task_name]
    records = task.records(data_dir)
    gold = gold_answers((task.to_input(r), task.to_label(r)) for r in records)
    topic = "request" if task.input_name == "utterance" else "question"
    return SimulatedLM(gold, frozenset({task.answer_name}), topic=topic)


def counts(server: FakeOpenAIServer, responder: SimulatedLM) -> dict[str, Any]:
    """What the server saw: requests, 429s, answered calls and their tokens (as it reports them), and
    calls given up: distinct prompts that got a 429 and never an answer (the client stopped retrying)."""
    chats = server.chat_requests
    answered = [r for r in chats if r.status == 200]
    answered_keys = {message_key((r.body or {}).get("messages", [])) for r in answered}
    limited_keys = {message_key((r.body or {}).get("messages", [])) for r in chats if r.status == 429}
    prompt_tokens = completion_tokens = 0
    for request in answered:
        messages = (request.body or {}).get("messages", [])
        prompt_tokens += estimate_tokens("\n".join(str(m.get("content", "")) for m in messages))
        chars = responder.completion_chars.get(message_key(messages), 0)
        completion_tokens += max(1, math.ceil(chars / 4)) if chars else 0
    return {
        "requests": len(chats),
        "rate_limited": sum(1 for r in chats if r.status == 429),
        "answered": len(answered),
        "gave_up": len(limited_keys - answered_keys),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "max_in_flight": server.max_in_flight,
        "first_request": min((r.started for r in chats), default=None),
        "last_answer": max((r.finished for r in chats), default=None),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="intent", choices=sorted(TASKS))
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--rpm", type=float, default=None, help="requests per minute (429 above)")
    parser.add_argument("--tpm", type=float, default=None, help="tokens per minute (429 above)")
    parser.add_argument("--latency-scale", type=float, default=1.0, help="multiplies every latency")
    parser.add_argument("--seed", type=int, default=0, help="seeds the latency draws")
    args = parser.parse_args(argv)
    responder = simulated_lm(args.task, args.data_dir)
    limit = ServerRateLimit(args.rpm, args.tpm) if args.rpm or args.tpm else None
    server = FakeOpenAIServer(
        responder=responder, latency=latency_model(args.latency_scale), rate_limit=limit, seed=args.seed
    )
    anyio.run(partial(serve_forever, server, ready=lambda url: print(url, flush=True)))
    print(json.dumps(counts(server, responder)), flush=True)


if __name__ == "__main__":
    main()
