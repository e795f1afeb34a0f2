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

import itertools
import pickle
from collections.abc import Iterable, Mapping
from contextlib import nullcontext

from aprompt._errors import ConfigError, LMError
from aprompt.executors._relay_messages import (
    _REF,
    LMChannel,
    LMReply,
    LMRequest,
    PredictorSettings,
    RelayedOutcome,
)
from aprompt.executors._relay_remote import RelayedLM, predictor_settings, run_relayed
from aprompt.executors.base import ProgramOutcome, check_watch, setup_fault_in, unscored_lm_error
from aprompt.lm._limit_reached import LimitReached
from aprompt.lm._meter_context import metered_chat
from aprompt.lm._replies import accepting_cut_replies, is_answered_failure
from aprompt.lm.types import LM
from aprompt.program.overrides import current_watch
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
