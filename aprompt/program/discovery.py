"""Finding the predictors of a program, with stable dotted names."""

from __future__ import annotations

import enum
import functools
import types
from collections.abc import Mapping
from typing import Any

from aprompt.lm.types import LM, Completion
from aprompt.program.fields import Field
from aprompt.program.predictor import Predict
from aprompt.program.signature import Signature
from aprompt.program.values import Demo, Prediction

__all__ = ["named_predictors"]

# Leaves: never predictors and never containers of predictors. LM clients are matched separately.
_LEAF_TYPES = (
    type(None),
    str,
    bytes,
    bytearray,
    int,
    float,
    complex,
    range,
    enum.Enum,
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CoroutineType,
    types.GeneratorType,
    functools.partial,
    set,
    frozenset,
    Signature,
    Field,
    Demo,
    Prediction,
    Completion,
)

ROOT_NAME = "self"


def named_predictors(program: object) -> list[tuple[str, Predict]]:
    """Every :class:`Predict` reachable from ``program``, with a dotted name, in a stable order.

    The walk goes depth-first through attributes (in definition order: instance ``__dict__`` order,
    then ``__slots__``), lists and tuples (``stages.0``) and mappings (``experts.math``; keys sorted
    by their string form, so names do not depend on how the dict was built). A predictor reachable
    twice keeps its first name; cycles are followed once. The walk does not enter predictors,
    modules, classes, functions, LM clients, sets (no stable order) or plain values. A bound method
    (``program.run``) is walked from its object; a bare predictor is named ``"self"``.

    Example::

        class RAG:
            def __init__(self):
                self.query = Predict("question -> query")
                self.stages = [Predict("query -> passage"), ChainOfThought("passage -> answer")]

        [name for name, _ in named_predictors(RAG())]  # ['query', 'stages.0', 'stages.1']
    """
    if isinstance(program, types.MethodType):
        program = program.__self__
    if isinstance(program, Predict):
        return [(ROOT_NAME, program)]
    found: list[tuple[str, Predict]] = []
    seen: set[int] = {id(program)}
    # An explicit stack, not recursion: programs nested deeper than the recursion limit still work.
    stack: list[tuple[str, Any]] = list(reversed(_children("", program)))
    while stack:
        name, obj = stack.pop()
        if id(obj) in seen or _is_leaf(obj):
            continue
        seen.add(id(obj))
        if isinstance(obj, Predict):
            found.append((name, obj))
        else:
            stack.extend(reversed(_children(name, obj)))
    return found


def _is_leaf(obj: Any) -> bool:
    if isinstance(obj, _LEAF_TYPES):
        return True
    try:
        return not isinstance(obj, Predict) and isinstance(obj, LM)
    except Exception:  # the protocol check reads attributes; a raising property is not an LM
        return False


def _children(prefix: str, obj: Any) -> list[tuple[str, Any]]:
    def join(part: object) -> str:
        return f"{prefix}.{part}" if prefix else str(part)

    if isinstance(obj, list | tuple):
        return [(join(i), item) for i, item in enumerate(obj)]
    if isinstance(obj, Mapping):
        keys = sorted(obj, key=str)
        return [(join(key), obj[key]) for key in keys]
    return [(join(attr), value) for attr, value in _attributes(obj)]


def _attributes(obj: Any) -> list[tuple[str, Any]]:
    items = list(getattr(obj, "__dict__", {}).items())
    missing = object()
    for cls in reversed(type(obj).__mro__):
        slots = cls.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            if slot.startswith("__") and not slot.endswith("__"):  # name-mangled private slot
                slot = f"_{cls.__name__.lstrip('_')}{slot}"
            value = getattr(obj, slot, missing)
            if value is not missing:
                items.append((slot, value))
    return items
