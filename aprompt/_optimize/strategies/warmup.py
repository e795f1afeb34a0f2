"""Calls sent before the step that makes them, so that their answers are in when the step starts.

The proposals wait for the whole bootstrap (each shows a demo set), and the screen for every proposal. Yet
proposal ``i``'s first draw needs only the grounding texts and the demo sets up to ``i``, and a proposal's
screen only that proposal. When nothing can refuse a step (the run has no limit on calls, tokens or cost)
and the run's LMs keep a response cache, :class:`Warmup` sends these calls as soon as their inputs exist:
proposal ``i``'s first draw once the sets before it are built, and a proposal's screen once it and every
proposal before it are in. The steps then run as before, in their order, and find the answers in the cache
(an identical call still in flight is shared): the calls, the candidates and the run are those of before,
only sooner.

A call goes ahead only when its step is sure to send it: the screen of a first draw the step keeps (not a
repeat of an earlier one or of the original, as ``instruction_key`` tells: those are drawn again), the
original's screen with the first of them, and nothing for a step the journal holds already (a resumed
run). A call that fails here is left to its step, which sends it again and handles the failure as it
always does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import anyio
import anyio.abc
import attrs

from aprompt._optimize.bootstrap import DemoSet
from aprompt._optimize.outage import OutageGuard
from aprompt._optimize.proposal_cleaning import instruction_key
from aprompt._optimize.propose import Proposal, ProposalContext, draw_candidate
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.strategies.demo_steps import distinct_sets, leading_sets_of
from aprompt._optimize.strategies.instruction_steps import screen_examples, screen_one
from aprompt._optimize.strategies.steps import nothing_refuses
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm.cache._run_caches import cache_in_use


def _shares_calls(lm: object) -> bool:
    cache = cache_in_use(lm)
    return bool(cache is not None and cache.enabled)


@attrs.define(eq=False)
class Warmup:
    """The proposals' first draws and their screens, sent ahead (the ``"warmup"`` phase); see the
    module docstring."""

    ctx: RunContext
    _texts: Callable[[], Awaitable[Mapping[str, str | None]]]
    #: Per predictor, its demo sets as :func:`~aprompt._optimize.strategies.demo_steps.bootstrap_candidates`
    #: lists them before dropping repeats; ``None`` for a set not built yet.
    _sets: dict[str, list[DemoSet | None]] = attrs.field(factory=dict)
    _leading: dict[str, int] = attrs.field(factory=dict)
    _drawn: set[tuple[str, int]] = attrs.field(factory=set)
    _proposals: dict[str, dict[int, Proposal]] = attrs.field(factory=dict)
    _screened: set[tuple[str, str]] = attrs.field(factory=set)
    _group: anyio.abc.TaskGroup | None = None
    _bootstrapped: bool = False
    _news: anyio.Event = attrs.field(factory=anyio.Event)

    @classmethod
    def for_run(
        cls, ctx: RunContext, texts: Callable[[], Awaitable[Mapping[str, str | None]]]
    ) -> Warmup | None:
        """A warm-up for the run (``texts``: its grounding texts, once written), or ``None`` when the run
        must not send calls ahead (a limit could refuse its steps, or its LMs share no calls)."""
        if not nothing_refuses(ctx) or not (_shares_calls(ctx.lm) and _shares_calls(ctx.proposer_lm)):
            return None
        warm = cls(ctx, texts)
        bootstrapped = max(0, ctx.budget.n_candidates - 2)
        for name, predictor in ctx.predictors:
            leading = leading_sets_of(ctx, name, predictor)
            warm._leading[name] = len(leading)
            warm._sets[name] = [*leading, *([None] * bootstrapped)]
            warm._proposals[name] = {}
        return warm

    async def run(self) -> None:
        """Send each call once its inputs exist, until the bootstrap has ended and every call sent is
        answered: the usage of the ``"warmup"`` phase."""
        async with self.ctx.phase("warmup"), plain_errors_task_group() as group:
            self._group = group
            while True:
                # Calls start here, not in the bootstrap's callback: a task counts its usage in the
                # phase of the task that started it.
                self._draw_ready()
                if self._bootstrapped:
                    break
                await self._news.wait()
                self._news = anyio.Event()

    def bootstrap_ended(self) -> None:
        """No set will be built any more: the warm-up ends once what it sent is in."""
        self._bootstrapped = True
        self._news.set()

    def demo_set_built(self, index: int, sets: Mapping[str, DemoSet]) -> None:
        """Bootstrapped set ``index`` (2, 3, ...) is built: send the draws it lets go."""
        for name, demo_set in sets.items():
            self._sets[name][self._leading[name] + index - 2] = demo_set
        self._news.set()

    def _journaled(self, kind: str, name: str) -> bool:
        return self.ctx.journal is not None and self.ctx.journal.latest(kind, name) is not None

    def _draw_ready(self) -> None:
        for name, sets in self._sets.items():
            if self._journaled("proposals", name):
                continue
            built = sets[: sets.index(None)] if None in sets else sets
            # Without repeats the sets built so far are the first of the step's sets, at its indices.
            known = distinct_sets([s for s in built if s is not None])
            for index in range(1, self.ctx.budget.n_candidates):
                if index < len(known) and (name, index) not in self._drawn:
                    self._drawn.add((name, index))
                    assert self._group is not None
                    self._group.start_soon(self._draw, name, index, known[index])

    async def _draw(self, name: str, index: int, demo_set: DemoSet) -> None:
        ctx = self.ctx
        predictor = dict(ctx.predictors)[name]
        context = ProposalContext(name, predictor, texts=await self._texts())
        try:
            proposal = await draw_candidate(
                context,
                ctx.proposer_lm,
                index=index,
                grounding=ctx.grounding,
                demos=demo_set.demos,
                existing=[predictor.instruction],
                seed=ctx.seed,
                outage=ctx.outage,
            )
        except Exception:  # left to the step
            return
        self._proposals[name][index] = proposal
        self._screen_ready(name)

    def _screen_ready(self, name: str) -> None:
        if self._journaled("screen", name) or not screen_examples(self.ctx):
            return
        original = dict(self.ctx.predictors)[name].instruction
        seen = {instruction_key(original)}
        drawn = self._proposals[name]
        for index in range(1, self.ctx.budget.n_candidates):
            proposal = drawn.get(index)
            if proposal is None:
                return  # not in yet: whether a later one repeats it is not known
            text = proposal.instruction
            if text is None or instruction_key(text) in seen:
                continue
            seen.add(instruction_key(text))
            for instruction in (original, text):
                if (name, instruction) not in self._screened:
                    self._screened.add((name, instruction))
                    assert self._group is not None
                    self._group.start_soon(self._screen, name, instruction)

    async def _screen(self, name: str, instruction: str) -> None:
        guard = OutageGuard.for_program(self.ctx.predictors, self.ctx.lm, self.ctx.outage)
        try:
            await screen_one(self.ctx, name, instruction, guard, f"a screen of {name}'s proposals")
        except Exception:  # left to the step
            return


__all__ = ["Warmup", "nothing_refuses"]
