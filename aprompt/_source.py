"""A function's or class's source, read once per version of its file.

A run reads its program's source three times (the program summary, and the run's fingerprint of the
program and of the metric), and :func:`inspect.getsource` parses the whole module to find a class:
~10 ms each on a large file, per run. The memo is keyed by the object and its file's size and
modification time, so an edited file is read again, as :func:`inspect.getsource` would.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any

__all__ = ["source_of"]


def source_of(target: Any) -> str:
    """:func:`inspect.getsource` of ``target``, memoized while its file stays the same.

    Raises:
        OSError, TypeError: as :func:`inspect.getsource` (no source file, a built-in object); OSError
            too when the file a class names is not Python (a class exec'd from a document's snippet).
    """
    path = inspect.getsourcefile(target)
    try:
        stat = os.stat(path) if path else None
    except OSError:
        stat = None
    if stat is None:  # no file to date the source by (a notebook cell, a string exec'd): read it each time
        return _read(target)
    try:
        return _memoized(target, path, stat.st_mtime_ns, stat.st_size)
    except TypeError:  # an unhashable target
        return _read(target)


@functools.lru_cache(maxsize=64)
def _memoized(target: Any, path: str | None, mtime_ns: int, size: int) -> str:
    return _read(target)


def _read(target: Any) -> str:
    try:
        return inspect.getsource(target)
    except SyntaxError as exc:  # inspect parses a class's whole file to find it
        raise OSError(f"the file that holds {target!r} is not Python source: {exc.msg}") from None
