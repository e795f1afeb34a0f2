"""The run's admitted steps not finished yet, each with its estimate (``RunContext.admit_step``): steps
overlap, so each admission counts what the others are still expected to spend. A step the search's flow
holds (``RunSpending.hold_steps``) stays counted at its estimate after it ends, until it is retired.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from aprompt.lm.usage import UsageCounter, UsageSnapshot

#: A step by its journal kind and key.
StepKey = tuple[str, str]


@attrs.define
class Commitment:
    """An admitted step not finished yet: its estimate, and what it has spent so far once started."""

    requests: float
    tokens: float
    cost: float
    used: UsageCounter | None = None
    #: Kept after it ends, until :meth:`StepCommitments.retire` (see :meth:`StepCommitments.hold`).
    held: bool = False
    #: Ended while held: its program runs and what it spent, which count towards the measured cost per
    #: run only when it is retired.
    ended: tuple[int, UsageSnapshot] | None = None

    def outstanding(self) -> tuple[float, float, float]:
        """What it is still expected to spend: its estimate less what it has spent, negative once it
        has spent more. Added to the run's spending, an admitted step so counts its estimate until it
        ends, however far it has got: an admission does not depend on the timing of the steps beside it
        (a resumed run, whose finished steps are read back at once, admits what the uninterrupted run
        did)."""
        if self.used is None:
            return self.requests, self.tokens, self.cost
        tokens = self.tokens - self.used.prompt_tokens - self.used.completion_tokens
        cost = self.cost * tokens / self.tokens if self.tokens else 0.0
        return self.requests - self.used.requests, tokens, cost


@attrs.define
class StepCommitments:
    """The admitted steps not finished (or held), in the order they were admitted or ended held."""

    _open: dict[StepKey, Commitment] = attrs.field(factory=dict)

    def __contains__(self, key: StepKey) -> bool:
        return key in self._open

    def has_kind(self, kind: str) -> bool:
        """Whether a step of journal kind ``kind`` is admitted (or held)."""
        return any(each == kind for each, _ in self._open)

    def admit(self, parts: Sequence[tuple[str, str, int]], estimate: tuple[float, float, float]) -> None:
        """Commit the parts ``(journal kind, key, size)`` of an admitted step, each its share by size of
        the step's ``estimate`` (requests, tokens, cost)."""
        todo = sum(size for _, _, size in parts)
        for kind, key, size in parts:
            share = size / todo
            self._open[(kind, key)] = Commitment(
                estimate[0] * share, estimate[1] * share, estimate[2] * share
            )

    def outstanding(self) -> list[tuple[float, float, float]]:
        """What each committed step is still expected to spend (:meth:`Commitment.outstanding`)."""
        return [c.outstanding() for c in self._open.values()]

    def started(self, key: StepKey, used: UsageCounter) -> None:
        """The step ``key`` runs, measuring what it spends in ``used`` (nothing when not admitted)."""
        commitment = self._open.get(key)
        if commitment is not None:
            commitment.used = used

    def pop(self, key: StepKey) -> Commitment | None:
        """Forget the step ``key`` (it ended, or was read back from the journal); its commitment."""
        return self._open.pop(key, None)

    def end_held(self, key: StepKey, ended: Commitment, runs: int, used: UsageSnapshot) -> None:
        """Keep ``ended`` (the held step ``key``, ended with ``runs`` program runs that spent ``used``)
        counted at its estimate until it is retired."""
        ended.ended = (runs, used)
        self._open[key] = ended

    def hold(self, keys: Sequence[StepKey]) -> None:
        """Keep the admitted steps ``keys`` counted after they end, until :meth:`retire`."""
        for key in keys:
            commitment = self._open.get(key)
            if commitment is not None:
                commitment.held = True

    def retire(self, keys: Sequence[StepKey]) -> list[tuple[int, UsageSnapshot]]:
        """Stop holding the steps ``keys``; those that ended are forgotten, their program runs and what
        they spent returned in order (those with runs, to be measured). A step not held is left as it is."""
        measured: list[tuple[int, UsageSnapshot]] = []
        for key in keys:
            commitment = self._open.get(key)
            if commitment is None or not commitment.held:
                continue
            commitment.held = False  # one still running ends as any step does
            if commitment.ended is not None:
                del self._open[key]
                runs, used = commitment.ended
                if runs:
                    measured.append((runs, used))
        return measured
