"""aprompt: async-first prompt optimization (MIPRO) for multi-stage language-model programs.

Example::

    import aprompt

    async with aprompt.local_lm() as lm:
        result = await aprompt.optimize(program, trainset, metric, lm=lm, budget="light")
        result.save("optimized.json")
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from aprompt import strategies, tpe
from aprompt._errors import (
    APromptError,
    AuthenticationError,
    BadResponseError,
    CacheError,
    ConfigError,
    ContentFilteredError,
    ContextOverflowError,
    EmptyResponseError,
    EndpointDownError,
    IncompleteResponseError,
    InexactResumeWarning,
    JournalError,
    LMConnectionError,
    LMError,
    LMStatusError,
    LMTimeoutError,
    ModelNotFoundError,
    OptimizationError,
    ParseError,
    QuotaExhaustedError,
    RateLimitError,
    RequestRejectedError,
    RunDirLockedError,
    RunLimitError,
    ServerError,
    StateError,
    TLSCertificateError,
    TruncatedResponseError,
    UnreadableResponseError,
)
from aprompt._optimize.api import optimize
from aprompt._optimize.budget import Budget
from aprompt._optimize.evaluate import Evaluation, ExampleResult, evaluate
from aprompt._optimize.events import (
    CandidateDropped,
    CandidateProposed,
    Event,
    FullEvaluation,
    NewBest,
    PhaseFinished,
    PhaseStarted,
    RunFinished,
    RunPlanned,
    TrialScored,
)
from aprompt._optimize.examples import Example
from aprompt._optimize.final_pick import FinalPick
from aprompt._optimize.per_example import ExampleOutcome, ExampleRow, ExampleTable
from aprompt._optimize.propose import Grounding
from aprompt._optimize.result import OptimizeResult, PhaseUsage, load
from aprompt._optimize.streaming import EventStream, optimize_events
from aprompt._optimize.sync import optimize_sync
from aprompt.lm.anthropic import AnthropicLM
from aprompt.lm.cache import ResponseCache
from aprompt.lm.endpoints import Endpoint
from aprompt.lm.local import LocalLM, find_local_model, local_lm
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.types import LM, Completion, Message, TokenUsage
from aprompt.lm.usage import UsageSnapshot, total_usage
from aprompt.program import (
    ChainOfThought,
    Demo,
    Field,
    InputField,
    OutputField,
    Predict,
    Prediction,
    Signature,
    Trace,
    TraceEntry,
    load_state,
    load_state_file,
    named_predictors,
    program_state,
    save_state,
    trace,
    use_lm,
)
from aprompt.run._limits import Limits

try:
    __version__ = _version("aprompt")
except _PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "LM",
    "APromptError",
    "AnthropicLM",
    "AuthenticationError",
    "BadResponseError",
    "Budget",
    "CacheError",
    "CandidateDropped",
    "CandidateProposed",
    "ChainOfThought",
    "Completion",
    "ConfigError",
    "ContentFilteredError",
    "ContextOverflowError",
    "Demo",
    "EmptyResponseError",
    "Endpoint",
    "EndpointDownError",
    "Evaluation",
    "Event",
    "EventStream",
    "Example",
    "ExampleOutcome",
    "ExampleResult",
    "ExampleRow",
    "ExampleTable",
    "Field",
    "FinalPick",
    "FullEvaluation",
    "Grounding",
    "IncompleteResponseError",
    "InexactResumeWarning",
    "InputField",
    "JournalError",
    "LMConnectionError",
    "LMError",
    "LMStatusError",
    "LMTimeoutError",
    "Limits",
    "LocalLM",
    "Message",
    "ModelNotFoundError",
    "NewBest",
    "OpenAICompatibleLM",
    "OptimizationError",
    "OptimizeResult",
    "OutputField",
    "ParseError",
    "PhaseFinished",
    "PhaseStarted",
    "PhaseUsage",
    "Predict",
    "Prediction",
    "QuotaExhaustedError",
    "RateLimitError",
    "RequestRejectedError",
    "ResponseCache",
    "RunDirLockedError",
    "RunFinished",
    "RunLimitError",
    "RunPlanned",
    "ServerError",
    "Signature",
    "StateError",
    "TLSCertificateError",
    "TokenUsage",
    "Trace",
    "TraceEntry",
    "TrialScored",
    "TruncatedResponseError",
    "UnreadableResponseError",
    "UsageSnapshot",
    "evaluate",
    "find_local_model",
    "load",
    "load_state",
    "load_state_file",
    "local_lm",
    "named_predictors",
    "optimize",
    "optimize_events",
    "optimize_sync",
    "program_state",
    "save_state",
    "strategies",
    "total_usage",
    "tpe",
    "trace",
    "use_lm",
]
