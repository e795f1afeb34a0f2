"""Runs started ahead of their step: a race's next step begun while the rung before it still waits for its
slowest answers (:mod:`aprompt._optimize.racing`), its results handed to the step when it comes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import attrs

from aprompt._optimize.evaluate import Evaluation, ExampleResult, OnResult


@attrs.define(eq=False)
class HeadStart:
    """A run of one choice on ``example_ids`` started ahead of its step (see ``SearchLoop.run_ahead``)."""

    example_ids: tuple[str, ...]
    _done: anyio.Event = attrs.Factory(anyio.Event)
    _results: list[ExampleResult] = attrs.Factory(list)
    _listener: OnResult | None = None
    _evaluation: Evaluation | None = None
    _error: Exception | None = None

    async def run(self, evaluate: Callable[[OnResult], Awaitable[Evaluation]]) -> None:
        """Run ``evaluate``, told each result as it is scored; its evaluation, or its error, goes to the
        step that takes it."""
        try:
            self._evaluation = await evaluate(self._tell)
        except Exception as exc:  # the step raises it in its turn, as it would have itself
            self._error = exc
        self._done.set()

    @property
    def finished(self) -> bool:
        """The run ended (its evaluation or its error is in)."""
        return self._done.is_set()

    def _tell(self, result: ExampleResult) -> None:
        self._results.append(result)
        if self._listener is not None:
            self._listener(result)

    def listen(self, on_result: OnResult | None) -> None:
        """Tell ``on_result`` the results in so far, and each next one as it comes."""
        if on_result is not None:
            for result in self._results:
                on_result(result)
        self._listener = on_result

    async def result(self) -> Evaluation:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._evaluation is not None
        return self._evaluation
