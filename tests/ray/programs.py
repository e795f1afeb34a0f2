"""Programs the Ray tests run on worker processes (importable there: workers import this module)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from aprompt import ContentFilteredError, OpenAICompatibleLM, Predict, Prediction

#: A module-level predictor: a function program's workers use their own import of it.
ANSWER = Predict("question -> answer", instruction="Answer the question.")


async def answer_question(question: str) -> Prediction:
    """A function program whose predictor lives in this module."""
    return await ANSWER(question=question)


#: Module-level predictors with LM clients of their own, created at import. Their address has nothing
#: listening: a worker that called its own import's client would fail; the tests give the driver's
#: copies clients of their fake servers.
DRAFT = Predict(
    "question -> answer",
    instruction="Draft an answer.",
    lm=OpenAICompatibleLM("draft-model", "http://127.0.0.1:9/v1", api_key="unused", max_retries=0),
)
CHECK = Predict(
    "question, draft -> answer",
    instruction="Check the draft.",
    lm=OpenAICompatibleLM("check-model", "http://127.0.0.1:9/v1", api_key="unused", max_retries=0),
)


async def draft_and_check(question: str) -> Prediction:
    """A function program whose two module-level predictors each have an LM of their own."""
    draft = await DRAFT(question=question)
    return await CHECK(question=question, draft=draft.answer)


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


class SleepingProgram:
    """One predictor; every question holding ``pause`` writes a ``started-<question>`` mark and sleeps
    ``pause_seconds`` (a cancelled one leaves ``cancelled-<question>``), others answer at once."""

    def __init__(self, marks: Path, pause_seconds: float) -> None:
        self.answer = Predict("question -> answer", instruction="Answer the question.")
        self.marks = marks
        self.pause_seconds = pause_seconds

    async def __call__(self, question: str) -> Prediction:
        if "pause" in question:
            (self.marks / f"started-{question}").write_text(str(os.getpid()))
            try:
                await anyio.sleep(self.pause_seconds)
            except BaseException:
                (self.marks / f"cancelled-{question}").write_text(str(os.getpid()))
                raise
        return await self.answer(question=question)


class LazyAnswerProgram:
    """One predictor; returns its answer wrapped in a generator, a value that cannot be pickled."""

    def __init__(self) -> None:
        self.answer = Predict("question -> answer", instruction="Answer the question.")

    async def __call__(self, question: str) -> object:
        prediction = await self.answer(question=question)
        return (value for value in [prediction])


class FallbackProgram:
    """One predictor; a reply the provider's filter withheld is answered with the filter's own reason."""

    def __init__(self) -> None:
        self.answer = Predict("question -> answer", instruction="Answer the question.")

    async def __call__(self, question: str) -> Prediction:
        try:
            return await self.answer(question=question)
        except ContentFilteredError as refused:
            return Prediction({"answer": f"refused ({refused.finish_reason})"})


class CatchingProgram:
    """One predictor; any exception of its call is answered ``fallback``: a program that would turn a failed
    LM call into an answer of its own."""

    def __init__(self) -> None:
        self.answer = Predict("question -> answer", instruction="Answer the question.")

    async def __call__(self, question: str) -> Prediction:
        try:
            return await self.answer(question=question)
        except Exception:
            return Prediction({"answer": "fallback"})
