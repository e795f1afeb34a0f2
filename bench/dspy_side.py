"""Running DSPy's optimizers for a benchmark (MIPROv2, BootstrapFewShotWithRandomSearch): a fresh cache, an
LM on a given endpoint, compile, evaluate.

Imports ``dspy`` (the ``bench`` extra). Progress bars and DSPy's, LiteLLM's and Optuna's info logs (and
BootstrapFewShotWithRandomSearch's prints) are switched off so a benchmark prints only its own lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dspy
from dspy.adapters.utils import parse_value
from dspy.teleprompt import BootstrapFewShotWithRandomSearch, MIPROv2
from dspy.utils.exceptions import AdapterParseError

#: Errors tolerated before DSPy aborts an evaluation (its default, 10, aborts a run on a small model
#: that often misses DSPy's output format; failures still score 0).
MAX_ERRORS = 1_000_000


def quiet() -> None:
    """Silence per-example error logs (a small model misses DSPy's format often; failures score 0)."""
    for name in ("dspy", "LiteLLM", "litellm", "optuna", "httpx"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """MIPROv2 forces ``display_progress=True`` on its evaluations; send tqdm's bars (stderr) nowhere.
    Logging handlers keep the real stderr, so warnings and errors still show."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


class SingleFieldFallback(dspy.ChatAdapter):
    """DSPy's chat format, plus one fallback: a reply to a signature with a single output field that lacks
    DSPy's field markers is read whole, as aprompt's parser reads such a reply.

    The whole reply is typed by DSPy's own ``parse_value``; when that fails, the text is kept as a
    string, and the benchmark's scorers (which take untyped strings from either library) judge it.
    Stock MIPROv2 aborts the whole run when one instruction proposal cannot be parsed, which on
    SmolLM2 happens in every run (measured: 2 of 2 attempts on the count task), and a stock DSPy
    program scores 0 on a reply without markers; with this fallback both libraries get the same
    leniency and the comparison measures the optimizers.
    """

    def parse(self, signature: Any, completion: str) -> dict[str, Any]:
        try:
            return super().parse(signature, completion)
        except AdapterParseError:
            fields = signature.output_fields
            text = completion.strip()
            if len(fields) != 1 or not text:
                raise
            name, field = next(iter(fields.items()))
            try:
                return {name: parse_value(text, field.annotation)}
            except Exception:
                return {name: text}


def use_adapter(lenient: bool) -> None:
    """Stock ``ChatAdapter`` (``lenient=False``) or :class:`SingleFieldFallback` for every DSPy call."""
    dspy.configure(adapter=SingleFieldFallback() if lenient else dspy.ChatAdapter())


def fresh_cache() -> None:
    """A new, empty in-memory response cache (no disk): each run starts cold and replays its own
    repeated calls, as aprompt does with its own fresh cache."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)


def make_lm(base_url: str, model: str, *, max_tokens: int = 256, num_retries: int = 3, **kwargs: Any) -> Any:
    """An LM on an OpenAI-compatible endpoint, temperature 0 unless told otherwise."""
    kwargs.setdefault("temperature", 0.0)
    return dspy.LM(
        f"openai/{model}",
        api_base=base_url,
        api_key="none",
        cache=True,
        max_tokens=max_tokens,
        num_retries=num_retries,
        **kwargs,
    )


def compile_mipro(
    program: Any,
    trainset: Sequence[Any],
    valset: Sequence[Any],
    metric: Callable[..., float],
    *,
    task_lm: Any,
    prompt_lm: Any,
    seed: int,
    num_threads: int,
    auto: str | None = "light",
    num_candidates: int | None = None,
    num_trials: int | None = None,
    minibatch_size: int = 35,
    max_bootstrapped_demos: int = 4,
    max_labeled_demos: int = 4,
    **compile_options: Any,
) -> Any:
    """``MIPROv2(...).compile(...)`` with the given budget; ``auto=None`` takes explicit candidates and
    trials; ``compile_options`` go to ``compile`` (e.g. ``data_aware_proposer=False``)."""
    optimizer = MIPROv2(
        metric=metric,
        prompt_model=prompt_lm,
        task_model=task_lm,
        auto=auto,  # type: ignore[arg-type]
        num_candidates=num_candidates if auto is None else None,
        num_threads=num_threads,
        max_errors=MAX_ERRORS,
        seed=seed,
        max_bootstrapped_demos=max_bootstrapped_demos,
        max_labeled_demos=max_labeled_demos,
        verbose=False,
    )
    with dspy.context(lm=task_lm), no_progress_bars():
        return optimizer.compile(
            program,
            trainset=list(trainset),
            valset=list(valset),
            num_trials=num_trials if auto is None else None,
            minibatch_size=minibatch_size,
            seed=seed,
            **compile_options,
        )


def compile_bootstrap_rs(
    program: Any,
    trainset: Sequence[Any],
    valset: Sequence[Any],
    metric: Callable[..., float],
    *,
    task_lm: Any,
    seed: int,
    num_threads: int,
    num_candidate_programs: int,
    max_bootstrapped_demos: int = 4,
    max_labeled_demos: int = 4,
) -> Any:
    """``BootstrapFewShotWithRandomSearch(...).compile(...)``: the zero-shot program, labeled demos only,
    the unshuffled bootstrap and ``num_candidate_programs`` shuffled bootstraps, each scored on the whole
    ``valset``; the best is returned.

    The optimizer takes no seed (its candidates are seeded ``-3 .. n-1`` whatever the run), so ``seed``
    shuffles the training set it is given: another seed bootstraps from, and labels with, other examples.
    """
    shuffled = list(trainset)
    random.Random(f"{seed}:bootstrap_rs").shuffle(shuffled)
    # It prints its settings and progress (every candidate's score) to stdout.
    with dspy.context(lm=task_lm), no_progress_bars(), open(os.devnull, "w") as sink:
        with contextlib.redirect_stdout(sink):
            optimizer = BootstrapFewShotWithRandomSearch(
                metric=metric,
                max_bootstrapped_demos=max_bootstrapped_demos,
                max_labeled_demos=max_labeled_demos,
                num_candidate_programs=num_candidate_programs,
                num_threads=num_threads,
                max_errors=MAX_ERRORS,
            )
            return optimizer.compile(program, trainset=shuffled, valset=list(valset))


def evaluate(
    program: Any, devset: Sequence[Any], metric: Callable[..., float], *, lm: Any, num_threads: int
) -> list[float]:
    """The metric of every example of ``devset``, in order (an example whose run failed scores 0)."""
    evaluator = dspy.Evaluate(
        devset=list(devset),
        metric=metric,
        num_threads=num_threads,
        display_progress=False,
        display_table=False,
        max_errors=MAX_ERRORS,
    )
    with dspy.context(lm=lm), no_progress_bars():
        result = evaluator(program)
    return [float(score) for _, _, score in result.results]
