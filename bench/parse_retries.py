"""Parse retries benchmark: what each corrective follow-up after an unreadable reply is worth on the
embedded local model, in score and in LM calls.

Every task of ``bench.quality`` is evaluated with three fixed prompts — the program as written, the
hand-written few-shot prompt (``HAND_DEMOS`` training examples) and the labeled-only demo set an
optimization starts from — each with ``max_parse_retries`` of 2, 1 and 0 on every predictor, on the same
held-out examples. Nothing is optimized. The runs share one response cache, so a setting with fewer
retries replays the first attempts of the one before it; the calls column counts every chat call the
program made (what a run without a cache sends, re-sends of cut replies aside). Accuracy is over all
examples: an unreadable or unscored one counts as wrong.

Example::

    python -m bench.parse_retries --tasks intent,count --test 100
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio

import aprompt
from aprompt._optimize.bootstrap import labeled_only_set
from aprompt._optimize.budget import PRESETS
from aprompt.lm.local import LOCAL_MODEL_NAME
from aprompt.lm.types import Completion, Message
from bench.local_model import warm_local_lm
from bench.quality import HAND_DEMOS, hand_few_shot
from bench.tasks import DEFAULT_DATA_DIR, TASKS, Task
from bench.tasks.data import Split

RETRIES = (2, 1, 0)
PROMPTS = ("as written", f"{HAND_DEMOS} hand demos", "labeled set")


class CountingLM:
    """Counts the chat calls made through it (cache hits of the LM behind it included)."""

    def __init__(self, inner: aprompt.LM) -> None:
        self.inner, self.calls = inner, 0

    @property
    def model(self) -> str:
        return self.inner.model

    async def chat(self, messages: Sequence[Message], *, rollout: int = 0, **params: Any) -> Completion:
        self.calls += 1
        return await self.inner.chat(messages, rollout=rollout, **params)


def prompt_program(task: Task, split: Split, prompt: str, retries: int) -> object:
    """The task's program with ``prompt``'s demos and ``retries`` corrective follow-ups per predictor."""
    if prompt == "as written":
        program = task.program()
    elif prompt == "labeled set":
        # Demo set 1 of an optimization with the light budget.
        program = task.program()
        train = task.examples(split.train)
        light = PRESETS["light"]
        for _, predictor in aprompt.named_predictors(program):
            if set(predictor.signature.output_names) <= set(train[0].labels):
                labeled = labeled_only_set(predictor, train, light.max_labeled_demos, light.max_demos)
                predictor.demos = list(labeled.demos)
    else:
        program = hand_few_shot(task, split, seed=1)
    for _, predictor in aprompt.named_predictors(program):
        predictor.max_parse_retries = retries
    return program


async def score(task_name: str, prompt: str, retries: int, n_test: int, lm: aprompt.LM) -> dict[str, Any]:
    task = TASKS[task_name]
    split = task.split(DEFAULT_DATA_DIR, n_train=30, n_val=30, n_test=n_test)
    counting = CountingLM(lm)
    started = time.monotonic()
    evaluation = await aprompt.evaluate(
        prompt_program(task, split, prompt, retries),
        task.examples(split.test),
        task.metric,
        lm=counting,
        concurrency=4,
    )
    scores = [r.score or 0.0 for r in evaluation.results]
    return {
        "task": task_name,
        "prompt": prompt,
        "retries": retries,
        "n": len(scores),
        "accuracy": math.fsum(scores) / len(scores),
        "unreadable": evaluation.n_failed,
        "unscored": evaluation.n_unscored,
        "calls": counting.calls,
        "scores": scores,
        "seconds": time.monotonic() - started,
    }


def against_most(row: dict[str, Any], most: dict[str, Any]) -> str:
    """This setting − the most retries, example by example: mean difference, examples lost and won."""
    pairs = list(zip(most["scores"], row["scores"], strict=True))
    lost = sum(1 for a, b in pairs if b < a)
    won = sum(1 for a, b in pairs if b > a)
    return f"{sum(b - a for a, b in pairs) / len(pairs):+.3f} (lower on {lost}, higher on {won})"


def render(rows: Sequence[dict[str, Any]], command: str, settings: dict[str, Any]) -> str:
    lines = [
        "# Parse retries: what each corrective follow-up is worth on the embedded local model",
        "",
        f"command: `{command}`",
        "",
        f"{LOCAL_MODEL_NAME} (llama.cpp, {settings['parallel']} slots, {settings['threads']} threads), "
        f"temperature 0; {settings['n_test']} held-out test examples per task (the fixed split of "
        "`bench.quality`); three fixed prompts, each with `max_parse_retries` 2, 1 and 0 on every "
        "predictor; nothing optimized. Accuracy is over all examples (unreadable or unscored: wrong). "
        "Calls: chat calls the program made, as a run without a cache sends them. The last column "
        f"compares each setting with {RETRIES[0]} retries, example by example.",
        "",
        f"Python {platform.python_version()}, {platform.platform()}.",
        "",
        "| task | prompt | retries | accuracy | unreadable | unscored | calls | − most retries (paired) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        for prompt in PROMPTS:
            group = [r for r in rows if r["task"] == task and r["prompt"] == prompt]
            most = next((r for r in group if r["retries"] == RETRIES[0]), None)
            for row in group:
                delta = against_most(row, most) if most is not None and row is not most else ""
                lines.append(
                    f"| {task} | {prompt} | {row['retries']} | {row['accuracy']:.3f} | {row['unreadable']} | "
                    f"{row['unscored']} | {row['calls']} | {delta} |"
                )
    return "\n".join(lines) + "\n"


async def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--test", type=int, default=100, help="held-out test examples per task")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/parse_retries.md", help="'' to print only")
    args = parser.parse_args(argv)
    command = "python -m bench.parse_retries " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    async with warm_local_lm(parallel=args.parallel, threads=args.threads) as (_, base_url):
        cache = aprompt.ResponseCache.memory_only(1_000_000)
        async with aprompt.OpenAICompatibleLM(
            LOCAL_MODEL_NAME, base_url, api_key="", max_concurrency=args.parallel, cache=cache
        ) as lm:
            for task in args.tasks.split(","):
                for prompt in PROMPTS:
                    for retries in RETRIES:
                        row = await score(task, prompt, retries, args.test, lm)
                        print(
                            f"{task} / {prompt} / {retries} retries: {row['accuracy']:.3f} "
                            f"({row['unreadable']} unreadable, {row['calls']} calls)",
                            flush=True,
                        )
                        rows.append(row)
    settings = {"parallel": args.parallel, "threads": args.threads, "n_test": args.test}
    text = render(rows, command.strip(), settings)
    print(text)
    if args.out:
        await anyio.Path(args.out).write_text(text)
        await anyio.Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return text


if __name__ == "__main__":
    anyio.run(main)
