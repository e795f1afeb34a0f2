"""Run limits: what a run may spend, what it has spent (journaled, so a resumed run continues the same
budget), and the estimate of a step's cost that decides whether the step may start.

The counting itself happens request by request in :mod:`aprompt.lm._metering`; this module turns a
:class:`Limits` and the journal's last ``spent`` record into that meter, and writes the record back.

``max_time`` is cumulative like the others: it bounds the wall time of all calls of one run together
(time between a crash and the resume is not counted), so calling a run that stopped on ``max_time``
again with the same limit returns at once; give a larger ``max_time`` to continue.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from aprompt._errors import ConfigError
from aprompt.lm._metering import RequestMeter
from aprompt.lm.usage import UsageSnapshot

#: The journal kind of the record of what a run has spent (the latest one counts).
SPENT_KIND = "spent"


_WHOLE = ("max_lm_calls", "max_tokens")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_number(value: object, *, whole: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral if whole else numbers.Real)


def _check_limit(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    whole = attribute.name in _WHOLE
    # Infinity too: a run plans its steps from what a limit leaves, and "no limit" is None.
    if not _is_number(value, whole=whole) or not math.isfinite(float(value)) or float(value) < 0:  # type: ignore[arg-type]
        kind = "a whole number" if whole else "a finite number"
        raise ConfigError(
            f"{attribute.name} must be {kind}, non-negative, or None (no limit); got {_show(value)}"
        )


def _as_prices(prices: object) -> dict[str, tuple[float, float]]:
    """``prices`` checked and copied: ``{model: (input, output)}`` finite non-negative prices per million
    tokens (``None`` is no prices)."""
    if prices is None:
        return {}
    if not isinstance(prices, Mapping):
        raise ConfigError(f"prices must be a mapping {{model: (input, output)}}, got {_show(prices)}")
    checked: dict[str, tuple[float, float]] = {}
    for model, pair in prices.items():
        if not isinstance(model, str):
            raise ConfigError(f"prices keys must be model names (str), got {_show(model)}")
        if isinstance(pair, str | bytes) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ConfigError(
                f"prices[{model!r}] must be a pair (input, output) of prices per million tokens, "
                f"got {_show(pair)}"
            )
        for price in pair:
            if not _is_number(price, whole=False) or not math.isfinite(float(price)) or float(price) < 0:
                raise ConfigError(
                    f"prices[{model!r}] must hold finite non-negative numbers (per million tokens), "
                    f"got {_show(pair)}"
                )
        checked[model] = (float(pair[0]), float(pair[1]))
    return checked


@attrs.frozen
class Limits:
    """Hard limits on one run of :func:`aprompt.optimize` (``limits=aprompt.Limits(...)``); ``None`` means
    unlimited.

    Attributes:
        max_lm_calls: requests sent to an endpoint, retries included (cache hits are free).
        max_tokens: prompt + completion tokens of those requests.
        max_cost: money, priced with ``prices``: model name -> (input, output) price per million tokens.
        max_time: seconds of wall time of the run (all its calls together, when it is resumed).
        prices: ``{model: (input, output)}`` prices per million tokens, for ``max_cost`` (every model the
            run uses needs one).

    All are cumulative over the calls of one run (a ``run_dir`` journals what was spent; tokens an
    earlier call spent on a model it had no price for cost what a later call's ``prices`` say). A step that
    the remaining budget cannot pay for is not started; a request past a spent limit is refused, and
    the step it belonged to is abandoned. ``max_lm_calls`` is never exceeded; tokens and cost may pass
    their limit by what the requests in flight when it was reached cost; at ``max_time`` the calls in
    flight are cancelled. After a crash or a kill, a resumed run may also pass ``max_tokens`` or
    ``max_cost`` by what fewer than 16 answers (journaled every 16; every 64 requests when the killed call
    had no limit on them) and the requests then in flight cost.
    A run killed mid-step, or whose requests sent again after a stop bring it to its limit sooner, may
    end otherwise than an uninterrupted run when resumed: it warns (:class:`~aprompt.InexactResumeWarning`).
    So does a run called again with a lower limit, or with a higher one (or none) where the lower limit
    decided steps of an earlier call (it stopped the run, refused or trimmed a step, or kept runs back for
    a later one); raising a limit that never did resumes silently to the uninterrupted result.

    Raises:
        ConfigError: a limit that is not a non-negative number (a whole one for ``max_lm_calls`` and
            ``max_tokens``), a malformed or negative price, or ``max_cost`` without ``prices``; the
            message names the field and the value.

    Example::

        limits = aprompt.Limits(max_lm_calls=5_000, max_cost=2.0, prices={"gpt-4o-mini": (0.15, 0.60)})
        result = await aprompt.optimize(program, trainset, metric, lm=lm, limits=limits)
    """

    max_lm_calls: int | None = attrs.field(default=None, validator=_check_limit)
    max_tokens: int | None = attrs.field(default=None, validator=_check_limit)
    max_cost: float | None = attrs.field(default=None, validator=_check_limit)
    max_time: float | None = attrs.field(default=None, validator=_check_limit)
    prices: Mapping[str, tuple[float, float]] = attrs.field(factory=dict, converter=_as_prices)

    def __attrs_post_init__(self) -> None:
        if self.max_cost is not None and not self.prices:
            raise ConfigError(
                f"max_cost={self.max_cost!r} needs prices={{model: (input_per_million, output_per_million)}}"
            )

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        return any(v is not None for v in (self.max_lm_calls, self.max_tokens, self.max_cost, self.max_time))


#: The former name of :class:`Limits`.
RunLimits = Limits


@attrs.define
class RunCosts:
    """What the run's program runs cost, measured on finished steps: the basis of step estimates."""

    runs: int = 0
    requests: int = 0
    tokens: int = 0

    def add(self, runs: int, used: UsageSnapshot) -> None:
        self.runs += runs
        self.requests += used.requests
        self.tokens += used.total_tokens

    @property
    def calls_per_run(self) -> float | None:
        """Requests per program run, or ``None`` before any step was measured."""
        return self.requests / self.runs if self.runs else None


def step_estimate(
    meter: RequestMeter, costs: RunCosts, *, runs: int, calls: int, discount: tuple[int, int] = (0, 0)
) -> tuple[float, float, float]:
    """Requests, tokens and cost of ``runs`` program runs and ``calls`` single LM calls.

    Per program run: the measured means (one request and no tokens per run before any step was
    measured); per call: the run's mean tokens per request so far (less ``discount``, see
    :func:`unaffordable`); cost: the run's mean price per token.
    """
    used = meter.usage
    requests_spent, tokens_spent = used.requests - discount[0], used.total_tokens - discount[1]
    tokens_per_request = tokens_spent / requests_spent if requests_spent > 0 else 0.0
    price_per_token = meter.cost / used.total_tokens if used.total_tokens else 0.0
    run_requests = costs.requests / costs.runs if costs.runs else 1.0
    run_tokens = costs.tokens / costs.runs if costs.runs else tokens_per_request
    requests = runs * run_requests + calls
    tokens = runs * run_tokens + calls * tokens_per_request
    return requests, tokens, tokens * price_per_token


def unaffordable(
    meter: RequestMeter, estimate: tuple[float, float, float], discount: tuple[int, int] = (0, 0)
) -> str | None:
    """The first limit that is spent, or that the remaining budget cannot pay ``estimate`` from.

    ``discount``: requests and tokens the meter counts that an uninterrupted run would not have counted
    at this point (a resumed run's, see ``RunContext``): the decision is the uninterrupted run's. The
    meter itself refuses requests on what it counts.
    """
    used = meter.usage
    requests_spent, tokens_spent = used.requests - discount[0], used.total_tokens - discount[1]
    reached = meter.reached()
    if reached is not None and (reached not in ("max_lm_calls", "max_tokens") or discount == (0, 0)):
        return reached
    requests, tokens, cost = estimate
    checks = (
        ("max_lm_calls", meter.max_requests, requests_spent, requests),
        ("max_tokens", meter.max_tokens, tokens_spent, tokens),
        ("max_cost", meter.max_cost, meter.cost, cost),
    )
    for name, limit, spent, more in checks:
        if limit is not None and (spent >= limit or spent + more > limit):
            return name
    return None


def spent_record(
    meter: RequestMeter,
    costs: RunCosts,
    *,
    requests: int | None = None,
    unjournaled: int = 0,
    unfinished: Mapping[str, list[int]] | None = None,
    waste: int = 0,
    final: bool = False,
    diverged: str | None = None,
    bound: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The journal payload of what the run has spent (``requests`` overrides the count: a reservation).

    ``unpriced`` holds the tokens spent on models without a price, so that a later call with prices for
    them counts their cost. It also holds what a resumed run needs to tell whether it can admit the
    steps the uninterrupted run would (:func:`inexact_resume`): ``unjournaled``, the requests counted
    (or reserved) for work no journaled step holds, which a stop now would count again on resume;
    ``unfinished``, what the steps a stop now would leave unjournaled have spent (``"kind:key"`` ->
    ``[requests, requests answered, prompt tokens, completion tokens]``); ``waste``, the requests
    counted that an uninterrupted run never sends (in flight at a stop, sent again); ``final``, set on
    the record a call writes as it ends (its counts are exact, none in flight); the limits the run's
    steps were admitted under; ``bound``, those of them that decided something (``name`` -> the
    limit's value then: it stopped the run, refused or trimmed a step, or kept runs back for a later
    one), so that raising a limit that never bound replays the uninterrupted run; and ``diverged``, why
    an earlier resume may already have made the run differ.
    """
    usage = meter.usage.as_dict()
    if requests is not None:
        usage["requests"] = requests
    record: dict[str, Any] = {
        "usage": usage,
        "cost": meter.cost,
        "unpriced": {model: list(tokens) for model, tokens in meter.unpriced.items()},
        "seconds": meter.seconds,
        "costs": attrs.asdict(costs),
        "unjournaled": unjournaled,
        "unfinished": dict(unfinished or {}),
        "waste": waste,
        "final": final,
        "limits": {name: getattr(meter, attr) for name, attr in _REFUSING},
        "bound": dict(bound or {}),
    }
    if diverged is not None:
        record["diverged"] = diverged
    return record


#: The limits that refuse steps by what the run has spent (``max_time`` decides by the time it takes,
#: which no two runs share), and the meter's name of each.
_REFUSING = (("max_lm_calls", "max_requests"), ("max_tokens", "max_tokens"), ("max_cost", "max_cost"))


def inexact_resume(limits: Limits, record: Mapping[str, Any] | None) -> tuple[str | None, bool]:
    """Why a run resumed from ``record`` (the journal's last ``spent`` record) may not admit the steps an
    uninterrupted run with ``limits`` would, or ``None``; and whether it differs whatever it decides
    from now on (journaled steps were admitted under higher limits, or decided by a lower limit that
    is raised now: see :func:`spent_record`'s ``bound``; a raised limit that never bound replays the
    uninterrupted run).

    A run stopped mid-step (a kill, a cancellation, an error) counted requests for steps it never
    journaled: the resumed run counts them, runs those steps again (their answers from the cache, free,
    so it also measures a program run as cheaper) and so decides against other amounts than the
    uninterrupted run did. A run that finished, or stopped on a limit, left nothing of the kind.

    Raises:
        TypeError, ValueError: ``record`` is malformed (the caller names the journal).
    """
    if record is None:
        return None, False
    before = record.get("limits")
    if isinstance(before, Mapping):
        lowered = [
            f"{name}={_shown_limit(getattr(limits, name))} (was {_shown_limit(before.get(name))})"
            for name, _ in _REFUSING
            if _below(getattr(limits, name), before.get(name))
        ]
        if lowered:
            return f"its limits were lowered: {', '.join(lowered)}", True
        raised = [
            f"{name}={_shown_limit(getattr(limits, name))} (was {_shown_limit(before.get(name))})"
            for name, _ in _REFUSING
            if _below(before.get(name), getattr(limits, name)) and _bound_below(record, name, limits)
        ]
        if raised:
            # Its journaled steps hold what the lower limit decided (a stop, a step refused or trimmed,
            # runs kept back for a later step): an uninterrupted run with the higher one decided otherwise.
            return (
                f"its limits were raised: {', '.join(raised)}, and the lower limit decided steps of its "
                "earlier calls (a stop, or a step refused, trimmed or kept back for a later one)"
            ), True
    lost = int(record.get("unjournaled", 0))
    if lost > 0 and any(getattr(limits, name) is not None for name, _ in _REFUSING):
        if record.get("final") is True and limits.max_cost is None:
            # Written when that call's stop was seen through: what each unfinished step had answered and
            # what was lost in flight are known, and the resumed run decides on the uninterrupted run's
            # amounts (``RunContext``); only its own limit, counting the requests sent again, may cut it
            # shorter, and it says so then.
            return None, False
        return (
            f"a stop mid-step, with {lost} LM calls counted (or reserved) for steps it had not journaled"
        ), False
    return None, False


def bound_limits(record: Mapping[str, Any] | None) -> dict[str, float]:
    """The limits that decided something of the run (``spent_record``'s ``bound``), from its last
    ``spent`` record; empty for a new run or a record written before they were journaled.

    Raises:
        TypeError, ValueError: the record's ``bound`` is malformed.
    """
    bound = record.get("bound") if record is not None else None
    if bound is None:
        return {}
    if not isinstance(bound, Mapping):
        raise TypeError(f"'bound' is {type(bound).__name__}, not a mapping")
    return {str(name): float(value) for name, value in bound.items()}


def _bound_below(record: Mapping[str, Any], name: str, limits: Limits) -> bool:
    """Whether the limit ``name`` decided something of the run (see :func:`spent_record`) at a value
    below its value in ``limits``; a record written before that was journaled may have (it says
    nothing)."""
    if record.get("bound") is None:
        return True
    value = bound_limits(record).get(name)
    return value is not None and _below(value, getattr(limits, name))


def _below(now: object, before: object) -> bool:
    """Whether a limit ``now`` is lower than ``before`` (``None``: no limit)."""
    if now is None:
        return False
    return before is None or float(now) < float(before)  # type: ignore[arg-type]


def _shown_limit(value: object) -> str:
    return "None" if value is None else f"{value:g}" if isinstance(value, int | float) else _show(value)


#: Requests a call without ``max_lm_calls`` reserves in the journal at a time.
_UNLIMITED_CHUNK = 64


def meter_for(
    limits: Limits,
    record: Mapping[str, Any] | None,
    *,
    on_reserve: Callable[[RequestMeter], None] | None = None,
    on_answers: Callable[[RequestMeter], None] | None = None,
    first_run_budget: tuple[int, str] | None = None,
) -> tuple[RequestMeter, RunCosts]:
    """The meter of a run with ``limits`` that has already spent what ``record`` (the journal's last
    ``spent`` record, or ``None``) says, and the measured costs it holds.

    Raises:
        KeyError, TypeError, ValueError: ``record`` is malformed (the caller names the journal).
    """
    costs = RunCosts(**record["costs"]) if record is not None else RunCosts()
    # Without a call limit, a longer chunk: fewer journal writes, and a later limit counts the rest of it.
    chunk = _UNLIMITED_CHUNK if limits.max_lm_calls is None else max(1, min(32, limits.max_lm_calls // 20))
    meter = RequestMeter(
        max_requests=limits.max_lm_calls,
        max_tokens=limits.max_tokens,
        max_cost=limits.max_cost,
        max_seconds=limits.max_time,
        prices=limits.prices,
        spent=UsageSnapshot(**record["usage"]) if record is not None else None,
        spent_cost=float(record["cost"]) if record is not None else 0.0,
        spent_seconds=float(record["seconds"]) if record is not None else 0.0,
        spent_unpriced=dict(record.get("unpriced", {})) if record is not None else None,
        # Reserved in the journal with or without a call limit: a later call of the run may set one, and
        # after a kill it must count the requests this call may have sent since its last record.
        on_reserve=on_reserve,
        # Tokens and cost are known only from answers: a token or cost limit records them as they come.
        on_answers=on_answers if limits.max_tokens is not None or limits.max_cost is not None else None,
        reserve_chunk=chunk,
        first_run_budget=first_run_budget if costs.runs == 0 else None,
    )
    return meter, costs
