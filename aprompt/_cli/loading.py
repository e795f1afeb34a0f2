"""Loading what a command line names: the program (``module:attr`` or ``path.py:attr``), the metric,
and examples from JSONL or CSV files."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import inspect
import io
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aprompt
from aprompt._errors import (
    ConfigError,
)
from aprompt._optimize.evaluate import program_entry
from aprompt.program.discovery import named_predictors


def _import_file(path: Path) -> Any:
    resolved = path.resolve()
    name = resolved.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == resolved:
            return loaded
        name = f"aprompt_user_{name}"  # never replace a module already imported under that name
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(resolved.parent))  # so the file imports its neighbours
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_object(spec: str, what: str) -> Any:
    """``module:attr`` or ``file.py:attr`` (``attr`` may be dotted) → the object.

    Raises:
        ConfigError: malformed spec, missing file, module or attribute, or an import that raised.
    """
    source, _, attribute = spec.rpartition(":")
    if not source or not attribute:
        raise ConfigError(f"{what} {spec!r} must be module:attribute or path/to/file.py:attribute")
    is_file = source.endswith(".py") or "/" in source or os.sep in source
    try:
        if is_file:
            if not Path(source).is_file():
                raise ConfigError(f"{what} file {source} does not exist")
            obj = _import_file(Path(source))
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            obj = importlib.import_module(source)
    except ConfigError:
        raise
    except ImportError as exc:
        raise ConfigError(f"{what}: cannot import {source}: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"{what}: importing {source} raised {type(exc).__name__}: {exc}") from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{what}: {source} has no attribute {attribute!r}") from None
    return obj


def load_program(spec: str) -> Any:
    """The program named by ``spec``; a class or a plain function is called with no arguments."""
    obj = load_object(spec, "PROGRAM")
    if isinstance(obj, type) or (inspect.isfunction(obj) and not inspect.iscoroutinefunction(obj)):
        try:
            return obj()
        except TypeError as exc:
            raise ConfigError(
                f"PROGRAM {spec}: {obj.__name__}() needs arguments ({exc}); point at a program object, "
                "or at a class or function that builds one with no arguments"
            ) from exc
    return obj


def input_fields(program: object, given: str | None) -> tuple[list[str], set[str]]:
    """The program's input field names and the required ones (``--inputs`` names them all)."""
    if given:
        names = [name.strip() for name in given.split(",") if name.strip()]
        return names, set(names)
    try:
        params = inspect.signature(program_entry(program)).parameters.values()
    except (TypeError, ValueError):
        params = []  # type: ignore[assignment]
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not named:
        raise ConfigError(
            "cannot tell the program's input fields from its signature; name them with --inputs"
        )
    return [p.name for p in named], {p.name for p in named if p.default is p.empty}


def label_types(program: object) -> dict[str, type]:
    """The output fields of the program's predictors typed ``int``, ``float`` or ``bool``, by name: what
    a CSV label cell of that name is read as (a name typed two ways by two predictors is left out)."""
    seen: dict[str, list[Any]] = {}
    for _, predictor in named_predictors(program):
        for field in predictor.signature.outputs:
            if field.annotation not in seen.setdefault(field.name, []):
                seen[field.name].append(field.annotation)
    return {name: kinds[0] for name, kinds in seen.items() if kinds in ([int], [float], [bool])}


_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}


def _typed_cell(text: str, kind: type) -> Any:
    """A CSV cell as ``kind`` (``int``, ``float`` or ``bool``); a blank cell stays blank (a missing label).

    Raises:
        ValueError: the cell is no value of ``kind``.
    """
    cell = text.strip()
    if not cell:
        return text
    if kind is bool:
        if cell.lower() not in _TRUE | _FALSE:
            raise ValueError(cell)
        return cell.lower() in _TRUE
    number = float(cell)
    if kind is float:
        return number
    if not number.is_integer():  # "42.0" is 42 (a spreadsheet's number column), 4.5 is no int
        raise ValueError(cell)
    return int(cell) if cell.lstrip("+-").isdigit() else int(number)


class _NamedTwice(ValueError):
    """A JSON object that names a field twice (``json`` would keep the last value unseen)."""


def _unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields = dict(pairs)
    if len(fields) < len(pairs):
        twice = sorted({key for key, _ in pairs if [k for k, _ in pairs].count(key) > 1})
        raise _NamedTwice(f"an object names field(s) {twice} more than once")
    return fields


def _json(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_unique_fields)


def _csv_rows(path: Path, text: str, delimiter: str) -> list[tuple[str, Any]]:
    # csv refuses a cell over 128 KiB by default, and a long document is a fair input: while this file
    # is read, no cell may be longer than the file itself (the process's own limit is put back after).
    limit = csv.field_size_limit(max(len(text), csv.field_size_limit()))
    try:
        # Read as the csv module reads a file opened with newline="": a quoted cell keeps its line breaks.
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        named = reader.fieldnames or []
        # A dict keeps one cell of each name: the others would be dropped unseen (unnamed columns, as a
        # spreadsheet's trailing commas make, hold no field a program or metric reads).
        twice = sorted({name for name in named if name and named.count(name) > 1})
        if twice:
            raise ConfigError(f"{path}: the header names column(s) {twice} more than once")
        rows = []
        for n, row in enumerate(reader, 2):
            if None in row or None in row.values():  # more cells than the header names, or fewer
                cells = (
                    len(row) - 1 + len(row[None]) if None in row else sum(v is not None for v in row.values())
                )
                raise ConfigError(f"{path}, row {n}: has {cells} cell(s), the header names {len(named)}")
            rows.append((f"row {n}", dict(row)))
        return rows
    except csv.Error as exc:
        raise ConfigError(f"{path}, line {reader.line_num}: not CSV ({exc})") from None
    finally:
        csv.field_size_limit(limit)


def _rows(path: Path) -> list[tuple[str, Any]]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        # Lines end at "\n" only: JSON text may hold U+2028 and other breaks str.splitlines() splits at.
        for number, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    rows.append((f"line {number}", _json(line)))
                except _NamedTwice as exc:
                    raise ConfigError(f"{path}, line {number}: {exc}") from None
                except ValueError as exc:
                    raise ConfigError(f"{path}, line {number}: not JSON ({exc})") from None
        return rows
    if suffix == ".json":
        try:
            data = _json(text)
        except _NamedTwice as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"{path}: not JSON ({exc})") from None
        items = data.get("examples") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ConfigError(f"{path}: expected a list of objects (or {{'examples': [...]}})")
        return [(f"item {n}", item) for n, item in enumerate(items)]
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path, text, "\t" if suffix == ".tsv" else ",")
    raise ConfigError(f"{path}: unknown data format {suffix or '(no suffix)'!r}; use .jsonl, .json or .csv")


def read_examples(
    path: str | os.PathLike[str],
    fields: Sequence[str],
    required: set[str],
    label_types: Mapping[str, type] | None = None,
) -> list[aprompt.Example]:
    """Examples from a JSONL, JSON or CSV file: ``fields`` are inputs, the rest labels. A CSV cell is
    text: a label named in ``label_types`` (see :func:`label_types`) is read as that type, as a JSON
    value keeps its own.

    Raises:
        ConfigError: unreadable file, unknown format, a record that is not an object or lacks an input,
            or a CSV label that is no value of its type.
    """
    source = Path(path)
    try:
        rows = _rows(source)
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source} is not UTF-8 text ({exc})") from None
    typed = label_types if source.suffix.lower() in (".csv", ".tsv") else None
    examples = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise ConfigError(f"{source}, {where}: expected an object, got {type(row).__name__}")
        missing = sorted(required - set(row))
        if missing:
            raise ConfigError(f"{source}, {where}: lacks input field(s) {missing} (has {sorted(row)})")
        inputs = {k: row[k] for k in fields if k in row}
        for name, kind in (typed or {}).items():
            if name in row and name not in inputs:
                try:
                    row[name] = _typed_cell(row[name], kind)
                except (ValueError, OverflowError):
                    raise ConfigError(
                        f"{source}, {where}: {name} {row[name]!r} is not {'an' if kind is int else 'a'} "
                        f"{kind.__name__} (the program's output field {name}: {kind.__name__})"
                    ) from None
        examples.append(aprompt.Example(inputs, {k: v for k, v in row.items() if k not in inputs}))
    if not examples:
        raise ConfigError(f"{source} holds no examples")
    return examples
