"""Optimizing an async agent function you already have.

``answer(question)`` stands for existing agent code: a plain ``async def`` that calls two aprompt
predictors (plan, then answer) kept in module globals, and takes its LM from the caller's
``aprompt.use_lm(...)``.

``aprompt.optimize`` takes the function itself as the program: it finds the predictors in the globals
and closure variables the function reads (and in the functions it calls), named ``PLAN`` and
``RESPOND``. Predictors in a module cannot be copied, so ``in_place=True`` is required: the best prompts
are written into those same objects, and ``answer`` itself improves. ``result.save`` keeps them for the
next start (``aprompt.load(answer, path)``).

Run it (the LM is ``OPENAI_BASE_URL`` + ``APROMPT_MODEL``, else the embedded local model)::

    python docs/examples/agent_function.py [optimized_agent.json]
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from typing import Any

import anyio

import aprompt

# -- the existing agent -------------------------------------------------------------------------------------
PLAN = aprompt.Predict("question -> plan", instruction="Write a one-line plan for answering the question.")
RESPOND = aprompt.Predict(
    "question, plan -> answer", instruction="Answer the question by following the plan."
)


async def answer(question: str) -> str:
    plan = await PLAN(question=question)
    reply = await RESPOND(question=question, plan=plan.plan)
    return str(reply.answer).strip()


# -- what optimizing it takes: examples, a metric, and the call ---------------------------------------------
# fmt: off
PAIRS = [
    (17, 25), (3, 4), (120, 5), (9, 9), (41, 1), (60, 7), (8, 15), (33, 33), (2, 98), (14, 6),
    (250, 50), (7, 8), (64, 36), (11, 29), (5, 500), (72, 19), (18, 18), (99, 1), (45, 55), (6, 13),
    (130, 70), (21, 4), (38, 47), (10, 90), (16, 27), (81, 9), (200, 33), (12, 12), (57, 26), (1, 1),
]
# fmt: on
TRAINSET = [
    aprompt.Example(inputs={"question": f"What is {a} + {b}?"}, labels={"answer": str(a + b)})
    for a, b in PAIRS
]
BUDGET: Mapping[str, int] = {
    "n_candidates": 4,
    "n_trials": 8,
    "minibatch_size": 5,
    "max_bootstrapped_demos": 2,
}


def exact_answer(example: aprompt.Example, prediction: str) -> bool:
    return prediction == str(example.labels["answer"])


def lm_from_environment() -> contextlib.AbstractAsyncContextManager[aprompt.OpenAICompatibleLM]:
    """``OPENAI_BASE_URL`` (+ ``APROMPT_MODEL``, key from ``OPENAI_API_KEY``), else the local model."""
    if os.environ.get("OPENAI_BASE_URL"):
        # The client reads $OPENAI_BASE_URL and $OPENAI_API_KEY itself.
        return aprompt.OpenAICompatibleLM(os.environ.get("APROMPT_MODEL", "gpt-4o-mini"))
    return aprompt.local_lm()


async def main(
    lm: aprompt.LM, out: str | os.PathLike[str], budget: Mapping[str, Any] = BUDGET
) -> aprompt.OptimizeResult[Any]:  # the program is a function
    """Optimize ``answer``'s two predictors in place and save the result to ``out``."""
    result = await aprompt.optimize(
        answer, TRAINSET, exact_answer, lm=lm, budget=budget, seed=0, in_place=True
    )
    result.save(out)
    print(f"validation score {result.baseline_score:.2f} -> {result.score:.2f}; saved to {out}")
    with aprompt.use_lm(lm):  # the agent as the app calls it, now with the optimized prompts
        print("What is 19 + 23?", "->", await answer("What is 19 + 23?"))
    return result


async def run(out: str) -> None:
    async with lm_from_environment() as lm:
        await main(lm, out)


if __name__ == "__main__":
    anyio.run(run, sys.argv[1] if len(sys.argv) > 1 else "optimized_agent.json")
