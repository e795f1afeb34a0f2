"""Signatures from strings, from classes, and the errors for bad ones."""

from __future__ import annotations

import pickle
from typing import Literal

import attrs
import pytest

from aprompt._errors import ConfigError
from aprompt.program import Field, InputField, OutputField, Signature


def test_a_string_gives_ordered_inputs_and_outputs() -> None:
    signature = Signature.parse("question, context -> answer")
    assert signature.input_names == ("question", "context")
    assert signature.output_names == ("answer",)
    assert all(f.annotation is str for f in signature.fields)


def test_types_in_the_string_are_read() -> None:
    signature = Signature.parse(
        "question: str, n: int -> answer: float, ok: bool, tags: list[str], "
        "mood: Literal['happy, really', 'sad']"
    )
    assert [f.annotation for f in signature.fields][:5] == [str, int, float, bool, list[str]]
    assert signature.field("mood").annotation == Literal["happy, really", "sad"]


def test_the_canonical_string_round_trips() -> None:
    text = "question, n: int -> answer: float, tags: list[str], mood: Literal['a', 'b']"
    assert str(Signature.parse(text)) == text
    assert Signature.parse(str(Signature.parse(text))) == Signature.parse(text)


def test_a_signature_with_negative_choices_round_trips_through_its_string() -> None:
    declared = Signature([Field("q")], [Field("rating", Literal[-2, 0, 3])])
    assert str(declared) == "q -> rating: Literal[-2, 0, 3]"
    assert Signature.parse(str(declared)) == declared


def test_an_instruction_can_be_given_with_the_string() -> None:
    assert Signature.parse("q -> a", "Answer briefly.").instruction == "Answer briefly."


def test_without_an_instruction_a_generic_one_names_the_fields() -> None:
    assert Signature.parse("question -> answer").instruction == (
        "Given the fields `question`, produce the fields `answer`."
    )


def test_labels_are_derived_from_names() -> None:
    signature = Signature.parse("context_docs -> short_answer")
    assert [f.label for f in signature.fields] == ["Context Docs", "Short Answer"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("question, answer", "exactly one '->'"),
        ("a -> b -> c", "exactly one '->'"),
        ("question -> ", "no output field"),
        ("question, question -> answer", "repeats field name"),
        ("question -> question", "repeats field name"),
        ("2fast -> answer", "not a valid Python identifier"),
        ("my question -> answer", "not a valid Python identifier"),
        ("class -> answer", "not a valid Python identifier"),
        ("q, , r -> answer", "empty field name"),
        ("q -> answer: dict", "unsupported field type"),
        ("q -> answer: int(", "cannot read the type"),
        ("q -> answer: Literal[-'a']", "must be constants"),
        ("q -> answer: Literal[-True]", "must be constants"),
        ("q -> answer: Literal[~2]", "must be constants"),
        ("lm -> answer", "reserved"),
        ("q -> _secret", "underscore"),
    ],
)
def test_a_bad_string_is_a_config_error_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Signature.parse(text)


def test_a_class_declares_fields_in_definition_order_with_its_docstring() -> None:
    class QA(Signature):
        """Answer with a count."""

        question: str = InputField(desc="a question about objects")
        context: list[str] = InputField()
        answer: int = OutputField(desc="the count", label="Count")

    signature = Signature.from_class(QA)
    assert signature.input_names == ("question", "context")
    assert signature.instruction == "Answer with a count."
    assert signature.field("answer") == Field("answer", int, "the count", "Count")
    assert signature.field("question").description == "a question about objects"


def test_a_plain_class_works_too() -> None:
    class Classify:
        text: str = InputField()
        label: Literal["spam", "ham"] = OutputField()

    assert str(Signature.from_class(Classify)) == "text -> label: Literal['spam', 'ham']"


def test_an_annotated_attribute_without_a_field_marker_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"QA\.answer must be declared"):

        class QA(Signature):
            question: str = InputField()
            answer: int


def test_an_unsupported_type_on_a_class_is_an_error_at_definition() -> None:
    with pytest.raises(ConfigError, match="unsupported field type"):

        class Bad(Signature):
            question: str = InputField()
            answer: dict[str, int] = OutputField()


def test_a_list_type_with_several_item_types_is_a_config_error_at_definition() -> None:
    with pytest.raises(ConfigError, match="one item type"):

        class Bad(Signature):
            question: str = InputField()
            answer: list[int, str] = OutputField()  # type: ignore[type-arg]


def test_choices_that_differ_only_in_case_are_refused() -> None:
    with pytest.raises(ConfigError, match="differ only in case"):
        Signature.parse("q -> answer: Literal['Yes', 'yes']")


def test_with_instruction_returns_a_new_signature() -> None:
    signature = Signature.parse("q -> a")
    changed = signature.with_instruction("Be terse.")
    assert changed.instruction == "Be terse."
    assert signature.instruction != "Be terse."
    assert changed.fields == signature.fields


def test_prepend_output_puts_the_field_first_and_keeps_a_given_instruction() -> None:
    signature = Signature.parse("q -> a: int", "Count.").prepend_output(Field("why"))
    assert signature.output_names == ("why", "a")
    assert signature.instruction == "Count."


def test_signatures_are_frozen_values() -> None:
    signature = Signature.parse("q -> a")
    assert signature == Signature.parse("q -> a")
    assert hash(signature) == hash(Signature.parse("q -> a"))
    with pytest.raises(AttributeError):
        signature.instruction = "x"  # type: ignore[misc]


def test_the_field_views_are_kept_per_signature_and_are_not_part_of_its_value() -> None:
    signature = Signature.parse("question, context -> answer: int", "Count.")
    assert signature.input_names == ("question", "context")
    assert signature.output_names == ("answer",)
    assert [f.name for f in signature.fields] == ["question", "context", "answer"]
    # A derived signature has views of its own fields, never the original's.
    wider = attrs.evolve(signature, outputs=(*signature.outputs, Field("note", str, "", "Note")))
    assert wider.output_names == ("answer", "note")
    assert signature.output_names == ("answer",)
    # What identifies a signature (equality, hash, its fields as a dict, pickling) is unchanged.
    assert attrs.asdict(signature, recurse=False).keys() == {"inputs", "outputs", "instruction"}
    assert signature == Signature.parse("question, context -> answer: int", "Count.")
    assert hash(signature) == hash(Signature.parse("question, context -> answer: int", "Count."))
    restored = pickle.loads(pickle.dumps(signature))
    assert restored == signature and restored.output_names == ("answer",)


def test_a_signature_class_keeps_the_fields_of_the_class_it_extends() -> None:
    class Question(Signature):
        """Answer the question."""

        question: str = InputField()
        answer: str = OutputField()

    class WithConfidence(Question):
        """Answer the question and say how sure you are."""

        confidence: float = OutputField()

    class Counted(Question):
        answer: int = OutputField(desc="a count")  # redeclared: replaced in place

    assert str(Signature.from_class(WithConfidence)) == "question -> answer, confidence: float"
    assert Signature.from_class(WithConfidence).instruction == "Answer the question and say how sure you are."
    assert str(Signature.from_class(Counted)) == "question -> answer: int"


def test_a_field_without_a_type_annotation_is_refused_naming_it() -> None:
    with pytest.raises(
        ConfigError, match=r"Summary\.document has no type annotation.*document: str = InputField"
    ):

        class Summary(Signature):
            document = InputField(desc="the text to summarize")
            summary: str = OutputField()


def test_a_field_named_as_another_fields_label_is_refused() -> None:
    """Replies mark a field by its label or its name: ``Answer: 42`` would be read as both fields."""
    with pytest.raises(ConfigError, match=r"fields 'result' and 'answer' would both be read from 'answer'"):
        Signature([Field("result", str, "", "Answer")], [Field("answer", str, "", "Reply")])
