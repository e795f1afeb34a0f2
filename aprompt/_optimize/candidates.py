"""The search space: per predictor, candidate instructions, demo sets and reply formats, and which of them
are searched."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from aprompt._optimize.bootstrap import DemoSet
from aprompt.program.adapter import REPLY_FORMATS, ReplyFormat, bare_applies
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
    screen (:mod:`aprompt._optimize.proposal_filter`); the other demo sets are distinct, of several sizes up
    to ``Budget.max_demos`` (:mod:`aprompt._optimize.bootstrap`). A predictor with one instruction (every
    proposal dropped) or one demo set has no parameter for it: the search spends its trials on the rest.

    ``seen`` holds, per ``(predictor, instruction index)``, the training examples an instruction was
    written from with their labels (a reflective proposal's failing runs, and those of the instruction it
    revised): a confirmation of the pick does not run a program on them.

    ``formats`` lists, per predictor, the reply formats it may use (index 0 its own; see
    :func:`reply_formats`); a predictor not in it keeps its own. With ``search_formats`` on, a predictor
    with two has a ``"<predictor>.format"`` parameter.
    """

    predictors: tuple[str, ...]
    instructions: Mapping[str, tuple[str, ...]]
    demo_sets: Mapping[str, tuple[DemoSet, ...]]
    search_instructions: bool = True
    search_demos: bool = True
    formats: Mapping[str, tuple[ReplyFormat, ...]] = attrs.field(factory=dict)
    search_formats: bool = False
    seen: Mapping[tuple[str, int], frozenset[str]] = attrs.field(factory=dict)

    @classmethod
    def original(cls, predictors: Sequence[tuple[str, Predict]]) -> Candidates:
        return cls(
            predictors=tuple(name for name, _ in predictors),
            instructions={name: (p.instruction,) for name, p in predictors},
            demo_sets={name: (DemoSet(tuple(p.demos)),) for name, p in predictors},
        )

    def with_formats(self, predictors: Sequence[tuple[str, Predict]], search: bool) -> Candidates:
        """These candidates with each predictor's reply formats (:func:`reply_formats`), searched when
        ``search`` is on (``Budget.search_formats``)."""
        return attrs.evolve(
            self, formats={name: reply_formats(p) for name, p in predictors}, search_formats=search
        )

    def parameters(self) -> dict[str, Categorical]:
        """The TPE space: ``"<predictor>.instruction"``, ``"<predictor>.demos"`` and/or
        ``"<predictor>.format"`` per predictor."""
        space: dict[str, Categorical] = {}
        for name in self.predictors:
            if self.search_instructions and len(self.instructions[name]) > 1:
                space[f"{name}.instruction"] = Categorical(len(self.instructions[name]))
            if self.search_demos and len(self.demo_sets[name]) > 1:
                space[f"{name}.demos"] = Categorical(len(self.demo_sets[name]))
            if self.search_formats and len(self.formats.get(name, ())) > 1:
                space[f"{name}.format"] = Categorical(len(self.formats[name]))
        return space

    def baseline(self) -> dict[str, int]:
        return {key: 0 for key in self.parameters()}

    def prompts_for(self, choice: Choice) -> dict[str, PromptOverride]:
        """The instruction, demos and reply format each predictor uses under ``choice`` (unsearched parts:
        index 0; no listed formats: the predictor's own)."""
        prompts = {}
        for name in self.predictors:
            instruction = self.instructions[name][choice.get(f"{name}.instruction", 0)]
            demos = self.demo_sets[name][choice.get(f"{name}.demos", 0)].demos
            formats = self.formats.get(name)
            reply_format = formats[choice.get(f"{name}.format", 0)] if formats else None
            prompts[name] = PromptOverride(instruction, tuple(demos), reply_format)
        return prompts

    def describe(self) -> dict[str, Any]:
        """Plain JSON of every candidate, for results and reports."""
        searched = self.parameters()
        return {
            name: {
                "instructions": list(self.instructions[name]),
                "demo_sets": [
                    {"demos": [d.to_dict() for d in s.demos], "bootstrapped": s.bootstrapped}
                    for s in self.demo_sets[name]
                ],
                # Listed only where searched: otherwise every predictor keeps its own format.
                **({"reply_formats": list(self.formats[name])} if f"{name}.format" in searched else {}),
            }
            for name in self.predictors
        }


def reply_formats(predictor: Predict) -> tuple[ReplyFormat, ...]:
    """The reply formats ``predictor`` may use, its own first: both for a single output field, else its own.

    Example::

        reply_formats(Predict("question -> answer: int"))  # ("fields", "bare")
    """
    own = predictor.reply_format
    if not bare_applies(predictor.signature):
        return (own,)
    return (own, *(f for f in REPLY_FORMATS if f != own))
