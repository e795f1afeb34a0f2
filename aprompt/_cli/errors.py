"""Exit codes, and how an error becomes a message and an exit code."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence

import anyio

import aprompt
from aprompt._errors import (
    APromptError,
    CacheError,
    ConfigError,
    JournalError,
    LMError,
    ParseError,
    StateError,
)
from aprompt._terminal import terminal_safe

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_LM, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: Its output's reader went away (`| head`): 128 + SIGPIPE, as a tool the signal ends.
EXIT_PIPE_CLOSED = 141


def leaf_error(exc: BaseException) -> BaseException:
    """The first error inside (nested) exception groups, ignoring cancellations (call it in the loop)."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, anyio.get_cancelled_exc_class())]
        exc = (inner or list(exc.exceptions))[0]
    return exc


def _refused_key(error: BaseException | None) -> bool:
    """Whether ``error``, or an error it was raised from, is an endpoint refusing the API key."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, aprompt.AuthenticationError):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def key_hint(key_variables: Sequence[str]) -> str:
    """What to do about a refused API key: ``key_variables`` name where the keys were read from."""
    names = " or ".join(f"${name}" for name in key_variables)
    return f"check the API key in {names}, or name its variable with --api-key-env"


def report_error(
    error: BaseException, debug: bool, key_variables: Sequence[str] = ("OPENAI_API_KEY",)
) -> int:
    """Print ``error`` as one line (a hint where one helps: ``key_variables`` name where the API keys of
    this command's clients were read from) and return its exit code."""
    if isinstance(error, SystemExit):
        return int(error.code) if isinstance(error.code, int) else EXIT_ERROR
    if debug:
        traceback.print_exception(error)
    if isinstance(error, ConfigError | StateError | JournalError | CacheError):
        hint = " (on the command line: --fresh starts over)" if "resume=False" in str(error) else ""
        print(terminal_safe(f"aprompt: error: {error}{hint}"), file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(error, LMError | ParseError):
        hint = ""
        if _refused_key(error):
            hint = f" ({key_hint(key_variables)})"
        print(terminal_safe(f"aprompt: LM error: {error}{hint}"), file=sys.stderr)
        return EXIT_LM
    kind = "error" if isinstance(error, APromptError) else f"unexpected {type(error).__name__}"
    print(terminal_safe(f"aprompt: {kind}: {error}"), file=sys.stderr)
    if not debug:
        print("run again with --debug for the traceback", file=sys.stderr)
    return EXIT_ERROR
