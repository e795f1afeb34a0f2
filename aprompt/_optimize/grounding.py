"""Grounding sources: the run-level texts a proposal prompt may be grounded in.

A source is computed once per run, before the first proposal, by the proposer LM; the texts of all
sources are journaled together (kind ``"summaries"``, one entry per source in :data:`GROUNDING_SOURCES`
order), so a resumed run writes none again. Each text that is not ``None`` fills its own field of the
proposer's prompt (``Dataset Summary: ...``), in registry order, when the run's
:class:`~aprompt._optimize.propose.Grounding` switches the source on. A source that gives up (``None``
plus a reason) is recorded in ``result.dropped`` as ``("*", -1, "<label>: <reason>")``; grounding is a
help, never a reason to abort a run.

The per-proposal pieces (demos, the style tip, the history of earlier instructions) are not sources:
they change with every proposal (see :mod:`aprompt._optimize.propose`).

A new source is one subclass of :class:`GroundingSource` and one entry in :data:`GROUNDING_SOURCES`;
its switch is the :class:`~aprompt._optimize.propose.Grounding` flag of its ``name`` (override
:meth:`GroundingSource.enabled` for a source that needs none).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from aprompt._optimize.summaries import Grounded, summarize_data, summarize_program

if TYPE_CHECKING:
    from aprompt._optimize.propose import Grounding
    from aprompt._optimize.run_context import RunContext


class GroundingSource(ABC):
    """One run-level grounding text for the proposer.

    Attributes:
        name: the :class:`~aprompt._optimize.propose.Grounding` flag that switches it, and its key among a
            run's grounding texts.
        field: the proposer prompt's input field it fills (shown as its title case, ``Dataset Summary``).
        label: what a drop calls it (``"data summary: <reason>"``).
        max_calls: the most LM calls it makes, for the run's limits (retries of bad replies aside).
    """

    name: str
    field: str
    label: str
    max_calls: int = 1

    def enabled(self, grounding: Grounding) -> bool:
        """Whether ``grounding`` asks for this source: its flag of the same name."""
        return bool(getattr(grounding, self.name))

    @abstractmethod
    async def text(self, ctx: RunContext) -> Grounded:
        """The source's text for this run (``ctx.proposer_lm`` writes it), or ``None`` with a reason."""

    def __repr__(self) -> str:
        return f"<grounding source {self.name!r}>"


class DataSummary(GroundingSource):
    """A few sentences on the training data: observations on up to 3 batches, then condensed."""

    name = "data_summary"
    field = "dataset_summary"
    label = "data summary"
    max_calls = 4  # 3 batches of observations and the condensing call

    async def text(self, ctx: RunContext) -> Grounded:
        return await summarize_data(ctx.trainset, ctx.proposer_lm, seed=ctx.seed, outage=ctx.outage)


class ProgramSummary(GroundingSource):
    """What the program does and each module's role, from its source and its predictors' signatures."""

    name = "program_summary"
    field = "program_description"
    label = "program summary"

    async def text(self, ctx: RunContext) -> Grounded:
        return await summarize_program(ctx.program, ctx.predictors, ctx.proposer_lm, outage=ctx.outage)


#: Every grounding source, in the order their fields appear in the proposer's prompt.
GROUNDING_SOURCES: tuple[GroundingSource, ...] = (
    DataSummary(),
    ProgramSummary(),
)


__all__ = ["GROUNDING_SOURCES", "DataSummary", "GroundingSource", "ProgramSummary"]
