"""The search space: per predictor, candidate instructions and demo sets, and which of them are searched."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from aprompt.optimize.bootstrap import DemoSet
from aprompt.program.overrides import PromptOverride
from aprompt.program.predictor import Predict
from aprompt.tpe import Categorical

Choice = Mapping[str, int]


def choice_key(choice: Choice) -> tuple[tuple[str, int], ...]:
    """A hashable, order-independent key for a choice."""
    return tuple(sorted(choice.items()))


@attrs.frozen
class Candidates:
    """Candidate instructions and demo sets per predictor name.

    Index 0 of each is the program's own (original instruction, current demos), so the all-zeros choice is
    the unoptimized program. The other instructions are the proposals that survived cleaning and the
    screen (:mod:`aprompt.optimize.proposal_filter`); the other demo sets are distinct, of several sizes up
    to ``Budget.max_demos`` (:mod:`aprompt.optimize.bootstrap`). A predictor with one instruction (every
    proposal dropped) or one demo set has no parameter for it: the search spends its trials on the rest.
    """

    predictors: tuple[str, ...]
    instructions: Mapping[str, tuple[str, ...]]
    demo_sets: Mapping[str, tuple[DemoSet, ...]]
    search_instructions: bool = True
    search_demos: bool = True

    @classmethod
    def original(cls, predictors: Sequence[tuple[str, Predict]]) -> Candidates:
        return cls(
            predictors=tuple(name for name, _ in predictors),
            instructions={name: (p.instruction,) for name, p in predictors},
            demo_sets={name: (DemoSet(tuple(p.demos)),) for name, p in predictors},
        )

    def parameters(self) -> dict[str, Categorical]:
        """The TPE space: ``"<predictor>.instruction"`` and/or ``"<predictor>.demos"`` per predictor."""
        space: dict[str, Categorical] = {}
        for name in self.predictors:
            if self.search_instructions and len(self.instructions[name]) > 1:
                space[f"{name}.instruction"] = Categorical(len(self.instructions[name]))
            if self.search_demos and len(self.demo_sets[name]) > 1:
                space[f"{name}.demos"] = Categorical(len(self.demo_sets[name]))
        return space

    def baseline(self) -> dict[str, int]:
        return {key: 0 for key in self.parameters()}

    def prompts_for(self, choice: Choice) -> dict[str, PromptOverride]:
        """The instruction and demos each predictor uses under ``choice`` (unsearched parts: index 0)."""
        prompts = {}
        for name in self.predictors:
            instruction = self.instructions[name][choice.get(f"{name}.instruction", 0)]
            demos = self.demo_sets[name][choice.get(f"{name}.demos", 0)].demos
            prompts[name] = PromptOverride(instruction, tuple(demos))
        return prompts

    def describe(self) -> dict[str, Any]:
        """Plain JSON of every candidate, for results and reports."""
        return {
            name: {
                "instructions": list(self.instructions[name]),
                "demo_sets": [
                    {"demos": [d.to_dict() for d in s.demos], "bootstrapped": s.bootstrapped}
                    for s in self.demo_sets[name]
                ],
            }
            for name in self.predictors
        }
