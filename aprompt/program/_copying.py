"""Copying a program for optimization: new predictors, everything else shared.

The optimizer returns a program whose predictors carry the best prompts and leaves the user's program
as it was. A deep copy would also copy what the program merely *uses* — a lock, an HTTP client, a
database handle — which fails (``threading.Lock`` cannot be pickled) or silently duplicates it. Only the
predictors change, so only they are copied, plus the objects and containers on the way to them (a
shallow copy each, so they can point at the new predictors); every other attribute is shared with the
original.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Mapping
from typing import Any

from aprompt._errors import ConfigError
from aprompt.program.discovery import Route, _attributes, _children, _is_leaf, predictor_routes
from aprompt.program.predictor import Predict

__all__ = ["copy_program"]

_IN_PLACE = "pass in_place=True to write the best prompts into the program itself"


def copy_program(program: object) -> object:
    """A copy of ``program`` with copies of its predictors (their own prompt state, the same LM and
    signature), sharing everything else with ``program``; a bound method is rebound to the copy.

    Raises:
        ConfigError: the structure holding a predictor cannot be copied shallowly (a read-only
            mapping, a tuple subclass, an object whose copy is itself); the message suggests
            ``in_place=True``.

    Example::

        clone = copy_program(agent)
        clone.lock is agent.lock and clone.answer is not agent.answer  # True
    """
    if isinstance(program, types.MethodType):
        return types.MethodType(program.__func__, copy_program(program.__self__))
    routes = predictor_routes(program)
    if any(kind not in ("attr", "item") for _, _, route in routes for kind, _ in route):
        raise ConfigError(f"program {program!r:.60}: predictors reached through a function; {_IN_PLACE}")
    on_route = _holders(program)
    for _, _, route in routes:
        obj: Any = program
        for step in route:
            on_route.add(id(obj))
            obj = _get(obj, step)
    clone = _Rebuild(on_route).copy(program)
    _check(program, clone, routes)
    return clone


def _holders(program: object) -> set[int]:
    """Ids of the objects on *any* route from ``program`` to a predictor, not only on the first one a
    predictor is named by: a predictor that is an attribute and also an item of a list (``self.stages =
    [self.extract, self.answer]``), or an object pointing back at the program (``helper.owner``), must
    lead to the copy's own predictors from the copy."""
    if isinstance(program, Predict):
        return set()
    parents: dict[int, set[int]] = {}
    holders: set[int] = set()
    seen, stack = {id(program)}, [program]
    while stack:
        obj = stack.pop()
        for _, child, _ in _children("", obj):
            if isinstance(child, Predict):
                holders.add(id(obj))
            elif not _is_leaf(child):
                parents.setdefault(id(child), set()).add(id(obj))
                if id(child) not in seen:
                    seen.add(id(child))
                    stack.append(child)
    found, todo = set(holders), list(holders)
    while todo:
        for parent in parents.get(todo.pop(), ()):
            if parent not in found:
                found.add(parent)
                todo.append(parent)
    return found


class _Rebuild:
    """Shallow-copies the objects on a route to a predictor, deep-copies the predictors; an object
    reached twice is copied once (shared structure stays shared)."""

    def __init__(self, on_route: set[int]) -> None:
        self.on_route = on_route
        self.memo: dict[int, Any] = {}

    def copy(self, obj: Any) -> Any:
        if id(obj) in self.memo:
            return self.memo[id(obj)]
        if isinstance(obj, Predict):
            clone: Any = copy.deepcopy(obj)  # Predict.__deepcopy__: own prompt state, shared LM and signature
        elif id(obj) not in self.on_route:
            return obj
        elif isinstance(obj, tuple):
            clone = self._tuple(obj)
        elif isinstance(obj, list):
            clone = self._shallow(obj)
            self.memo[id(obj)] = clone
            clone[:] = [self.copy(item) for item in obj]
        elif isinstance(obj, Mapping):
            if not isinstance(obj, dict):
                raise ConfigError(
                    f"cannot copy the mapping {type(obj).__name__} holding predictors; {_IN_PLACE}"
                )
            clone = self._shallow(obj)
            self.memo[id(obj)] = clone
            for key in obj:
                clone[key] = self.copy(obj[key])
        else:
            clone = self._shallow(obj)
            self.memo[id(obj)] = clone
            for name, value in _attributes(obj):
                if isinstance(value, Predict) or id(value) in self.on_route:
                    _set_attribute(clone, name, self.copy(value))
        self.memo[id(obj)] = clone
        return clone

    def _tuple(self, obj: tuple[Any, ...]) -> tuple[Any, ...]:
        items = [self.copy(item) for item in obj]
        if type(obj) is tuple:
            return tuple(items)
        make = getattr(type(obj), "_make", None)  # a namedtuple
        if callable(make):
            return make(items)  # type: ignore[no-any-return]
        raise ConfigError(f"cannot copy the tuple type {type(obj).__name__} holding predictors; {_IN_PLACE}")

    @staticmethod
    def _shallow(obj: Any) -> Any:
        try:
            clone = copy.copy(obj)
        except Exception as exc:
            raise ConfigError(
                f"cannot copy {type(obj).__name__}, which holds predictors ({type(exc).__name__}: {exc}); "
                f"{_IN_PLACE}"
            ) from None
        if clone is obj or (hasattr(obj, "__dict__") and vars(clone) is vars(obj)):
            raise ConfigError(f"copying {type(obj).__name__} gives the same object back; {_IN_PLACE}")
        return clone


def _set_attribute(obj: Any, name: str, value: Any) -> None:
    # Around __setattr__: a frozen attrs class or dataclass refuses setattr, and a copy is not a change.
    namespace = getattr(obj, "__dict__", None)
    if namespace is not None and name in namespace:
        namespace[name] = value
    else:
        object.__setattr__(obj, name, value)


def _get(obj: Any, step: tuple[str, Any]) -> Any:
    kind, key = step
    return obj[key] if kind == "item" else getattr(obj, key)


def _check(program: object, clone: object, routes: list[tuple[str, Predict, Route]]) -> None:
    """The copy must hold new predictors under the same names, and the original its own."""
    before = [(name, id(p)) for name, p, _ in routes]
    after = [(name, id(p)) for name, p, _ in predictor_routes(program)]
    copied = [(name, id(p)) for name, p, _ in predictor_routes(clone)]
    originals = {id(p) for _, p, _ in routes}
    kept_own = after == before
    has_new = [name for name, _ in copied] == [name for name, _ in before]
    if not (kept_own and has_new) or any(p in originals for _, p in copied):
        raise ConfigError(
            f"copying the program {type(program).__name__} did not give it predictors of its own; {_IN_PLACE}"
        )
