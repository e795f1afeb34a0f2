"""Where a program runs remotely: its LMs are :class:`RelayedLM` stand-ins for the driver's, and
:func:`run_relayed` runs it with an LM channel that carries each LM request to the driver (see
:mod:`aprompt.executors.relay`)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aprompt._errors import ConfigError
from aprompt.executors._relay_messages import (
    _REF,
    LMChannel,
    LMRequest,
    PredictorSettings,
    RelayedError,
    RelayedLMError,
    RelayedOutcome,
)
from aprompt.executors.base import ProgramOutcome, ProgramRun, error_in, execute_run, lm_error_in
from aprompt.lm._limit_reached import LimitReached
from aprompt.lm._meter_context import metering
from aprompt.lm._metering import RequestMeter
from aprompt.lm._replies import cut_reply_acceptor
from aprompt.lm.types import LM, Completion, Message
from aprompt.program.context import current_lm
from aprompt.program.discovery import named_predictors
from aprompt.program.overrides import watch_predictors
from aprompt.program.predictor import Predict

__all__ = ["RelayedLM", "predictor_settings", "run_relayed"]


_CHANNEL: contextvars.ContextVar[LMChannel | None] = contextvars.ContextVar(
    "aprompt_lm_channel", default=None
)


class RelayedLM:
    """Stand-in, where a program runs remotely, for one of the driver's LMs: each chat call goes through
    the run's :class:`LMChannel` to the driver's real client. It meters nothing itself (the driver
    does), so the remote side's :func:`~aprompt.lm._meter_context.metered_chat` only counts it."""

    meters_requests = True

    def __init__(self, key: int, model: str) -> None:
        self.key = key
        self._model = model

    @property
    def model(self) -> str:
        return self._model

    async def chat(self, messages: Sequence[Message], *, rollout: int = 0, **params: Any) -> Completion:
        """Ask the driver's LM; raises a stand-in of the driver's failure (see the module)."""
        channel = _CHANNEL.get()
        if channel is None:
            raise ConfigError(
                f"{self!r} was called outside a relayed program run: it stands in for one of the driver's "
                "LMs and can only be used inside run_relayed()"
            )
        request = LMRequest(self.key, list(messages), rollout, dict(params), cut_reply_acceptor())
        reply = await channel.ask(request)
        if reply.kind == "ok" and reply.completion is not None:
            return reply.completion
        if reply.kind == "lm_error":
            # The driver's own error when it travelled: a program catching one kind of LM error (a
            # withheld reply, a rate limit) must see that kind here too, as it would in-process.
            raise reply.error if reply.error is not None else RelayedLMError(reply.text, ref=reply.ref)
        if reply.kind == "limit":
            stop = LimitReached(reply.limit, reply.text)
            stop.relay_ref = reply.ref  # type: ignore[attr-defined]  # carried back by the outcome
            raise stop
        if reply.kind == "config":
            # Stops the run (run_program re-raises it), as the driver's own call would have.
            raise ConfigError(reply.text)
        raise RelayedError(reply.text, ref=reply.ref)

    def __reduce__(self) -> tuple[type[RelayedLM], tuple[int, str]]:
        return RelayedLM, (self.key, self._model)

    def __repr__(self) -> str:
        return f"RelayedLM({self.key}, {self._model!r})"


# The run's own LM of each predictor of the program (by predictor id; None: the run's default LM).
_OWN_LMS: contextvars.ContextVar[Mapping[int, RelayedLM | None] | None] = contextvars.ContextVar(
    "aprompt_own_lms", default=None
)


class _PredictorLM:
    """The LM a predictor of a remote program holds in place of its own: it calls the stand-in the
    current run names for this predictor (the driver's predictor's LM), or the run's default LM. So a
    module-level predictor the worker imported never calls the client its import created, and a run
    sees the LM the driver's predictor holds at the time of the run, like its prompts."""

    meters_requests = True  # the LM it calls is a stand-in: the driver meters the request

    def __init__(self, predictor: Predict) -> None:
        self._predictor_id = id(predictor)
        self._name = repr(predictor)

    def _current(self) -> LM:
        routes = _OWN_LMS.get()
        if routes is None or self._predictor_id not in routes:
            raise ConfigError(
                f"{self._name} was called outside the relayed program run it belongs to: its LM is the "
                "driver's, which only the run's own calls can reach"
            )
        lm = routes[self._predictor_id] or current_lm()
        if lm is None:
            raise ConfigError(
                f"{self._name} has no LM: give the driver's predictor one, or pass lm= to "
                "evaluate()/optimize()"
            )
        return lm

    @property
    def model(self) -> str:
        try:
            return self._current().model
        except ConfigError:
            return ""

    async def chat(self, messages: Sequence[Message], *, rollout: int = 0, **params: Any) -> Completion:
        return await self._current().chat(messages, rollout=rollout, **params)

    def __repr__(self) -> str:
        return f"_PredictorLM({self._name})"


def predictor_settings(predictors: Iterable[tuple[str, Predict]]) -> dict[str, PredictorSettings]:
    """Each predictor's :data:`PredictorSettings`, by predictor name: what :func:`run_relayed` gives the
    remote copies of these predictors, so that they call the LM as the driver's own would now (the worker's
    copy was made once, or, for a module-level predictor, by the worker's own import)."""
    return {name: (dict(p.lm_params), p.max_parse_retries) for name, p in predictors}


def _route_own_lms(
    predictors: Iterable[tuple[str, Predict]], own_lms: Mapping[str, RelayedLM | None]
) -> dict[int, RelayedLM | None]:
    """Give each of ``predictors`` named in ``own_lms`` a :class:`_PredictorLM` (once: it stays with the
    remote copy) and return the run's routes, by predictor id."""
    routes: dict[int, RelayedLM | None] = {}
    for name, predictor in predictors:
        if name in own_lms:
            if not isinstance(predictor.lm, _PredictorLM):
                predictor.lm = _PredictorLM(predictor)
            routes[id(predictor)] = own_lms[name]
    return routes


class _DirectCalls(RequestMeter):
    """The meter of a remote run: the relayed calls are metered by the driver; any LM request admitted
    here comes from a client the program holds itself (a module-level one), which would escape the
    run's limits, cache and usage."""

    def __init__(self) -> None:
        super().__init__()
        self.models: list[str] = []

    def admit(self, model: str, *, retry: bool = False) -> None:
        self.models.append(model)
        raise ConfigError(f"an LM client for {model!r} was called directly in a remote program run")


async def run_relayed(
    program: object,
    run: ProgramRun,
    channel: LMChannel,
    own_lms: Mapping[str, RelayedLM | None] | None = None,
    settings: Mapping[str, PredictorSettings] | None = None,
) -> RelayedOutcome:
    """Run ``program`` once here (see :func:`~aprompt.executors.base.execute_run`), its LM calls going
    through ``channel``: ``run.lm`` and the program's own LMs must be :class:`RelayedLM` stand-ins.

    ``own_lms`` (from :meth:`LMTable.own_lms` of the driver's copy of the program) names each
    predictor's own LM for this run; each predictor it names then calls that LM (or, for ``None``, the
    run's default) whatever LM this copy of the predictor was created with; ``settings`` (from
    :func:`predictor_settings` of the driver's copy) give each predictor it names those settings.
    """
    direct = _DirectCalls()
    token = _CHANNEL.set(channel)
    routes_token = _OWN_LMS.set({})
    try:
        predictors = named_predictors(program)
        _OWN_LMS.set(_route_own_lms(predictors, own_lms) if own_lms is not None else {})
        for name, predictor in predictors:
            if settings is not None and name in settings:
                params, parse_retries = settings[name]
                predictor.lm_params, predictor.max_parse_retries = dict(params), parse_retries
        with watch_predictors(predictors) as watch, metering(direct):
            outcome = await execute_run(program, run)
    except ConfigError as exc:
        return RelayedOutcome(config_error=str(exc))
    except BaseException as exc:
        stop = _relayed_stop(exc)
        if stop is None:
            raise
        return RelayedOutcome(stopped_ref=stop)
    finally:
        _OWN_LMS.reset(routes_token)
        _CHANNEL.reset(token)
    if direct.models:
        return RelayedOutcome(
            config_error=f"the program called an LM client for {direct.models[0]!r} of its own, not through "
            "the driver (a client passed as lm= to a predictor call, or called directly): its calls would "
            "escape the run's limits, cache and usage. Give the predictor the client (Predict(..., lm=...)), "
            "pass lm= to optimize()/evaluate(), or keep the client on the program object"
        )
    return _relayed(outcome, {name for name, _ in predictors}, tuple(watch.undiscovered.values()))


def _relayed(outcome: ProgramOutcome, names: set[str], undiscovered: tuple[str, ...]) -> RelayedOutcome:
    trace = tuple(
        (
            e.predictor_name,
            None if e.predictor_name in names else e.predictor,
            e.inputs,
            e.outputs,
            e.usage,
            e.raw_text,
        )
        for e in outcome.trace
    )
    cause = outcome.cause
    # The stand-in wherever the program left it: raised alone, in its own task group, or as a cause.
    failure = (lm_error_in(cause) or error_in(cause, RelayedError) or cause) if cause is not None else None
    ref = failure.ref if isinstance(failure, RelayedLMError | RelayedError) else getattr(failure, _REF, None)
    return RelayedOutcome(
        outcome.prediction,
        outcome.error,
        outcome.lm_failure,
        outcome.lm_answered,
        trace,
        ref,
        undiscovered=undiscovered,
    )


def _relayed_stop(exc: BaseException) -> int | None:
    ref = getattr(exc, "relay_ref", None)
    if isinstance(exc, LimitReached) and isinstance(ref, int):
        return ref
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _relayed_stop(inner)) is not None:
                return found
    return None
