"""The identity of values: process-independent digests of data, callables and programs.

What :mod:`aprompt.run.identity` assembles into a run's fingerprint: :func:`digest` of any mix of JSON
types, sets, bytes and objects (by their content, never by ``id()`` or a memory address), the identity of
a callable (:func:`callable_identity`: its name, source and the plain settings it reads) and of a
program's code and settings (:func:`program_identity`, :func:`program_settings`). Every value is the same
for the same input in a new process.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import numbers
import pickle
import re
import types
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

from aprompt._source import source_of

# What ``repr`` gives objects without one of their own: the address differs in every process.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stable_form(value: Any) -> Any:
    """A JSON-able stand-in for ``value`` that is the same in every process and tells apart values of
    different content (an array by its bytes, an attrs class or dataclass by its class and fields, an
    object without a text of its own by its attributes)."""
    if isinstance(value, set | frozenset):
        # Tagged: its items' texts alone would read as a list of those texts (``{1}`` as ``["1"]``).
        return {"set": sorted(_canonical(item) for item in value)}
    if isinstance(value, bytes | bytearray):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}"
    # A record by its class too: ``Refund(amount=10)`` and ``Charge(amount=10)`` hold the same fields,
    # but their text (a prompt's) and what a program or metric makes of them differ.
    if attrs.has(kind):
        return {"object": name, "fields": attrs.asdict(value, recurse=False)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"object": name, "fields": {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}}
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if isinstance(getattr(value, "shape", None), tuple) and callable(getattr(value, "tobytes", None)):
        # An array: its text shows only some elements, to print precision; its bytes are all of it
        # (an array of objects holds addresses: its items instead).
        dtype = getattr(value, "dtype", None)
        if getattr(dtype, "hasobject", False) and callable(getattr(value, "tolist", None)):
            return {"array": name, "shape": list(value.shape), "items": value.tolist()}
        return {
            "array": name,
            "dtype": str(dtype),
            "shape": list(value.shape),
            "sha256": hashlib.sha256(value.tobytes()).hexdigest(),
        }
    if kind.__repr__ is object.__repr__ and kind.__str__ is object.__str__:  # type: ignore[comparison-overlap]
        # No text of its own (it would be the class's name alone): its attributes are its content.
        content = _attributes(value)
        if content is not None:
            return {"object": name, "attributes": content}
    return _ADDRESS.sub("", f"{kind.__qualname__}:{value}")


def _attributes(value: Any) -> str | None:
    """The canonical JSON of an object's attributes (``__dict__`` and slots), or of its pickle when they
    refer back to it; None when it has none or neither can be made."""
    found = dict(getattr(value, "__dict__", None) or {})
    for cls in type(value).__mro__:
        slots = getattr(cls, "__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(value, slot):
                found[slot] = getattr(value, slot)
    if not found:
        return None
    try:
        return _canonical(found)
    except (ValueError, RecursionError):  # attributes that refer back to the object
        try:
            return hashlib.sha256(pickle.dumps(value, protocol=5)).hexdigest()
        except Exception:
            return None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=stable_form, ensure_ascii=False, separators=(",", ":"))


def stable_order(items: Iterable[Any]) -> list[Any]:
    """The items of a set in an order that is the same in every process (a set's own order follows the
    process's hash seed): by their canonical JSON."""
    return sorted(items, key=_canonical)


def digest(value: Any) -> str:
    """A short, process-independent hash of ``value`` (any mix of JSON types, sets, bytes, attrs
    classes, dataclasses and objects with ``to_dict``)."""
    return hashlib.sha256(_canonical(value).encode()).hexdigest()[:16]


def qualified_name(target: Any) -> str:
    module = getattr(target, "__module__", None) or "?"
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{name}"


def _source_digest(target: Any) -> str | None:
    try:
        source = source_of(target)
    except (OSError, TypeError):  # built in, defined in a REPL, or source not shipped
        return None
    found = hashlib.sha256(source.encode()).hexdigest()[:16]
    place = _lambda_place(target, source)
    return found if place is None else f"{found}:{place}"


def _lambda_place(target: Any, source: str) -> str | None:
    """Where a lambda's body starts in its source (line from its first, column), when that source, the
    whole lines it is on, holds other lambdas too (``exact, loose = lambda ...: ..., lambda ...: ...``):
    they share their name and their source, not their behaviour. ``None`` for any other callable, whose
    identity stays as it was."""
    code = getattr(target, "__code__", None)
    if not inspect.isfunction(target) or target.__name__ != "<lambda>" or source.count("lambda") < 2:
        return None
    assert code is not None
    spans = [
        (line - code.co_firstlineno, column)
        for line, _, column, end in code.co_positions()
        if line is not None and column is not None and end is not None and end > column
    ]
    return f"{min(spans)[0]}.{min(spans)[1]}" if spans else None


#: The types of the settings a function closes over or reads as globals: compared by value.
_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any) -> bool:
    """A setting (a number, a text, ``None``, or a tuple or frozenset of them): a value that cannot
    change while a run goes on, unlike a cache or a client, so it may be part of an identity. A number
    is any scalar: a threshold computed with numpy (``np.int64``, ``np.float32``, ``np.bool_``) or a
    ``Decimal`` is one as much as an ``int``."""
    if isinstance(value, tuple | frozenset):
        return all(_plain(item) for item in value)
    return isinstance(value, (*_PLAIN, numbers.Number)) or _numpy_scalar(value)


def _numpy_scalar(value: Any) -> bool:
    """A numpy scalar (immutable, of shape ``()``), which the ``numbers`` classes do not all cover
    (``np.bool_``); a 0-d array is none (it can be changed in place)."""
    kind = type(value)
    return kind.__module__ == "numpy" and kind.__name__ != "ndarray" and getattr(value, "shape", None) == ()


def _settings(target: Any, depth: int) -> dict[str, Any]:
    """The plain values a function closes over, defaults to or reads as module globals (and the
    identity of the functions it closes over), by name; other values are left out (a callable
    object's attributes too: a counter or a cache on one changes as it is called)."""
    found: dict[str, Any] = {}
    if inspect.isfunction(target):
        for where, value in function_values(target):
            if _plain(value):
                found[where] = value
            elif not where.startswith("default ") and not (value is target and where.startswith("global ")):
                # A helper it closes over, or a module's (``normalize``), decides the scores as much as
                # the metric's own code.
                helper = _helper_identity(value, depth)
                if helper is not None:
                    found[where] = helper
    return found


def _helper_identity(value: Any, depth: int) -> str | None:
    """The :func:`callable_identity` of a function (or partial) a callable holds, three calls deep;
    ``None`` for any other value, or deeper."""
    if depth < 3 and (inspect.isfunction(value) or isinstance(value, functools.partial)):
        return callable_identity(value, _depth=depth + 1)
    return None


def function_values(function: types.FunctionType) -> Iterator[tuple[str, Any]]:
    """What ``function`` holds or reads, by place: the variables it closes over (bound ones), the module
    globals it may read (``global NAME``, in name order) and its defaults (``default 0``,
    ``default NAME``)."""
    for name, cell in zip(function.__code__.co_freevars, function.__closure__ or (), strict=False):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell: the variable was never bound
            continue
        yield name, value
    namespace = function.__globals__
    for name in sorted(_global_names(function.__code__)):
        if name in namespace:
            yield f"global {name}", namespace[name]
    for position, value in enumerate(function.__defaults__ or ()):
        yield f"default {position}", value
    for name, value in (function.__kwdefaults__ or {}).items():
        yield f"default {name}", value


def _global_names(code: types.CodeType) -> set[str]:
    """The names ``code`` (and the code nested in it: lambdas, comprehensions) may read as globals."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _global_names(constant)
    return names


def callable_identity(fn: Any, *, _depth: int = 0) -> str:
    """``module.qualname``, plus ``#`` and a hash of the source when it can be read (and for a lambda
    written on lines that hold others, ``:`` and where it starts), plus ``@`` and a hash of its settings
    when it has some.

    A bound method is its function; a ``functools.partial`` adds its bound arguments (a function among
    them by its identity); a callable object is its class (name and source), not its attributes; a
    function adds the plain values it closes over (made by a factory), defaults to or reads as module
    globals (a threshold, a model name), and the identity of the functions it closes over or reads as
    module globals (a helper it calls), three calls deep. Plain values are numbers (numpy scalars too),
    texts, ``None`` and tuples of them: a cache or a client a metric uses is never part of its identity.
    """
    if isinstance(fn, functools.partial):
        args = [_bound_value(value, _depth) for value in fn.args]
        bound = digest([args, {name: _bound_value(value, _depth) for name, value in fn.keywords.items()}])
        return f"partial({callable_identity(fn.func, _depth=_depth)}, {bound})"
    target = getattr(fn, "__func__", fn)  # bound method
    settings = _settings(target, _depth)
    if not (inspect.isfunction(target) or inspect.isclass(target) or inspect.isbuiltin(target)):
        target = type(target)  # a callable object: its class holds __call__
    name = qualified_name(target)
    source = _source_digest(target)
    identity = name if source is None else f"{name}#{source}"
    return f"{identity}@{digest(settings)}" if settings else identity


def _bound_value(value: Any, depth: int) -> Any:
    """A partial's bound argument as its identity holds it: a function (``transform=lambda t: t.lower()``)
    by its :func:`callable_identity`, three calls deep (its text names it alone), any other value as is."""
    helper = _helper_identity(value, depth)
    return value if helper is None else {"callable": helper}


def program_identity(program: Any) -> str:
    """The identity of ``program``'s code: of what runs it (itself when callable, else its ``forward``,
    as the evaluator calls it), for a method (``forward``, a bound method) also of its object's class,
    and for a callable object also of its class's ``__call__`` (read from the function itself, whose
    source is found even where the class's is not)."""
    entry = program if callable(program) else getattr(program, "forward", program)
    parts = [callable_identity(entry)]
    owner = getattr(entry, "__self__", None) if inspect.ismethod(entry) else None
    if owner is not None and not inspect.isclass(owner) and not inspect.ismodule(owner):
        # A method runs the program through the rest of its class (``self.post(...)``): its source too.
        parts.append(callable_identity(type(owner)))
    if not (inspect.isfunction(entry) or inspect.ismethod(entry) or isinstance(entry, functools.partial)):
        method = inspect.getattr_static(type(entry), "__call__", None)
        if inspect.isfunction(method):
            parts.append(callable_identity(method))
    return " ".join(parts)


def program_settings(program: Any) -> str | None:
    """A digest of the plain values (numbers, texts, ``None``, tuples of them) a program object holds
    as attributes, or of a bound method's object; ``None`` for a function or an object without any.
    Code that reads ``self.k`` or ``self.style`` returns other predictions from the same predictors.
    A predictor run as the program is none: its identity is the ``program (name)`` key's. A value the
    program changed itself while a run of this process ran it (a call counter, the last answer) is
    taken as it was when that run began (:func:`note_program_run`): it is no setting of the run. One the
    user set since to another value than the run left is a setting again, read as it is."""
    owner = _settings_owner(program)
    if owner is None:
        return None
    plain = plain_settings(program)
    try:
        changed = _CHANGED_BY_RUNS.get(owner, {})
    except TypeError:  # not hashable
        changed = {}
    for name, (before, left) in changed.items():
        if not _same(plain.get(name, _ABSENT), left):
            continue  # changed since the runs left it: the user's setting, read as it is
        if before is _ABSENT:
            plain.pop(name, None)
        else:
            plain[name] = before
    return digest(plain) if plain else None


def plain_settings(program: Any) -> dict[str, Any]:
    """The plain values of :func:`program_settings`, by attribute name (empty when it has none)."""
    owner = _settings_owner(program)
    if owner is None:
        return {}
    found = dict(getattr(owner, "__dict__", None) or {})
    for cls in type(owner).__mro__:
        slots = getattr(cls, "__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(owner, slot):
                found[slot] = getattr(owner, slot)
    return {name: value for name, value in found.items() if _plain(value)}


def note_program_run(program: Any, before: Mapping[str, Any]) -> None:
    """Remember the plain values ``program`` changed itself during a run that began with ``before``
    (:func:`plain_settings`), at their values then: a later run of the same object in this process
    (a resume) fingerprints them so, as a new process that builds the program again does."""
    owner = _settings_owner(program)
    if owner is None:
        return
    after = plain_settings(program)
    changed = [
        name
        for name in before.keys() | after.keys()
        if not _same(before.get(name, _ABSENT), after.get(name, _ABSENT))
    ]
    if not changed:
        return
    try:
        known = _CHANGED_BY_RUNS.setdefault(owner, {})
    except TypeError:  # not weakly referable or not hashable: its settings are read as they are
        return
    for name in changed:
        # The earliest run's value (the one the journal's fingerprint was taken at), and the one the
        # latest run left: a value other than that later is the user's.
        first = known[name][0] if name in known else before.get(name, _ABSENT)
        known[name] = (first, after.get(name, _ABSENT))


def _settings_owner(program: Any) -> Any:
    """The object whose attributes are the program's settings, or ``None`` (see :func:`program_settings`)."""
    from aprompt.program.predictor import Predict  # the program package imports this module

    owner = getattr(program, "__self__", None) if inspect.ismethod(program) else program
    if owner is None or inspect.isfunction(owner) or isinstance(owner, functools.partial | type | Predict):
        return None
    return owner


#: Per program object of this process, the plain values its runs changed: (the value before the first of
#: them, the value the latest left).
_CHANGED_BY_RUNS: weakref.WeakKeyDictionary[Any, dict[str, tuple[Any, Any]]] = weakref.WeakKeyDictionary()
#: An attribute a run added (absent before it) or removed.
_ABSENT = object()


def _same(a: Any, b: Any) -> bool:
    """The same plain value as the fingerprint reads it (``_ABSENT`` is only itself)."""
    if a is _ABSENT or b is _ABSENT:
        return a is b
    return digest(a) == digest(b)
