"""A simulated task world for optimizer tests.

A fake LM whose answers are right with a probability that depends, in a known way, on which instruction
and which demos are in the prompt; a deterministic hash of the prompt decides each answer, so runs repeat
exactly and a warm cache replays them. The world also answers the proposer (instructions named
``variant K`` with known quality) and the summarizers, and can compute the true expected accuracy of any
combination of candidates, so a test can compare the optimizer's pick with the best one.

The task: a two-stage program (``extract`` finds the code of an item, ``answer`` turns it into the
answer). Stage k is right with probability ``BASE[k] + instruction quality + demo quality`` (clipped), and
the program is right only when both stages are.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aprompt import Example, Predict
from aprompt.testing.fake_openai import ChatRequest

N_ITEMS = 400
BASE = {"extract": 0.35, "answer": 0.45}
VARIANT_QUALITY = {k: (0.30 if k % 7 == 3 else 0.15 if k % 3 == 0 else -0.05) for k in range(50)}


def item_helpfulness(item: int) -> float:
    """How much one demo made from item ``item`` helps (demos average theirs)."""
    return 0.35 if item % 4 == 0 else 0.05


class TwoStageProgram:
    def __init__(self) -> None:
        self.extract = Predict("question -> code", instruction="Find the code.")
        self.answer = Predict("question, code -> answer", instruction="Give the answer.")

    async def __call__(self, question: str) -> Any:
        found = await self.extract(question=question)
        return await self.answer(question=question, code=found.code)


def examples(start: int, stop: int) -> list[Example]:
    return [
        Example(inputs={"question": f"What is the answer for item-{i}?"}, labels={"answer": f"ans-{i}"})
        for i in range(start, stop)
    ]


def metric(example: Example, prediction: Any) -> bool:
    return str(prediction.answer).strip() == example.labels["answer"]


def _unit(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _stage_of(request: ChatRequest) -> str | None:
    system = str(request.messages[0].get("content", ""))
    if "You write instructions" in system:
        return "propose"
    if "Output fields:\n- Answer" in system and "- Code" in system:
        return "answer"
    if "Output fields:\n- Code" in system:
        return "extract"
    return "other"


def instruction_quality(instruction: str) -> float:
    match = re.search(r"variant (\d+)", instruction)
    return VARIANT_QUALITY[int(match.group(1)) % 50] if match else 0.0


def demo_quality(demo_items: Sequence[int]) -> float:
    if not demo_items:
        return 0.0
    return sum(item_helpfulness(i) for i in demo_items) / len(demo_items)


def stage_probability(stage: str, instruction: str, demo_items: Sequence[int]) -> float:
    p = BASE[stage] + instruction_quality(instruction) + demo_quality(demo_items)
    return min(0.97, max(0.02, p))


def _items_in(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"item-(\d+)", text)]


class World:
    """The responder for a :class:`FakeOpenAIServer` plus the ground truth."""

    def __init__(self) -> None:
        self.proposals = 0

    def __call__(self, request: ChatRequest) -> str:
        stage = _stage_of(request)
        if stage == "propose":
            self.proposals += 1
            # Drawn from the proposal's own call (system and query), not the proposer's worked example
            # shown between them, so a seed's draws stay the same with and without it.
            own = [request.messages[0], request.messages[-1]]
            k = int(_unit(str(own) + str(request.params)) * 1000) % 50
            return f"Proposed instruction: Solve it carefully, variant {k}."
        if stage not in ("extract", "answer"):
            return "The data has questions about items and short coded answers for each of them."
        system = str(request.messages[0]["content"])
        demos = [m for m in request.messages[1:-1] if m["role"] == "user"]
        demo_items = [_items_in(str(m["content"]))[0] for m in demos if _items_in(str(m["content"]))]
        p = stage_probability(stage, system, demo_items)
        item = _items_in(request.last_user)[0]
        right = _unit(str(request.messages)) < p
        if stage == "extract":
            return f"Code: {'code-' + str(item) if right else 'unknown'}"
        code_ok = f"code-{item}" in request.last_user
        return f"Answer: {'ans-' + str(item) if right and code_ok else 'no idea'}"

    @staticmethod
    def expected_accuracy(instructions: Mapping[str, str], demo_items: Mapping[str, Sequence[int]]) -> float:
        """True accuracy of a combination (the hash makes each answer a draw with this mean)."""
        return stage_probability(
            "extract", instructions["extract"], demo_items["extract"]
        ) * stage_probability("answer", instructions["answer"], demo_items["answer"])


def demo_items_of(demos: Sequence[Mapping[str, Any]]) -> list[int]:
    return [_items_in(str(d.get("question", "")))[0] for d in demos if _items_in(str(d.get("question", "")))]
