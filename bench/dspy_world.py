"""The simulated world of ``tests/optimize/world.py``, answering DSPy's prompts instead of aprompt's.

A responder for :class:`aprompt.testing.fake_openai.FakeOpenAIServer`. DSPy's ChatAdapter lists a
signature's fields in its system message (``Your output fields are:`` then ``1. `code` (str): ...``) and
reads replies made of ``[[ ## field ## ]]`` sections ended by ``[[ ## completed ## ]]``. From the output
fields this responder tells apart:

- the two stages of the world's program: output ``code`` (extract) and ``answer`` (answer, which also
  takes ``code``). Each is right with the world's own probability
  (:func:`tests.optimize.world.stage_probability`) of the instruction in the system message and the items
  of the demos in the user turns before the last; a hash of the messages draws each answer;
- MIPROv2's instruction proposer (output ``proposed_instruction``): ``variant K``, K drawn from a hash of
  the request, as the world answers aprompt's proposer;
- anything else (DSPy's dataset and program summarizers): a plausible text per field.

The world's answers to aprompt's prompts are untouched: this is a second responder, not a change to it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aprompt.testing.fake_openai import ChatRequest
from bench.simulated_lm import dspy_output_fields
from tests.optimize.world import stage_probability

#: What the summarizers' fields get (any plausible text; the proposer's reply does not depend on it).
_TEXTS = {
    "observations": "Each question names one item; the answer is a short code derived from that item.",
    "summary": "Questions about numbered items, each answered with a short coded answer.",
    "program_description": "The program finds an item's code, then answers from the question and the code.",
    "module_description": "This module does one step of the two: find the code, or give the answer from it.",
}
_DEFAULT_TEXT = "Questions about numbered items with short coded answers."


def _draw(text: str) -> float:
    """A deterministic number in [0, 1] from text (as the world draws)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _items_in(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"item-(\d+)", text)]


def dspy_stage(system: str) -> str:
    """What a DSPy prompt asks, from its output fields: ``extract``, ``answer``, ``propose`` or ``other``."""
    outputs = [field.name for field in dspy_output_fields(system)]
    if outputs == ["code"]:
        return "extract"
    if outputs == ["answer"] and "`code`" in system.split("Your output fields are:", 1)[0]:
        return "answer"
    if "proposed_instruction" in outputs:
        return "propose"
    return "other"


def dspy_reply(values: Mapping[str, str]) -> str:
    """``[[ ## name ## ]]`` sections in order, ended by ``[[ ## completed ## ]]`` (DSPy's ChatAdapter)."""
    sections = [f"[[ ## {name} ## ]]\n{value}" for name, value in values.items()]
    return "\n\n".join([*sections, "[[ ## completed ## ]]"])


def demo_items_in(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """The item of each demo: the first ``item-N`` of every user turn between the system message and the
    last user turn (DSPy sends a demo as a user turn and an assistant turn)."""
    demos = [m for m in messages[1:-1] if m.get("role") == "user"]
    return [items[0] for items in (_items_in(str(m.get("content", ""))) for m in demos) if items]


class DSPyWorld:
    """The world's responder for DSPy's prompts; :attr:`proposals` counts the instruction proposals."""

    def __init__(self) -> None:
        self.proposals = 0

    def __call__(self, request: ChatRequest) -> str:
        system = str(request.messages[0].get("content", "")) if request.messages else ""
        stage = dspy_stage(system)
        if stage == "propose":
            self.proposals += 1
            k = int(_draw(str(request.messages) + str(request.params)) * 1000) % 50
            return dspy_reply({"proposed_instruction": f"Solve it carefully, variant {k}."})
        if stage == "other":
            fields = dspy_output_fields(system)
            return dspy_reply({f.name: _TEXTS.get(f.name, _DEFAULT_TEXT) for f in fields})
        p = stage_probability(stage, system, demo_items_in(request.messages))
        last = request.last_user
        found = _items_in(last)
        item = found[0] if found else -1
        right = found != [] and _draw(str(request.messages)) < p
        if stage == "extract":
            return dspy_reply({"code": f"code-{item}" if right else "unknown"})
        return dspy_reply({"answer": f"ans-{item}" if right and f"code-{item}" in last else "no idea"})
