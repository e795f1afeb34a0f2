"""The main job: optimize a program on the embedded local model, no API key needed.

Run ``python -m aprompt.demo`` (or ``bash scripts/demo.sh``). It starts SmolLM2-135M under llama.cpp on
loopback, optimizes a small object-counting program with MIPRO on BIG-bench data, and reports the
held-out accuracy of the unoptimized and the optimized program.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any

import anyio

import aprompt
from aprompt.optimize.events import Event

NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}


class CountObjects:
    """Answer a counting question with a number."""

    def __init__(self) -> None:
        self.count = aprompt.Predict(
            "question -> answer: int",
            instruction="Count the objects the question asks about. Reply with the number only.",
            temperature=0.0,
            max_tokens=24,
        )

    async def __call__(self, question: str) -> aprompt.Prediction:
        return await self.count(question=question)


def load_examples() -> list[aprompt.Example]:
    """BIG-bench ``object_counting`` (Apache-2.0), shipped with the package."""
    data = json.loads(resources.files("aprompt.demo").joinpath("object_counting.json").read_text())
    out = []
    for item in data["examples"]:
        targets = item["target"] if isinstance(item["target"], list) else [item["target"]]
        digits = [t for t in targets if re.fullmatch(r"\d+", str(t))]
        value = int(digits[0]) if digits else NUMBER_WORDS[str(targets[0])]
        out.append(aprompt.Example(inputs={"question": item["input"]}, labels={"answer": value}))
    return out


def exact_count(example: aprompt.Example, prediction: Any) -> bool:
    return int(prediction.answer) == int(example.labels["answer"])


def print_event(event: Event) -> None:
    if isinstance(event, aprompt.RunPlanned):
        print(
            f"plan: {event.strategy}, {event.n_trials} trials, {event.val_size} validation examples, "
            f"about {event.expected_lm_calls} LM calls before caching"
        )
    elif isinstance(event, aprompt.PhaseStarted):
        print(f"[{event.phase}] started {event.detail}".rstrip())
    elif isinstance(event, aprompt.PhaseFinished):
        print(
            f"[{event.phase}] {event.seconds:.0f}s, {event.usage.lm_calls} LM calls, "
            f"{event.usage.cache_hits} cache hits"
        )
    elif isinstance(event, aprompt.TrialScored):
        score = "failed" if event.score is None else f"{event.score:.2f}"
        print(f"  trial {event.number}: {score} {dict(event.choice)}")
    elif isinstance(event, aprompt.FullEvaluation):
        kind = "baseline" if event.is_baseline else "full eval"
        print(f"  {kind}: {event.score:.3f} on {event.n_examples} {dict(event.choice)}")
    elif isinstance(event, aprompt.CandidateDropped):
        print(f"  proposal dropped ({event.predictor} #{event.index}): {event.reason[:100]}")


async def main(args: argparse.Namespace) -> None:
    examples = load_examples()
    test = examples[: args.test]
    train = examples[args.test : args.test + args.train]
    val = examples[args.test + args.train : args.test + args.train + args.val]
    budget = {"preset": args.budget, "val_size": args.val, "n_trials": args.trials, "minibatch_size": 20}
    cache = aprompt.ResponseCache.in_directory(args.cache_dir) if args.cache_dir else None
    started = time.monotonic()
    async with aprompt.local_lm(n_parallel=args.parallel, cache=cache) as lm:
        program = CountObjects()
        result = await aprompt.optimize(
            program,
            train,
            exact_count,
            valset=val,
            lm=lm,
            budget=budget,
            seed=args.seed,
            on_event=print_event,
        )
        before = await aprompt.evaluate(program, test, exact_count, lm=lm)
        after = await aprompt.evaluate(result.program, test, exact_count, lm=lm)
    usage = result.usage
    print()
    print(
        f"held-out test accuracy ({len(test)} examples): unoptimized {before.mean or 0:.3f} -> "
        f"optimized {after.mean or 0:.3f}"
    )
    print(f"validation: baseline {result.baseline_score:.3f} -> best {result.score:.3f}")
    print(
        f"optimization: {result.seconds:.0f}s, {usage.lm_calls} LM calls, {usage.cache_hits} cache hits, "
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens; "
        f"total {time.monotonic() - started:.0f}s"
    )
    best = aprompt.program_state(result.program)["predictors"]["count"]
    print(f"best instruction: {best['instruction']!r} with {len(best['demos'])} demos")
    path = result.save(Path(args.out))
    print(f"saved the optimized program to {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m aprompt.demo", description=__doc__)
    parser.add_argument("--budget", default="light", choices=["light", "medium", "heavy"])
    parser.add_argument("--train", type=int, default=60, help="training examples")
    parser.add_argument("--val", type=int, default=40, help="validation examples")
    parser.add_argument("--test", type=int, default=60, help="held-out test examples")
    parser.add_argument("--trials", type=int, default=10, help="mini-batch trials")
    parser.add_argument("--parallel", type=int, default=4, help="llama.cpp server slots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default="", help="response cache folder (default: no cache)")
    parser.add_argument("--out", default="demo-result.json", help="where to save the optimized program")
    return parser.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse_args())
