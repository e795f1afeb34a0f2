"""Reply format benchmark: does the embedded local model answer better when it replies with the value alone
(``bare``) than with ``Label: value`` lines (``fields``), the instruction and demos being the same?

Each single-predictor task is evaluated four ways on the same held-out examples: no demos and the hand-written
few-shot prompt of ``bench.quality`` (``HAND_DEMOS`` training examples), each in both reply formats. Nothing
is optimized; the formats are applied through prompt overrides, as a search trial applies them.

Example::

    python -m bench.reply_format --tasks intent,count --test 80
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Sequence
from typing import Any

import anyio

import aprompt
from aprompt.lm.local import LOCAL_MODEL_NAME
from aprompt.program.overrides import PromptOverride
from bench.local_model import warm_local_lm
from bench.quality import HAND_DEMOS, hand_few_shot
from bench.tasks import DEFAULT_DATA_DIR, TASKS

FORMATS = ("fields", "bare")
PROMPTS = ("no demos", f"{HAND_DEMOS} hand demos")


async def score(
    task_name: str, prompt: str, reply_format: str, n_test: int, lm: aprompt.LM
) -> dict[str, Any]:
    task = TASKS[task_name]
    split = task.split(DEFAULT_DATA_DIR, n_train=30, n_val=30, n_test=n_test)
    program = hand_few_shot(task, split, seed=1) if prompt != "no demos" else task.program()
    prompts = {
        name: PromptOverride(p.instruction, tuple(p.demos), reply_format)  # type: ignore[arg-type]
        for name, p in aprompt.named_predictors(program)
    }
    started = time.monotonic()
    evaluation = await aprompt.evaluate(
        program, task.examples(split.test), task.metric, prompts=prompts, lm=lm, concurrency=4
    )
    # An unscored example (the LM failed: here, a reply still cut at twice its token budget) is the
    # prompt's failure as much as an unreadable one: both count as wrong, so each row is over all examples.
    scores = [r.score or 0.0 for r in evaluation.results]
    mean = math.fsum(scores) / len(scores)
    return {
        "task": task_name,
        "prompt": prompt,
        "format": reply_format,
        "n": len(scores),
        "accuracy": mean,
        "se": math.sqrt(mean * (1 - mean) / len(scores)),
        "unreadable": evaluation.n_failed,
        "cut": evaluation.n_unscored,
        "scores": scores,
        "seconds": time.monotonic() - started,
    }


def paired(rows: Sequence[dict[str, Any]]) -> str:
    """bare − fields on the same examples: mean difference and examples won / lost."""
    fields, bare = (next(r for r in rows if r["format"] == f) for f in FORMATS)
    pairs = list(zip(fields["scores"], bare["scores"], strict=True))
    diff = sum(b - a for a, b in pairs) / len(pairs)
    won = sum(1 for a, b in pairs if b > a)
    lost = sum(1 for a, b in pairs if b < a)
    return f"{diff:+.3f} (bare better on {won}, worse on {lost})"


def render(rows: Sequence[dict[str, Any]], command: str, settings: dict[str, Any]) -> str:
    lines = [
        "# Reply format: bare value vs `Field: value` lines on the embedded local model",
        "",
        f"command: `{command}`",
        "",
        f"{LOCAL_MODEL_NAME} (llama.cpp, {settings['parallel']} slots, {settings['threads']} threads), "
        f"temperature 0; {settings['n_test']} held-out test examples per task (the fixed split of "
        "`bench.quality`); the same instruction and demos in both formats, applied as prompt overrides; "
        "nothing optimized. Accuracy is over all examples: `unreadable` counts replies that stayed "
        "unparseable after the corrective retries, `cut` replies still cut at twice their token budget "
        "(left unscored by an evaluation, as an LM failure); both count as wrong here. The paired column "
        "compares the two formats example by example.",
        "",
        f"Python {platform.python_version()}, {platform.platform()}.",
        "",
        "| task | prompt | format | accuracy ± se | unreadable | cut | bare − fields (paired) | wall s |",
        "|---|---|---|---:|---:|---:|---|---:|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        for prompt in PROMPTS:
            group = [r for r in rows if r["task"] == task and r["prompt"] == prompt]
            for row in group:
                delta = paired(group) if row["format"] == "bare" and len(group) == 2 else ""
                lines.append(
                    f"| {task} | {prompt} | {row['format']} | {row['accuracy']:.3f} ± {row['se']:.3f} | "
                    f"{row['unreadable']} | {row['cut']} | {delta} | {row['seconds']:.0f} |"
                )
    return "\n".join(lines) + "\n"


async def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="intent,count", help="comma-separated, of intent, count")
    parser.add_argument("--test", type=int, default=80, help="held-out test examples per task")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/reply_format.md", help="'' to print only")
    args = parser.parse_args(argv)
    command = "python -m bench.reply_format " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    rows = []
    async with warm_local_lm(parallel=args.parallel, threads=args.threads) as (lm, _):
        for task in args.tasks.split(","):
            for prompt in PROMPTS:
                for reply_format in FORMATS:
                    row = await score(task, prompt, reply_format, args.test, lm)
                    print(
                        f"{task} / {prompt} / {reply_format}: {row['accuracy']:.3f} "
                        f"({row['unreadable']} unreadable, {row['cut']} cut, {row['seconds']:.0f} s)",
                        flush=True,
                    )
                    rows.append(row)
    text = render(
        rows, command.strip(), {"parallel": args.parallel, "threads": args.threads, "n_test": args.test}
    )
    print(text)
    if args.out:
        await anyio.Path(args.out).write_text(text)
        await anyio.Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return text


if __name__ == "__main__":
    anyio.run(main)
