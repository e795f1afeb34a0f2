"""The exception tree: every error aprompt raises derives from :class:`APromptError` (and its one warning,
:class:`InexactResumeWarning`, from :class:`UserWarning`).

Errors carry the context a user needs (the endpoint, the HTTP status, the server's message, the raw model
text) and never a secret: API keys and request headers are not stored on any exception.
"""

from __future__ import annotations


class APromptError(Exception):
    """Base class of every error raised by aprompt.

    Every aprompt error pickles with its message and attributes, whatever its constructor asks for, so
    one raised where a program runs in another process (an executor's worker) arrives whole.
    """

    def __reduce__(self) -> tuple[object, ...]:
        # The default rebuilds through ``__init__(*args)``, which fails for keyword-only attributes.
        return (_restore_error, (type(self), self.args, dict(self.__dict__)))


def _restore_error(
    cls: type[APromptError], args: tuple[object, ...], state: dict[str, object]
) -> APromptError:
    """An aprompt error as pickled by :meth:`APromptError.__reduce__`, its ``__init__`` not run again."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(APromptError, ValueError):
    """Invalid arguments or configuration, detected before any LM call is spent where it can be; what
    only a run shows (a metric value that is not a score, a predictor called where the run's prompts
    cannot reach it, a client called from a second event loop while busy) is raised when it happens."""


class RunDirLockedError(ConfigError):
    """Another optimization is running in the same ``run_dir`` (another process, or a concurrent call in
    this one); raised at once, before any LM call.

    Attributes:
        path: the lock file held by the other run.
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class ModelNotFoundError(ConfigError):
    """The embedded local model's GGUF file could not be located."""


class LMError(APromptError):
    """A language-model request failed.

    Attributes:
        endpoint: base URL of the endpoint that failed (no credentials), or ``None``.
    """

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (endpoint: {self.endpoint})" if self.endpoint else base


class EndpointDownError(LMError):
    """An LM stayed down (or refused every request) longer than the run's ``outage_tolerance``.

    Nothing the outage touched was journaled: calling :func:`aprompt.optimize` again with the same
    ``run_dir`` resumes from the step it stopped at, and answers already received are read from the
    cache instead of being paid for again.

    Attributes:
        waited: seconds the run waited for the LM to answer again before giving up.
    """

    def __init__(self, message: str, *, waited: float = 0.0, endpoint: str | None = None) -> None:
        super().__init__(message, endpoint=endpoint)
        self.waited = waited


class LMConnectionError(LMError):
    """The endpoint could not be reached or dropped the connection."""


class TLSCertificateError(LMConnectionError):
    """The endpoint's TLS certificate was refused (self-signed, signed by a CA not trusted here, expired, or
    naming another host). No retry can change it: never retried, a request goes on at once to another of
    the client's endpoints if it has several (that one taken out of rotation), and an optimization stops
    at once with :class:`EndpointDownError` rather than wait out its ``outage_tolerance``. Give the base
    URL a host the certificate names, or trust the CA that signed it (``SSL_CERT_FILE``)."""


class LMTimeoutError(LMError):
    """The endpoint did not answer within the configured timeout."""


class LMStatusError(LMError):
    """The endpoint answered with an HTTP error status.

    Attributes:
        status_code: the HTTP status.
        server_message: the error message from the response body, if any.
        retry_after: seconds the server asked us to wait (its ``Retry-After``), if it said.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        server_message: str = "",
        endpoint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.status_code = status_code
        self.server_message = server_message
        self.retry_after = retry_after


class RateLimitError(LMStatusError):
    """HTTP 429: the endpoint's rate limit was exceeded (``retry_after``: the pause it asked for)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 429,
        server_message: str = "",
        endpoint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message,
            status_code=status_code,
            server_message=server_message,
            endpoint=endpoint,
            retry_after=retry_after,
        )


class QuotaExhaustedError(LMStatusError):
    """The endpoint's account has spent its quota or credit: HTTP 402 (Payment Required: Anthropic's
    ``billing_error``, OpenRouter's or DeepSeek's spent credits), or a 429 whose error's ``code`` or
    ``type`` is ``insufficient_quota`` (OpenAI's spent quota, not one of its rate limits). No wait clears
    it, billing does: never retried, one of several endpoints is taken out of rotation and the request
    goes on to the others, and an optimization stops at once with :class:`EndpointDownError` rather than
    wait out its ``outage_tolerance``. Add credit to that endpoint's account (or raise its spending
    limit), then call again: with a ``run_dir`` the run resumes, what was answered read from its cache."""


class ServerError(LMStatusError):
    """HTTP 5xx (or 408/409): a transient server-side failure, retried; a re-send waits at least the
    ``retry_after`` the server asked for (a 503's ``Retry-After``)."""


class RequestRejectedError(LMStatusError):
    """HTTP 4xx other than 408/409/429: the request itself is wrong; never retried."""


class AuthenticationError(RequestRejectedError):
    """HTTP 401/403: the API key is missing, wrong or lacks permission."""


class ContextOverflowError(RequestRejectedError):
    """The endpoint refused the request as longer than the model's context window (OpenAI's
    ``context_length_exceeded``, llama.cpp's ``exceed_context_size_error``, Anthropic's "prompt is too
    long" and "input length and `max_tokens` exceed context limit"); never retried. In an evaluation it is
    the prompt's failure: its example scores 0 (a candidate whose demos make the prompt too long fails
    there as deployed), where other LM failures leave it unscored. When the unoptimized program's own
    prompt overflows, :func:`aprompt.optimize` stops with an :class:`OptimizationError` before the search:
    give the model a larger context (e.g. ``local_lm(ctx_per_slot=...)``), or shorten or leave out the
    examples it names."""


class BadResponseError(LMError):
    """The endpoint answered 2xx with a body that is not a valid chat completion, or that carries an error
    instead of a reply (as a router reports an upstream failure; the error names it). Retried like a
    transient fault, as are its subclasses unless they say otherwise."""


class UnreadableResponseError(BadResponseError):
    """The endpoint answers in a form the client never reads: an event stream (Server-Sent Events) though
    none was asked for, a body in a content encoding other than gzip or deflate, or no HTTP/1.1 at all
    (another protocol on that port, an HTTP/2-only server, plain text where ``https://`` was given). A
    setting of the server or of a proxy in front of it, which every reply meets: never retried (one of
    several endpoints is taken out of rotation and the request goes to another), and an optimization stops
    at once with :class:`EndpointDownError` rather than wait out its ``outage_tolerance``."""


class IncompleteResponseError(BadResponseError):
    """The endpoint answered 2xx with a well-formed reply that is not an answer (empty, filtered or
    cut short). One the provider stopped on a fault (``finish_reason`` ``"error"``/``"abort"``, DeepSeek's
    ``"insufficient_system_resource"``) or paused (Anthropic's ``"pause_turn"``) leaves its example
    unscored, like any provider fault; an empty, filtered or cut one that the client's retries
    (or its larger re-send) got again is the prompt's failure, and an evaluation scores it 0.

    Attributes:
        finish_reason: the reply's finish reason (OpenAI's words: ``"length"``, ``"content_filter"``).
        text: what the reply held (possibly a prefix that happens to parse).
    """

    def __init__(
        self, message: str, *, finish_reason: str | None = None, text: str = "", endpoint: str | None = None
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.finish_reason = finish_reason
        self.text = text


class EmptyResponseError(IncompleteResponseError):
    """The reply's content was empty or null (retried like a transient fault; got again after the
    retries, an evaluation scores the prompt 0 on that example)."""


class ContentFilteredError(IncompleteResponseError):
    """The provider withheld or stopped the reply (``content_filter``, Anthropic's ``refusal``), or the
    model refused in words of its own (an OpenAI ``refusal`` in place of the content, which it names);
    retried like a transient fault (got again after the retries, an evaluation scores the prompt 0 on
    that example: the program as deployed would get no answer there either)."""


class TruncatedResponseError(IncompleteResponseError):
    """The reply was cut at its token budget (``length``, Anthropic's ``max_tokens``), even after one
    re-send with a larger ``max_tokens``, or by the model's context window (Anthropic's
    ``model_context_window_exceeded``, Mistral's ``model_length``, not re-sent: the prompt left the reply
    too little room; also a ``length`` reply with fewer completion tokens than its budget, as llama.cpp
    and vLLM report a full window). In an evaluation it is the prompt's failure: its example scores 0 (the
    prompt led the model past the budget or the window), where other LM failures leave it unscored.

    Attributes:
        by_window: the context window cut it, not the token budget (at once, then not re-sent, or on
            the re-send with the larger budget).
    """

    by_window: bool = False


class ParseError(APromptError):
    """A model reply could not be parsed into the signature's output fields.

    Attributes:
        raw_text: the model's reply as received.
        missing: names of the output fields that were missing or invalid.
    """

    def __init__(self, message: str, *, raw_text: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.raw_text = raw_text
        self.missing = missing


class StateError(APromptError, ValueError):
    """Saved prompt state does not match the program it is loaded into, or is malformed."""


class CacheError(APromptError):
    """The LM response cache cannot be used: a corrupt, foreign or newer file, or a closed cache.

    Attributes:
        path: the cache file involved, or ``None`` for an in-memory cache.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (cache file: {self.path})" if self.path else base


class JournalError(APromptError):
    """A run journal cannot be opened, read or written (not a journal, damaged, or closed).

    Attributes:
        path: the journal file.
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class OptimizationError(APromptError):
    """A run cannot give a meaningful result, e.g. the program or the metric raised on every validation
    example of the unoptimized program (a bug to fix before any search is worth its calls).

    Attributes:
        errors: example id -> ``"ExcType: message"``, for the first few failed examples.
    """

    def __init__(self, message: str, *, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.errors = dict(errors or {})


class RunLimitError(OptimizationError):
    """A run limit was reached before the unoptimized program's evaluation finished, so there is no
    scored program to return. Raise the limit and call again (with a ``run_dir`` the run resumes).

    Attributes:
        limit: the limit's name (``"max_time"``, ``"max_lm_calls"``, ...).
    """

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class InexactResumeWarning(UserWarning):
    """A warning, not an error: a run resumed from its ``run_dir`` returned a result that may differ from
    an uninterrupted run's with the same inputs, because its limits (``max_lm_calls``, ``max_tokens``,
    ``max_cost``) decided steps on amounts the resume could not replay.

    That happens after a kill or crash mid-step (what was answered after the journal's last record is
    not known), a stop mid-step under ``max_cost``, a stop whose requests then in flight, sent again,
    brought the run to its limit before the uninterrupted run would have got there, a stop that fell
    between an answer's arrival and the end of its call, and a limit lowered
    below the one the journaled steps were admitted under. A stop mid-step in the run's own process
    (Ctrl-C, a cancellation, an error) otherwise resumes exactly. The run still kept its limits. Every
    later call on the same ``run_dir`` warns again.

    Catch it with ``warnings.catch_warnings()``, or make it an error with
    ``warnings.simplefilter("error", aprompt.InexactResumeWarning)``.
    """
