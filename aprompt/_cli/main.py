"""``main``: parse, run the command under a signal watch, and turn its outcome into an exit code."""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import select
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from aprompt._cli.errors import EXIT_CONFIG, EXIT_PIPE_CLOSED, leaf_error, report_error
from aprompt._cli.lms import key_variables
from aprompt._cli.parser import build_parser
from aprompt._errors import ConfigError
from aprompt.lm.endpoints import public_url


async def _until_signal(body: Callable[[], Awaitable[int]], caught: list[int]) -> int | None:
    """Run ``body``; SIGINT/SIGTERM cancel it (it cleans up as on any cancellation) and return None."""
    code: int | None = None

    async def watch(group: Any) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for signum in received:
                caught.append(int(signum))
                group.cancel_scope.cancel()
                return  # a second Ctrl-C during cleanup interrupts at once

    try:
        async with anyio.create_task_group() as group:
            if sys.platform != "win32":
                group.start_soon(watch, group)
            code = await body()
            group.cancel_scope.cancel()
    except BaseExceptionGroup as errors:
        # The user's error, not our task group's wrapping (its own cause kept: a hint may read it).
        leaf = leaf_error(errors)
        raise leaf from leaf.__cause__
    return code


def _interrupted(args: argparse.Namespace, argv: Sequence[str], signum: int) -> int:
    print("\ninterrupted.", file=sys.stderr)
    if getattr(args, "command", "") == "optimize":
        if args.run_dir:
            shown = [shown_arg(a) for a in argv if a != "--fresh"]
            command = "aprompt " + shlex.join(shown)
            print(f"the run is saved in {args.run_dir}; resume it with:\n  {command}", file=sys.stderr)
            if shown != [a for a in argv if a != "--fresh"]:
                print("(put back the credentials of its URLs, shown without them)", file=sys.stderr)
        else:
            print("nothing was saved; pass --run-dir DIR to make a run resumable", file=sys.stderr)
    return 128 + signum


def shown_arg(arg: str) -> str:
    """``arg`` as it may be printed: a URL (``URL`` or ``--flag=URL``) without its credentials."""
    flag, equals, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    if not value.startswith(("http://", "https://")):
        return arg
    try:
        return flag + equals + public_url(value)
    except ConfigError:
        return flag + equals + "***"


class _LogLines(logging.Formatter):
    """``logger: message``, or the message alone where it already names aprompt (``aprompt: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return line if line.startswith("aprompt:") else f"{record.name}: {line}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (``argv`` default: ``sys.argv[1:]``) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_CONFIG
    debug = bool(getattr(args, "debug", False))
    log = logging.getLogger("aprompt")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogLines())
    log.addHandler(handler)
    log_level = log.level
    log.setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        return _dispatch(args, argv, debug)
    finally:
        log.removeHandler(handler)
        log.setLevel(log_level)


def _dispatch(args: argparse.Namespace, argv: Sequence[str], debug: bool) -> int:
    caught: list[int] = []
    try:
        handler = args.handler
        if inspect.iscoroutinefunction(handler):
            code = anyio.run(_until_signal, lambda: handler(args), caught)
            return code if code is not None else _interrupted(args, argv, caught[0] if caught else 2)
        return int(handler(args))
    except KeyboardInterrupt:
        return _interrupted(args, argv, signal.SIGINT)
    except BaseException as exc:
        if caught:  # an error raised while a signal cancelled the run
            return _interrupted(args, argv, caught[0])
        if isinstance(exc, BrokenPipeError) and _stdout_gone():
            # The reader of the output left (`aprompt show DIR | head`): what was done stays done (a
            # result is saved before its summary is printed); the rest of the output goes nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_PIPE_CLOSED
        return report_error(exc, debug, key_variables(args))


def _stdout_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (another broken pipe is an error of its own)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(mask & select.POLLERR for _, mask in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no stdout to ask
        return False
