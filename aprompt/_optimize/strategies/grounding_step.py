"""The grounding step: the text of every grounding source, written once per run beside the other steps
and journaled together."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aprompt._optimize import grounding as grounding_sources
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.summaries import Grounded
from aprompt._taskgroups import plain_errors_task_group


async def grounding_texts(ctx: RunContext) -> dict[str, str | None]:
    """The text of every grounding source (:data:`~aprompt._optimize.grounding.GROUNDING_SOURCES`) by
    name, ``None`` where switched off or unusable; written once per run and journaled together."""
    names = [source.name for source in grounding_sources.GROUNDING_SOURCES]

    def encode(texts: Mapping[str, str | None]) -> list[str | None]:
        return [texts[name] for name in names]

    def decode(data: Sequence[str | None]) -> dict[str, str | None]:
        return dict(zip(names, data, strict=True))

    return await ctx.memo("summaries", "all", lambda: _grounding_texts(ctx), encode, decode)


async def _grounding_texts(ctx: RunContext) -> dict[str, str | None]:
    sources = grounding_sources.GROUNDING_SOURCES
    got: list[Grounded | None] = [None] * len(sources)

    async def one(position: int) -> None:  # the sources need nothing of each other: all at once
        got[position] = await sources[position].text(ctx)

    async with plain_errors_task_group() as group:
        for position, source in enumerate(sources):
            if source.enabled(ctx.grounding):
                group.start_soon(one, position)
    texts: dict[str, str | None] = {}
    for source, grounded in zip(sources, got, strict=True):  # dropped in source order, as written
        texts[source.name] = None if grounded is None else grounded.text
        if grounded is not None and grounded.text is None:
            ctx.dropped.append(("*", -1, f"{source.label}: {grounded.reason}"))
    return texts


def grounding_calls(ctx: RunContext) -> int:
    """The most LM calls the run's grounding sources make."""
    return sum(
        source.max_calls for source in grounding_sources.GROUNDING_SOURCES if source.enabled(ctx.grounding)
    )
