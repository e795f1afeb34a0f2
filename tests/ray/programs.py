"""Programs the Ray tests run on worker processes (importable there: workers import this module)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from aprompt import Predict, Prediction

#: A module-level predictor: a function program's workers use their own import of it.
ANSWER = Predict("question -> answer", instruction="Answer the question.")


async def answer_question(question: str) -> Prediction:
    """A function program whose predictor lives in this module."""
    return await ANSWER(question=question)


class PausingProgram:
    """One predictor; a question holding ``pause`` first records the worker's pid in ``marks`` (one file
    per attempt) and sleeps ``pause_seconds`` before answering, so a test can kill or cancel it mid-run;
    a cancelled attempt leaves a ``cancelled-<pid>`` file."""

    def __init__(self, marks: Path, pause_seconds: float) -> None:
        self.answer = Predict("question -> answer", instruction="Answer the question.")
        self.marks = marks
        self.pause_seconds = pause_seconds

    async def __call__(self, question: str) -> Prediction:
        if "pause" in question:
            attempt = len(list(self.marks.glob("attempt-*")))
            (self.marks / f"attempt-{attempt}-{os.getpid()}").write_text(question)
            if attempt == 0:  # only the first attempt pauses: a retry runs through
                try:
                    await anyio.sleep(self.pause_seconds)
                except BaseException:
                    (self.marks / f"cancelled-{os.getpid()}").write_text(question)
                    raise
        return await self.answer(question=question)
