"""Running the program with a combination's prompts on examples: the evaluations every step of a search
(a trial, a race's rung, a full evaluation) is made of, and the runs a race starts ahead of their step
(:mod:`aprompt._optimize.head_start`)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import anyio
import anyio.abc
import attrs

from aprompt._optimize.candidates import Candidates, Choice
from aprompt._optimize.evaluate import Evaluation, Metric, OnResult, evaluate_reporting
from aprompt._optimize.examples import Example
from aprompt._optimize.final_pick import Key, key_of
from aprompt._optimize.head_start import HeadStart
from aprompt._slots import Limiter
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm.types import LM


@attrs.define(eq=False)
class ChoiceRuns:
    """Scores ``program`` with a combination's prompts on examples by ``metric``, at most ``limiter``'s
    program runs at once. A run started ahead of its step (:meth:`run_ahead`) is taken by the next
    evaluation of its choice that covers its examples.

    Example: ``await runs.evaluate(candidates, choice, examples)`` is ``choice``'s evaluation on ``examples``
    (no outage handling, no journal).
    """

    program: object
    metric: Metric
    lm: LM | None
    limiter: Limiter
    #: Runs started ahead of their step, per choice; the step's first evaluation of the choice takes them.
    _ahead: dict[Key, HeadStart] = attrs.field(factory=dict, init=False)
    #: Every run started ahead since the last :meth:`drop_ahead`, taken or not.
    _started: list[HeadStart] = attrs.field(factory=list, init=False)

    def fresh(self) -> ChoiceRuns:
        """The same runs (program, metric, LM, limiter) with none started ahead."""
        return ChoiceRuns(self.program, self.metric, self.lm, self.limiter)

    async def evaluate(
        self,
        candidates: Candidates,
        choice: Choice,
        examples: Sequence[Example],
        on_result: OnResult | None = None,
    ) -> Evaluation:
        """Score ``choice``'s prompts (from ``candidates``) on ``examples``, telling ``on_result`` each
        example's result as it is scored; a run started ahead for ``choice`` on some of them is taken."""
        head = self._ahead.pop(key_of(choice), None)
        ids = {e.id for e in examples}
        if head is not None and set(head.example_ids) <= ids:
            return await self._evaluate_after(head, candidates, choice, examples, on_result)
        return await self._evaluate_now(candidates, choice, examples, on_result)

    def run_ahead(
        self,
        group: anyio.abc.TaskGroup,
        candidates: Candidates,
        choice: Choice,
        examples: Sequence[Example],
    ) -> None:
        """Start running ``choice`` on ``examples`` in ``group``, ahead of the step that will run them:
        that step's first evaluation of ``choice`` takes these results instead of running them again
        (registered at once, so a step starting before the run does still finds it)."""
        head = self._ahead[key_of(choice)] = HeadStart(tuple(e.id for e in examples))
        self._started.append(head)
        group.start_soon(head.run, partial(self._evaluate_now, candidates, choice, examples))

    def has_runs_ahead(self) -> bool:
        """Whether a run started ahead is still going (taken by an evaluation or not)."""
        return any(not head.finished for head in self._started)

    def drop_ahead(self) -> None:
        """Forget the runs started ahead that no step took (the race that started them ended)."""
        self._ahead.clear()
        self._started.clear()

    async def _evaluate_now(
        self,
        candidates: Candidates,
        choice: Choice,
        examples: Sequence[Example],
        on_result: OnResult | None = None,
    ) -> Evaluation:
        return await evaluate_reporting(
            self.program,
            examples,
            self.metric,
            prompts=candidates.prompts_for(choice),
            lm=self.lm,
            concurrency=self.limiter,
            on_result=on_result,
        )

    async def _evaluate_after(
        self,
        head: HeadStart,
        candidates: Candidates,
        choice: Choice,
        examples: Sequence[Example],
        on_result: OnResult | None,
    ) -> Evaluation:
        """``examples`` evaluated, those of ``head`` taken from it (each told to ``on_result`` as it comes
        in), the others run beside it: the evaluation one run of all of them returns."""
        taken = set(head.example_ids)
        rest = [e for e in examples if e.id not in taken]
        fresh: list[Evaluation] = []

        async def run_rest() -> None:
            fresh.append(await self._evaluate_now(candidates, choice, rest, on_result))

        async with plain_errors_task_group() as group:
            if rest:
                group.start_soon(run_rest)
            head.listen(on_result)
            ahead = await head.result()
        found = {r.example_id: r for r in (*ahead.results, *(fresh[0].results if fresh else ()))}
        return Evaluation(tuple(found[e.id] for e in examples))
