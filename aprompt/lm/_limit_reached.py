"""The exception a run limit raises (see :mod:`aprompt.lm._metering` for why it is a ``BaseException``)."""

from __future__ import annotations

__all__ = ["BudgetKept", "LimitReached"]


class LimitReached(BaseException):
    """A run limit refused a request or a step (see the module docstring for why it is a
    ``BaseException``).

    Attributes:
        limit: ``"max_lm_calls"``, ``"max_tokens"``, ``"max_cost"`` or ``"max_time"``.
        unaffordable: set when the limit can never pay for the run's first trial (the message says why);
            the run turns this into a :class:`~aprompt._errors.ConfigError`.
    """

    def __init__(self, limit: str, message: str, *, unaffordable: bool = False) -> None:
        super().__init__(message)
        self.limit = limit
        self.unaffordable = unaffordable


class BudgetKept(LimitReached):
    """A step refused to keep what a later step needs (a search's last evaluation, see
    ``RunContext.admit_step``'s ``keep``): the run goes on to that step instead of stopping."""
