"""The values a predictor produces and learns from: :class:`Prediction` and :class:`Demo`."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from aprompt._errors import ConfigError
from aprompt.lm.types import Completion, TokenUsage

__all__ = ["Demo", "Prediction"]


def _plain_dict(values: Mapping[str, Any]) -> dict[str, Any]:
    return dict(values)


class _FieldValues(Mapping[str, Any]):
    """Read-only mapping over ``_fields`` plus attribute access (``prediction.answer``)."""

    __slots__ = ()
    _fields: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self._fields[name]

    def __contains__(self, name: object) -> bool:
        # Mapping's own goes through __getitem__ and a KeyError; demos are asked this per field.
        return name in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails; read the slot directly so that a half-built object
        # (during copy or unpickling) raises AttributeError instead of recursing.
        try:
            fields = object.__getattribute__(self, "_fields")
        except AttributeError:
            raise AttributeError(name) from None
        try:
            return fields[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    def to_dict(self) -> dict[str, Any]:
        """The field values as a plain dict (JSON-able when the values are)."""
        return dict(self._fields)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._fields.items())
        return f"{type(self).__name__}({inner})"


@attrs.frozen(repr=False, eq=True, hash=False)
class Prediction(_FieldValues):
    """The output fields of one predictor call, by attribute or key, plus what the call cost.

    Attributes:
        completion: the LM completion the values were read from (the last one after retries).
        usage: tokens of every attempt of this call, retries included.

    Example::

        prediction = await predict(question="2+2?")
        prediction.answer, prediction["answer"], dict(prediction)
    """

    _fields: dict[str, Any] = attrs.field(alias="fields", converter=_plain_dict)
    completion: Completion | None = None
    usage: TokenUsage = attrs.field(factory=TokenUsage)


_IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes})


def snapshot(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as they are now: each value a deep copy, so that a later change to a list or dict the
    caller still holds does not show in it (a value that cannot be copied is kept as it is)."""
    copied: dict[str, Any] = {}
    for name, value in values.items():
        if type(value) in _IMMUTABLE:  # most field values: nothing to copy, and no call per value
            copied[name] = value
            continue
        try:
            copied[name] = copy.deepcopy(value)
        except Exception:  # a lock, a connection...: no copy to be had
            copied[name] = value
    return copied


def _python_value(value: Any) -> Any:
    """``value`` with any numpy scalar in it (the values of a pandas row) as the Python value it stands
    for: such a demo is shown as the int, float or bool it is, and saved as the same JSON value."""
    if isinstance(value, str):
        return value
    # A container is rebuilt only around a value that changed: a demo keeps the user's own list (a later
    # change to it shows in the next prompt, as it always did).
    if type(value) is list or type(value) is tuple:
        items = [_python_value(v) for v in value]
        changed = any(new is not old for new, old in zip(items, value, strict=True))
        return type(value)(items) if changed else value
    if type(value) is dict:
        entries = {k: _python_value(v) for k, v in value.items()}
        return entries if any(entries[k] is not v for k, v in value.items()) else value
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    return value


def _demo_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _python_value(value) for name, value in values.items()}


@attrs.frozen(repr=False, eq=True, hash=False)
class Demo(_FieldValues):
    """One few-shot example for a predictor: values of (some of) its input and output fields.

    Fields the demo lacks are simply not shown in the prompt, so a labeled demo (inputs and the
    final answer) and a bootstrapped one (every field, reasoning included) both work.

    Example::

        Demo({"question": "2+2?", "answer": 4})
    """

    _fields: dict[str, Any] = attrs.field(alias="fields", converter=_demo_fields)


def as_demo(value: Demo | Mapping[str, Any]) -> Demo:
    """``value`` as a :class:`Demo`.

    Raises:
        ConfigError: ``value`` is neither a Demo nor a mapping of field values (one text, a pair).
    """
    if isinstance(value, Demo):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"a demo must be an aprompt.Demo or a mapping of field values ({{'question': ..., 'answer': "
            f"...}}), got {type(value).__name__} {value!r:.80}; pass demos as a list of them"
        )
    return Demo(value)
