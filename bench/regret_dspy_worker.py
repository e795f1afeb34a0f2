"""The DSPy side of :mod:`bench.regret_dspy`, run in the interpreter that has dspy.

``python -m bench.regret_dspy_worker SPEC`` (SPEC: JSON with ``base_url``, ``budget``, ``seed``,
``n_train``, ``val_size``, ``threads`` and ``cache``: DSPy's fresh in-memory cache, or none) compiles
:class:`TwoStage`, the two-stage program of ``tests/optimize/world.py`` as two ``dspy.Predict`` with the
same instructions, with ``MIPROv2(auto=budget, seed=seed)`` on training examples ``item-0 ..`` and the
validation examples after them (as aprompt's run), against the world at ``base_url``. It prints one JSON
line: the unoptimized and the returned program, the instruction candidates and demo sets MIPROv2 searched
per predictor, and every program in its ``trial_logs``; each predictor as ``{"instruction": ...,
"items": [...]}``, the items of the demos that DSPy's ChatAdapter sends.

MIPROv2's proposer reads this module's source of :class:`TwoStage` (its ``program_code``), so an edit to
that class changes the proposals, hence the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import dspy
from dspy.teleprompt import MIPROv2

from bench import dspy_side


class TwoStage(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.extract = dspy.Predict(dspy.Signature("question -> code", "Find the code."))
        self.answer = dspy.Predict(dspy.Signature("question, code -> answer", "Give the answer."))

    def forward(self, question: str) -> Any:
        found = self.extract(question=question)
        return self.answer(question=question, code=found.code)


class RecordingMIPROv2(MIPROv2):
    """MIPROv2 that keeps the instruction candidates and demo sets it searches (:attr:`searched`)."""

    searched: tuple[Any, Any] = ({}, None)

    def _optimize_prompt_parameters(
        self, program: Any, instructions: Any, demos: Any, *args: Any, **kwargs: Any
    ) -> Any:
        self.searched = (instructions, demos)
        return super()._optimize_prompt_parameters(program, instructions, demos, *args, **kwargs)


def example(i: int) -> Any:
    return dspy.Example(question=f"What is the answer for item-{i}?", answer=f"ans-{i}").with_inputs(
        "question"
    )


def metric(gold: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(str(prediction.answer).strip() == gold.answer)


def shown_items(adapter: Any, predictor: Any, demos: Sequence[Any]) -> list[int]:
    """The item of each demo the adapter puts in the predictor's prompt (the first ``item-N`` of its user
    turn; a demo without one of the stage's output fields is not sent)."""
    messages = adapter.format_demos(predictor.signature, list(demos))
    found = [re.findall(r"item-(\d+)", str(m["content"])) for m in messages if m["role"] == "user"]
    return [int(items[0]) for items in found if items]


def describe(adapter: Any, program: Any) -> dict[str, Any]:
    """``{predictor name: {"instruction": ..., "items": [...]}}``."""
    return {
        name: {"instruction": p.signature.instructions, "items": shown_items(adapter, p, p.demos)}
        for name, p in program.named_predictors()
    }


def run(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One MIPROv2 compile as ``spec`` says; the record :func:`bench.regret_dspy.score_record` reads."""
    dspy_side.quiet()
    if spec.get("cache", True):
        dspy_side.fresh_cache()
    else:  # every call reaches the server, as every call of aprompt's in-process LM is counted
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    adapter = dspy.ChatAdapter()
    dspy.configure(adapter=adapter)
    url, n_train, val_size, seed = spec["base_url"], spec["n_train"], spec["val_size"], spec["seed"]
    task_lm = dspy_side.make_lm(url, "world", num_retries=1)
    prompt_lm = dspy_side.make_lm(url, "world", num_retries=1, temperature=1.0)
    optimizer = RecordingMIPROv2(
        metric=metric,
        prompt_model=prompt_lm,
        task_model=task_lm,
        auto=spec["budget"],
        num_threads=spec["threads"],
        max_errors=dspy_side.MAX_ERRORS,
        seed=seed,
        verbose=False,
    )
    program = TwoStage()
    started = time.monotonic()
    # It prints its bootstrapping progress to stdout, and progress bars to stderr.
    with dspy.context(lm=task_lm), open(os.devnull, "w") as sink:
        with contextlib.redirect_stdout(sink), dspy_side.no_progress_bars():
            compiled = optimizer.compile(
                program,
                trainset=[example(i) for i in range(n_train)],
                valset=[example(i) for i in range(n_train, n_train + val_size)],
                seed=seed,
            )
    seconds = time.monotonic() - started
    instructions, demo_sets = optimizer.searched
    names = [name for name, _ in program.named_predictors()]
    predictors = program.predictors()
    return {
        "baseline": describe(adapter, program),
        "returned": describe(adapter, compiled),
        "instructions": {name: list(instructions[i]) for i, name in enumerate(names)},
        "demo_sets": {
            name: [shown_items(adapter, predictors[i], demos) for demos in (demo_sets or {}).get(i, [[]])]
            for i, name in enumerate(names)
        },
        # Mini-batch trials and full evaluations (the unoptimized program's first), in order.
        "evaluated": [
            {"full": key == "full_eval_program", "program": describe(adapter, log[key])}
            for _, log in sorted(compiled.trial_logs.items())
            for key in ("mb_program", "full_eval_program")
            if key in log
        ],
        "seconds": seconds,
    }


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))), flush=True)
