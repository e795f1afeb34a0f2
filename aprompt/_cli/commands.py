"""The commands: ``optimize``, ``evaluate``, ``show``, ``report`` and ``demo``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import aprompt
from aprompt._cli.errors import EXIT_LM, EXIT_OK, key_hint
from aprompt._cli.lms import key_variables, open_lm, open_lms
from aprompt._cli.loading import input_fields, label_types, load_object, load_program, read_examples
from aprompt._errors import (
    APromptError,
    ConfigError,
    StateError,
)
from aprompt._files import write_text_atomically
from aprompt._optimize.events import Event, RunPlanned
from aprompt._optimize.per_example import describe_example
from aprompt._terminal import terminal_safe
from aprompt.program.discovery import is_function
from aprompt.progress import progress_display
from aprompt.run._preflight import check_endpoints
from aprompt.run.report import ORIGINAL_FILE, RESULT_FILE, describe_run, load_run, write_report

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


def _check_writable(target: Path) -> None:
    """Refuse, before the run spends anything, a result path the result could not be saved to."""
    if target.is_dir():
        raise ConfigError(f"cannot write the result to {target}: it is a folder (give a file path)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write the result to {target}: {exc.strerror or exc}") from None


def _save_result(result: aprompt.OptimizeResult[Any], targets: list[Path]) -> None:
    """Save ``result`` to every target; where none can be written (a folder gone or full since the run
    began), to a new file in the working or the temporary folder, named in the error: never lost."""
    saved: list[Path] = []
    failed: list[str] = []
    for target in targets:
        try:
            saved.append(result.save(target))
        except OSError as exc:
            failed.append(f"{target}: {exc.strerror or exc}")
    if not failed:
        return
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        if saved:
            break
        try:
            fd, name = tempfile.mkstemp(prefix="aprompt-result-", suffix=".json", dir=folder)
        except OSError:
            continue
        os.close(fd)
        try:
            saved.append(result.save(name))
        except OSError:
            Path(name).unlink(missing_ok=True)
    kept = f"; the result is saved in {', '.join(map(str, saved))}" if saved else ""
    raise ConfigError(f"cannot write the result to {'; '.join(failed)}{kept}")


async def optimize_command(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir) if args.run_dir else None
    out = Path(args.out) if args.out else (run_dir / RESULT_FILE if run_dir else Path("optimized.json"))
    targets = {out, *([run_dir / RESULT_FILE] if run_dir else [])}
    for target in targets:
        _check_writable(target)
    program = load_program(args.program)
    fields, required = input_fields(program, args.inputs)
    typed = label_types(program)
    train = read_examples(args.train, fields, required, typed)
    val = read_examples(args.val, fields, required, typed) if args.val else None
    metric = load_object(args.metric, "--metric")
    try:
        original: dict[str, Any] | None = aprompt.program_state(program)
    except StateError:
        original = None  # demos JSON cannot hold: the report does without the originals

    def keep_original(event: Event) -> None:
        # After RunPlanned the journal has accepted this run's config: the run_dir is ours to write.
        if isinstance(event, RunPlanned) and run_dir is not None and original is not None:
            target = run_dir / ORIGINAL_FILE
            if args.fresh or not target.exists():
                # Whole or not at all: a run killed mid-write would keep a torn file (never rewritten).
                write_text_atomically(target, json.dumps(original, indent=2, ensure_ascii=False))

    async with (
        open_lms(args) as lms,
        progress_display(quiet=args.quiet, usage=lms.usage) as display,
    ):

        def on_event(event: Event) -> None:
            keep_original(event)
            display(event)

        result = await aprompt.optimize(
            program,
            train,
            metric,
            lm=lms.lm,
            proposer_lm=lms.proposer_lm,
            valset=val,
            strategy=args.strategy,
            budget=_budget(args),
            seed=args.seed,
            concurrency=args.concurrency,
            on_event=on_event,
            run_dir=run_dir,
            resume=not args.fresh,
            limits=aprompt.Limits(
                max_lm_calls=args.max_lm_calls,
                max_tokens=args.max_tokens,
                max_time=args.max_time,
                max_cost=args.max_cost,
                prices=lms.prices,
            ),
            # A function's predictors live in its module; this process only saves the result.
            in_place=is_function(program),
        )
    _save_result(result, sorted(targets))
    stopped = f" (stopped by {result.stopped_by})" if result.stopped_by else ""
    print(f"validation score: baseline {result.baseline_score:.3f} -> optimized {result.score:.3f}{stopped}")
    if result.pick is not None:
        print(f"why this program: {result.pick.reason}")
    examples = result.examples
    if len(examples):
        print(
            f"examples: {len(result.failing_examples())} of {len(examples)} still failing, "
            f"{len(result.fixed_examples())} fixed and {len(result.broken_examples())} broken compared "
            "with the baseline"
        )
    print(f"usage: {result.usage.describe()}; {result.seconds:.1f} s")
    print(f"saved the optimized program to {out}  (load it with aprompt.load(program, {str(out)!r}))")
    if run_dir is not None:
        where = shlex.quote(str(run_dir))
        print(f"inspect the run: aprompt show {where}; aprompt report {where}")
    return EXIT_OK


async def evaluate_command(args: argparse.Namespace) -> int:
    shown = args.show_failures if args.show_failures is not None else (0 if args.json else 3)
    if shown < 0:
        raise ConfigError(f"--show-failures must be 0 or more, not {shown}")
    program = load_program(args.program)
    if args.load:
        aprompt.load(program, args.load)
    fields, required = input_fields(program, args.inputs)
    data = read_examples(args.data, fields, required, label_types(program))
    metric = load_object(args.metric, "--metric")
    async with open_lm(args) as lm:
        await check_endpoints([lm])
        evaluation = await aprompt.evaluate(program, data, metric, lm=lm, concurrency=args.concurrency)
    ran = [r for r in evaluation.results if r.error is None or r.metric_failed]  # the program ran
    if ran and all(r.metric_failed for r in ran):
        # Every score would read 0.0, as a wrong program's would: a metric that does not fit the data.
        errors = "; ".join(f"{r.example_id}: {r.error}" for r in ran[:3])
        raise ConfigError(
            f"metric {args.metric} raised on every one of the {len(ran)} predictions it was given "
            f"(the program ran fine); first errors: {errors}"
        )
    scored = [r for r in evaluation.results if r.score is not None]
    if scored and all(r.error is not None and not r.metric_failed for r in scored):
        # Every score would read 0.0, as a wrong program's would: the program never gave an answer.
        errors = "; ".join(f"{r.example_id}: {r.error}" for r in scored[:3])
        raise APromptError(
            f"program {args.program} raised on every one of the {len(scored)} examples it ran on; "
            f"first errors: {errors}"
        )
    table = evaluation.table(data)
    failing = table.failing()
    figures: dict[str, Any] = {
        "score": evaluation.mean,
        "examples": len(evaluation.results),
        "failed": evaluation.n_failed,
        "unscored": evaluation.n_unscored,
        "failing": len(failing),
    }
    if args.json:
        if shown:
            figures["failing_examples"] = [row.to_dict() for row in failing[:shown]]
        print(json.dumps(figures, ensure_ascii=False))
    elif evaluation.mean is not None:
        print(
            f"score {evaluation.mean:.3f} on {len(evaluation.results)} examples "
            f"({len(failing)} below full marks; {evaluation.n_failed} failed with an error, "
            f"{evaluation.n_unscored} left unscored by LM errors)"
        )
        if shown and failing:
            first = min(shown, len(failing))
            print(f"\nfailing examples (the first {first} of {len(failing)}, lowest score first):")
            for row in failing[:shown]:
                lines = describe_example(row, _terminal_width() - 2)
                print(terminal_safe("\n".join(f"  {line}" for line in lines)))
    if evaluation.n_unscored:
        first = next(iter(evaluation.errors.values()), "")
        # The endpoint probe (GET /models) may not check the key: a refused key shows only here.
        refused = any(
            r.error.startswith(f"{aprompt.AuthenticationError.__name__}:")
            for r in evaluation.results
            if r.score is None and r.error is not None
        )
        hint = f" ({key_hint(key_variables(args))})" if refused else ""
        warning = f"warning: {evaluation.n_unscored} examples unscored; first error: {first}{hint}"
        print(terminal_safe(warning), file=sys.stderr)
    return EXIT_LM if evaluation.mean is None else EXIT_OK


def _terminal_width() -> int:
    return max(60, min(160, shutil.get_terminal_size((100, 24)).columns))


def show_command(args: argparse.Namespace) -> int:
    print(describe_run(load_run(args.run_dir)))
    return EXIT_OK


def report_command(args: argparse.Namespace) -> int:
    path = write_report(args.run_dir, args.out)
    print(f"wrote {path}")
    if importlib.util.find_spec("matplotlib") is None:
        print("note: the report has no plots; pip install 'aprompt[ui]' for them", file=sys.stderr)
    return EXIT_OK


async def demo_command(args: argparse.Namespace) -> int:
    demo = importlib.import_module("aprompt.demo.__main__")
    await demo.main(demo.parse_args(args.demo_args, prog="aprompt demo"))
    return EXIT_OK


# -- running: signals, errors, exit codes --------------------------------------------------------
