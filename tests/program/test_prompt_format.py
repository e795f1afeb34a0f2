"""The messages a predictor renders: stable system part first, demos as prior turns, inputs last."""

from __future__ import annotations

import numpy as np

from aprompt.program import ChainOfThought, Demo, Signature, format_messages
from aprompt.program._coerce import format_input, format_output

SIGNATURE = Signature.parse(
    "question, context: list[str] -> answer: int", "Count the objects in the question."
)


def test_the_system_message_holds_instruction_fields_and_reply_format() -> None:
    messages = format_messages(SIGNATURE, {"question": "q", "context": ["a"]})
    assert messages[0] == {
        "role": "system",
        "content": (
            "Count the objects in the question.\n"
            "\n"
            "Input fields:\n"
            "- Question\n"
            "- Context\n"
            "\n"
            "Output fields:\n"
            "- Answer: an integer\n"
            "\n"
            "Reply in exactly this format, each field on its own line, in this order:\n"
            "Answer: <an integer>"
        ),
    }


def test_the_final_user_turn_holds_the_inputs_as_label_lines() -> None:
    messages = format_messages(SIGNATURE, {"question": "How many?", "context": ["a cat", "a dog"]})
    assert messages[-1] == {
        "role": "user",
        "content": "Question: How many?\nContext:\n[1] a cat\n[2] a dog",
    }


def test_demos_become_user_and_assistant_turns_in_order() -> None:
    demos = [
        Demo({"question": "q1", "context": ["c1"], "answer": 1}),
        {"question": "q2", "context": ["c2"], "answer": 2},
    ]
    messages = format_messages(SIGNATURE, {"question": "q3", "context": []}, demos=demos)
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert messages[1]["content"] == "Question: q1\nContext:\n[1] c1"
    assert messages[2]["content"] == "Answer: 1"
    assert messages[4]["content"] == "Answer: 2"


def test_a_demo_without_some_fields_shows_only_those_it_has() -> None:
    signature = ChainOfThought("question -> answer: int").signature
    labeled = {"question": "2+2?", "answer": 4}
    messages = format_messages(signature, {"question": "3+3?"}, demos=[labeled])
    assert messages[1]["content"] == "Question: 2+2?"
    assert messages[2]["content"] == "Answer: 4"


def test_a_demo_without_any_output_value_is_left_out() -> None:
    messages = format_messages(SIGNATURE, {"question": "q", "context": []}, demos=[{"question": "x"}])
    assert len(messages) == 2


def test_typed_outputs_are_described_with_their_type() -> None:
    signature = Signature.parse("q -> ok: bool, label: Literal['spam', 'ham'], tags: list[str], score: float")
    system = format_messages(signature, {"q": "x"})[0]["content"]
    assert system.endswith(
        "Ok: <yes or no>\n"
        "Label: <one of: spam, ham>\n"
        'Tags: <a JSON list, like ["first", "second"]>\n'
        "Score: <a number>"
    )


def test_field_descriptions_are_shown_with_their_labels() -> None:
    signature = Signature.parse("question -> answer: int").prepend_output(
        ChainOfThought("q -> a").signature.field("reasoning")
    )
    system = format_messages(signature, {"question": "q"})[0]["content"]
    assert "- Reasoning: step-by-step thinking that works out the answer\n" in system
    assert system.endswith("Reasoning: <reasoning>\nAnswer: <an integer>")


def test_an_instruction_override_replaces_only_the_first_paragraph() -> None:
    plain = format_messages(SIGNATURE, {"question": "q", "context": []})
    other = format_messages(SIGNATURE, {"question": "q", "context": []}, instruction="Be exact.")
    assert other[0]["content"].startswith("Be exact.\n\nInput fields:")
    assert other[0]["content"].split("\n\n")[1:] == plain[0]["content"].split("\n\n")[1:]


def test_rendering_is_deterministic() -> None:
    demos = [{"question": "q1", "context": ["c"], "answer": 1}]
    inputs = {"context": ["c2"], "question": "q2"}
    first = format_messages(SIGNATURE, inputs, demos=demos)
    second = format_messages(SIGNATURE, dict(reversed(list(inputs.items()))), demos=demos)
    assert repr(first) == repr(second)


def test_a_signature_without_inputs_still_has_a_user_turn() -> None:
    messages = format_messages(Signature.parse("-> joke"), {})
    assert messages[-1] == {"role": "user", "content": "(no inputs)"}


def test_the_same_prompt_renders_alike_and_an_lm_changing_its_messages_changes_no_later_call() -> None:
    signature = Signature.parse("question -> answer")
    demos = (Demo({"question": "1+1?", "answer": "2"}), Demo({"question": "2+3?", "answer": "5"}))
    first = format_messages(signature, {"question": "q"}, demos=demos, instruction="Add.")
    expected = [dict(message) for message in first]
    for message in first:  # what a client that edits its messages in place would do
        message["content"] = "changed"
    second = format_messages(signature, {"question": "q"}, demos=demos, instruction="Add.")
    assert second == expected
    other = format_messages(signature, {"question": "q"}, demos=demos, instruction="Subtract.")
    assert other[0]["content"].startswith("Subtract.") and other[1:] == expected[1:]
    bare = format_messages(signature, {"question": "q"}, demos=demos, instruction="Add.", reply_format="bare")
    assert [m["content"] for m in bare[1:3]] == ["Question: 1+1?", "2"]


def test_a_demo_whose_value_can_change_is_rendered_as_it_is_at_each_call() -> None:
    signature = Signature.parse("question -> answer: list[str]")
    tags = ["a"]
    demo = Demo({"question": "which?", "answer": tags})
    before = format_messages(signature, {"question": "q"}, demos=[demo])
    tags.append("b")
    after = format_messages(signature, {"question": "q"}, demos=[demo])
    assert before[2]["content"] != after[2]["content"]
    assert "b" in after[2]["content"]


def test_numpy_scalars_in_inputs_show_as_the_values_they_stand_for() -> None:
    """A pandas row's values are numpy scalars: in a list they made the prompt's JSON raise (every run of
    the program failing, scored 0), alone they showed as quoted text."""
    assert format_input(np.int64(7)) == "7"
    assert format_input([np.int64(1), np.int64(2)]) == "[1, 2]"
    assert format_input({"weight": np.float32(0.5)}) == '{"weight": 0.5}'
    assert format_output(np.bool_(True), bool) == "yes"
