"""Finding the predictors of a program, with stable dotted names."""

from __future__ import annotations

import dis
import enum
import functools
import re
import types
from collections.abc import Mapping
from typing import Any

from aprompt._errors import ConfigError
from aprompt.lm.types import LM, Completion
from aprompt.program.fields import Field
from aprompt.program.predictor import Predict
from aprompt.program.signature import Signature
from aprompt.program.values import Demo, Prediction

__all__ = ["Route", "is_function", "named_predictors", "predictor_routes", "show_route"]

#: How a predictor is reached from the program: ``("attr", name)`` (an attribute or slot), ``("item",
#: key)`` (a list or tuple index, a mapping key) or ``("global" | "closure", name)`` (from a function).
Route = tuple[tuple[str, Any], ...]

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

#: The memory address a default ``repr`` shows (``<Stage object at 0x7f...>``): differs in every process.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def named_predictors(program: object) -> list[tuple[str, Predict]]:
    """Every :class:`Predict` reachable from ``program``, with a dotted name, in a stable order.

    The walk goes depth-first through attributes (in definition order: instance ``__dict__`` order,
    then ``__slots__``), lists and tuples (``stages.0``) and mappings (``experts.math``; keys sorted
    by their string form, so names do not depend on how the dict was built; a key whose string form
    shows its memory address is refused, see :func:`predictor_routes`). A predictor reachable
    twice keeps its first name; cycles are followed once. The walk does not enter predictors,
    modules, classes, LM clients, sets (no stable order) or plain values. A bound method
    (``program.run``) is walked from its object; a bare predictor is named ``"self"``.

    A plain function (``async def answer(question)``) is a program too: the walk enters the globals
    its code names and the variables it closes over, named by those names (``PLAN``), and, through
    them, the functions it calls (``plan_step.PLAN`` for a predictor only a helper names). Functions
    are entered only from a function, never from an object's attributes.

    Example::

        class RAG:
            def __init__(self):
                self.query = Predict("question -> query")
                self.stages = [Predict("query -> passage"), ChainOfThought("passage -> answer")]

        [name for name, _ in named_predictors(RAG())]  # ['query', 'stages.0', 'stages.1']
    """
    return [(name, predictor) for name, predictor, _ in predictor_routes(program)]


def predictor_routes(program: object) -> list[tuple[str, Predict, Route]]:
    """:func:`named_predictors` with the route to each predictor (for copying the program).

    Raises:
        ConfigError: two different predictors get the same name (``{0: p, "0": q}`` are both ``s.0``),
            naming both routes: their saved prompts would be mixed up; or a predictor's name holds a
            mapping key shown with its memory address (an object with the default ``repr``), a name no
            other process gives it.
    """
    if isinstance(program, types.MethodType):
        program = program.__self__
    if isinstance(program, Predict):
        return [(ROOT_NAME, program, ())]
    found: list[tuple[str, Predict, Route]] = []
    by_name: dict[str, Route] = {}
    seen: set[int] = {id(program)}
    # An explicit stack, not recursion: programs nested deeper than the recursion limit still work.
    # Each entry says whether it was reached from a function (only then are functions entered).
    stack: list[tuple[str, Any, bool, Route]] = [
        (name, child, is_function(program), (step,)) for name, child, step in reversed(_children("", program))
    ]
    while stack:
        name, obj, from_function, route = stack.pop()
        if id(obj) in seen or (_is_leaf(obj) and not (from_function and is_function(obj))):
            continue
        seen.add(id(obj))
        if isinstance(obj, Predict):
            _check_stable(name, route)
            if name in by_name:
                raise ConfigError(
                    f"two predictors of the program get the same name {name!r}: "
                    f"{show_route(by_name[name])} and {show_route(route)}; give them distinct names "
                    "(attribute names or mapping keys whose str() differ)"
                )
            by_name[name] = route
            found.append((name, obj, route))
        else:
            inside = is_function(obj)
            stack.extend(
                (child_name, child, inside, (*route, step))
                for child_name, child, step in reversed(_children(name, obj))
            )
    return found


def _check_stable(name: str, route: Route) -> None:
    """ConfigError if ``name`` holds a mapping key shown by its memory address: a resumed run, a saved
    result or prompt state would name the predictor otherwise in the next process, and not find it."""
    if _ADDRESS.search(name) is None:
        return
    shown = [
        key
        for kind, key in route
        if kind == "item" and not isinstance(key, str) and _ADDRESS.search(str(key))
    ]
    if not shown:  # a text key that reads so is the same in every process
        return
    key = shown[0]
    raise ConfigError(
        f"the predictor at {show_route(route)} would be named {name!r}: the key {key!r} shows its memory "
        "address, which differs in every process, so a resumed run, a saved result or prompt state would "
        "not find it; key the mapping by a str, int or enum member instead"
    )


def show_route(route: Route) -> str:
    """A route as Python-like text: ``program.stages[0]``, ``program.experts['0']``."""
    text = "program"
    for kind, key in route:
        text += f"[{key!r}]" if kind == "item" else f".{key}" if kind == "attr" else f" -> {key}"
    return text


def is_function(obj: object) -> bool:
    """A plain Python function (``def`` or ``async def``, lambdas included), not a builtin or method."""
    return isinstance(obj, types.FunctionType)


def _function_children(prefix: str, function: types.FunctionType) -> list[tuple[str, Any, tuple[str, Any]]]:
    """The globals and closure variables the function's code reads (nested functions' code included),
    in the order the code first reads them."""
    closure = dict(zip(function.__code__.co_freevars, function.__closure__ or (), strict=True))
    missing = object()
    children: list[tuple[str, Any, tuple[str, Any]]] = []
    for name in _names_read(function.__code__):
        if name in closure:
            try:
                value = closure[name].cell_contents
            except ValueError:  # a variable not bound yet
                continue
            kind = "closure"
        else:
            value = function.__globals__.get(name, missing)
            if value is missing:
                continue  # a builtin
            kind = "global"
        children.append((f"{prefix}.{name}" if prefix else name, value, (kind, name)))
    return children


def _names_read(code: types.CodeType) -> list[str]:
    """Global and free-variable names ``code`` loads, first reads first, nested code walked in place."""
    names: dict[str, None] = {}
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF"):
            names.setdefault(str(instruction.argval), None)
        elif isinstance(instruction.argval, types.CodeType):
            for name in _names_read(instruction.argval):
                names.setdefault(name, None)
    return list(names)


def _is_leaf(obj: Any) -> bool:
    if isinstance(obj, _LEAF_TYPES):
        return True
    try:
        return not isinstance(obj, Predict) and isinstance(obj, LM)
    except Exception:  # the protocol check reads attributes; a raising property is not an LM
        return False


def _children(prefix: str, obj: Any) -> list[tuple[str, Any, tuple[str, Any]]]:
    def join(part: object) -> str:
        return f"{prefix}.{part}" if prefix else str(part)

    if is_function(obj):
        return _function_children(prefix, obj)
    if isinstance(obj, list | tuple):
        return [(join(i), item, ("item", i)) for i, item in enumerate(obj)]
    if isinstance(obj, Mapping):
        # One snapshot of the items: a weak mapping (a thread pool's registry, a cache) can lose an
        # entry between listing its keys and reading one.
        items = sorted(list(obj.items()), key=lambda item: str(item[0]))
        return [(join(key), value, ("item", key)) for key, value in items]
    return [(join(attr), value, ("attr", attr)) for attr, value in _attributes(obj)]


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
