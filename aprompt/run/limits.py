"""Run budgets: stop an optimization at the next safe point once calls, tokens, cost or time run out."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from aprompt._errors import ConfigError


@attrs.frozen
class RunLimits:
    """Hard limits on one run; ``None`` means unlimited.

    Attributes:
        max_lm_calls: calls that reached an endpoint (cache hits are free).
        max_tokens: prompt + completion tokens of those calls.
        max_cost: money, priced with ``prices``: model name -> (input, output) price per million tokens.
        max_time: seconds of wall time since the run started.

    The run checks them between trials and phases; work in flight finishes (it is already paid for), so
    a run may overshoot by one batch of trials.
    """

    max_lm_calls: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    max_time: float | None = None
    prices: Mapping[str, tuple[float, float]] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        for name in ("max_lm_calls", "max_tokens", "max_cost", "max_time"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or math.isnan(value) or value < 0):
                raise ConfigError(f"{name} must be a non-negative number, got {value!r}")
        if self.max_cost is not None and not self.prices:
            raise ConfigError("max_cost needs prices={model: (input_per_million, output_per_million)}")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.max_lm_calls, self.max_tokens, self.max_cost, self.max_time))


@attrs.define
class LimitWatch:
    """Measures a run against its :class:`RunLimits` (usage is counted from the watch's start)."""

    limits: RunLimits
    lms: Sequence[Any]
    started: float = attrs.field(factory=time.monotonic)
    _baseline: dict[int, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self._baseline = {id(lm): lm.usage for lm in self.lms}

    def cost(self) -> float:
        total = 0.0
        for lm in self.lms:
            used = lm.usage - self._baseline[id(lm)]
            price_in, price_out = self.limits.prices.get(lm.model, (math.nan, math.nan))
            if math.isnan(price_in) and (used.prompt_tokens or used.completion_tokens):
                raise ConfigError(f"max_cost is set but prices has no entry for model {lm.model!r}")
            if used.prompt_tokens or used.completion_tokens:
                total += (used.prompt_tokens * price_in + used.completion_tokens * price_out) / 1e6
        return total

    def reached(self) -> str | None:
        """The name of the first limit reached (``"max_lm_calls"``, ...), or ``None``."""
        if not self.limits.active:
            return None
        calls = tokens = 0
        for lm in self.lms:
            used = lm.usage - self._baseline[id(lm)]
            calls += used.lm_calls
            tokens += used.total_tokens
        checks = (
            ("max_lm_calls", self.limits.max_lm_calls, calls),
            ("max_tokens", self.limits.max_tokens, tokens),
            ("max_time", self.limits.max_time, time.monotonic() - self.started),
        )
        for name, limit, value in checks:
            if limit is not None and value >= limit:
                return name
        if self.limits.max_cost is not None and self.cost() >= self.limits.max_cost:
            return "max_cost"
        return None
