"""One optimization whose examples hold a set among their inputs: the child the hash-seed test runs.

``python -m tests.run._set_inputs_worker BASE_URL RUN_DIR`` (the API key in ``$APROMPT_WORKER_KEY``) runs it
with ``run_dir=RUN_DIR`` and ``resume=False`` (the journal cleared, the cache kept) and prints the returned
program's prompt as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio

import aprompt
from aprompt import Example, OpenAICompatibleLM, Predict

KEY_ENV_VAR = "APROMPT_WORKER_KEY"


class Tagged:
    def __init__(self) -> None:
        self.extract = Predict("question, tags -> code", instruction="Find the code.")

    async def __call__(self, question: str, tags: set[str]) -> Any:
        return await self.extract(question=question, tags=tags)


def examples(start: int, stop: int) -> list[Example]:
    return [
        Example(
            inputs={
                "question": f"What is the answer for item-{i}?",
                "tags": {"red", "green", "blue", f"t{i}"},
            },
            labels={"code": f"code-{i}"},
        )
        for i in range(start, stop)
    ]


def metric(example: Example, prediction: Any) -> bool:
    return str(prediction.code).strip() == example.labels["code"]


async def run(base_url: str, run_dir: str) -> dict[str, Any]:
    async with OpenAICompatibleLM("world", base_url, api_key=os.environ[KEY_ENV_VAR]) as lm:
        result = await aprompt.optimize(
            Tagged(),
            examples(0, 40),
            metric,
            valset=examples(200, 220),
            lm=lm,
            budget={"n_candidates": 3, "val_size": 20, "n_trials": 4, "minibatch_size": 10},
            seed=1,
            run_dir=run_dir,
            resume=False,
        )
    predictor = result.program.extract
    demos = [{k: sorted(v) if isinstance(v, set) else v for k, v in d.items()} for d in predictor.demos]
    return {"instruction": predictor.instruction, "demos": demos, "score": result.score}


if __name__ == "__main__":
    print(json.dumps(anyio.run(run, *sys.argv[1:3])))
