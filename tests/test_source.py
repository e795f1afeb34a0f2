"""source_of: the same text as inspect.getsource, read again when the file changes."""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from aprompt._source import source_of


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_a_class_source_follows_its_file(tmp_path: Path) -> None:
    path = tmp_path / "program_v.py"
    path.write_text("class Program:\n    answer = 1\n")
    module = _load(path, "program_v")
    try:
        assert (
            source_of(module.Program)
            == inspect.getsource(module.Program)
            == "class Program:\n    answer = 1\n"
        )
        # An edit of the same size: only the file's date tells it apart.
        path.write_text("class Program:\n    answer = 2\n")
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert source_of(module.Program) == "class Program:\n    answer = 2\n"
        assert source_of(module.Program) == inspect.getsource(module.Program)
    finally:
        del sys.modules["program_v"]


def test_a_function_defined_without_a_file_has_no_source() -> None:
    namespace: dict[str, object] = {}
    exec("def made_here():\n    return 1\n", namespace)  # a function with no source file
    with pytest.raises(OSError):
        source_of(namespace["made_here"])


def test_a_class_whose_module_file_is_not_python_has_no_source(tmp_path: Path) -> None:
    document = tmp_path / "guide.md"
    document.write_text("# A guide\n\nSome 3rd-party prose, then a snippet.\n")
    module = ModuleType("guide_snippet")
    module.__file__ = str(document)
    sys.modules["guide_snippet"] = module
    try:
        exec(compile("class Snippet:\n    pass\n", str(document), "exec"), module.__dict__)
        with pytest.raises(OSError, match="not Python source"):
            source_of(module.Snippet)
    finally:
        del sys.modules["guide_snippet"]


def test_a_built_in_has_no_source() -> None:
    with pytest.raises(TypeError):
        source_of(len)
