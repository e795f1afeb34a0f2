"""The main job: optimize a program on the embedded local model, no API key needed.

Run ``python -m aprompt.demo`` (or ``bash scripts/demo.sh``). It starts SmolLM2-135M under llama.cpp on
loopback and optimizes a one-step program that negates English sentences ("the nurse plays tennis" ->
"the nurse does not play tennis", BIG-bench data shipped with the package) with MIPRO. It prints the
held-out accuracy of the program as written, of the prompt one would write by hand (the same instruction
with 3 training examples as demos) and of the optimized program, held-out sentences before and after,
and the optimized instruction and demos. It says how long it will take when it starts, from the speed it
measures, and how long it took at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
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

INSTRUCTION = "Rewrite the sentence so that it says the opposite: negate its verb."
#: Wall time of the default demo on an idle 2-core machine, model start excluded (see ``README.md``).
IDLE_TWO_CORE_MINUTES = 5
#: How many program calls' time one proposer call (grounding texts, then instruction proposals) adds.
#: They are side by side now, but long (up to 160-256 tokens from prompts of about 600, against about
#: 10 tokens for a program call) and on the run's critical path: the proposals wait for the grounding
#: texts, and the search for the proposals, while few program calls are left to fill the server's
#: slots. Measured on 2 cores (wall time of the whole demo against the speed measured at its start).
PROPOSAL_WEIGHT = 30.0
#: llama.cpp threads: one. Its threads wait for each other spinning, and on a busy 2-core machine the
#: default took about 5 times the CPU time per call; one thread leaves the other core to the client.
DEFAULT_THREADS = 1


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
    data = json.loads(
        resources.files("aprompt.demo").joinpath("sentence_negation.json").read_text(encoding="utf-8")
    )
    return [
        aprompt.Example(inputs={"sentence": item["input"]}, labels={"negated": item["target"]})
        for item in data["examples"]
    ]


def _normal(text: object) -> str:
    return " ".join(str(text).strip().rstrip(".").lower().split())


def exact_negation(example: aprompt.Example, prediction: Any) -> bool:
    """The reply must be the expected sentence (case, spacing and a final period aside)."""
    return _normal(prediction.negated) == _normal(example.labels["negated"])


def estimate_seconds(plan: aprompt.RunPlanned, seconds_per_call: float, after_calls: int) -> float:
    """Seconds left once the run is planned: the plan's program calls at the measured speed, its
    proposal and grounding calls at :data:`PROPOSAL_WEIGHT` program calls each, and the ``after_calls``
    of the held-out evaluation that follows.

    The local server decodes its slots together and the run keeps them busy (the baseline beside the
    bootstrap, the proposals side by side, trials in parallel), so time follows the work done, not the
    order of the steps. The plan's counts are estimates: racing and repeated prompts spend fewer, failing
    bootstrap runs and a confirmation of an undecided pick more.
    """
    proposals = plan.detail.get("proposal", 0)
    program_calls = plan.expected_lm_calls - proposals + after_calls
    return seconds_per_call * (program_calls + PROPOSAL_WEIGHT * proposals)


class Narrator:
    """Prints the run's progress, and how long the demo will take from the speed measured before it."""

    def __init__(self, seconds_per_call: float, after_calls: int, started: float) -> None:
        self.seconds_per_call = seconds_per_call
        self.after_calls = after_calls
        self.started = started

    def __call__(self, event: Event) -> None:
        if isinstance(event, aprompt.RunPlanned):
            spent = time.monotonic() - self.started
            left = estimate_seconds(event, self.seconds_per_call, self.after_calls)
            print(
                f"plan: {event.strategy}, {event.n_trials} trials on {event.val_size} validation examples, "
                f"about {event.expected_lm_calls} LM calls ({event.detail.get('proposal', 0)} of them "
                f"proposals)\n"
                f"time: about {_minutes(spent + left)} in all from the {self.seconds_per_call:.2f} s per "
                f"call measured above ({spent:.0f} s so far)"
            )
        elif isinstance(event, aprompt.PhaseFinished):
            print(
                f"[{event.phase}] {event.seconds:.0f}s, {event.usage.lm_calls} LM calls, "
                f"{event.usage.cache_hits} cache hits"
            )
        elif isinstance(event, aprompt.CandidateProposed) and event.kind == "instruction" and event.index:
            print(f"  proposed instruction #{event.index}: {str(event.value)[:100]!r}")
        elif isinstance(event, aprompt.CandidateDropped):
            print(f"  proposal dropped ({event.predictor} #{event.index}): {event.reason[:100]}")
        elif isinstance(event, aprompt.TrialScored):
            score = "failed" if event.score is None else f"{event.score:.2f}"
            print(f"  trial {event.number}: {score} on {event.n_examples} {dict(event.choice)}")
        elif isinstance(event, aprompt.FullEvaluation):
            kind = "baseline" if event.is_baseline else "full eval"
            print(f"  {kind}: {event.score:.3f} on {event.n_examples} {dict(event.choice)}")


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{max(10, 10 * round(seconds / 10)):.0f} s"
    return f"{max(1, round(seconds / 60))} min"


def shown_examples(
    test: Sequence[aprompt.Example], before: Evaluation, after: Evaluation, n: int
) -> list[int]:
    """Indices of up to ``n`` held-out examples to show: those the optimized program gets right and the
    original got wrong first, then others in order (so a run without a fix still shows its replies)."""
    scores = list(zip(before.results, after.results, strict=True))[: len(test)]
    fixed = [i for i, (old, new) in enumerate(scores) if new.score == 1.0 and old.score != 1.0]
    rest = [i for i in range(len(scores)) if i not in fixed]
    return (fixed + rest)[:n]


def fixed_examples(
    test: Sequence[aprompt.Example], before: Evaluation, after: Evaluation, n: int
) -> list[tuple[aprompt.Example, Any, Any]]:
    """Up to ``n`` held-out examples the optimized program gets right and the original got wrong."""
    out = []
    for example, old, new in zip(test, before.results, after.results, strict=True):
        if new.score == 1.0 and old.score != 1.0:
            out.append((example, old.prediction, new.prediction))
    return out[:n]


def comparison(optimized: Evaluation, hand: Evaluation) -> str:
    """One honest sentence on the optimized program against the hand-written prompt, from the run's own
    per-example scores: the difference and the sentences on which only one of them is right."""
    pairs = list(zip(optimized.results, hand.results, strict=True))
    only_optimized = sum(1 for o, h in pairs if o.score == 1.0 and h.score != 1.0)
    only_hand = sum(1 for o, h in pairs if h.score == 1.0 and o.score != 1.0)
    points = round(100 * ((optimized.mean or 0.0) - (hand.mean or 0.0)))
    if points > 0:
        verdict = f"the optimized program beats the hand-written prompt by {points} points"
    elif points < 0:
        verdict = f"the hand-written prompt beats the optimized program by {-points} points"
    else:
        verdict = "the optimized program and the hand-written prompt score the same"
    detail = (
        f"only the optimized program is right on {only_optimized} sentences, only the hand-written "
        f"prompt on {only_hand}"
    )
    if only_optimized + only_hand and abs(only_optimized - only_hand) < 2 * math.sqrt(
        only_optimized + only_hand
    ):
        detail += "; a difference this small is within the noise of this many sentences"
    return f"{verdict} ({detail})"


class QuietResends(logging.Filter):
    """Drops the client's note on each reply cut at its token budget and re-sent with a larger one: the
    embedded model often rambles, the re-send is the designed answer, and a line each would bury the
    demo's own output. Other warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "reply cut at its token budget" not in record.getMessage()


def _reply(prediction: Any) -> str:
    return "(no answer)" if prediction is None else repr(str(prediction.negated))


def _mark(score: float | None) -> str:
    return "right" if score == 1.0 else "wrong"


def _load() -> str:
    try:
        one, _, _ = os.getloadavg()
    except OSError:  # not every platform reports it
        return "load average unknown"
    return f"load average {one:.2f} on {os.cpu_count()} cores"


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
        # A full evaluation's worth of races every 5 of the demo's few trials (3 in all).
        "full_eval_every": 5,
        "n_candidates": args.candidates,
    }
    cache = aprompt.ResponseCache.in_directory(args.cache_dir) if args.cache_dir else None
    logging.getLogger("aprompt.lm").addFilter(QuietResends())
    print(
        f"aprompt demo: optimize a program that negates sentences with SmolLM2-135M on this machine.\n"
        f"On an idle 2-core machine it takes about {IDLE_TWO_CORE_MINUTES} min after the model starts; "
        f"an estimate from this machine's speed follows in a moment ({_load()})."
    )
    print("starting SmolLM2-135M under llama.cpp on loopback ...")
    threads = {"n_threads": args.threads} if args.threads else {}
    async with aprompt.local_lm(n_parallel=args.parallel, cache=cache, **threads) as lm:
        started = time.monotonic()
        program = NegateSentence()
        # The prompt one would write by hand: the same instruction and 3 training examples as demos.
        by_hand = NegateSentence()
        by_hand.negate.demos = [aprompt.Demo({**e.inputs, **e.labels}) for e in train[:3]]
        scored: dict[str, Evaluation] = {}

        async def score(name: str, candidate: NegateSentence) -> None:
            scored[name] = await aprompt.evaluate(candidate, test, exact_negation, lm=lm)

        # Both at once, as the run's own steps go: the speed measured is the one the run will see.
        async with anyio.create_task_group() as group:
            group.start_soon(score, "before", program)
            group.start_soon(score, "hand", by_hand)
        before, hand = scored["before"], scored["hand"]
        seconds_per_call = (time.monotonic() - started) / max(1, 2 * len(test))
        print(
            f"held-out sentences ({len(test)}): as written {before.mean or 0:.3f}, "
            f"written by hand with 3 training examples as demos {hand.mean or 0:.3f}"
        )
        result = await aprompt.optimize(
            program,
            train,
            exact_negation,
            valset=val,
            lm=lm,
            budget=budget,
            seed=args.seed,
            on_event=Narrator(seconds_per_call, len(test), started),
        )
        after = await aprompt.evaluate(result.program, test, exact_negation, lm=lm)
    finished = time.monotonic() - started
    usage = result.usage
    best = aprompt.program_state(result.program)["predictors"]["negate"]
    print(f"\n== held-out accuracy on {len(test)} sentences the optimizer never saw ==")
    rows = [
        ("as written (the instruction alone)", before),
        ("written by hand (+ 3 training examples)", hand),
        (f"optimized by aprompt ({len(best['demos'])} demos)", after),
    ]
    for label, evaluation in rows:
        print(f"  {label + ':':<42}{evaluation.mean or 0:.3f}")
    print(comparison(after, hand))
    print("\n== held-out sentences, as written -> optimized ==")
    for i in shown_examples(test, before, after, args.show):
        example = test[i]
        print(f"  sentence:   {example.inputs['sentence']!r}")
        print(f"  expected:   {example.labels['negated']!r}")
        print(f"  as written: {_reply(before.results[i].prediction)} ({_mark(before.results[i].score)})")
        print(f"  optimized:  {_reply(after.results[i].prediction)} ({_mark(after.results[i].score)})\n")
    kept = "the instruction as written" if best["instruction"] == INSTRUCTION else "a proposed instruction"
    print(f"== the optimized prompt ({kept}) ==")
    print(f"  instruction: {best['instruction']!r}")
    print(f"  demos ({len(best['demos'])}):")
    for demo in best["demos"]:
        print(f"    {demo['sentence']!r} -> {demo.get('negated', '')!r}")
    print(f"validation: baseline {result.baseline_score:.3f} -> optimized {result.score:.3f}")
    if result.pick is not None:
        print(f"why this program: {result.pick.reason}")
    print(
        f"optimization: {result.seconds:.0f}s, {usage.lm_calls} LM calls, {usage.cache_hits} cache hits, "
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens"
    )
    path = result.save(Path(args.out))
    print(f"saved the optimized program to {path}")
    print(f"demo finished in {finished:.0f} s after the model started ({_load()})")


def parse_args(argv: list[str] | None = None, prog: str = "python -m aprompt.demo") -> argparse.Namespace:
    """The demo's options; ``prog`` is how its usage and errors name the command."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--budget", default="light", choices=["light", "medium", "heavy"])
    parser.add_argument("--train", type=int, default=60, help="training examples")
    parser.add_argument("--val", type=int, default=30, help="validation examples")
    parser.add_argument("--test", type=int, default=200, help="held-out test examples")
    parser.add_argument("--trials", type=int, default=10, help="mini-batch trials")
    parser.add_argument("--minibatch", type=int, default=15, help="examples per mini-batch trial")
    parser.add_argument(
        "--candidates", type=int, default=6, help="instructions (the original and proposals) and demo sets"
    )
    parser.add_argument("--parallel", type=int, default=4, help="llama.cpp server slots")
    parser.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, help="llama.cpp CPU threads (0: its own choice)"
    )
    parser.add_argument("--show", type=int, default=2, help="held-out sentences shown before and after")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default="", help="response cache folder (default: no cache)")
    parser.add_argument("--out", default="demo-result.json", help="where to save the optimized program")
    args = parser.parse_args(argv)
    # Refused here: the splits are slices of the shipped data, which a size past it or below 1 would
    # shorten or empty without a word (a run on fewer examples than asked).
    for name in ("train", "val", "test", "trials", "minibatch", "candidates", "parallel"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("threads", "show"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be at least 0, got {getattr(args, name)}")
    shipped = len(load_examples())
    if args.train + args.val + args.test > shipped:
        parser.error(
            f"--train {args.train} + --val {args.val} + --test {args.test} is more than the {shipped} "
            "sentences the demo ships with"
        )
    return args


if __name__ == "__main__":
    # Through the command line's runner: Ctrl-C stops the server and exits 130 without a traceback, and
    # an error is reported as the CLI reports it.
    import sys

    from aprompt._cli.main import main as cli_main

    sys.exit(cli_main(["demo", *sys.argv[1:]]))
