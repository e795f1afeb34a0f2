"""Optimizing inside an application whose event loop is already running.

A service (web server, worker, notebook) already runs an asyncio loop with tasks of its own; here one
task beats a heartbeat. ``await aprompt.optimize(...)`` is just one more task in that loop: the library never
starts a loop of its own, so the heartbeat keeps beating while the optimization runs.
``aprompt.optimize_sync`` is for plain scripts: inside a running loop it refuses with a ``ConfigError`` that
says what to do instead.

Run it (the LM is ``OPENAI_BASE_URL`` + ``APROMPT_MODEL``, else the embedded local model)::

    python docs/examples/inside_running_loop.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import aprompt

REVIEWS = [
    ("I love this kettle, it boils fast.", "positive"),
    ("Broke after two days, a waste of money.", "negative"),
    ("Great battery life and a sharp screen.", "positive"),
    ("The strap is cheap and it arrived scratched.", "negative"),
    ("Excellent value, would buy again.", "positive"),
    ("Terrible support, they never answered.", "negative"),
    ("Works great with my old laptop.", "positive"),
    ("Awful smell and the lid leaks.", "negative"),
    ("My kids love the colours and the sturdy box.", "positive"),
    ("The zip jammed on the first trip.", "negative"),
    ("Excellent sound for such a small speaker.", "positive"),
    ("Too small, and the return label never came.", "negative"),
    ("Great fit, and the fabric feels soft.", "positive"),
    ("The app crashes whenever I open the camera.", "negative"),
    ("I love how quiet the fan is at night.", "positive"),
    ("Batteries died within a week.", "negative"),
    ("Excellent instructions, set up in five minutes.", "positive"),
    ("The paint chipped off after one wash.", "negative"),
    ("Great coffee, rich and never bitter.", "positive"),
    ("Arrived late and the box was crushed.", "negative"),
    ("We love the big handles, easy to carry.", "positive"),
    ("The charger gets hot and smells of plastic.", "negative"),
    ("Excellent grip, even with wet hands.", "positive"),
    ("Half the screws were missing.", "negative"),
    ("Great little lamp for reading in bed.", "positive"),
    ("The seller sent the wrong size twice.", "negative"),
    ("I love that it folds flat for storage.", "positive"),
    ("Blurry photos and a flimsy tripod.", "negative"),
    ("Excellent knife, it stays sharp for months.", "positive"),
    ("The blender is loud and leaks at the base.", "negative"),
]
TRAINSET = [aprompt.Example(inputs={"review": r}, labels={"sentiment": s}) for r, s in REVIEWS]
BUDGET: Mapping[str, int] = {
    "n_candidates": 3,
    "n_trials": 6,
    "minibatch_size": 4,
    "max_bootstrapped_demos": 2,
}


class SentimentProgram:
    def __init__(self) -> None:
        self.classify = aprompt.Predict("review -> sentiment: Literal['positive', 'negative']")

    async def __call__(self, review: str) -> aprompt.Prediction:
        return await self.classify(review=review)


def same_sentiment(example: aprompt.Example, prediction: aprompt.Prediction) -> bool:
    return bool(prediction.sentiment == example.labels["sentiment"])


def lm_from_environment() -> contextlib.AbstractAsyncContextManager[aprompt.OpenAICompatibleLM]:
    """``OPENAI_BASE_URL`` (+ ``APROMPT_MODEL``, key from ``OPENAI_API_KEY``), else the local model."""
    if os.environ.get("OPENAI_BASE_URL"):
        # The client reads $OPENAI_BASE_URL and $OPENAI_API_KEY itself.
        return aprompt.OpenAICompatibleLM(os.environ.get("APROMPT_MODEL", "gpt-4o-mini"))
    return aprompt.local_lm()


class Report(NamedTuple):
    """What ``main`` saw: the result, the heartbeats while it ran, optimize_sync's refusal."""

    result: aprompt.OptimizeResult[SentimentProgram]
    beats_during_run: int
    refusal: str


async def heartbeat(beats: list[float], period: float) -> None:
    """The app's own work: stands for request handling, queue polling, metrics."""
    while True:
        beats.append(time.monotonic())
        await asyncio.sleep(period)


async def main(lm: aprompt.LM, budget: Mapping[str, Any] = BUDGET, period: float = 0.01) -> Report:
    """Optimize as a task of the running loop, beside a heartbeat; count the beats during the run."""
    beats: list[float] = []
    refusal = ""
    async with asyncio.TaskGroup() as group:
        beating = group.create_task(heartbeat(beats, period))
        try:
            aprompt.optimize_sync(SentimentProgram(), TRAINSET, same_sentiment, lm=lm, budget=budget)
        except aprompt.ConfigError as exc:
            refusal = str(exc)
            print(f"optimize_sync refused, as it should here: {refusal}")
        started = time.monotonic()
        optimizing = group.create_task(
            aprompt.optimize(SentimentProgram(), TRAINSET, same_sentiment, lm=lm, budget=budget)
        )
        result = await optimizing  # the app could go on with other work and await it later
        finished = time.monotonic()
        beating.cancel()
    during = sum(started <= beat <= finished for beat in beats)
    print(f"score {result.baseline_score:.2f} -> {result.score:.2f} in {finished - started:.1f} s")
    print(f"the heartbeat beat {during} times meanwhile")
    return Report(result, during, refusal)


async def run() -> None:
    async with lm_from_environment() as lm:
        await main(lm)


if __name__ == "__main__":
    asyncio.run(run())  # the app starts its loop; inside it, aprompt only awaits
