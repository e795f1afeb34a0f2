"""Writing a text file atomically: readers and concurrent writers never see half of it."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["json_text", "write_text_atomically"]


def json_text(value: Any, **options: Any) -> str:
    """``value`` as indented JSON text that UTF-8 can hold: non-ASCII text as itself, except where a
    lone surrogate (text decoded with ``surrogateescape``) is in it: then every character escaped, read
    back as it was."""
    text = json.dumps(value, indent=2, ensure_ascii=False, **options)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(value, indent=2, ensure_ascii=True, **options)
    return text


def write_text_atomically(target: Path, text: str) -> None:
    """Write ``text`` (UTF-8, whatever the locale) to ``target`` through a temporary file beside it,
    creating ``target``'s folder (and those above it) if missing.

    The temporary file's name is this write's own, so two writers of one path (threads, processes)
    never write into each other's file: the last to finish wins, whole. It is created as any file the
    process writes (0o666 less the umask), not private as :func:`tempfile.mkstemp` would make it: a saved
    state is deployed, and often read by another user than the one who wrote it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            # On disk before the rename: after a power loss the target is the old file or the new one,
            # never a renamed file whose data was not yet written.
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
