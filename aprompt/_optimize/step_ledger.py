"""What a stop mid-step leaves unjournaled, for a resumed run to account for.

A step's result is journaled when it ends; until then what it spends is counted by the run's meter only.
The ledger keeps, by ``"kind:key"``, what the outermost steps being computed have spent, what those that
ended without a result spent, and what those a stop left before this call spent (read back from the
run's last ``spent`` record). A resumed run counts such a step's answers as its own when it runs again,
and until then leaves them out of its decisions on the budget (:meth:`StepLedger.discount`), so it
decides as the uninterrupted run did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from aprompt.lm._metering import RequestMeter
from aprompt.lm.usage import UsageCounter
from aprompt.run._limits import RunCosts, spent_record


@attrs.define
class StepLedger:
    """The run's steps not journaled, for its ``spent`` records (see the module docstring)."""

    #: What the outermost steps being computed have spent so far, by ``"kind:key"``.
    open: dict[str, UsageCounter] = attrs.field(factory=dict)
    #: Outermost steps that ended without a result in this call: ``"kind:key"`` -> ``[requests, requests
    #: answered, prompt tokens, completion tokens]``.
    unfinished: dict[str, list[int]] = attrs.field(factory=dict)
    #: Likewise, those a stop mid-step left before this call, not run again yet. One that runs again
    #: counts what was answered then as its own (see :meth:`take`); until then the run decides as if
    #: it had spent nothing on it (see :meth:`discount`).
    inherited: dict[str, list[int]] = attrs.field(factory=dict)
    #: Requests counted that an uninterrupted run never sends: those a stop caught in flight (sent again).
    waste: int = 0
    #: Set when the strategy ended as an uninterrupted run would (finished, or stopped on a limit):
    #: nothing it left unjournaled is a stop's.
    ended_whole: bool = False
    #: Set when a step ended unfinished with an answer that arrived but whose call did not end (the stop
    #: came between): whether the cache holds it is not known, so neither is what running it again costs.
    answers_unsure: bool = False

    @classmethod
    def resumed(cls, record: Mapping[str, Any] | None) -> StepLedger:
        """The ledger a call starts with, from the run's last ``spent`` record (``None``: a new run).

        Raises:
            KeyError, TypeError, ValueError: the record is malformed.
        """
        ledger = cls()
        if record is not None:
            ledger.waste = int(record.get("waste", 0))
            if int(record.get("unjournaled", 0)) > 0:  # a stop mid-step (not a finish, not a limit)
                unfinished = record.get("unfinished", {})
                ledger.inherited = {str(k): [int(n) for n in v[:4]] for k, v in unfinished.items()}
                ledger.waste += sum(paid[0] - paid[1] for paid in ledger.inherited.values())
        return ledger

    def take(self, step_id: str) -> list[int] | None:
        """What ``step_id`` spent when it ended unfinished before (in this call or one a stop ended), as
        it runs again; ``None`` when it did not."""
        return self.unfinished.pop(step_id, None) or self.inherited.pop(step_id, None)

    def failed(self, step_id: str, used: UsageCounter) -> None:
        """Note that the outermost step ``step_id`` ended without a result, having spent ``used``."""
        self.unfinished[step_id] = paid(used)
        self.answers_unsure |= used.settled != used.calls - used.cache_hits

    def discount(self) -> tuple[int, int]:
        """Requests and tokens the meter counts that the uninterrupted run had not counted at this point
        of the flow: those a stop caught in flight (sent again), and what the steps it left unfinished
        had spent, until they run again. Decisions on the budget leave them out, so a run resumed after
        a stop it saw through decides as the uninterrupted run did."""
        requests = self.waste + sum(paid[1] for paid in self.inherited.values())
        return requests, sum(paid[2] + paid[3] for paid in self.inherited.values())

    def spent_record(
        self,
        meter: RequestMeter,
        costs: RunCosts,
        *,
        requests: int | None,
        final: bool,
        diverged: str | None,
        bound: dict[str, float],
    ) -> dict[str, Any]:
        """:func:`~aprompt.run._limits.spent_record` of the run now, with the steps a stop now would
        leave unjournaled."""
        # The inherited ones first: they keep the counts of the first time, and the same key later is
        # the newer (run again since, under its key in open or unfinished).
        unfinished = {
            **self.inherited,
            **self.unfinished,
            **{step: paid(used) for step, used in self.open.items()},
        }
        # Requests counted, or reserved (``requests``), for work no journaled step holds.
        recorded = meter.usage.requests if requests is None else requests
        ahead = max(0, recorded - meter.usage.requests)
        lost = sum(paid[0] for paid in unfinished.values()) + ahead
        inherited_waste = sum(paid[0] - paid[1] for paid in self.inherited.values())
        return spent_record(
            meter,
            costs,
            requests=requests,
            unjournaled=0 if self.ended_whole else lost,
            unfinished=unfinished,
            # What the inherited steps lost in flight is in their entries, counted again on resume.
            waste=self.waste - inherited_waste,
            final=final and not self.answers_unsure,
            diverged=diverged,
            bound=bound,
        )


def paid(used: UsageCounter) -> list[int]:
    """``[requests, requests answered, prompt tokens, completion tokens]`` of a step's counter: the
    requests answered (and cached) are its finished calls not answered from a cache, with their retries."""
    answered = min(used.requests, used.calls - used.cache_hits + used.retries)
    return [used.requests, answered, used.prompt_tokens, used.completion_tokens]
