"""Reading a model's reply back into a predictor's output fields (the other half of
:mod:`aprompt.program.adapter`, which renders the prompt).

A reply is read by markers: an output field's ``Label:`` (or its name) at a line start, any case, with
markdown around it; a value runs to the next marker, input labels included. :func:`read_reply` says
what it read and what it could not (never raises); :func:`parse_reply` raises
:class:`~aprompt.ParseError` instead.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from aprompt._errors import ParseError
from aprompt.program._coerce import CoercionError, coerce, format_output
from aprompt.program.fields import Field, is_list
from aprompt.program.signature import Signature

if TYPE_CHECKING:
    from aprompt.program.adapter import ReplyFormat

__all__ = ["Reading", "answered_before_cut", "describe_problems", "parse_reply", "read_reply"]


@attrs.frozen
class Reading:
    """What could be read from one reply: typed values, and a reason per missing/invalid field."""

    values: dict[str, Any]
    problems: dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.problems


_EMPH = r"(?:\*\*|__|\*|_)?"
_BOLD = r"(?:\*\*|__)?"


def _label_pattern(label: str, name: str) -> str:
    # Match the label and the bare name, with spaces, underscores or hyphens between words.
    forms = set()
    for form in (label, name):
        words = [w for w in re.split(r"[\s_]+", form) if w]
        forms.add(r"[ \t_-]+".join(re.escape(w) for w in words))
    return "(?:" + "|".join(sorted(forms, key=lambda s: (-len(s), s))) + ")"


def _inline_patterns(field: Field) -> tuple[re.Pattern[str], ...]:
    return _compiled_inline_patterns(field.label, field.name)


# Every reply is read with the same few fields' patterns: built once per (label, name), not per reply
# (building and looking them up in re's own cache was ~3 % of a run's client CPU), and each only when a
# reply could hold its marker (compiling one is ~0.2 ms: a run's compiles were ~2 % of its client CPU).
@functools.lru_cache(maxsize=1024)
def _colon_line_pattern(field_label: str, field_name: str) -> re.Pattern[str]:
    """``Label: value`` at a line's start (after list, quote, heading or emphasis marks); needs a colon."""
    label = _label_pattern(field_label, field_name)
    # Possessive whitespace runs (``*+``) keep matching linear on long runs of blanks.
    return re.compile(
        rf"^[ \t>]*+(?:[-*+•][ \t]++)?(?:\#{{1,6}}[ \t]*+)?{_EMPH}[ \t]*+{label}"
        rf"[ \t]*+{_EMPH}[ \t]*+:[ \t]*+{_BOLD}[ \t]*+",
        re.IGNORECASE | re.MULTILINE,
    )


@functools.lru_cache(maxsize=1024)
def _heading_line_pattern(field_label: str, field_name: str) -> re.Pattern[str]:
    """A line that is the label alone, as a heading (``#``) or in bold (``**``, ``__``)."""
    label = _label_pattern(field_label, field_name)
    return re.compile(
        rf"^[ \t>]*+(?:\#{{1,6}}[ \t]*+{_BOLD}|\*\*|__)[ \t]*+{label}"
        rf"[ \t]*+{_BOLD}[ \t]*+:?[ \t]*+{_BOLD}[ \t]*+$",
        re.IGNORECASE | re.MULTILINE,
    )


@functools.lru_cache(maxsize=1024)
def _compiled_inline_patterns(field_label: str, field_name: str) -> tuple[re.Pattern[str], ...]:
    label = rf"(?<!\w){_label_pattern(field_label, field_name)}"
    colon = rf"{label}[ \t]*+{_BOLD}[ \t]*+:[ \t]*+{_BOLD}[ \t]*+"
    # Small models answer in prose ("The answer is 3."): "<label> is" is the weakest marker.
    prose = rf"{label}[ \t]++is\b[ \t]*+:?[ \t]*+{_BOLD}[ \t]*+"
    return tuple(re.compile(p, re.IGNORECASE) for p in (colon, prose))


# (start, end, output field name); the name is None for an input label, which only ends a value.
_Marker = tuple[int, int, str | None]


def _find_markers(signature: Signature, text: str, reply_format: ReplyFormat = "fields") -> list[_Marker]:
    found: list[_Marker] = []
    # What each kind of line marker cannot do without: the patterns are neither compiled nor run otherwise.
    colon = ":" in text
    heading = "#" in text or "**" in text or "__" in text
    for field in signature.fields:
        name = field.name if field in signature.outputs else None
        if colon:
            pattern = _colon_line_pattern(field.label, field.name)
            found.extend([(m.start(), m.end(), name) for m in pattern.finditer(text)])
        if heading:
            pattern = _heading_line_pattern(field.label, field.name)
            found.extend([(m.start(), m.end(), name) for m in pattern.finditer(text)])
    present = {name for _, _, name in found}
    for field in signature.outputs:
        # Only a field with no line-start marker is looked for mid-line ("... so the answer: 4").
        if field.name not in present:
            patterns = _inline_patterns(field)
            if reply_format == "bare" and field.annotation is str:
                # Told to write the text alone, a model's "This summary is short: ..." is its text, not
                # a "<label> is" marker in prose.
                patterns = patterns[:1]
            for pattern in patterns:
                match = pattern.search(text)
                if match:
                    found.append((match.start(), match.end(), field.name))
                    break
    return _without_overlaps(found)


def _without_overlaps(markers: list[_Marker]) -> list[_Marker]:
    kept: list[_Marker] = []
    for marker in sorted(markers, key=lambda m: (m[0], -m[1])):
        if not kept or marker[0] >= kept[-1][1]:
            kept.append(marker)
    return kept


def _field_texts(markers: list[_Marker], text: str) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Each output field's values, one per marker occurrence, each running to the next marker; and how
    many of each field's values come before the reply goes on to a turn of its own (an input label after
    an output field: ``Question: ...`` and its answer are not this call's)."""
    texts: dict[str, list[str]] = {}
    own: dict[str, int] = {}
    answered = turn_over = False
    for i, (_, end, name) in enumerate(markers):
        if name is None:
            turn_over = turn_over or answered
            continue
        answered = True
        stop = markers[i + 1][0] if i + 1 < len(markers) else len(text)
        texts.setdefault(name, []).append(_clean(text[end:stop]))
        if not turn_over:
            own[name] = own.get(name, 0) + 1
    return texts, own


def _clean(value: str) -> str:
    value = value.strip()
    # "**Answer: 42**" leaves a dangling "**"; strip emphasis only from one-line values so that
    # multi-line text (e.g. reasoning with "* " bullets) is kept intact.
    return value if "\n" in value else value.strip("*").strip()


def read_reply(signature: Signature, text: str, reply_format: ReplyFormat = "fields") -> Reading:
    """Read every output field from ``text``; never raises.

    Markers are ``Label:`` (or the field name) at a line start, any case, with markdown around them
    (``**Answer:**``, ``## Answer``, ``- Answer:``); text before the first marker is ignored and a
    value runs to the next marker of any field (input labels included, so an echoed next question
    stops it). A field without a line-start marker is looked for mid-line: ``so the answer: 4``,
    else in prose, ``the answer is 4``. When a field appears several times, its first value that
    coerces wins, unless another of its values before the reply goes on to a turn of its own (an input
    label) reads as a different one: ``Answer: 3`` then ``Answer: 4`` is a problem, not 3; a repeat of
    the same value is fine, and a text field keeps its first. Unlabeled text before the first marker is
    the first output field's value when that field is text and has no marker (a model that reasons
    first and labels only its answer).
    With a single output field and no marker at all, the whole reply is the value; one that opens by
    echoing input labels has for value the lines after the echoes' (``Question: 3 dogs?\n12`` is 12).

    A ``"bare"`` reply is read the same way (so one that labels its value anyway, ``Answer: 4``,
    reads), except that an unlabeled value ends where the model goes on to echo an input label, and a
    text field is not looked for in prose (``This summary is short: ...`` is the summary, whole).
    """
    markers = _find_markers(signature, text, reply_format)
    texts, own = _field_texts(markers, text)
    first = signature.outputs[0]
    if len(signature.outputs) == 1 and not texts:
        texts = {first.name: _unlabeled_values(markers, text, reply_format, first.annotation is str)}
    elif texts and first.name not in texts and first.annotation is str:
        leading = _clean(text[: markers[0][0]])
        if leading:
            texts[first.name] = [leading]
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for field in signature.outputs:
        candidates = texts.get(field.name)
        if not candidates:
            problems[field.name] = "missing"
            continue
        errors = []
        for candidate in candidates:
            try:
                values[field.name] = coerce(candidate, field.annotation)
                break
            except CoercionError as exc:
                errors.append(str(exc))
        else:
            problems[field.name] = errors[0]
            continue
        # The labeled values after the one read (those before it did not read; it is itself).
        later = candidates[len(errors) + 1 : own.get(field.name, 0)]
        other = _other_value(field, later, values[field.name]) if later else None
        if other is not None:
            del values[field.name]
            problems[field.name] = other
    return Reading(values, problems)


def _other_value(field: Field, texts: Sequence[str], value: Any) -> str | None:
    """Why ``value`` is not the field's answer when another of its labeled ``texts`` reads as another
    value (``Answer: 3`` then ``Answer: 4``: the model changed its mind, and which one it meant the reply
    does not say), or ``None``. Free text is exempt: two wordings of one answer differ as text."""
    if field.annotation is str:
        return None
    for text in texts:
        try:
            read = coerce(text, field.annotation)
        except CoercionError:
            continue  # an echoed placeholder (``Answer: <an integer>``) before the value
        if (type(read), read) != (type(value), value):
            shown = ", ".join(format_output(v, field.annotation) for v in (value, read))
            return f"gives two different values ({shown}); give one"
    return None


def _unlabeled_values(
    markers: list[_Marker], text: str, reply_format: ReplyFormat, text_field: bool
) -> list[str]:
    """A single output's value when no marker labels it: the whole reply; for a bare reply, first the
    text before an echoed input label (``4\nQuestion: ...``), then the whole reply. A reply that opens
    by echoing an input (``Question: ...\n12``) has for value only the lines after the echo's line
    (see :func:`_after_echo` for a text field's echo with nothing after it)."""
    after = _after_echo(markers, text, text_field)
    if after is not None:
        value = _clean(after[0])
        return [value] if value else []
    whole = _clean(text)
    if reply_format == "bare" and markers and markers[0][0] > 0:
        before = _clean(text[: markers[0][0]])
        if before:
            return [before, whole]
    return [whole]


def _after_echo(markers: list[_Marker], text: str, text_field: bool) -> tuple[str, bool] | None:
    """For a reply of input markers only that opens with one (the model echoes ``Question: ...`` before
    its value): the first text after an echo's first line up to the next marker, and whether a marker
    follows it; else ``None``. An echo is never the value: a number in the question would read as one.

    With nothing after the echoes, a text field (``text_field``) gets ``None``, the whole reply being its
    value as before: its answer may share the echo's line (``Current instruction: ... New instruction:
    ...``, which a proposer's reply cleaning reads). A typed field gets an empty value (missing)."""
    if not markers or text[: markers[0][0]].strip():
        return None
    for i, (_, end, _) in enumerate(markers):
        stop = markers[i + 1][0] if i + 1 < len(markers) else len(text)
        rest = text[end:stop].partition("\n")[2]
        if rest.strip():
            return rest, i + 1 < len(markers)
    return None if text_field else ("", False)


def answered_before_cut(signature: Signature, text: str, reply_format: ReplyFormat = "fields") -> bool:
    """Whether ``text``, a reply cut at its token budget, already holds its whole answer: every output
    field reads, and the last one written ended before the cut — a later marker follows it (the model
    went on to echo an input label), or, for a field that is not free text, a line break ends its value.

    ``Answer: 91`` cut from ``Answer: 919`` does not; ``Answer: 919\nBecause ...`` does. An unlabeled
    bare value ends the same ways: an input label follows it, or a line break ends a value that is not
    free text (``91`` does not, ``919\nBecause ...`` does).
    """
    if not read_reply(signature, text, reply_format).ok:
        return False
    markers = _find_markers(signature, text, reply_format)
    written = [marker for marker in markers if marker[2] is not None]
    if not written:
        if reply_format != "bare":
            return False  # the whole reply is the value: nothing shows where it would have ended
        # An unlabeled bare value ends at an echoed input label after it, or at a line break.
        after = _after_echo(markers, text, signature.outputs[0].annotation is str)
        if after is not None:
            return after[1] or _line_ended(signature.outputs[0], after[0].lstrip())
        return any(start > 0 for start, _, _ in markers) or _line_ended(signature.outputs[0], text.lstrip())
    last = written[-1]
    if any(marker[0] >= last[1] for marker in markers):
        return True
    field = next(f for f in signature.outputs if f.name == last[2])
    return _line_ended(field, text[last[1] :])


def _line_ended(field: Field, value: str) -> bool:
    """Whether a line break ends ``value`` (the text after its marker) on a non-empty line; free text
    may run on over several lines, so it never counts as ended, nor does a list but one closed on its
    line (``["a", "b"]``): bullets or a JSON list over several lines may have had more items."""
    if field.annotation is str:
        return False
    value = value.lstrip(" \t")
    if is_list(field.annotation):
        line = value.split("\n", 1)[0].strip().rstrip(".")
        return "\n" in value and line.startswith("[") and line.endswith("]")
    line_end = value.find("\n")
    return line_end > 0 and bool(value[:line_end].strip())


def parse_reply(signature: Signature, text: str, reply_format: ReplyFormat = "fields") -> dict[str, Any]:
    """Read the output fields from ``text`` or raise :class:`~aprompt.ParseError`.

    Example::

        parse_reply(Signature.parse("q -> answer: int"), "**Answer:** about 42.")  # {"answer": 42}
    """
    reading = read_reply(signature, text, reply_format)
    if reading.problems:
        raise ParseError(describe_problems(reading.problems), raw_text=text, missing=tuple(reading.problems))
    return reading.values


def describe_problems(problems: Mapping[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in problems.items())
