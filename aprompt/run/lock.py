"""One optimization per ``run_dir`` at a time: an OS-level lock on ``run_dir/run.lock``.

The lock is taken without waiting and held for the whole run. The operating system releases it when the
file is closed, also when the process dies (SIGKILL included), so a crashed run never leaves a stale lock.
A second process — or a second concurrent ``optimize`` in the same process, which opens the file anew —
is refused at once with :class:`~aprompt.RunDirLockedError`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import IO

from aprompt._errors import JournalError, RunDirLockedError

LOCK_FILE = "run.lock"

logger = logging.getLogger(__name__)


class RunDirLock:
    """The held lock of one ``run_dir``; release it with :meth:`release` or a ``with`` block.

    Example::

        with RunDirLock.acquire("runs/qa"):
            ...  # no other optimization writes runs/qa meanwhile
    """

    def __init__(self, path: Path, handle: IO[bytes] | None) -> None:
        self._path = path
        self._handle = handle

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike[str]) -> RunDirLock:
        """Lock ``run_dir`` (created if needed) for this run.

        Raises:
            RunDirLockedError: another run holds the lock.
            JournalError: ``run_dir`` cannot be created or written (e.g. a file is in its place).
        """
        folder = Path(run_dir)
        path = folder / LOCK_FILE
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+b")  # held open for the run: closing it releases the lock
        except OSError as exc:
            raise JournalError(f"cannot open run_dir {folder}: {exc}", path=str(path)) from None
        try:
            locked = _try_lock(handle)
        except OSError as exc:
            # A file system without locks (some network mounts): run unguarded rather than not at all.
            logger.warning("cannot lock %s (%s); concurrent runs on it are not detected", path, exc)
            return cls(path, handle)
        except BaseException:
            handle.close()
            raise
        if not locked:
            holder = _read_holder(handle)
            handle.close()
            raise RunDirLockedError(
                f"run_dir {folder} is in use by another optimization{holder} (it holds {path}); wait for "
                "it to finish, or use another run_dir",
                path=str(path),
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        return cls(path, handle)

    @property
    def path(self) -> Path:
        return self._path

    def release(self) -> None:
        """Let go of the lock (idempotent). Closing the file releases it."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(handle: IO[bytes]) -> str:
    """`` (process N)`` from the lock file, or nothing when it cannot be read (Windows locks the byte)."""
    try:
        handle.seek(0)
        text = handle.read(32).decode(errors="replace").strip()
    except OSError:
        return ""
    return f" (process {text})" if text.isdigit() else ""


if sys.platform == "win32":
    import msvcrt

    def _try_lock(handle: IO[bytes]) -> bool:
        """Lock the file's first byte without waiting; False when another handle holds it."""
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:  # locked elsewhere (EACCES or EDEADLOCK)
            return False
        return True

else:
    import fcntl

    def _try_lock(handle: IO[bytes]) -> bool:
        """``flock`` the whole file without waiting; False when another open file holds it."""
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
