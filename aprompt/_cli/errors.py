"""Exit codes, and how an error becomes a message and an exit code."""

from __future__ import annotations

import sys
import traceback

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

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_LM, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def leaf_error(exc: BaseException) -> BaseException:
    """The first error inside (nested) exception groups, ignoring cancellations (call it in the loop)."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, anyio.get_cancelled_exc_class())]
        exc = (inner or list(exc.exceptions))[0]
    return exc


def report_error(error: BaseException, debug: bool) -> int:
    if isinstance(error, SystemExit):
        return int(error.code) if isinstance(error.code, int) else EXIT_ERROR
    if debug:
        traceback.print_exception(error)
    if isinstance(error, ConfigError | StateError | JournalError | CacheError):
        hint = " (on the command line: --fresh starts over)" if "resume=False" in str(error) else ""
        print(f"aprompt: error: {error}{hint}", file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(error, LMError | ParseError):
        hint = ""
        if isinstance(error, aprompt.AuthenticationError):
            hint = " (check the API key in $OPENAI_API_KEY or --api-key-env)"
        print(f"aprompt: LM error: {error}{hint}", file=sys.stderr)
        return EXIT_LM
    kind = "error" if isinstance(error, APromptError) else f"unexpected {type(error).__name__}"
    print(f"aprompt: {kind}: {error}", file=sys.stderr)
    if not debug:
        print("run again with --debug for the traceback", file=sys.stderr)
    return EXIT_ERROR
