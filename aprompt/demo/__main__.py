"""The main job: optimize a program on the embedded local model, no API key needed.

Run ``python -m aprompt.demo`` (or ``bash scripts/demo.sh``). It starts SmolLM2-135M under llama.cpp on
loopback and optimizes a one-step program that negates English sentences ("the nurse plays tennis" ->
"the nurse does not play tennis", BIG-bench data shipped with the package) with MIPRO. It prints the
held-out accuracy of the program as written and as optimized, a few held-out examples before and after,
and the optimized instruction and demos.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import anyio

import aprompt
from aprompt._optimize.evaluate import Evaluation
from aprompt._optimize.events import Event

#: How many program calls' time one proposal takes (see ``Narrator``).
PROPOSAL_WEIGHT = 25
INSTRUCTION = "Rewrite the sentence so that it says the opposite: negate its verb."


class NegateSentence:
    """One predictor: a sentence in, its negation out."""

    def __init__(self) -> None:
        self.negate = aprompt.Predict(
            "sentence -> negated", instruction=INSTRUCTION, temperature=0.0, max_tokens=32
        )

    async def __call__(self, sentence: str) -> aprompt.Prediction:
        return await self.negate(sentence=sentence)


def load_examples() -> list[aprompt.Example]:
    """BIG-bench ``linguistic_mappings/sentence_negation`` (Apache-2.0), a balanced subset shipped with
    the package, in a fixed shuffled order."""
    data = json.loads(resources.files("aprompt.demo").joinpath("sentence_negation.json").read_text())
    return [
        aprompt.Example(inputs={"sentence": item["input"]}, labels={"negated": item["target"]})
        for item in data["examples"]
    ]


def _normal(text: object) -> str:
    return " ".join(str(text).strip().rstrip(".").lower().split())


def exact_negation(example: aprompt.Example, prediction: Any) -> bool:
    """The reply must be the expected sentence (case, spacing and a final period aside)."""
    return _normal(prediction.negated) == _normal(example.labels["negated"])


class Narrator:
    """Prints the run's progress, and how long it will take from the speed measured before it."""

    def __init__(self, seconds_per_call: float) -> None:
        self.seconds_per_call = seconds_per_call

    def __call__(self, event: Event) -> None:
        if isinstance(event, aprompt.RunPlanned):
            # Proposals are long generations, each waiting for the one before it: on this model one
            # takes about as long as 25 program calls run side by side (measured on 2 cores).
            proposals = event.detail.get("proposal", 0)
            weighted = event.expected_lm_calls - proposals + PROPOSAL_WEIGHT * proposals
            minutes = weighted * self.seconds_per_call / 60
            print(
                f"plan: {event.strategy}, {event.n_trials} trials on {event.val_size} validation examples, "
                f"at most {event.expected_lm_calls} LM calls (fewer with caching): about "
                f"{max(1, round(minutes))} min from the {self.seconds_per_call:.2f} s per call measured above"
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


def fixed_examples(
    test: Sequence[aprompt.Example], before: Evaluation, after: Evaluation, n: int
) -> list[tuple[aprompt.Example, Any, Any]]:
    """Up to ``n`` held-out examples the optimized program gets right and the original got wrong."""
    out = []
    for example, old, new in zip(test, before.results, after.results, strict=True):
        if new.score == 1.0 and old.score != 1.0:
            out.append((example, old.prediction, new.prediction))
    return out[:n]


def _reply(prediction: Any) -> str:
    return "(no answer)" if prediction is None else repr(str(prediction.negated))


async def main(args: argparse.Namespace) -> None:
    examples = load_examples()
    random.Random(args.seed).shuffle(examples)
    test = examples[: args.test]
    train = examples[args.test : args.test + args.train]
    val = examples[args.test + args.train : args.test + args.train + args.val]
    budget = {
        "preset": args.budget,
        "val_size": args.val,
        "n_trials": args.trials,
        "minibatch_size": args.minibatch,
    }
    cache = aprompt.ResponseCache.in_directory(args.cache_dir) if args.cache_dir else None
    started = time.monotonic()
    print("starting SmolLM2-135M under llama.cpp on loopback ...")
    async with aprompt.local_lm(n_parallel=args.parallel, cache=cache) as lm:
        program = NegateSentence()
        measured = time.monotonic()
        before = await aprompt.evaluate(program, test, exact_negation, lm=lm)
        seconds_per_call = (time.monotonic() - measured) / max(1, len(test))
        print(f"the program as written: {before.mean or 0:.3f} on {len(test)} held-out examples")
        result = await aprompt.optimize(
            program,
            train,
            exact_negation,
            valset=val,
            lm=lm,
            budget=budget,
            seed=args.seed,
            on_event=Narrator(seconds_per_call),
        )
        after = await aprompt.evaluate(result.program, test, exact_negation, lm=lm)
        # The prompt one would write by hand: the same instruction and 3 training examples as demos.
        by_hand = NegateSentence()
        by_hand.negate.demos = [aprompt.Demo({**e.inputs, **e.labels}) for e in train[:3]]
        hand = await aprompt.evaluate(by_hand, test, exact_negation, lm=lm)
    usage = result.usage
    print()
    print(
        f"held-out accuracy ({len(test)} examples): as written {before.mean or 0:.3f} -> "
        f"optimized {after.mean or 0:.3f}"
    )
    print(f"for comparison, written by hand with 3 training examples as demos: {hand.mean or 0:.3f}")
    print(f"validation: baseline {result.baseline_score:.3f} -> optimized {result.score:.3f}")
    if result.pick is not None:
        print(f"why this program: {result.pick.reason}")
    print(
        f"optimization: {result.seconds:.0f}s, {usage.lm_calls} LM calls, {usage.cache_hits} cache hits, "
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens; "
        f"total {time.monotonic() - started:.0f}s"
    )
    for example, old, new in fixed_examples(test, before, after, 2):
        print(f"\n  sentence:  {example.inputs['sentence']!r}")
        print(f"  as written: {_reply(old)}")
        print(f"  optimized:  {_reply(new)}")
    best = aprompt.program_state(result.program)["predictors"]["negate"]
    print(f"\noptimized instruction: {best['instruction']!r}")
    print(f"optimized demos ({len(best['demos'])}):")
    for demo in best["demos"]:
        print(f"  {demo['sentence']!r} -> {demo.get('negated', '')!r}")
    path = result.save(Path(args.out))
    print(f"saved the optimized program to {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m aprompt.demo", description=__doc__)
    parser.add_argument("--budget", default="light", choices=["light", "medium", "heavy"])
    parser.add_argument("--train", type=int, default=60, help="training examples")
    parser.add_argument("--val", type=int, default=30, help="validation examples")
    parser.add_argument("--test", type=int, default=60, help="held-out test examples")
    parser.add_argument("--trials", type=int, default=10, help="mini-batch trials")
    parser.add_argument("--minibatch", type=int, default=15, help="examples per mini-batch trial")
    parser.add_argument("--parallel", type=int, default=4, help="llama.cpp server slots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default="", help="response cache folder (default: no cache)")
    parser.add_argument("--out", default="demo-result.json", help="where to save the optimized program")
    return parser.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse_args())
