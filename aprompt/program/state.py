"""Saving and loading a program's prompt state (every predictor's instruction and demos) as JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aprompt._errors import StateError
from aprompt._files import json_text, write_text_atomically
from aprompt.program._coerce import format_input, format_output
from aprompt.program.discovery import named_predictors
from aprompt.program.predictor import check_demo_fields, check_state
from aprompt.program.signature import Signature
from aprompt.run.identity import stable_order

__all__ = ["STATE_VERSION", "load_state", "load_state_file", "program_state", "save_state"]

STATE_VERSION = 1
_VERSION_KEY = "aprompt_state_version"


def program_state(program: object) -> dict[str, Any]:
    """The prompt state of every predictor of ``program`` as plain JSON values.

    Shape: ``{"aprompt_state_version": 1, "predictors": {name: {"signature", "instruction",
    "demos"}}}`` (names from :func:`named_predictors`). Raises :class:`StateError` if a demo holds a
    value JSON cannot represent, a field its predictor's signature lacks, or none of its output fields.

    Example::

        data = program_state(program)
        load_state(other_copy_of_program, data)
    """
    predictors = {}
    for name, predictor in named_predictors(program):
        state = predictor.get_state()
        saved = [_json_value(d, f"{name}.demos[{i}]") for i, d in enumerate(state["demos"])]
        _check_shown_alike(predictor.signature, state["demos"], saved, f"{name}.demos")
        state["demos"] = saved
        # A state that saves must load: the demos that loading refuses are refused here too.
        check_demo_fields(predictor.signature, state["demos"], f"predictor {name!r}")
        predictors[name] = state
    return {_VERSION_KEY: STATE_VERSION, "predictors": predictors}


def load_state(program: object, data: Mapping[str, Any]) -> None:
    """Set every predictor of ``program`` from ``data`` (as made by :func:`program_state`).

    All of it is checked before anything changes: the version, that the predictor names are exactly
    the program's, that each saved signature matches, that each predictor's state holds only the keys
    it saves, and that each demo has only the signature's fields and at least one of its outputs; any
    mismatch raises :class:`StateError`
    naming it and leaves the program as it was.
    """
    if not isinstance(data, Mapping):
        raise StateError(f"prompt state must be an object, got {type(data).__name__}")
    version = data.get(_VERSION_KEY)
    if version != STATE_VERSION:
        raise StateError(_version_problem(data, version))
    saved = data.get("predictors")
    if not isinstance(saved, Mapping):
        raise StateError("prompt state lacks a 'predictors' object")
    predictors = dict(named_predictors(program))
    missing = sorted(set(predictors) - set(saved))
    extra = sorted(set(saved) - set(predictors))
    if missing or extra:
        raise StateError(
            "prompt state does not match the program's predictors: "
            + "; ".join(
                part
                for part in (
                    f"not in the state: {missing}" if missing else "",
                    f"not in the program: {extra}" if extra else "",
                )
                if part
            )
        )
    for name, predictor in predictors.items():
        check_state(predictor, saved[name], where=f"predictor {name!r}")
    for name, predictor in predictors.items():
        predictor.set_state(saved[name])


def _version_problem(data: Mapping[str, Any], version: object) -> str:
    """Why ``data`` is not a state of this version, and what to do about it."""
    if data.get("format") == "aprompt-result":  # OptimizeResult.save's file (result.RESULT_FORMAT)
        return (
            "this is a saved optimization result, not a prompt state: "
            "load it with aprompt.load(program, path)"
        )
    if type(version) is int and version > STATE_VERSION:
        return (
            f"prompt state version {version} was written by a newer aprompt (this one reads version "
            f"{STATE_VERSION}): upgrade aprompt to load it"
        )
    return f"unsupported prompt state version {version!r} (expected {STATE_VERSION})"


def save_state(program: object, path: str | os.PathLike[str]) -> None:
    """Write :func:`program_state` to ``path`` as JSON (atomically: a crash leaves the old file), creating
    its folder if missing."""
    write_text_atomically(Path(path), json_text(program_state(program)) + "\n")


def load_state_file(program: object, path: str | os.PathLike[str]) -> None:
    """Read a file written by :func:`save_state` and :func:`load_state` it into ``program``;
    :class:`StateError` if it cannot be read."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=json_object)
    except UnicodeDecodeError as exc:  # a state re-saved by an editor in another encoding (UTF-16)
        raise StateError(f"{path}: not UTF-8 text, as save_state writes it ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise StateError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:  # missing, a folder, unreadable: as aprompt.load says it
        raise StateError(f"cannot read saved prompts from {path}: {exc.strerror or exc}") from None
    refuse_keys_given_twice(data, str(path))
    load_state(program, data)


class _GivenTwice(dict[str, Any]):
    """A JSON object that gave :attr:`key` twice (holding the last value, as JSON readers do)."""

    key: str


def json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for a saved file: an object giving a key twice is marked for
    :func:`refuse_keys_given_twice` (only the prompt state must not have one)."""
    data = dict(pairs)
    if len(data) == len(pairs):
        return data
    marked = _GivenTwice(data)
    marked.key = next(key for i, (key, _) in enumerate(pairs) if any(k == key for k, _ in pairs[:i]))
    return marked


def refuse_keys_given_twice(data: Any, where: str) -> None:
    """StateError if an object in ``data`` (read with :func:`json_object`) gave a key twice, as a hand
    merge of two saves can: reading it keeps the last value without a word, and it may be the wrong one."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, _GivenTwice):
            raise StateError(
                f"{where}: the key {value.key!r} is given twice in one object: keep the one meant, "
                "remove the other"
            )
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _check_shown_alike(
    signature: Signature, demos: list[dict[str, Any]], saved: list[dict[str, Any]], where: str
) -> None:
    """StateError for a demo value the prompt would show otherwise once loaded from JSON: an enum member
    (shown by its name or repr, loaded as its bare value) or another str, int or float subclass."""
    for i, (demo, plain) in enumerate(zip(demos, saved, strict=True)):
        for field in signature.fields:
            if field.name not in demo:
                continue
            shown, loaded = (_shown(signature, field.name, d[field.name]) for d in (demo, plain))
            if shown != loaded:
                raise StateError(
                    f"{where}[{i}].{field.name}: the prompt shows {demo[field.name]!r} as {shown!r}, but "
                    f"saved as JSON it would load as {plain[field.name]!r}, shown as {loaded!r}: give the "
                    "examples plain values (an enum member's .value, or the text the prompt should show)"
                )


def unsaved_demo_value(signature: Signature, name: str, value: Any) -> str | None:
    """Why ``value``, shown as the field ``name`` of a demo of ``signature``, could not be saved by
    :func:`program_state` (JSON cannot hold it, or would load it back shown otherwise); ``None`` when it
    can."""
    try:
        plain = _json_value(value, name)
    except StateError as exc:
        return str(exc)
    shown, loaded = _shown(signature, name, value), _shown(signature, name, plain)
    if shown != loaded:
        return (
            f"{name}: the prompt shows {value!r} as {shown!r}, but saved as JSON it would show as {loaded!r}"
        )
    return None


def _shown(signature: Signature, name: str, value: Any) -> str:
    """How the prompt shows ``value`` of the field ``name`` (as the adapter renders demos)."""
    if name in signature.input_names:
        return f"{format_input(value)}"
    return f"{format_output(value, signature.field(name).annotation)}"


def _json_value(value: Any, where: str) -> Any:
    """A deep copy of ``value`` in plain JSON types (tuples become lists, sets lists in the order the
    prompt shows them, an enum member or other subclass of str, int or float its plain value, as loading
    gives it back); StateError otherwise."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise StateError(f"{where}: {value!r} cannot be saved as JSON")
        return float(value)
    if isinstance(value, list | tuple):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, set | frozenset):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(stable_order(value))]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise StateError(f"{where}: object keys must be strings")
        return {k: _json_value(v, f"{where}.{k}") for k, v in value.items()}
    raise StateError(f"{where}: a {type(value).__name__} value cannot be saved as JSON")
