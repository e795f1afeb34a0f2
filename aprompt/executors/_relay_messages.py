"""What travels between a remote program run and the driver (see :mod:`aprompt.executors.relay`): an LM
request and its reply, the channel that carries them, the run's outcome, the stand-in errors a remote
program sees for the driver's failures, and the attribute that names the original of a travelling copy."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from aprompt._errors import LMError
from aprompt.lm.types import Completion, Message, TokenUsage
from aprompt.program.predictor import Predict

__all__ = [
    "LMChannel",
    "LMReply",
    "LMRequest",
    "PredictorSettings",
    "RelayedError",
    "RelayedLMError",
    "RelayedOutcome",
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


#: A predictor's settings other than its prompts and LM: its sampling parameters and parse retries.
PredictorSettings = tuple[dict[str, Any], int]


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


#: The attribute naming, on a copy of one of the driver's LM errors, the original (see RunRelay.answer).
_REF = "relay_ref"
