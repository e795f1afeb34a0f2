"""Which fault each chat request of a fake server meets, and outages (see
:mod:`aprompt.testing.fake_openai`): the script, else the queue, else the seeded rates; an outage's
window and its refusals; and the answers of the faults that fail a request before any reply is made."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence

import anyio
import attrs

from aprompt.testing._http_reply import Answer
from aprompt.testing._wire import FROM_RESPONDER, Fault

__all__ = [
    "OUTAGE_MODES",
    "FaultSchedule",
    "Outage",
    "Script",
    "fault_name",
    "injected_failure",
    "responder_reply",
]

#: What :meth:`~aprompt.testing.fake_openai.FakeOpenAIServer.script` takes: one entry per chat request,
#: or a function of its number.
Script = Sequence[Fault | None] | Callable[[int], Fault | None]

OUTAGE_MODES = ("close", "500", "502", "503", "504", "529", "429")


@attrs.define
class FaultSchedule:
    """The faults to come: a script of the next chat requests, and a queue behind it."""

    queued: deque[Fault] = attrs.field(factory=deque)
    script: Script | None = None
    scripted: int = 0

    def set_script(self, steps: Script | None) -> None:
        """Script the chat requests from now (entry ``n`` for the ``n``-th); None removes the script."""
        self.script = steps
        self.scripted = 0

    def next(self, fault_rates: Sequence[tuple[Fault, float]], rng: random.Random) -> Fault | None:
        """The next chat request's fault: scripted, else queued, else drawn at ``fault_rates``."""
        if self.script is not None:
            number, self.scripted = self.scripted, self.scripted + 1
            if callable(self.script):
                step = self.script(number)
            else:
                step = self.script[number] if number < len(self.script) else None
            if step is not None:
                return step
        if self.queued:
            return self.queued.popleft()
        for fault, rate in fault_rates:
            if rng.random() < rate:
                return fault
        return None


@attrs.frozen
class Outage:
    """Every request fails from ``start`` until ``end`` (monotonic seconds), as ``mode`` says."""

    start: float
    end: float
    mode: str

    @classmethod
    def starting(cls, now: float, seconds: float, *, mode: str, after: float) -> Outage:
        """An outage from ``after`` seconds past ``now``, for ``seconds``; ValueError for a bad one."""
        if mode not in OUTAGE_MODES:
            raise ValueError(f"mode must be one of {OUTAGE_MODES}, got {mode!r}")
        if seconds < 0 or after < 0:
            raise ValueError(f"seconds and after must be >= 0, got {seconds!r}, {after!r}")
        start = now + after
        return cls(start, start + seconds, mode)

    def covers(self, now: float) -> bool:
        return self.start <= now < self.end

    def refusal(self, error_payload: Callable[[int, str], bytes]) -> Answer:
        """The answer to a request it refuses: its status, or a dropped connection."""
        if self.mode == "close":
            return -1, b"", {}, "outage:close"
        status = int(self.mode)
        extra = {"retry-after": "1"} if status == 429 else {}
        return status, error_payload(status, "service unavailable (outage)"), extra, f"outage:{status}"


async def injected_failure(
    fault: Fault | None, latency: float, error_payload: Callable[[int, str], bytes]
) -> Answer | None:
    """The answer of a fault that fails before any reply is made, or None."""
    if fault is None:
        return None
    if fault.kind == "drop":
        await anyio.sleep(min(latency, 0.05))
        return -1, b"", {}, "drop"
    if fault.kind == "status":
        extra = {"retry-after": fault.retry_after} if fault.retry_after else {}
        await anyio.sleep(min(latency, 0.05))
        error = error_payload(fault.status, fault.message)
        return fault.status, error, extra, f"status:{fault.status}"
    if fault.kind == "reply" and fault.status != 200:
        await anyio.sleep(latency)
        message = fault.content if isinstance(fault.content, str) else "scripted failure"
        return fault.status, error_payload(fault.status, message), {}, f"reply:{fault.status}"
    return None


def responder_reply(reply: Fault) -> Fault:
    """A responder's ``Fault.reply()``; ValueError for any other fault."""
    if reply.kind != "reply" or reply.status != 200:
        raise ValueError(f"a responder may return only a Fault.reply() with status 200, got {reply!r}")
    return reply if reply.content is not FROM_RESPONDER else attrs.evolve(reply, content="")


def fault_name(fault: Fault | None) -> str | None:
    """The name a request's record gives ``fault`` (None: no fault)."""
    if fault is None:
        return None
    if fault.kind == "reply":
        return f"reply:{fault.finish_reason}" if fault.finish_reason else "reply"
    return fault.kind
