"""A trial's mini-batch run in two stages, stopping after the first when the trial is clearly losing to
the pick (see :mod:`aprompt._optimize.racing`)."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Protocol

from aprompt._optimize.evaluate import Evaluation, ExampleResult, OnResult
from aprompt._optimize.examples import Example
from aprompt._optimize.race_bounds import cannot_be_clearly_worse, clearly_worse
from aprompt._optimize.race_plan import first_stage_size
from aprompt._taskgroups import plain_errors_task_group

if TYPE_CHECKING:
    from aprompt._optimize.outage import OutageGuard


class StagedRun(Protocol):
    """Scores a trial's prompts on examples, telling ``on_result`` each result as it is scored."""

    def __call__(
        self, examples: Sequence[Example], on_result: OnResult | None = None
    ) -> Awaitable[Evaluation]: ...


async def staged_evaluation(
    outage: OutageGuard,
    run: StagedRun,
    batch: Sequence[Example],
    incumbent: Mapping[str, float] | None,
    what: str,
) -> tuple[Evaluation, bool]:
    """A trial's mini-batch in two stages, each concurrent inside; after the first, a trial clearly
    losing to ``incumbent`` (the pick's scores; ``None``: no stopping) stops. Returns the evaluation of
    the examples run, in the batch's order, and whether it stopped early.

    The second stage starts as soon as the first stage's answers in show that the trial cannot stop,
    whatever its answers still out (:func:`cannot_be_clearly_worse`), without waiting for the slowest:
    the same examples run, and the evaluation returned is the same.
    """
    first = first_stage_size(len(batch)) if incumbent is not None else None
    if first is None or incumbent is None:
        return await outage.evaluate(run, batch, what), False
    head, tail = batch[:first], batch[first:]
    rest: list[Evaluation] = []

    async def second_stage() -> None:
        rest.append(await outage.evaluate(run, tail, what))

    async with plain_errors_task_group() as group:
        # Only scored results are final: an example an LM failure left unscored may be run again.
        scored: dict[str, float] = {}
        started = False

        def on_result(result: ExampleResult) -> None:
            nonlocal started
            if result.score is not None:
                scored[result.example_id] = result.score
            if not started and cannot_be_clearly_worse(
                scored, [e.id for e in head if e.id not in scored], incumbent
            ):
                started = True
                group.start_soon(second_stage)

        evaluation = await outage.evaluate(partial(run, on_result=on_result), head, what)
        if clearly_worse(evaluation.scores, incumbent):
            # Never when the second stage started: cannot_be_clearly_worse proved it.
            assert not started, "a trial that started its second stage stopped early"
            return evaluation, True
        if not started:
            started = True
            group.start_soon(second_stage)
    return Evaluation(evaluation.results + rest[0].results), False
