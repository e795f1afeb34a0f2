"""named_predictors: stable dotted names over nested objects, containers and cycles."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from aprompt._errors import ConfigError
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.program import ChainOfThought, Predict, named_predictors


def names(program: object) -> list[str]:
    return [name for name, _ in named_predictors(program)]


class Retrieve:
    def __init__(self) -> None:
        self.generate = Predict("question -> query")


class Pipeline:
    def __init__(self) -> None:
        self.retrieve = Retrieve()
        self.stages = [Predict("query -> passage"), (Predict("passage -> note"),)]
        self.experts = {"math": Predict("q -> a"), "art": ChainOfThought("q -> a")}
        self.answer = ChainOfThought("question, notes -> answer")

    async def __call__(self, question: str) -> Any:
        return None


def test_names_follow_attribute_order_with_sorted_dict_keys() -> None:
    assert names(Pipeline()) == [
        "retrieve.generate",
        "stages.0",
        "stages.1.0",
        "experts.art",
        "experts.math",
        "answer",
    ]


def test_the_names_map_to_the_predictor_objects() -> None:
    program = Pipeline()
    found = dict(named_predictors(program))
    assert found["retrieve.generate"] is program.retrieve.generate
    assert found["experts.math"] is program.experts["math"]


def test_a_predictor_reachable_twice_keeps_its_first_name() -> None:
    program = Pipeline()
    program.alias = program.answer  # type: ignore[attr-defined]
    program.stages.append(program.retrieve.generate)
    assert names(program).count("answer") == 1
    assert "alias" not in names(program)
    assert len(named_predictors(program)) == 6


def test_cycles_are_walked_once() -> None:
    program = Pipeline()
    program.retrieve.parent = program  # type: ignore[attr-defined]
    program.stages.append(program.stages)
    experts: dict[str, Any] = program.experts
    experts["self"] = experts
    assert len(names(program)) == 6


def test_deep_nesting_does_not_hit_the_recursion_limit() -> None:
    root: list[Any] = []
    node = root
    for _ in range(5000):
        child: list[Any] = []
        node.append(child)
        node = child
    node.append(Predict("q -> a"))
    (name,) = names(root)
    assert name.count(".") == 5000


def test_a_bound_method_is_walked_from_its_object() -> None:
    program = Pipeline()
    assert names(program.__call__) == names(program)


def test_a_bare_predictor_is_named_self() -> None:
    predict = Predict("q -> a")
    assert named_predictors(predict) == [("self", predict)]


def test_the_walk_skips_classes_modules_functions_and_lm_clients() -> None:
    class Holder:
        def __init__(self) -> None:
            self.cls = Pipeline
            self.module = attrs
            self.function = names
            self.lm = OpenAICompatibleLM("m", "http://127.0.0.1:9/v1")
            self.own = Predict("q -> a")

    assert names(Holder()) == ["own"]


def test_slotted_and_attrs_programs_are_walked() -> None:
    @attrs.define
    class Slotted:
        first: Predict = attrs.field(factory=lambda: Predict("q -> a"))
        __hidden: Predict = attrs.field(factory=lambda: Predict("a -> b"))

    found = names(Slotted())
    assert found[0] == "first"
    assert len(found) == 2


def test_the_same_program_built_twice_gets_the_same_names() -> None:
    assert names(Pipeline()) == names(Pipeline())


class Stage:
    """A mapping key with the default repr: its text holds the object's memory address."""


def test_a_key_shown_by_its_memory_address_is_refused() -> None:
    # Named by the address, a predictor got another name in every process: a resume was refused as a
    # different run, and a saved result loaded nowhere else.
    stage = Stage()
    with pytest.raises(
        ConfigError, match=r"the key <.*Stage object at 0x[0-9a-f]+> shows its memory address"
    ):
        named_predictors({"stages": {stage: Predict("q -> a")}})
    kept = {"plan": Predict("q -> a"), 3: Predict("a -> b"), "meet at 0x10": Predict("b -> c")}
    assert names({"stages": kept}) == ["stages.3", "stages.meet at 0x10", "stages.plan"]
