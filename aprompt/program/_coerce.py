"""Turning a model's text into typed values, and typed values into text the parser reads back.

Coercion rules (each raises :class:`CoercionError` with a reason the model can act on):

- ``str``: the text as is (already stripped); empty text is an error.
- ``int``: the first number in the text. Thousands separators are dropped (``3,000`` → 3000), as are
  spaces between groups of three digits (``1 000`` → 1000; a digit after the last group, ``1 000 2``,
  is an error), a trailing dot or ``.0`` is fine (``42.`` → 42, ``7.0`` → 7), other words are ignored
  (``about 7`` → 7); a fraction (``4.5``, ``3/4``, ``3 / 4``) is an error, as is a decimal comma
  (``12,34``), a range or a choice of two (``10-20``, ``3 to 5``, ``between 3 and 5``, ``3 or 4``,
  ``3, 4``, ``3; 4``), which is no single number, and a calculation (``2 + 2 = 4``, ``6 × 7``), whose
  first number is no result. With no digits at all, the first number word from
  zero to twenty counts (``seven`` → 7), because small models often spell counts out; one joined to
  another (``twenty-one``, ``one hundred``) is an error, not its first word, as is a range of them
  (``three to five``). A minus sign (``−5``) is a minus.
  A number of 4300 digits or more (``1e9999``) is an error.
- ``float``: the first number, same rules (``1e-3``, ``.5``, ``-2`` all read); one past float's range
  (``1e400``) is an error, as is a percentage (``50%``, ``50 percent``): whether it stands for 50 or
  0.5 is the field's meaning, which the text does not say. (In an ``int`` field ``50%`` is 50.)
- ``bool``: ``yes``/``true`` or ``no``/``false`` as a whole word (any case), turned round by a
  ``not``, ``never`` or ``-n't`` right before it (``not true`` → False); a bare ``1``/``0``. A negation
  further before it in its clause (``I would not say it is true``) is an error. A reply
  whose words say both (``No, that is not correct... yes``) is an error, not its first word.
- ``Literal[...]``: the choice equal to the text after casefolding and turning punctuation into
  spaces; otherwise the single choice mentioned as a whole word or phrase in the text (two mentioned
  is an error, as is one after a ``not``, ``never`` or ``-n't`` in its clause, or right after a ``no``
  or a ``non``: ``not positive``, ``I would not say it is positive`` and ``non-positive`` are no
  ``positive``; so is one asked back
  and denied, ``positive? No.``). Text of punctuation only (``+``, ``-``) matches a choice only as written.
- ``list[T]``: a JSON (or Python) list, also inside a code fence or backticks or before a full stop;
  else, on one line, the items between its brackets (``[Paris, New York]``) read as below; else numbers
  separated by spaces (one written with a leading zero, as ``000`` in ``1 000``, is an error: one
  number in groups of digits or a list, the text does not say); else bullet or numbered lines; else
  one item per line; else comma-separated items (in a list of numbers an ``and`` parts two items too,
  ``1, 2 and 3``, and an item with a leading zero right after a comma, ``1,000``, is the same error).
  Each item is coerced to ``T``.

Formatting (:func:`format_output`) is the inverse for every value the rules accept: ints and floats
in ``repr`` form, bools as ``yes``/``no`` (a ``Literal`` choice, ``True`` included, as its text: the
prompt lists the choices so), lists as JSON.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
import typing
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from aprompt.program.fields import is_list, is_literal, normalize_choice
from aprompt.run.identity import stable_order

__all__ = ["CoercionError", "coerce", "describe_type", "format_input", "format_output"]


class CoercionError(ValueError):
    """A field's text does not hold a value of the field's type; the message says why."""


_NUMBER = re.compile(r"(?<![\d.])[-+]?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)
# A number word joined to another ("twenty-one", "one hundred"): a larger number than its first word.
_COMPOUND = re.compile(
    r"[\s-]+(?:" + "|".join(_WORDS[1:]) + r"|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|"
    r"thousand|million|billion|trillion|dozen)\b",
    re.IGNORECASE,
)
# Python's own bound on the digits of an int it reads or writes as text (``sys.int_info``).
_MAX_DIGITS = 4300
# What makes a number only the start of one: a fraction's slash (spaced or not), a decimal comma.
_GLUED = re.compile(r"[ \t]*/[ \t]*\d|,\d")
# A second number after the first as its range's other end or an alternative ("10-20", "3 to 5", "3 or 4",
# "3, 4", "3; 4"; "3,4" is a decimal comma):
# horizontal space only, so a bullet line after a value ("4\n- 2 cats") is not taken for one.
_RANGE = re.compile(
    r"[ \t]*(?:[-\u2013\u2014~]|[,;][ \t]|[ \t](?:to|or)[ \t])[ \t]*[-+]?\.?\d", re.IGNORECASE
)
_RANGE_WORD = re.compile(r"[ \t]+(?:to|or)[ \t]+(?:\d|(?:" + "|".join(_WORDS) + r")\b)", re.IGNORECASE)
# "between 3 and 5": an "and" makes a range only after a "between".
_BETWEEN = re.compile(r"\bbetween[ \t]+$", re.IGNORECASE)
_AND = re.compile(r"[ \t]+and[ \t]+(?:[-+]?\.?\d|(?:" + "|".join(_WORDS) + r")\b)", re.IGNORECASE)
# Thousands in groups of three after spaces ("1 000", "12\u202f345.5"): one number, not its first group.
_SPACED_GROUPS = re.compile(r"(?:[ \u00a0\u2009\u202f]\d{3}(?!\w))+(?:\.\d+(?!\w))?")
# An operator and a number after the first number: a calculation ("2 + 2 = 4", "6 × 7"), not its result.
_OPERATOR = re.compile(r"[ \t]*[+*\u00d7\u00f7=][ \t]*[-+\u2212]?\.?\d")
# A percentage: 50 or 0.5 as the field means it ("%", the full-width one, the word).
_PERCENT = re.compile(r"[ \t\u00a0]*(?:[%\uff05]|per[ \t]?cent\b)", re.IGNORECASE)
_SPACED_MORE = re.compile(r"[ \u00a0\u2009\u202f]\d")
_SPACED_LEAD = re.compile(r"[-+]?[1-9]\d{0,2}")  # "0 123" is no thousands grouping
_NO_SPACES = str.maketrans("", "", " \u00a0\u2009\u202f")
# Minus signs other than the ASCII hyphen-minus (the mathematical minus, the full-width one).
_MINUS = str.maketrans({"\u2212": "-", "\uff0d": "-"})
# A yes/no word, and a negation right before it ("not true", "isn't true"), which turns it round.
_BOOL_WORD = re.compile(r"(?:\b(not|never|\w+n['’]t)\s+)?\b(yes|true|no|false)\b", re.IGNORECASE)
# A negation in a clause before a yes/no word or a choice denies it, however far ("would not say it is").
_NEGATION = re.compile(r"\b(?:not|never|cannot|neither|nor|hardly)\b|\w+n['’]t\b", re.IGNORECASE)
# The same in normalized text ("isn't" is "isn t"), or a "no" or "non" right before the choice ("no positive",
# "non-negative", which is "non negative").
_NEGATION_NORMALIZED = re.compile(r" (?:not|never|cannot|neither|nor|hardly) |n t | non? $")
_CLAUSE_BREAK = re.compile(r"[,;:.!?()\[\]\n\u2013\u2014]| - ")
# A choice asked back and denied ("positive? No."): not an answer of that choice.
_ECHO_DENIED = re.compile(r"\?\s*(?:no|nope|not|false)\b", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d+[.)]|\[\d+\])\s+(.*\S)\s*$")


def coerce(text: str, annotation: Any) -> Any:
    """Read a value of type ``annotation`` from ``text`` (see the module docstring for the rules).

    Example::

        coerce("about 3,000 people", int)  # -> 3000
    """
    text = text.strip()
    if not text:
        raise CoercionError("the value is empty")
    if annotation is str:
        return text
    if annotation is bool:
        return _coerce_bool(text)
    if annotation is int or annotation is float:
        return _coerce_number(text, annotation)
    if is_literal(annotation):
        return _coerce_choice(text, typing.get_args(annotation))
    if is_list(annotation):
        item_type = typing.get_args(annotation)[0]
        return [_coerce_item(item, item_type) for item in _split_list(text, item_type in (int, float))]
    raise CoercionError(f"unsupported type {annotation!r}")


def _coerce_number(text: str, annotation: Any) -> int | float:
    text = text.translate(_MINUS)
    match = _NUMBER.search(text)
    if match is None:
        word = _NUMBER_WORD.search(text)
        if word is None:
            raise CoercionError(f"expected {describe_type(annotation)}, got {text[:80]!r}")
        if _COMPOUND.match(text, word.end()):
            raise CoercionError(f"write the number in digits, got {text[:80]!r}")
        if _RANGE_WORD.match(text, word.end()) or (
            _AND.match(text, word.end()) and _BETWEEN.search(text, 0, word.start())
        ):
            raise CoercionError(f"give a single number, not a range or a choice of two, got {text[:80]!r}")
        number = Decimal(_WORDS.index(word.group(1).lower()))
    else:
        digits, end = match.group(0), match.end()
        groups = _SPACED_GROUPS.match(text, end) if _SPACED_LEAD.fullmatch(digits) else None
        if groups is not None:
            digits, end = digits + groups.group(0).translate(_NO_SPACES), groups.end()
            if _SPACED_MORE.match(text, end):  # "1 000 2": one number or several, the text does not say
                raise CoercionError(f"write the number in digits without spaces, got {text[:80]!r}")
        if _RANGE.match(text, end) or (_AND.match(text, end) and _BETWEEN.search(text, 0, match.start())):
            # "10-20" is no single number: its first end would be a silently wrong value.
            raise CoercionError(f"give a single number, not a range or a choice of two, got {text[:80]!r}")
        if _OPERATOR.match(text, end):
            # "2 + 2 = 4": its first number is an operand, not the result.
            raise CoercionError(f"write the result alone, not a calculation, got {text[:80]!r}")
        if annotation is float and _PERCENT.match(text, end):
            raise CoercionError(
                f"write the number as the field means it, without a percent sign, got {text[:80]!r}"
            )
        if _GLUED.match(text, end):
            # "3/4" is not 3, nor "12,34" (a decimal comma) 12: a guess would be a silently wrong value.
            raise CoercionError(f"write the number in digits with a decimal point, got {text[:80]!r}")
        try:
            number = Decimal(digits.replace(",", ""))
        except InvalidOperation:  # pragma: no cover - the pattern only matches valid decimals
            raise CoercionError(f"cannot read the number {digits!r}") from None
        # "1e999999999" would take the event loop minutes to build as an int, and a float past
        # float's range is inf: neither is a number the program can use.
        if number.adjusted() >= _MAX_DIGITS or (annotation is float and math.isinf(float(number))):
            raise CoercionError(f"the number {digits[:80]!r} is too large")
    if annotation is float:
        return float(number)
    if number != number.to_integral_value():
        raise CoercionError(f"expected a whole number, got {digits if match else text!r}")
    return int(number)


def _coerce_bool(text: str) -> bool:
    if text in ("1", "0"):
        return text == "1"
    # Every yes/no word must say the same: "No, that is not correct... yes" is no answer, not its first
    # word's (a reply read the wrong way round would be scored as the prompt's answer).
    answers = set()
    for m in _BOOL_WORD.finditer(text):
        if not m.group(1) and _NEGATION.search(text, _clause_start(text, m.start()), m.start()):
            # "I would not say it is true": the negation turns round its clause, not plainly the word.
            raise CoercionError(f"answer with a plain yes or no, got {text[:80]!r}")
        answers.add((m.group(2).lower() in ("yes", "true")) != bool(m.group(1)))
    if not answers:
        raise CoercionError(f"expected yes or no, got {text[:80]!r}")
    if len(answers) > 1:
        raise CoercionError(f"says both yes and no; answer with one of them, got {text[:80]!r}")
    return answers.pop()


def _coerce_choice(text: str, choices: tuple[Any, ...]) -> Any:
    wanted = normalize_choice(text)
    if not wanted:  # punctuation only ("+", "-"): every such choice normalizes alike, so compared as written
        exact = [c for c in choices if str(c).strip() == text]
        if len(exact) == 1:
            return exact[0]
        raise CoercionError(f"{text[:80]!r} is not one of: {', '.join(str(c) for c in choices)}")
    # Typed pairs: ``1 == True``, yet the choices 1 and True have different forms.
    by_form = _choice_forms(tuple((type(c), c) for c in choices))
    if wanted in by_form:
        return by_form[wanted]
    padded = f" {wanted} "
    mentioned = [form for form in by_form if form and f" {form} " in padded]
    # A mention inside a longer mentioned choice ("good" in "very good") is not a separate mention.
    mentioned = [f for f in mentioned if not any(f != g and f" {f} " in f" {g} " for g in mentioned)]
    if len(mentioned) == 1:
        if _ECHO_DENIED.search(text) or _negated_mention(text, mentioned[0]):
            # "not positive" is no answer of "positive": read as the choice it denies, it would be scored so.
            raise CoercionError(f"{text[:80]!r} denies a choice; answer with the one that holds")
        return by_form[mentioned[0]]
    options = ", ".join(str(c) for c in choices)
    problem = "names several of" if mentioned else "is not one of"
    raise CoercionError(f"{text[:80]!r} {problem}: {options}")


def _negated_mention(text: str, form: str) -> bool:
    """Whether a mention of the normalized choice ``form`` follows a negation in its clause of ``text``
    ("not positive", "I would not say it is positive", "no positive")."""
    mention = f" {form} "
    for clause in _CLAUSE_BREAK.split(text):
        padded = f" {normalize_choice(clause)} "
        at = padded.find(mention)
        while at >= 0:
            if _NEGATION_NORMALIZED.search(padded, 0, at + 1):
                return True
            at = padded.find(mention, at + 1)
    return False


def _clause_start(text: str, index: int) -> int:
    """Where the clause of ``text`` holding ``index`` starts."""
    breaks = [m.end() for m in _CLAUSE_BREAK.finditer(text, 0, index)]
    return breaks[-1] if breaks else 0


# Every reply of a choice field is read against the same choices: their forms are worked out once.
@functools.lru_cache(maxsize=256)
def _choice_forms(typed_choices: tuple[tuple[type, Any], ...]) -> Mapping[str, Any]:
    """Each choice by its normalized form (a later choice of the same form wins, as it always did)."""
    return MappingProxyType({normalize_choice(str(c)): c for _, c in typed_choices})


def _coerce_item(item: Any, item_type: Any) -> Any:
    if isinstance(item, str):
        # Items are already delimited (JSON quotes, bullets, commas): text items are kept exactly.
        return item if item_type is str else coerce(item, item_type)
    if isinstance(item, bool) and item_type is bool:
        return item
    if isinstance(item, int | float) and not isinstance(item, bool) and item_type in (int, float):
        return coerce(repr(item), item_type)
    if isinstance(item, int | float | bool):
        return coerce(json.dumps(item), item_type)
    # repr, not JSON: a Python list's item may be one JSON cannot write (bytes, a set, a complex number).
    raise CoercionError(f"list items must be single values, got {repr(item)[:80]}")


def _split_list(text: str, numeric: bool = False) -> list[Any]:
    """The items of a list's ``text`` (``numeric``: a list of numbers)."""
    text = _unwrapped(text)
    if text.startswith("[") and text.endswith("]"):
        for reader in (json.loads, ast.literal_eval):
            try:
                data = reader(text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(data, list | tuple):
                return list(data)
        inner = text[1:-1]
        if not any(ch in inner for ch in "[]\n"):
            # Brackets around unquoted items ("[Paris, New York]"): the list's, not its first and last item's.
            text = inner.strip()
    if _NUMBERS_ONLY.fullmatch(text):  # "1 2 3": three numbers, not one item that reads as 1
        items = text.split()
        if any(_LEADING_ZERO.match(item) for item in items):
            # "1 000" is a thousand written in groups, not [1, 0]: which one was meant, the text does not say.
            raise CoercionError(f"write the list as a JSON list, like [1, 2], got {text[:80]!r}")
        return items
    lines = [line for line in text.splitlines() if line.strip()]
    bullets = [_BULLET.match(line) for line in lines]
    if len(lines) > 1 or all(bullets):
        return [m.group(1) if m else line.strip() for m, line in zip(bullets, lines, strict=True)]
    parts = text.split(",")
    if numeric and _COMMA_GROUP.search(text):
        # "1,000" is a thousand with its separator, not [1, 0]: as with "1 000", the text does not say which.
        raise CoercionError(f"write the list as a JSON list, like [1, 2], got {text[:80]!r}")
    if numeric and "between" not in text.casefold():  # "between 3 and 5" is a range, not 3 and 5
        # "1, 2 and 3": between numbers an "and" parts two items as a comma does (read as one, "2 and 3"
        # would be 2, and the 3 lost).
        parts = [item for part in parts for item in _AND_ITEM.split(part)]
    return [part.strip().strip("'\"") for part in parts if part.strip().strip("'\"")]


_FENCE = re.compile(r"```[\w+-]*[ \t]*\n?(.*?)\n?[ \t]*```", re.DOTALL)
# A number's group after a space ("000" in "1 000"): no list item is written with a leading zero.
_LEADING_ZERO = re.compile(r"[-+]?0\d")
# A number's group after a comma ("1,000"): a thousands separator, since no item has a leading zero.
_COMMA_GROUP = re.compile(r"\d,[-+]?0\d")
_AND_ITEM = re.compile(r"(?:^|\s)and(?:\s|$)", re.IGNORECASE)
_NUMBERS_ONLY = re.compile(r"\s*(?:" + _NUMBER.pattern + r")(?:\s+(?:" + _NUMBER.pattern + r"))+\s*")


def _unwrapped(text: str) -> str:
    """A list's text without what models wrap it in: a code fence, backticks, a closing full stop."""
    fenced = _FENCE.fullmatch(text)
    if fenced is not None:
        text = fenced.group(1).strip()
    if text.startswith("`") and text.endswith("`") and len(text) > 1:
        text = text.strip("`").strip()
    if text.endswith(".") and text[:-1].rstrip().endswith("]") and text.startswith("["):
        text = text[:-1].rstrip()
    return text


def describe_type(annotation: Any) -> str:
    """How the prompt names a type: ``an integer``, ``yes or no``, ``one of: a, b``."""
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is bool:
        return "yes or no"
    if is_literal(annotation):
        return "one of: " + ", ".join(str(c) for c in typing.get_args(annotation))
    if is_list(annotation):
        item = typing.get_args(annotation)[0]
        of = "" if item is str else f" of {describe_type(item)} values"
        return f'a JSON list{of}, like ["first", "second"]' if item is str else f"a JSON list{of}"
    return "text"


def format_output(value: Any, annotation: Any = str) -> str:
    """Render an output value as the model should write it, so that :func:`coerce` reads it back."""
    value = _plain(value)
    if is_literal(annotation) and not isinstance(value, list | tuple):
        return str(value)  # a choice as the prompt lists it ("one of: True, False"), read back by its text
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, str):
        return value
    return json.dumps(_plain(value), ensure_ascii=False, default=str)


def format_input(value: Any) -> str:
    """Render an input value for the prompt: lists (and sets) of text as numbered lines, others plainly."""
    value = _plain(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value) and value:
        return "\n".join(f"[{i}] {v}" for i, v in enumerate(value, start=1))
    return format_output(value)


def _plain(value: Any) -> Any:
    """``value`` as JSON's kinds: tuples as lists, sets as lists in an order the same in every process
    (a prompt must not follow the hash seed: a resumed run or a warm cache finds its requests again), and a
    numpy scalar (a pandas row's value) as the Python value it stands for, so ``np.int64(7)`` shows as
    ``7``, not as the text ``"7"`` or an error."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return [_plain(v) for v in stable_order(value)]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    return value
