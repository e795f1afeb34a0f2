"""Token estimates for the rate limiter: a character count before the call, calibrated by the prompt
tokens the server reports, and a completion reservation learned from the completion tokens it reports
(the token limits of :mod:`aprompt.lm.limits`, which names everything here)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from aprompt._errors import ConfigError

#: Tokens reserved for the completion when the request sets neither ``max_tokens`` nor
#: ``max_completion_tokens``, until a reply reports more (see :class:`TokenEstimator`); settled against
#: the real count afterwards.
DEFAULT_COMPLETION_TOKENS = 256

# Role, separators and framing the chat template adds to each message.
_TOKENS_PER_MESSAGE = 4
# A calibration ratio is kept within [1 / this, this]: a report further off is a server's quirk.
_MAX_RATIO = 8.0


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Estimate prompt tokens before the call: characters / 4 (rounded up) plus 4 per message.

    Example:
        >>> estimate_prompt_tokens([{"role": "user", "content": "How many legs has a cat?"}])
        10
    """
    chars = 0
    for message in messages:
        content = message.get("content")
        chars += len(content) if type(content) is str else len(str(content or ""))
    return math.ceil(chars / 4) + _TOKENS_PER_MESSAGE * len(messages)


def estimate_request_tokens(messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> int:
    """Tokens to reserve for a request: the prompt estimate plus the completion budget
    (``max_tokens`` or ``max_completion_tokens``, else :data:`DEFAULT_COMPLETION_TOKENS`)."""
    budget = completion_budget(params)
    return estimate_prompt_tokens(messages) + (DEFAULT_COMPLETION_TOKENS if budget is None else budget)


def completion_budget(params: Mapping[str, Any]) -> int | None:
    """The request's completion budget (``max_completion_tokens``, else ``max_tokens``), None when it sets
    neither. Given both, ``max_completion_tokens`` is the one generation stops at (vLLM's rule, and
    Anthropic's client sends it as ``max_tokens``) and the one a cut reply's re-send raises.

    Raises:
        ConfigError: a budget is a number that is not finite or is negative (it cannot be reserved).
    """
    found = None
    for name in ("max_completion_tokens", "max_tokens"):
        budget = params.get(name)
        if not budget or isinstance(budget, bool) or not isinstance(budget, int | float):
            continue
        if not (math.isfinite(budget) and budget > 0):
            raise ConfigError(f"{name} must be a positive whole number of tokens, got {budget!r}")
        if found is None:
            found = int(budget)
    return found


class TokenEstimator:
    """Token reservations calibrated by the prompt tokens the server reports.

    The character estimate (:func:`estimate_prompt_tokens`) is off by a factor that depends on the
    server's tokenizer and the text (code, other languages, its chat template). A reservation below the
    server's count lets a full window go over the limit by the difference, and the server answers 429.
    So each answer's reported prompt tokens, against the character estimate of its prompt, update a
    running ratio (both summed with exponential decay, so the ratio follows a changing mix of prompts),
    and later prompt estimates are scaled by it, plus ``margin`` for the spread around it. Until the
    first report the character estimate stands.

    The completion is reserved at the request's budget when it sets one. A request without one reserves
    :attr:`completion`: :data:`DEFAULT_COMPLETION_TOKENS`, or the most completion tokens a reply to such
    a request has reported, whichever is more (:meth:`observe_completion`). A running maximum, not a
    mean or a quantile: a reservation below a reply's length lets a full window go over the limit by the
    difference, so only a reply longer than every one before can do that. Either way the reservation is
    settled against the real count afterwards.

    Args:
        margin: the fraction a calibrated prompt estimate is raised by.
        decay: the weight the sums keep per new report (0.98: the last ~50 reports count most).

    Example:
        >>> estimator = TokenEstimator()
        >>> messages = [{"role": "user", "content": "x" * 396}]
        >>> estimator.request(messages, {"max_tokens": 10})  # 99 + 4 for the message, + 10
        113
        >>> estimator.observe(messages, reported=206)  # the server counts twice the estimate
        >>> estimator.ratio, estimator.request(messages, {"max_tokens": 10})  # ceil(103 x 2 x 1.05) + 10
        (2.0, 227)
    """

    __slots__ = ("_completion", "_estimated", "_reported", "completion_known", "decay", "margin")

    def __init__(self, *, margin: float = 0.05, decay: float = 0.98) -> None:
        if not margin >= 0:
            raise ConfigError(f"a token estimate's margin must be at least 0, got {margin!r}")
        if not 0 < decay <= 1:
            raise ConfigError(f"a token estimate's decay must be in (0, 1], got {decay!r}")
        self.margin = margin
        self.decay = decay
        self._estimated = 0.0
        self._reported = 0.0
        self._completion = DEFAULT_COMPLETION_TOKENS
        #: A reply to a request without a completion budget has been observed.
        self.completion_known = False

    @property
    def ratio(self) -> float | None:
        """Reported prompt tokens per estimated one (weighted to recent reports); None before any."""
        if self._estimated <= 0:
            return None
        return min(_MAX_RATIO, max(1 / _MAX_RATIO, self._reported / self._estimated))

    def prompt(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """The prompt tokens to reserve for ``messages``: the character estimate, calibrated."""
        return self._calibrated(estimate_prompt_tokens(messages))

    def request(self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> int:
        """Tokens to reserve for a request: the calibrated prompt estimate plus the completion budget."""
        return self.reservation(estimate_prompt_tokens(messages), params)

    def reservation(self, estimate: int, params: Mapping[str, Any]) -> int:
        """:meth:`request` for a prompt whose character estimate (:func:`estimate_prompt_tokens`) is
        ``estimate``: a client that estimates each prompt once uses it here and in
        :meth:`observe_estimate`."""
        budget = completion_budget(params)
        return self._calibrated(estimate) + (self._completion if budget is None else budget)

    @property
    def completion(self) -> int:
        """Completion tokens reserved for a request without a budget (see the class docstring)."""
        return self._completion

    def observe_completion(self, params: Mapping[str, Any], reported: int) -> None:
        """A reply to a request with ``params`` reported ``reported`` completion tokens; it raises
        :attr:`completion` when the request set no budget and the reply is the longest so far."""
        if completion_budget(params) is None:
            self.completion_known = True
            if reported > self._completion:
                self._completion = reported

    def observe(self, messages: Sequence[Mapping[str, Any]], reported: int) -> None:
        """The server counted ``reported`` prompt tokens for ``messages`` (a report of 0: none, ignored)."""
        self.observe_estimate(estimate_prompt_tokens(messages), reported)

    def observe_estimate(self, estimate: int, reported: int) -> None:
        """:meth:`observe` for a prompt whose character estimate is ``estimate``."""
        if reported > 0 and estimate > 0:
            self._estimated = self._estimated * self.decay + estimate
            self._reported = self._reported * self.decay + reported

    def _calibrated(self, estimate: int) -> int:
        ratio = self.ratio
        return estimate if ratio is None else math.ceil(estimate * ratio * (1 + self.margin))
