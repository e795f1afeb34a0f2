"""The simulated world of :mod:`tests.optimize.world` turned around: nothing the optimizer tries helps.

Each stage is right with probability 0.8 with its original instruction and no demos; any proposed
instruction (−0.15) or demo set (−0.10) makes it worse. The unoptimized program is the best there is, so a
pick that trusts noise replaces it with a worse one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aprompt.testing.fake_openai import ChatRequest
from tests.optimize.world import World, _items_in, _stage_of, _unit

ORIGINAL = {"extract": "Find the code.", "answer": "Give the answer."}


class NoGainWorld(World):
    """The responder (proposals and summaries as in :class:`World`) plus the ground truth."""

    def __call__(self, request: ChatRequest) -> str:
        stage = _stage_of(request)
        if stage not in ("extract", "answer"):
            return super().__call__(request)
        system = str(request.messages[0]["content"])
        has_demos = any(m["role"] == "assistant" for m in request.messages[1:-1])
        p = self.probability(stage, system.startswith(ORIGINAL[stage]), has_demos)
        item = _items_in(request.last_user)[0]
        ok = _unit(str(request.messages)) < p
        if stage == "extract":
            return f"Code: {'code-' + str(item) if ok else 'unknown'}"
        return f"Answer: {'ans-' + str(item) if ok and f'code-{item}' in request.last_user else 'no idea'}"

    @staticmethod
    def probability(stage: str, original: bool, has_demos: bool) -> float:
        return 0.8 - (0.0 if original else 0.15) - (0.10 if has_demos else 0.0)

    @classmethod
    def accuracy(cls, prompts: Mapping[str, Any]) -> float:
        """True accuracy of a combination's prompts (predictor name -> prompt)."""
        p = 1.0
        for stage, prompt in prompts.items():
            p *= cls.probability(stage, prompt.instruction.startswith(ORIGINAL[stage]), bool(prompt.demos))
        return p


class EqualWorld(NoGainWorld):
    """Nothing the optimizer tries changes anything: every prompt of a stage is right with probability 0.8.

    Every combination is exactly as good as the unoptimized program, yet each prompt draws its own answers
    (the world hashes the prompt), so scores differ by luck alone: a pick that replaces the baseline here
    does so on noise, and the share of runs that do measures the pick's false-replacement rate under the
    search's own selection of what it evaluates."""

    @staticmethod
    def probability(stage: str, original: bool, has_demos: bool) -> float:
        return 0.8
