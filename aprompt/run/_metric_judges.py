"""The judges a metric asks: the LM clients and predictors it can reach, by where it finds them.

A metric that asks an LM (``await judge.chat(...)``, or a ``Predict`` with its own ``lm``) scores by that
LM's answers: another judge model is another run, though the metric's code is the same. The judges are
found where a metric keeps what it uses: the variables it closes over, the module globals it reads, its
defaults, a ``functools.partial``'s bound arguments and the attributes of a callable metric object (or of
a bound method's object), also in the functions reached so (a helper it calls), three calls deep, and
one level into a list, tuple or dict or the attributes of an object held
there (a grader holding its LM). :mod:`aprompt.run.identity` makes their identity.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable, Iterator
from typing import Any

from aprompt.run._value_identity import function_values

#: How many calls deep the functions a metric reaches are searched (as for its settings).
_DEPTH = 3


def metric_judges(metric: Any) -> list[tuple[str, Any]]:
    """``(where, judge)`` for each LM client or predictor ``metric`` can reach, each once (at the first
    place found), in an order that is the same in every process. ``where`` names the variable, global
    (``global JUDGE``) or attribute holding it, behind the helpers it was reached through
    (``grade.judge``)."""
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    for where, value in _reachable(metric, "", 0, {id(metric)}):
        if id(value) not in seen and _is_judge(value):
            seen.add(id(value))
            found.append((where, value))
    return found


def is_predictor(value: Any) -> bool:
    """Whether ``value`` is a predictor (a ``Predict``), which asks its own LM or the run's."""
    return isinstance(value, _predict_class())


@functools.cache
def _predict_class() -> type:
    from aprompt.program.predictor import Predict  # the program package imports this one's package

    return Predict


#: The types of most values a large table holds, which no judge has.
_DATA = (str, int, float, bool, bytes, type(None))


def _is_judge(value: Any) -> bool:
    if isinstance(value, _DATA):
        return False
    if isinstance(value, type) or inspect.ismodule(value):
        return False  # a class (``OpenAICompatibleLM`` itself) has the protocol's attributes too
    if is_predictor(value):
        return True
    # The LM protocol (``model`` and an async ``chat``), read from the class first: a metric may hold large
    # data (a dict of gold answers), and the protocol's own check is slow.
    if not callable(getattr(type(value), "chat", None)):
        return False
    try:
        return hasattr(value, "model")
    except Exception:  # a property that raises when read: no client
        return False


def _reachable(target: Any, prefix: str, depth: int, visited: set[int]) -> Iterator[tuple[str, Any]]:
    """Every value ``target`` holds or reads, by place, and those of the functions it reaches."""
    if isinstance(target, functools.partial):
        yield from _reachable(target.func, prefix, depth, visited)
        for position, value in enumerate(target.args):
            yield from _held(f"{prefix}argument {position}", value, depth, visited)
        for name, value in sorted(target.keywords.items()):
            yield from _held(f"{prefix}{name}", value, depth, visited)
        return
    function = getattr(target, "__func__", target)  # a bound method: its function and its object
    owner = getattr(target, "__self__", None) if inspect.ismethod(target) else None
    if not inspect.isfunction(function):
        # A callable object: its attributes, and what its class's ``__call__`` reads.
        owner, function = target, inspect.getattr_static(type(target), "__call__", None)
    if owner is not None and not inspect.isclass(owner) and not inspect.ismodule(owner):
        held = _attributes(owner)
        for name, value in sorted(held.items()):
            yield from _held(f"{prefix}{name}", value, depth, visited)
        for name, value in _class_members(type(owner), skip=held.keys()):
            yield from _held(f"{prefix}{name}", value, depth, visited)
    if not inspect.isfunction(function):
        return
    for where, value in function_values(function):
        yield from _held(f"{prefix}{where}", value, depth, visited)


def _held(where: str, value: Any, depth: int, visited: set[int]) -> Iterator[tuple[str, Any]]:
    """``value`` at ``where``, the items of a list, tuple or dict there, the attributes of an object there
    (a grader holding its LM), and what a function there reaches."""
    yield where, value
    if _is_judge(value) or isinstance(value, type) or inspect.ismodule(value):
        return
    # Only the judges among the items are named: a metric may read a large table (a dict of gold answers).
    if isinstance(value, list | tuple):
        for position, item in enumerate(value):
            if _is_judge(item):
                yield f"{where}[{position}]", item
    elif isinstance(value, dict):
        for key, item in value.items():
            if _is_judge(item):
                yield f"{where}[{key!r}]", item
    elif (
        depth < _DEPTH
        and id(value) not in visited
        and (inspect.isfunction(value) or inspect.ismethod(value) or isinstance(value, functools.partial))
    ):
        visited.add(id(value))
        yield from _reachable(value, f"{where.removeprefix('global ')}.", depth + 1, visited)
    elif not inspect.isroutine(value) and not isinstance(value, functools.partial):
        for name, item in sorted(_attributes(value).items()):
            yield f"{where}.{name}", item


def _attributes(owner: Any) -> dict[str, Any]:
    """An object's attributes (``__dict__`` and slots), by name."""
    try:
        found = dict(getattr(owner, "__dict__", None) or {})
    except (TypeError, ValueError):  # a ``__dict__`` of its own making
        return {}
    for cls in type(owner).__mro__:
        slots = getattr(cls, "__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            try:
                if slot not in ("__dict__", "__weakref__") and hasattr(owner, slot):
                    found[slot] = getattr(owner, slot)
            except Exception:  # a slot read through a descriptor that fails: nothing held there
                continue
    return {str(name): value for name, value in found.items()}


def _class_members(cls: type, *, skip: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """The members of ``cls`` and its bases (not the built-in ones) an instance without an attribute of
    that name reads: a judge set on the class, and the methods ``__call__`` may call (``self._ask()``),
    which may read a judge of their own; the special methods other than ``__call__`` are left out."""
    taken = set(skip)
    for base in cls.__mro__:
        if base.__module__ == "builtins":
            continue
        for name, member in sorted(vars(base).items()):
            if name in taken or (name.startswith("__") and name.endswith("__")):
                continue
            taken.add(name)
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            if not isinstance(member, property):
                yield name, member
