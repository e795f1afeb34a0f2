"""The chat format of a predictor: rendering its prompt (reading the model's reply back into fields is
:mod:`aprompt.program.reply_reading`; its names are importable from here too).

Layout (the stable part first, so a server-side prefix cache such as llama.cpp's reuses it across
calls):

1. system: the instruction, the input and output fields with their descriptions, and the reply
   format (``Label: value``, one output field per line, in order);
2. each demo as a user turn (its input fields as ``Label: value`` lines) and an assistant turn (its
   output fields the same way); a demo shows only the fields it has, so a labeled demo without
   ``reasoning`` just has no ``Reasoning:`` line;
3. a final user turn with this call's inputs.

The reply format is ``"fields"`` (the ``Label: value`` lines above) or, for a signature with exactly
one output field, ``"bare"``: the model replies with the value alone, and each demo's assistant turn
shows the value alone. A small model may find one of the two easier; :mod:`aprompt.optimize` can search
it.

Rendering is a pure function of (signature, instruction, demos, inputs, reply format): byte-identical
for equal arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from aprompt._errors import ConfigError
from aprompt.lm.types import Message
from aprompt.program._coerce import (
    describe_type,
    format_input,
    format_output,
)
from aprompt.program.fields import Field
from aprompt.program.signature import Signature
from aprompt.program.values import Demo

__all__ = [
    "REPLY_FORMATS",
    "Reading",
    "ReplyFormat",
    "bare_applies",
    "check_reply_format",
    "correction_message",
    "format_messages",
    "parse_reply",
    "read_reply",
]

# Reading replies was part of this module: its names stay importable from here.
from aprompt.program.reply_reading import Reading, parse_reply, read_reply

_NO_INPUTS = "(no inputs)"

#: ``"fields"``: one ``Label: value`` line per output field; ``"bare"``: the single output's value alone.
ReplyFormat = Literal["fields", "bare"]
REPLY_FORMATS: tuple[ReplyFormat, ...] = ("fields", "bare")


def bare_applies(signature: Signature) -> bool:
    """Whether ``signature`` can take a bare reply: it has exactly one output field (a
    ``ChainOfThought`` never does: its ``reasoning`` is a second one)."""
    return len(signature.outputs) == 1


def check_reply_format(signature: Signature, reply_format: object, where: str) -> ReplyFormat:
    """``reply_format`` if it is valid for ``signature``; :class:`ConfigError` naming ``where`` otherwise."""
    if reply_format not in REPLY_FORMATS:
        raise ConfigError(f"{where}: reply_format must be one of {list(REPLY_FORMATS)}, got {reply_format!r}")
    if reply_format == "bare" and not bare_applies(signature):
        raise ConfigError(
            f"{where}: reply_format 'bare' needs exactly one output field; "
            f"{signature} has {len(signature.outputs)} ({', '.join(signature.output_names)})"
        )
    return "bare" if reply_format == "bare" else "fields"


# -- rendering -------------------------------------------------------------------------------------
def format_messages(
    signature: Signature,
    inputs: Mapping[str, Any],
    *,
    demos: Sequence[Mapping[str, Any]] = (),
    instruction: str | None = None,
    reply_format: ReplyFormat = "fields",
) -> list[Message]:
    """The messages a predictor sends for ``inputs`` (``reply_format="bare"`` asks for the value alone;
    :class:`ConfigError` for a signature with several output fields).

    Example::

        format_messages(Signature.parse("question -> answer: int"), {"question": "2+2?"})
        # [{"role": "system", "content": "Given the fields `question`, ..."},
        #  {"role": "user", "content": "Question: 2+2?"}]
    """
    key = (id(signature), instruction, reply_format, tuple(map(id, demos)))
    memo = _PREFIXES.get(key)
    if memo is not None:
        prefix = memo[2]
    else:
        prefix = _prefix(signature, demos, instruction, reply_format)
        if all(_is_value(demo) for demo in demos):
            if len(_PREFIXES) >= _MAX_PREFIXES:
                _PREFIXES.clear()
            _PREFIXES[key] = (signature, tuple(demos), prefix)
    # Copies: an LM is free to change the messages it is given.
    messages: list[Message] = [dict(message) for message in prefix]  # type: ignore[misc]
    messages.append({"role": "user", "content": _input_block(signature, inputs) or _NO_INPUTS})
    return messages


# The system message and demo turns of the prompts in use, by the ids of (signature, demos) and the
# instruction and reply format: every call of a predictor under one prompt renders them alike, and
# rendering eight demos was ~5 % of an optimization's client CPU. An entry holds its signature and
# demos, so their ids cannot be reused while it lives; only demos that cannot change are kept.
_PrefixKey = tuple[int, str | None, str, tuple[int, ...]]
_PREFIXES: dict[_PrefixKey, tuple[Signature, tuple[Any, ...], list[Message]]] = {}
_MAX_PREFIXES = 512
_SCALARS = (str, int, float, bool, type(None))


def _is_value(demo: object) -> bool:
    """A :class:`~aprompt.program.values.Demo` (frozen) of plain scalars: rendered alike forever."""
    return isinstance(demo, Demo) and all(isinstance(value, _SCALARS) for value in demo.values())


def _prefix(
    signature: Signature,
    demos: Sequence[Mapping[str, Any]],
    instruction: str | None,
    reply_format: ReplyFormat,
) -> list[Message]:
    bare = check_reply_format(signature, reply_format, "format_messages") == "bare"
    messages: list[Message] = [
        {"role": "system", "content": system_prompt(signature, instruction, reply_format)}
    ]
    for demo in demos:
        user = _input_block(signature, demo)
        assistant = _bare_value(signature, demo) if bare else _output_block(signature, demo)
        if assistant:  # a demo without any output value teaches nothing
            messages.append({"role": "user", "content": user or _NO_INPUTS})
            messages.append({"role": "assistant", "content": assistant})
    return messages


def system_prompt(
    signature: Signature, instruction: str | None = None, reply_format: ReplyFormat = "fields"
) -> str:
    """Instruction, field descriptions and the reply format: the part shared by every call."""
    parts = [(instruction if instruction is not None else signature.instruction).strip()]
    if signature.inputs:
        parts.append("Input fields:\n" + "\n".join(_describe(f, False) for f in signature.inputs))
    parts.append("Output fields:\n" + "\n".join(_describe(f, True) for f in signature.outputs))
    parts.append(_format_request(signature, reply_format))
    return "\n\n".join(p for p in parts if p)


def _format_request(signature: Signature, reply_format: ReplyFormat) -> str:
    if check_reply_format(signature, reply_format, "system_prompt") == "bare":
        field = signature.outputs[0]
        kind = "" if field.annotation is str else f" ({describe_type(field.annotation)})"
        return f"Reply with the {field.label}{kind} only: no label, no other text."
    return "Reply in exactly this format, each field on its own line, in this order:\n" + reply_format_lines(
        signature
    )


def reply_format_lines(signature: Signature) -> str:
    """``Label: <placeholder>`` per output field, e.g. ``Answer: <an integer>``."""
    return "\n".join(f"{f.label}: <{_placeholder(f)}>" for f in signature.outputs)


def correction_message(
    signature: Signature, problems: Mapping[str, str], reply_format: ReplyFormat = "fields"
) -> str:
    """The follow-up user message after an unreadable reply: what was wrong, the exact format."""
    lines = [f"- {signature.field(name).label}: {why}" for name, why in problems.items()]
    if check_reply_format(signature, reply_format, "correction_message") == "bare":
        field = signature.outputs[0]
        kind = "" if field.annotation is str else f" ({describe_type(field.annotation)})"
        again = f"\nReply again with the {field.label}{kind} only: no label, no other text."
    else:
        again = (
            "\nReply again with every field on its own line, in exactly this format:\n"
            + reply_format_lines(signature)
        )
    return "Your reply could not be read:\n" + "\n".join(lines) + again


def _describe(field: Field, output: bool) -> str:
    kind = describe_type(field.annotation) if output and field.annotation is not str else ""
    description = field.description.strip()
    text = f"{description} ({kind})" if description and kind else description or kind
    return f"- {field.label}: {text}" if text else f"- {field.label}"


def _placeholder(field: Field) -> str:
    return field.name if field.annotation is str else describe_type(field.annotation)


def _input_block(signature: Signature, values: Mapping[str, Any]) -> str:
    lines = []
    for field in signature.inputs:
        if field.name in values:
            value = values[field.name]
            text = format_input(value)
            block = isinstance(value, list | tuple | set | frozenset) and text.startswith("[1] ")
            lines.append(f"{field.label}:\n{text}" if block else _line(field.label, text))
    return "\n".join(lines)


def _output_block(signature: Signature, values: Mapping[str, Any]) -> str:
    return "\n".join(
        _line(f.label, format_output(values[f.name], f.annotation))
        for f in signature.outputs
        if f.name in values
    )


def _bare_value(signature: Signature, values: Mapping[str, Any]) -> str:
    field = signature.outputs[0]
    return format_output(values[field.name], field.annotation) if field.name in values else ""


def _line(label: str, text: str) -> str:
    return f"{label}: {text}" if text else f"{label}:"
