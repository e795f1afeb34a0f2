"""A simulated LM for the throughput benchmark: it answers every prompt of aprompt and of DSPy in that
library's own reply format, so both parse every reply and the benchmark measures scheduling, not parsing.

- aprompt prompts end their system message with ``Reply in exactly this format ...`` and one
  ``Label: <placeholder>`` line per output field; the reply is those lines filled in.
- DSPy's ChatAdapter lists ``Your output fields are:`` as ``1. `name` (type): ...``; the reply is
  ``[[ ## name ## ]]`` sections and ``[[ ## completed ## ]]``.

The same holds for the optimizers' own prompts (data summaries, program descriptions, instruction
proposals): every text field gets a plausible text, distinct per prompt so proposals never collide.

The answer field of a known example (found in the last user message) is right with a probability set by
the rest of the prompt (instruction and demos): each prompt has its own hidden quality in
[0.35, 0.85], so some candidates really are better and the search has something to find. All draws
are hashes of the prompt, so the same request always gets the same reply (caches replay exactly).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

_APROMPT_FORMAT = "Reply in exactly this format, each field on its own line, in this order:\n"
_APROMPT_AGAIN = "in exactly this format:\n"
_DSPY_OUTPUTS = re.compile(r"Your output fields are:\n(.*?)\n(?:All interactions|\Z)", re.DOTALL)
_DSPY_FIELD = re.compile(r"^\d+\. `(\w+)` \((.*?)\)(?::|$)", re.MULTILINE)

_TEXTS = {
    "proposed_instruction": "Read the {topic} carefully and give the single best answer; check it first",
    "observations": "The examples pair a short {topic} with one label; labels repeat, inputs vary in length",
    "summary": "A dataset of short {topic} inputs, each with one correct label from a small fixed set",
    "program_description": "The program reads the {topic} and predicts the label with one LM call",
    "module_description": "This module maps the {topic} to its label",
    "reasoning": "The {topic} mentions what is wanted, so the answer follows from it",
}
_DEFAULT_TEXT = "a short phrase about the {topic}"


def _unit(*parts: str) -> float:
    """A deterministic draw in [0, 1) from text."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@attrs.frozen
class OutputField:
    """One field the reply must fill: its name, how to write it, and its type as the prompt states it."""

    name: str
    label: str
    kind: str  # "int", "choice", "bool" or "text"
    choices: tuple[str, ...] = ()


@attrs.define
class SimulatedLM:
    """A responder for :class:`aprompt.testing.fake_openai.FakeOpenAIServer`.

    Args:
        gold: program input text → the right answer, for the examples the benchmark uses.
        answer_fields: names of the fields that carry a program's final answer.
        quality_range: the hidden per-prompt accuracy is drawn uniformly from this range.
        topic: a word for the generic texts ("request", "question").
    """

    gold: Mapping[str, Any]
    answer_fields: frozenset[str]
    quality_range: tuple[float, float] = (0.35, 0.85)
    topic: str = "request"
    completion_chars: dict[str, int] = attrs.field(factory=dict)

    def __call__(self, request: Any) -> str:
        messages: Sequence[Mapping[str, Any]] = request.messages
        reply = self.reply(messages)
        self.completion_chars[message_key(messages)] = len(reply)
        return reply

    def reply(self, messages: Sequence[Mapping[str, Any]]) -> str:
        system = next((str(m.get("content", "")) for m in messages if m.get("role") == "system"), "")
        last_user = next(
            (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        context = "\n".join(str(m.get("content", "")) for m in messages[:-1])
        dspy_fields = dspy_output_fields(system)
        if dspy_fields:
            values = {f.name: self.value(f, context, last_user) for f in dspy_fields}
            sections = [f"[[ ## {name} ## ]]\n{value}" for name, value in values.items()]
            return "\n\n".join([*sections, "[[ ## completed ## ]]"])
        fields = aprompt_output_fields(last_user) or aprompt_output_fields(system)
        if not fields:
            return "Answer: ok"
        return "\n".join(f"{f.label}: {self.value(f, context, last_user)}" for f in fields)

    def value(self, field: OutputField, context: str, last_user: str) -> str:
        if field.name in self.answer_fields:
            found = self.find_gold(last_user)
            if found is not None:
                low, high = self.quality_range
                quality = low + (high - low) * _unit("quality", context)
                if _unit("correct", context, last_user) < quality:
                    return str(found)
                return self.wrong(field, found)
        if field.kind == "int":
            return str(1 + int(_unit("int", context, last_user) * 9))
        if field.kind == "choice":
            return field.choices[int(_unit("choice", context, last_user) * len(field.choices))]
        if field.kind == "bool":
            return "yes"
        template = _TEXTS.get(field.name, _DEFAULT_TEXT)
        tag = hashlib.blake2b((context + last_user).encode(), digest_size=3).hexdigest()
        return template.format(topic=self.topic) + f" (variant {tag})."

    def wrong(self, field: OutputField, right: Any) -> str:
        if field.kind == "choice" and len(field.choices) > 1:
            others = [c for c in field.choices if c != str(right)]
            return others[int(_unit("wrong", str(right)) * len(others))]
        if isinstance(right, int):
            return str(right + 1)
        return "unknown"

    def find_gold(self, text: str) -> Any:
        for source, answer in self.gold.items():
            if source in text:
                return answer
        return None


def message_key(messages: Sequence[Mapping[str, Any]]) -> str:
    """What identifies a request's reply: a digest of its messages."""
    blob = "\x1e".join(f"{m.get('role')}\x1f{m.get('content')}" for m in messages)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def aprompt_output_fields(text: str) -> list[OutputField]:
    """The ``Label: <placeholder>`` lines after aprompt's reply-format sentence (or its correction)."""
    for marker in (_APROMPT_FORMAT, _APROMPT_AGAIN):
        if marker in text:
            block = text.rsplit(marker, 1)[1]
            return [f for f in (_aprompt_field(line) for line in block.splitlines()) if f is not None]
    return []


def _aprompt_field(line: str) -> OutputField | None:
    match = re.fullmatch(r"(.+?): <(.*)>", line.strip())
    if match is None:
        return None
    label, placeholder = match.groups()
    name = label.strip().lower().replace(" ", "_")
    if placeholder == "an integer":
        return OutputField(name, label, "int")
    if placeholder == "yes or no":
        return OutputField(name, label, "bool")
    if placeholder.startswith("one of: "):
        return OutputField(name, label, "choice", tuple(placeholder[8:].split(", ")))
    return OutputField(name, label, "text")


def dspy_output_fields(system: str) -> list[OutputField]:
    """The output fields DSPy's ChatAdapter lists in its system message."""
    block = _DSPY_OUTPUTS.search(system)
    if block is None:
        return []
    fields = []
    for name, kind in _DSPY_FIELD.findall(block.group(1)):
        if kind == "int":
            fields.append(OutputField(name, name, "int"))
        elif kind == "bool":
            fields.append(OutputField(name, name, "bool"))
        elif kind.startswith("Literal["):
            fields.append(OutputField(name, name, "choice", tuple(re.findall(r"'([^']*)'", kind))))
        else:
            fields.append(OutputField(name, name, "text"))
    return fields


def gold_answers(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``{input text: answer}``, longest inputs first (so a short input inside a longer one never wins)."""
    return dict(sorted(pairs, key=lambda pair: -len(pair[0])))
