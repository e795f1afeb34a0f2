"""The throughput benchmark's endpoint, run in its own process: a fake OpenAI-compatible server on
loopback with long-tailed latency, a hard rate limit (429 + Retry-After in whole seconds and
``retry-after-ms``, and OpenAI's ``x-ratelimit-*`` headers on every answer) and the simulated LM.

    .venv/bin/python -m bench.sim_server --task intent --rpm 300 --tpm 150000 --log requests.json

prints its base URL as the first line of stdout, serves until SIGTERM or SIGINT, then prints one JSON
line of counts: HTTP requests, 429s, answered calls, and the tokens of the answered calls; with
``--log``, it also writes every chat request's arrival and finish time (``time.monotonic()``, the
clock every process on the machine shares) and status to that file.

Latency models (``--latency``): ``lognormal`` (the default), log-normal with median 0.6 s and σ 0.5;
``capped``, 0.3 s plus a log-normal tail (median 0.25 s, σ 0.7), capped at 1.5 s in all. Both are
multiplied by ``--latency-scale``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import attrs

from aprompt.testing.fake_openai import FakeOpenAIServer, ServerRateLimit, estimate_tokens, serve_forever
from bench.simulated_lm import SimulatedLM, gold_answers, message_key
from bench.tasks import DEFAULT_DATA_DIR, TASKS

#: ``capped``: 300 ms plus a log-normal tail (median 250 ms), capped at 1,500 ms in all.
LATENCY_FLOOR_S = 0.3
LATENCY_CAP_S = 1.5
#: ``lognormal``: median 600 ms, σ 0.5 (mean 680 ms; 5 % of answers take over 1.37 s).
LOGNORMAL_MEDIAN_S = 0.6
LOGNORMAL_SIGMA = 0.5
LATENCY_MODELS = ("lognormal", "capped")


def latency_model(scale: float, model: str = "lognormal") -> Callable[[random.Random], float]:
    """Seconds per answer: ``scale × lognormal(median 0.6 s, σ 0.5)`` (``lognormal``) or
    ``scale × min(1.5, 0.3 + lognormal(median 0.25 s, σ 0.7))`` (``capped``)."""
    if model == "lognormal":
        return lambda rng: scale * rng.lognormvariate(math.log(LOGNORMAL_MEDIAN_S), LOGNORMAL_SIGMA)
    if model == "capped":
        return lambda rng: (
            scale * min(LATENCY_CAP_S, LATENCY_FLOOR_S + rng.lognormvariate(math.log(0.25), 0.7))
        )
    raise ValueError(f"latency model must be one of {', '.join(LATENCY_MODELS)}, not {model!r}")


def _draws(scale: float, model: str, n: int) -> list[float]:
    rng = random.Random(0)
    draw = latency_model(scale, model)
    return [draw(rng) for _ in range(n)]


def mean_latency(scale: float, model: str = "lognormal", draws: int = 100_000) -> float:
    """The latency model's mean (a fixed-seed Monte Carlo estimate)."""
    return statistics.fmean(_draws(scale, model, draws))


def median_latency(scale: float, model: str = "lognormal", draws: int = 100_000) -> float:
    """The latency model's median (exact for ``lognormal``, a fixed-seed estimate for ``capped``)."""
    if model == "lognormal":
        return scale * LOGNORMAL_MEDIAN_S
    return statistics.median(_draws(scale, model, draws))


def _duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``"20ms"``, ``"1.5s"``."""
    return f"{seconds * 1000:.0f}ms" if seconds < 1.0 else f"{seconds:.3g}s"


@attrs.define
class SimServer(FakeOpenAIServer):
    """The fake server with a 429's Retry-After in whole seconds (plus ``retry-after-ms``) and the
    rate-limit headers an OpenAI endpoint sends with every answer (200 or 429): ``x-ratelimit-limit-*``,
    ``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*`` for requests and tokens, read from the
    server's 60 s window; a reset is the time until the oldest entry of the window leaves it (when the
    next allowance frees)."""

    ratelimit_headers: bool = True

    async def _answer(self, *args: Any, **kwargs: Any) -> Any:
        status, payload, headers, fault = await super()._answer(*args, **kwargs)
        if status == 429 and "retry-after" in headers:
            # As OpenAI: whole seconds (HTTP's delay-seconds; LiteLLM ignores a fraction) and the
            # exact wait in retry-after-ms.
            seconds = float(headers["retry-after"])
            headers = {**headers, "retry-after": str(max(1, math.ceil(seconds)))}
            headers["retry-after-ms"] = str(round(seconds * 1000))
        if self.ratelimit_headers and self.rate_limit is not None and status in (200, 429):
            headers = {**headers, **self.limit_headers()}
        return status, payload, headers, fault

    def limit_headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers for the window as it is now."""
        limit = self.rate_limit
        assert limit is not None
        now = time.monotonic()
        window = [(t, n) for t, n in self._window if t > now - 60.0]
        reset = _duration(max(0.0, window[0][0] + 60.0 - now) if window else 0.0)
        headers = {}
        for kind, cap, used in (
            ("requests", limit.requests_per_minute, len(window)),
            ("tokens", limit.tokens_per_minute, sum(n for _, n in window)),
        ):
            if cap is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(int(cap))
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(cap) - used))
                headers[f"x-ratelimit-reset-{kind}"] = reset
        return headers


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
        # Identical requests (same body) answered more than once: what a response cache would save.
        "repeats": len(answered) - len({_body_key(r.body) for r in answered}),
    }


def _body_key(body: Any) -> str:
    return json.dumps(body, sort_keys=True, default=str)


def request_log(server: FakeOpenAIServer) -> list[tuple[float, float, int]]:
    """``(arrival, finish, status)`` of every chat request, in ``time.monotonic()`` seconds."""
    return [(r.started, r.finished, r.status) for r in server.chat_requests]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="intent", choices=sorted(TASKS))
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--rpm", type=float, default=None, help="requests per minute (429 above)")
    parser.add_argument("--tpm", type=float, default=None, help="tokens per minute (429 above)")
    parser.add_argument("--latency", default="lognormal", choices=LATENCY_MODELS, help="latency model")
    parser.add_argument("--latency-scale", type=float, default=1.0, help="multiplies every latency")
    parser.add_argument("--seed", type=int, default=0, help="seeds the latency draws")
    parser.add_argument(
        "--no-ratelimit-headers", action="store_true", help="send no x-ratelimit-* headers (429s only)"
    )
    parser.add_argument("--log", type=Path, default=None, help="write the request log (JSON) here at exit")
    args = parser.parse_args(argv)
    responder = simulated_lm(args.task, args.data_dir)
    limit = ServerRateLimit(args.rpm, args.tpm) if args.rpm or args.tpm else None
    server = SimServer(
        responder=responder,
        latency=latency_model(args.latency_scale, args.latency),
        rate_limit=limit,
        seed=args.seed,
        ratelimit_headers=not args.no_ratelimit_headers,
    )
    anyio.run(partial(serve_forever, server, ready=lambda url: print(url, flush=True)))
    if args.log is not None:
        args.log.write_text(json.dumps(request_log(server), separators=(",", ":")))
    print(json.dumps(counts(server, responder)), flush=True)


if __name__ == "__main__":
    main()
