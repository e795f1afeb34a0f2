"""The language models of a command: which client (``--lm``), where (``--base-url``), which model, the
proposer's own model, and the prices ``--max-cost`` is counted with.

One set of environment variable names, the same as the library's and the examples': ``$OPENAI_BASE_URL``
and ``$OPENAI_API_KEY`` for OpenAI-compatible endpoints, ``$ANTHROPIC_API_KEY`` for Anthropic, and
``$APROMPT_MODEL`` for the model name (the docs page "Environment" lists them all).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import attrs

import aprompt
from aprompt._errors import ConfigError, ModelNotFoundError
from aprompt.lm.endpoints import public_url, shown_url
from aprompt.lm.local import LOCAL_MODEL_NAME, find_local_model, local_model_name
from aprompt.lm.usage import UsageSnapshot, total_usage

__all__ = [
    "MODEL_ENV",
    "OLD_ENV_NAMES",
    "PROVIDERS",
    "LMChoice",
    "OpenLMs",
    "open_lm",
    "open_lms",
    "parse_price",
    "prices_for",
    "proposer_choice",
    "task_choice",
    "warn_old_env_names",
]

logger = logging.getLogger("aprompt._cli")

#: The clients ``--lm`` names; any other value must be an http(s):// URL (an OpenAI-compatible endpoint).
PROVIDERS = ("local", "openai", "anthropic")

#: The environment variable holding the model name (``--model``'s default).
MODEL_ENV = "APROMPT_MODEL"

#: Names read by earlier versions, no longer read: each one still set draws a warning naming its successor.
OLD_ENV_NAMES = {
    "APROMPT_LM": "$OPENAI_BASE_URL (an OpenAI-compatible endpoint) or --lm",
    "APROMPT_BASE_URL": "$OPENAI_BASE_URL",
}


@attrs.frozen
class LMChoice:
    """One LM client to open: ``provider`` is one of :data:`PROVIDERS`; None fields take the client's
    default (the base URL from ``$OPENAI_BASE_URL`` or the provider's public API, the key from
    ``$OPENAI_API_KEY`` or ``$ANTHROPIC_API_KEY``)."""

    provider: str
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _choose(
    lm_flag: str,
    lm: str | None,
    base_url: str | None,
    model: str | None,
    *,
    fallback: LMChoice | None,
) -> LMChoice:
    """The client that ``lm`` (a provider, a URL or None), ``base_url`` and ``model`` name, the unnamed
    parts taken from ``fallback`` when it is the same provider."""
    if lm is not None and lm not in PROVIDERS:
        if not _is_url(lm):
            # Shown without the credentials it may carry, like every URL in our messages.
            raise ConfigError(
                f"{lm_flag} must be 'local', 'openai', 'anthropic' or an http(s):// base URL, "
                f"not {shown_url(lm)!r}"
            )
        if base_url is not None:
            shown = public_url(lm)
            raise ConfigError(f"{lm_flag} {shown!r} is already a base URL; give it or the base URL, not both")
        lm, base_url = "openai", lm
    if base_url is not None and not _is_url(base_url):
        raise ConfigError(f"the base URL must be an http(s):// URL, not {shown_url(base_url)!r}")
    provider = lm or (fallback.provider if fallback is not None else "openai")
    if provider == "local":
        if base_url is not None:
            raise ConfigError(f"{lm_flag} local runs the embedded model: it takes no base URL")
        return LMChoice("local", LOCAL_MODEL_NAME)
    if fallback is None or fallback.provider != provider:
        return LMChoice(provider, model, base_url)
    return LMChoice(provider, model or fallback.model, base_url or fallback.base_url, fallback.api_key_env)


def task_choice(args: argparse.Namespace) -> LMChoice:
    """The program's LM: ``--lm`` (default: ``openai`` when a base URL or a model is given, on the command
    line or in ``$OPENAI_BASE_URL`` / ``$APROMPT_MODEL``, else ``local``), ``--base-url``, ``--model``
    (default ``$APROMPT_MODEL``) and ``--api-key-env``.

    Raises:
        ConfigError: a value that names no client, a server client without a model, or ``--rpm`` for
            the embedded model (which takes no rate limit).
    """
    model = args.model or os.environ.get(MODEL_ENV) or None
    if args.lm == "local" and args.model:
        raise ConfigError(
            f"--model {args.model!r} names a server model, but --lm local runs the embedded model; "
            "give --lm openai, anthropic or a base URL"
        )
    lm = args.lm
    if lm is None:
        server = args.base_url or os.environ.get("OPENAI_BASE_URL") or model
        lm = "openai" if server else "local"
    choice = _choose("--lm", lm, args.base_url, model, fallback=None)
    if choice.provider != "local" and not choice.model:
        raise ConfigError(f"--model is required with --lm {args.lm or choice.provider} (or set ${MODEL_ENV})")
    if choice.provider == "local" and getattr(args, "rpm", None) is not None:
        # Never dropped in silence: the embedded server takes no rate limit, only its slots.
        raise ConfigError(
            "--rpm limits a server endpoint's requests, but the embedded local model runs here: give --lm "
            "openai, anthropic or a base URL, or --lm-concurrency for the local server's slots"
        )
    return attrs.evolve(choice, api_key_env=args.api_key_env) if args.api_key_env else choice


def proposer_choice(args: argparse.Namespace, task: LMChoice) -> LMChoice | None:
    """The proposer's LM when ``--proposer-lm``, ``--proposer-model`` or ``--proposer-base-url`` differ
    from the task's, else None (the task's LM proposes). What is not given is the task's, when the
    proposer uses the same client.

    Raises:
        ConfigError: a value that names no client, or a server client without a model.
    """
    lm = getattr(args, "proposer_lm", None)
    base_url = getattr(args, "proposer_base_url", None)
    model = getattr(args, "proposer_model", None)
    if lm is None and base_url is None and model is None:
        return None
    if lm is None and task.provider == "local":
        lm = "openai"  # a proposer model or base URL beside the embedded model is a server's
    if lm == "local" and model:
        raise ConfigError(
            f"--proposer-model {model!r} names a server model, but --proposer-lm local runs the embedded "
            "model; give --proposer-lm openai, anthropic or a base URL"
        )
    choice = _choose("--proposer-lm", lm, base_url, model, fallback=task)
    if choice.provider != "local" and not choice.model:
        raise ConfigError(f"--proposer-model is required with --proposer-lm {lm}")
    return None if choice == task else choice


@contextlib.asynccontextmanager
async def _open(choice: LMChoice, args: argparse.Namespace, *, task: bool) -> AsyncIterator[Any]:
    # --lm-concurrency and --rpm describe the program's traffic; the proposer's few calls get its own client.
    concurrency = args.lm_concurrency if task else None
    # A given 0 is passed on (and refused by the client), never read as "not given".
    if choice.provider == "local":
        # A given --timeout holds here too (never dropped in silence); else the client's own 600 s.
        timeout = {} if args.timeout is None else {"timeout": args.timeout}
        async with aprompt.local_lm(n_parallel=4 if concurrency is None else concurrency, **timeout) as local:
            yield local
        return
    options: dict[str, Any] = {"timeout": 60.0 if args.timeout is None else args.timeout}
    if choice.api_key_env:
        options["api_key_env"] = choice.api_key_env
    if concurrency is not None:
        options["max_concurrency"] = concurrency
    if task and args.rpm is not None:
        options["requests_per_minute"] = args.rpm
    assert choice.model is not None  # checked when chosen
    client = aprompt.AnthropicLM if choice.provider == "anthropic" else aprompt.OpenAICompatibleLM
    if choice.base_url is not None:
        options["base_url"] = choice.base_url
    async with client(choice.model, **options) as lm:
        yield lm


@contextlib.asynccontextmanager
async def open_lm(args: argparse.Namespace) -> AsyncIterator[Any]:
    """The program's LM of ``--lm``/``--base-url``/``--model``: the embedded local model, an
    OpenAI-compatible client or an Anthropic client."""
    warn_old_env_names()
    async with _open(task_choice(args), args, task=True) as lm:
        yield lm


@attrs.frozen
class OpenLMs:
    """What :func:`open_lms` opened: the program's LM, the proposer's (None: the program's LM proposes)
    and the prices of ``--price`` for ``--max-cost``."""

    lm: Any
    proposer_lm: Any | None
    prices: dict[str, tuple[float, float]]

    def usage(self) -> UsageSnapshot:
        """The usage of both LMs so far: what the run spends, the proposer's calls included."""
        return total_usage(lm.usage for lm in (self.lm, self.proposer_lm) if lm is not None)


@contextlib.asynccontextmanager
async def open_lms(args: argparse.Namespace) -> AsyncIterator[OpenLMs]:
    """The program's LM, the proposer's and the prices, every option checked before any LM is opened."""
    warn_old_env_names()
    task = task_choice(args)
    proposer = proposer_choice(args, task)
    prices = prices_for(args.max_cost, args.price, [task] if proposer is None else [task, proposer])
    async with contextlib.AsyncExitStack() as stack:
        lm = await stack.enter_async_context(_open(task, args, task=True))
        proposer_lm = None
        if proposer is not None:
            proposer_lm = await stack.enter_async_context(_open(proposer, args, task=False))
        yield OpenLMs(lm, proposer_lm, prices)


def warn_old_env_names(environ: Mapping[str, str] | None = None) -> None:
    """Log a warning for each no longer read variable of :data:`OLD_ENV_NAMES` that is set."""
    environ = os.environ if environ is None else environ
    for name, successor in OLD_ENV_NAMES.items():
        if environ.get(name):
            logger.warning("$%s is no longer read: use %s (see the docs page 'Environment')", name, successor)


def parse_price(text: str) -> tuple[str, tuple[float, float]]:
    """``MODEL=IN,OUT`` (USD per million input and output tokens) as ``(model, (in, out))``.

    Raises:
        argparse.ArgumentTypeError: not of that shape, or not finite non-negative prices.

    Example:
        >>> parse_price("gpt-4o-mini=0.15,0.60")
        ('gpt-4o-mini', (0.15, 0.6))
    """
    model, _, pair = text.rpartition("=")
    parts = pair.split(",")
    try:
        if not model or len(parts) != 2:
            raise ValueError
        prices = (float(parts[0]), float(parts[1]))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not MODEL=IN,OUT (USD per million input and output tokens)"
        ) from None
    if not all(0.0 <= price < float("inf") for price in prices):
        raise argparse.ArgumentTypeError(f"{text!r}: prices must be finite and not negative")
    return model, prices


def prices_for(
    max_cost: float | None, given: Sequence[tuple[str, tuple[float, float]]] | None, lms: Sequence[LMChoice]
) -> dict[str, tuple[float, float]]:
    """The prices of ``--price`` (the embedded model costs nothing unless priced), checked to cover
    the model of every one of ``lms`` when ``--max-cost`` is set.

    Raises:
        ConfigError: a model given two different prices, ``--max-cost`` is set and a model has no
            price, or ``--max-cost`` is negative.
    """
    prices: dict[str, tuple[float, float]] = {}
    for model, pair in given or []:
        # Never the last one silently: the limit would hold at a price the user also said was wrong.
        if prices.setdefault(model, pair) != pair:
            raise ConfigError(
                f"--price gives model {model!r} two prices ({_price(prices[model])} and {_price(pair)}): "
                "give it once"
            )
    if any(choice.provider == "local" for choice in lms):
        prices.setdefault(LOCAL_MODEL_NAME, (0.0, 0.0))
        # A model file named by $APROMPT_LOCAL_MODEL runs (and is metered) under its own name.
        with contextlib.suppress(ModelNotFoundError):
            prices.setdefault(local_model_name(find_local_model()), (0.0, 0.0))
    if max_cost is None:
        return prices
    if max_cost < 0:
        raise ConfigError(f"--max-cost must be an amount in USD, not {max_cost:g}")
    for choice in lms:
        if choice.model is not None and choice.model not in prices:
            raise ConfigError(
                f"--max-cost needs the price of model {choice.model!r}: give --price {choice.model}=IN,OUT "
                "(USD per million input and output tokens)"
            )
    return prices


def _price(pair: tuple[float, float]) -> str:
    return f"{pair[0]:g},{pair[1]:g}"


def key_variables(args: argparse.Namespace) -> list[str]:
    """The environment variables the command's clients read their API keys from (``--api-key-env``
    names the program client's, and the proposer's when it is the same client)."""
    if not hasattr(args, "lm"):
        return ["OPENAI_API_KEY"]
    try:
        task = task_choice(args)
        choices = [task, proposer_choice(args, task) or task]
    except ConfigError:
        return ["OPENAI_API_KEY"]
    names = []
    for choice in choices:
        default = "ANTHROPIC_API_KEY" if choice.provider == "anthropic" else "OPENAI_API_KEY"
        name = choice.api_key_env or default
        if choice.provider != "local" and name not in names:
            names.append(name)
    return names or ["OPENAI_API_KEY"]
