"""LM calls of a program run elsewhere, answered by the driver's own LM clients.

Why the calls come back: a run's rate limits, response cache, usage, cost and ``max_lm_calls`` live in
the driver's LM clients and in its :class:`~aprompt.lm._metering.RequestMeter`. Sending every LM request
of a remote program run back to them keeps ONE source of truth for all of it: a limit holds across the
whole cluster with no shared-limiter protocol to get right, the cache is shared by construction, the
journal records what was really spent, and a run's requests are metered in the evaluating task's own
context (its step's usage scope, its first-run budget), exactly as in-process. The cost is a round trip
per LM call, small next to an LM call; what does not scale with it is discussed in ``docs/scaling.md``.

The pieces, each usable by any executor that runs programs elsewhere:

* where the program runs: its LMs are :class:`RelayedLM` stand-ins (keys of the driver's LMs), and
  :func:`run_relayed` runs it with an :class:`LMChannel` that carries each :class:`LMRequest` to the
  driver and brings its :class:`LMReply` back. A predictor's own LM (``Predict(..., lm=...)``) is the
  driver's copy of that predictor's LM, named per run (:meth:`LMTable.own_lms`): a module-level
  predictor the worker imported, whatever client its import created, calls the LM the driver's
  predictor holds;
* in the evaluating task: a :class:`RunRelay` answers each request with the real client
  (:meth:`RunRelay.answer`) and turns the run's :class:`RelayedOutcome` into the
  :class:`~aprompt.executors.base.ProgramOutcome` the evaluation scores (:meth:`RunRelay.outcome`).

A failure of the driver's call travels as a reference: the program sees a copy of an LM error (its type and
attributes, so a program that catches one kind of LM error behaves as in-process) or a stand-in exception,
and the outcome carries the original back (its type and message are those of the in-process run), so an
LM failure still leaves its example unscored, and a spent run limit still stops the run.
"""

from __future__ import annotations

import contextvars
import itertools
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any, Protocol

import attrs

from aprompt._errors import ConfigError, LMError
from aprompt.executors.base import (
    ProgramOutcome,
    ProgramRun,
    check_watch,
    error_in,
    execute_run,
    lm_error_in,
    setup_fault_in,
    unscored_lm_error,
)
from aprompt.lm._metering import LimitReached, RequestMeter, metered_chat, metering
from aprompt.lm._replies import accepting_cut_replies, cut_reply_acceptor, is_answered_failure
from aprompt.lm.types import LM, Completion, Message, TokenUsage
from aprompt.program.context import current_lm
from aprompt.program.discovery import named_predictors
from aprompt.program.overrides import current_watch, watch_predictors
from aprompt.program.predictor import Predict
from aprompt.program.trace import TraceEntry

__all__ = [
    "LMChannel",
    "LMReply",
    "LMRequest",
    "LMTable",
    "PredictorSettings",
    "RelayedLM",
    "RelayedOutcome",
    "RunRelay",
    "predictor_settings",
    "run_relayed",
]


@attrs.frozen
class LMRequest:
    """One chat call a remote predictor makes: which of the driver's LMs (``lm``, a key of its
    :class:`LMTable`), the messages, rollout and sampling parameters, and the caller's test for a reply
    cut at its token budget that still holds the whole answer (a function, shipped by value)."""

    lm: int
    messages: Sequence[Message]
    rollout: int = 0
    params: Mapping[str, Any] = attrs.field(factory=dict)
    accepts: Callable[[str], bool] | None = None


@attrs.frozen
class LMReply:
    """The driver's answer to an :class:`LMRequest`: a completion, or a failure by reference.

    Attributes:
        kind: ``"ok"``, ``"lm_error"`` (an :class:`~aprompt.LMError`), ``"limit"`` (a run limit refused
            the request), ``"config"`` (a :class:`~aprompt.ConfigError`: a setup fault, raised where the
            program runs as it would be in-process) or ``"error"`` (anything else the call raised).
    """

    kind: str
    completion: Completion | None = None
    ref: int = -1
    text: str = ""
    limit: str = ""
    error: LMError | None = None  # a copy of the driver's LM error, for the program to raise, if it pickles


class LMChannel(Protocol):
    """Carries a request from where the program runs to the driver and returns the reply."""

    async def ask(self, request: LMRequest) -> LMReply: ...


_CHANNEL: contextvars.ContextVar[LMChannel | None] = contextvars.ContextVar(
    "aprompt_lm_channel", default=None
)


class RelayedLMError(LMError):
    """What a remote program sees when the driver's LM call failed with an LM error (``ref`` names the
    original, which the outcome carries back)."""

    def __init__(self, message: str, *, ref: int) -> None:
        super().__init__(message)
        self.ref = ref


class RelayedError(Exception):
    """What a remote program sees when the driver's LM call raised anything else."""

    def __init__(self, message: str, *, ref: int) -> None:
        super().__init__(message)
        self.ref = ref


class RelayedLM:
    """Stand-in, where a program runs remotely, for one of the driver's LMs: each chat call goes through
    the run's :class:`LMChannel` to the driver's real client. It meters nothing itself (the driver
    does), so the remote side's :func:`~aprompt.lm._metering.metered_chat` only counts it."""

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


class LMTable:
    """The driver's LMs a remote run may call, by small integer keys (one table per executor; it keeps
    the LMs alive so their keys stay valid)."""

    def __init__(self) -> None:
        self._keys: dict[int, int] = {}
        self._lms: list[LM] = []

    def key_of(self, lm: LM) -> int:
        """The key of ``lm`` (given one on first sight)."""
        key = self._keys.get(id(lm))
        if key is None:
            key = self._keys[id(lm)] = len(self._lms)
            self._lms.append(lm)
        return key

    def stand_in(self, lm: LM) -> RelayedLM:
        """The :class:`RelayedLM` for ``lm``."""
        return RelayedLM(self.key_of(lm), str(lm.model))

    def own_lms(self, predictors: Iterable[tuple[str, Predict]]) -> dict[str, RelayedLM | None]:
        """The stand-in of each predictor's own LM, by predictor name (``None``: it has none and uses
        the run's default): what :func:`run_relayed` gives the remote copies of these predictors."""
        return {name: None if p.lm is None else self.stand_in(p.lm) for name, p in predictors}

    def __getitem__(self, key: int) -> LM:
        return self._lms[key]


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


#: A predictor's settings other than its prompts and LM: its sampling parameters and parse retries.
PredictorSettings = tuple[dict[str, Any], int]


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


@attrs.frozen
class RelayedOutcome:
    """What a remote run sends back (plain values; failures of the driver's calls by reference).

    Attributes:
        trace: ``(predictor name, predictor or None, inputs, outputs, usage, reply text)`` per call; the
            predictor object travels only for a predictor that is not part of the program.
        error_ref: the run's error is a stand-in of this failure of the driver's call.
        stopped_ref: a run limit refused one of the run's requests (this one): the run is abandoned.
        config_error: the run could not apply its prompts or load its program, or a predictor ran where the
            run's prompts cannot reach it, or an LM was called directly instead of through the driver.
        undiscovered: the repr of each predictor the program called that is not among its predictors (it
            ran with its own prompts): the driver reports it as an in-process run does.
    """

    prediction: Any = None
    error: str | None = None
    lm_failure: bool = False
    lm_answered: bool = False
    trace: tuple[tuple[str, Predict | None, dict[str, Any], dict[str, Any], TokenUsage, str], ...] = ()
    error_ref: int | None = None
    stopped_ref: int | None = None
    config_error: str | None = None
    undiscovered: tuple[str, ...] = ()


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


#: The attribute naming, on a copy of one of the driver's LM errors, the original (see RunRelay.answer).
_REF = "relay_ref"


def _travelling_copy(error: LMError, ref: int) -> LMError | None:
    """A copy of ``error`` that pickles, marked with ``ref``; ``None`` if it does not survive pickling (a
    user's error class holding what cannot travel): the program then sees a :class:`RelayedLMError`."""
    try:
        copied: LMError = pickle.loads(pickle.dumps(error))
    except Exception:
        return None
    setattr(copied, _REF, ref)
    return copied


class RunRelay:
    """The evaluating task's side of one remote program run: answers its LM requests with the driver's
    clients, in this task's context (its run meter, usage scopes, limits), and resolves its outcome."""

    def __init__(self, lms: LMTable) -> None:
        self._lms = lms
        self._unit = object()  # the run, for the meter's first-run budget (see metered_chat)
        self._failures: dict[int, BaseException] = {}
        self._refs = itertools.count()

    async def answer(self, request: LMRequest) -> LMReply:
        """Make ``request``'s call as the remote predictor would have made it here."""
        lm = self._lms[request.lm]
        accepting = accepting_cut_replies(request.accepts) if request.accepts is not None else nullcontext()
        try:
            with accepting:
                completion = await metered_chat(
                    lm, list(request.messages), rollout=request.rollout, unit=self._unit, **request.params
                )
        except LimitReached as stop:
            return LMReply("limit", ref=self._keep(stop), text=str(stop), limit=stop.limit)
        except LMError as exc:
            ref = self._keep(exc)
            return LMReply("lm_error", ref=ref, text=str(exc), error=_travelling_copy(exc, ref))
        except ConfigError as exc:  # a setup fault no candidate can fix, never a wrong answer to score
            return LMReply("config", text=str(exc))
        except Exception as exc:
            return LMReply("error", ref=self._keep(exc), text=str(exc))
        return LMReply("ok", completion)

    def _keep(self, failure: BaseException) -> int:
        ref = next(self._refs)
        self._failures[ref] = failure
        return ref

    def outcome(self, relayed: RelayedOutcome, predictors: Mapping[str, Predict]) -> ProgramOutcome:
        """The run's outcome, with this side's failures and predictors in place of their stand-ins.

        Raises:
            LimitReached: a run limit refused one of the run's requests (the original refusal).
            ConfigError: see :attr:`RelayedOutcome.config_error`.
            CacheError: the run ended on the driver's LM cache failing (closed under the run), a setup
                fault that stops the run as it does in-process.
        """
        if relayed.stopped_ref is not None:
            raise self._failures[relayed.stopped_ref]
        if relayed.config_error is not None:
            raise ConfigError(relayed.config_error)
        watch = current_watch()
        if watch is not None and relayed.undiscovered:
            # The worker's log is not the user's: report them here, once each, like a run in this process.
            for shown in relayed.undiscovered:
                watch.undiscovered.setdefault(hash(("relayed", shown)), shown)
            check_watch()
        error, lm_failure, lm_answered = relayed.error, relayed.lm_failure, relayed.lm_answered
        if relayed.error_ref is not None:
            original = self._failures[relayed.error_ref]
            if (setup := setup_fault_in(original)) is not None:
                raise setup  # no prompt causes or fixes it: scored 0 it would pass for a wrong answer
            error = f"{type(original).__name__}: {original}"
            lm_failure = unscored_lm_error(original) is not None
            lm_answered = lm_failure and is_answered_failure(original)
        trace = tuple(
            TraceEntry(name, predictor, inputs, outputs, usage, text)
            for name, remote, inputs, outputs, usage, text in relayed.trace
            if (predictor := predictors.get(name) or remote) is not None
        )
        return ProgramOutcome(relayed.prediction, error, lm_failure, lm_answered, trace)
