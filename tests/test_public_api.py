"""The public API is what the docs show: every name the docs, their examples and the README import or
name (``from aprompt.x import y``, ``import aprompt.x``, ``aprompt.x.y``) is public.

A module is public when no part of its dotted path starts with ``_`` and the API reference documents it
(a ``::: module`` directive in ``docs/reference/*.md``, or one of a module inside it, for a package); a
name is public when its module is and lists it in ``__all__`` (or, without ``__all__``, it has no ``_``
prefix).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import typing
from pathlib import Path
from types import ModuleType

import aprompt

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"

#: ``from aprompt.x import (a, b)`` (a parenthesized list may span lines), ``import aprompt.x``, and any
#: dotted name ``aprompt.x.y`` not inside a path or another name (``runs/aprompt.log``, ``my_aprompt.x``).
FROM_IMPORT = re.compile(r"^\s*from\s+(aprompt(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n]+)", re.MULTILINE)
IMPORT = re.compile(r"^\s*import\s+(aprompt(?:\.\w+)*)", re.MULTILINE)
DOTTED = re.compile(r"(?<![\w/.\-])aprompt(?:\.\w+)+")


def documented() -> set[str]:
    """The dotted paths the API reference renders (``::: path``)."""
    return {
        match.group(1)
        for page in REFERENCE.glob("*.md")
        for match in re.finditer(r"^:::\s+([\w.]+)", page.read_text(encoding="utf-8"), re.MULTILINE)
    }


def is_private(dotted: str) -> bool:
    return any(part.startswith("_") for part in dotted.split("."))


def is_public_module(dotted: str, shown: set[str]) -> bool:
    if is_private(dotted):
        return False
    return dotted == "aprompt" or any(path == dotted or path.startswith(dotted + ".") for path in shown)


def public_names(module: ModuleType) -> set[str]:
    exported = getattr(module, "__all__", None)
    if exported is not None:
        # ``__version__`` is public by convention, never listed in ``__all__``.
        return set(exported) | ({"__version__"} & set(vars(module)))
    return {name for name in vars(module) if not name.startswith("_")}


def _is_module_here(dotted: str) -> bool:
    """Whether ``dotted`` is a module of this checkout (found without importing it: an installed copy of
    aprompt elsewhere, e.g. an editable install's finder, must not answer for a module this tree lacks)."""
    try:
        spec = importlib.util.find_spec(dotted)
    except (ImportError, ValueError):
        return False
    origin = spec.origin if spec is not None else None
    return origin is not None and Path(origin).resolve().is_relative_to(ROOT / "aprompt")


def longest_module(dotted: str) -> tuple[ModuleType, list[str]]:
    """The longest module prefix of ``dotted`` in this checkout, and the attribute names after it."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if _is_module_here(name):
            return importlib.import_module(name), parts[end:]
    raise AssertionError(f"{dotted}: not even its first part is a module of this checkout")


def problem_with(dotted: str, shown: set[str]) -> str | None:
    """Why ``dotted`` (a module, or a module's attribute) is not public, or ``None`` when it is."""
    module, attributes = longest_module(dotted)
    if not is_public_module(module.__name__, shown):
        return f"{dotted}: module {module.__name__} is not public (private, or not in docs/reference)"
    if attributes and attributes[0] not in public_names(module):
        return f"{dotted}: {attributes[0]} is not a public name of {module.__name__}"
    return None


def imported_names(names: str) -> list[str]:
    """The names an import list brings from its module (``a, b as c`` -> ``a, b``), comments dropped."""
    words = re.split(r"[\s,()]+", re.sub(r"#[^\n]*", "", names))
    kept = []
    for index, word in enumerate(words):
        if word and word != "as" and (index == 0 or words[index - 1] != "as"):
            kept.append(word)
    return kept


def references(text: str) -> set[str]:
    """Every ``aprompt...`` name ``text`` imports or names, as dotted paths."""
    found = set(DOTTED.findall(text)) | set(IMPORT.findall(text))
    for module, names in FROM_IMPORT.findall(text):
        found.update(f"{module}.{name}" for name in imported_names(names))
    return found


def scanned_files() -> list[Path]:
    pages = [p for p in sorted((ROOT / "docs").rglob("*.md")) if REFERENCE not in p.parents]
    return [*pages, *sorted((ROOT / "docs" / "examples").glob("*.py")), ROOT / "README.md"]


def test_every_name_the_docs_and_the_readme_import_or_name_is_public() -> None:
    shown = documented()
    problems = []
    for path in scanned_files():
        for dotted in sorted(references(path.read_text(encoding="utf-8"))):
            problem = problem_with(dotted, shown)
            if problem is not None:
                problems.append(f"{path.relative_to(ROOT)}: {problem}")
    assert problems == []


def test_the_docs_scan_finds_the_imports_and_names_it_checks() -> None:
    text = (
        "from aprompt.strategies import (\n    Strategy,  # the base\n    tpe_search as search,\n)\n"
        "import aprompt.progress\nsee `aprompt.lm.retry.RetryPolicy`, not runs/aprompt.log\n"
    )
    assert references(text) == {
        "aprompt.strategies",
        "aprompt.strategies.Strategy",
        "aprompt.strategies.tpe_search",
        "aprompt.progress",
        "aprompt.lm.retry.RetryPolicy",
    }


def test_a_name_outside_the_public_api_is_reported() -> None:
    shown = documented()
    assert problem_with("aprompt._errors.APromptError", shown) is not None
    assert problem_with("aprompt.Limits", shown) is None
    assert problem_with("aprompt.NoSuchName", shown) is not None


def test_every_exported_name_exists() -> None:
    for module in (aprompt, aprompt.strategies):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], module.__name__


def test_the_strategies_module_is_the_custom_strategy_api() -> None:
    needed = {
        "Strategy",
        "StrategyPlan",
        "register_strategy",
        "RunContext",
        "Candidates",
        "SearchOutcome",
        "bootstrap_candidates",
        "tpe_search",
    }
    assert needed <= set(aprompt.strategies.__all__)


def test_every_module_is_private_or_documented_in_the_reference() -> None:
    shown = documented()
    undocumented = []
    for path in sorted((ROOT / "aprompt").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        package = parts[-1] == "__init__"
        dotted = ".".join(parts[:-1] if package else parts)
        if is_private(dotted):
            continue
        if dotted in shown or (package and is_public_module(dotted, shown)):
            continue
        undocumented.append(dotted)
    assert undocumented == [], "make them private (`_name`) or document them (`::: module` in docs/reference)"


def test_every_public_path_the_reference_renders_is_a_public_name() -> None:
    shown = documented()
    missing = [path for path in sorted(shown) if not is_private(path) and problem_with(path, shown)]
    assert missing == []


def test_optimize_events_and_optimize_sync_take_the_arguments_of_optimize() -> None:
    def parameters(function: object) -> dict[str, tuple[object, object]]:
        signature = inspect.signature(function)  # type: ignore[arg-type]
        return {name: (p.kind, p.default) for name, p in signature.parameters.items()}

    optimize = parameters(aprompt.optimize)
    events = parameters(aprompt.optimize_events.__wrapped__)  # type: ignore[attr-defined]
    sync = parameters(aprompt.optimize_sync)

    assert events == {name: p for name, p in optimize.items() if name != "on_event"}
    assert sync == {**optimize, "backend": (inspect.Parameter.KEYWORD_ONLY, "asyncio")}


def test_the_type_hints_of_every_public_function_resolve() -> None:
    """Tools that read annotations at run time (``typing.get_type_hints``, ``inspect.signature(...,
    eval_str=True)``: validators, CLI builders, docs) must resolve every public signature."""
    unresolved = []
    for name in aprompt.__all__:
        value = getattr(aprompt, name)
        functions = [value] if inspect.isfunction(value) else []
        if inspect.isclass(value):
            functions = [f for f in vars(value).values() if inspect.isfunction(f)]
        for function in functions:
            try:
                typing.get_type_hints(function)
            except NameError as exc:
                unresolved.append(f"{name}: {function.__qualname__}: {exc}")
    assert unresolved == []
