"""Reading a model's reply: markers, markdown, extra text, multi-line values, typed coercion."""

from __future__ import annotations

from typing import Any

import pytest

from aprompt._errors import ParseError
from aprompt.program import Signature, parse_reply
from aprompt.program._coerce import format_output
from aprompt.program.adapter import ReplyFormat

QA = Signature.parse("question -> answer")
COT = Signature.parse("question -> reasoning, answer: int")


def test_markers_are_found_at_line_starts_in_any_case() -> None:
    assert parse_reply(COT, "reasoning: two and two\nANSWER: 4") == {
        "reasoning": "two and two",
        "answer": 4,
    }


@pytest.mark.parametrize(
    "reply",
    [
        "**Answer:** Paris",
        "**Answer**: Paris",
        "## Answer\nParis",
        "### Answer:\n\nParis",
        "- Answer: Paris",
        "   Answer:   Paris   ",
        "**Answer: Paris**",
        "> answer: Paris",
    ],
)
def test_markdown_around_a_marker_is_tolerated(reply: str) -> None:
    assert parse_reply(QA, reply) == {"answer": "Paris"}


def test_text_before_the_first_marker_and_blank_lines_are_ignored() -> None:
    reply = "Sure! Here is my reply.\n\nReasoning: 2+2 is 4.\n\nAnswer: 4\n"
    assert parse_reply(COT, reply) == {"reasoning": "2+2 is 4.", "answer": 4}


def test_a_value_runs_over_several_lines_until_the_next_marker() -> None:
    reply = "Reasoning: first I count the cats.\nThen the dogs.\n\n* one more step\nAnswer: 3"
    assert parse_reply(COT, reply)["reasoning"] == (
        "first I count the cats.\nThen the dogs.\n\n* one more step"
    )


def test_an_echoed_input_label_ends_the_value() -> None:
    reply = "Answer: Paris\nQuestion: what is the capital of Spain?\nAnswer: Madrid"
    assert parse_reply(QA, reply) == {"answer": "Paris"}


def test_fields_may_come_in_another_order() -> None:
    assert parse_reply(COT, "Answer: 5\nReasoning: counted") == {
        "reasoning": "counted",
        "answer": 5,
    }


def test_a_marker_mid_line_is_used_when_none_starts_a_line() -> None:
    assert parse_reply(COT, "Reasoning: one plus one, so the answer: 2") == {
        "reasoning": "one plus one, so the",
        "answer": 2,
    }


def test_a_prose_answer_is_read_when_no_marker_has_a_colon() -> None:
    assert parse_reply(COT, "Reasoning: a cat and a dog, so the answer is 2.") == {
        "reasoning": "a cat and a dog, so the",
        "answer": 2,
    }


def test_unlabeled_text_before_the_first_marker_is_the_first_text_field() -> None:
    reply = "I count a cat and two dogs.\nAnswer: 3"
    assert parse_reply(COT, reply) == {"reasoning": "I count a cat and two dogs.", "answer": 3}


def test_leading_text_is_not_taken_for_a_typed_first_field() -> None:
    signature = Signature.parse("question -> count: int, note")
    with pytest.raises(ParseError) as caught:
        parse_reply(signature, "There are 3.\nNote: easy")
    assert caught.value.missing == ("count",)


def test_a_repeated_field_takes_its_first_readable_value() -> None:
    assert parse_reply(COT, "Reasoning: r\nAnswer: <an integer>\nAnswer: 7")["answer"] == 7


@pytest.mark.parametrize(
    ("type_", "reply"),
    [
        ("int", "Answer: 3\nAnswer: 4"),
        ("bool", "**Answer:** yes\n\nOn second thought:\nAnswer: no"),
        ("Literal['positive', 'negative']", "Answer: positive\nAnswer: negative"),
        ("list[int]", "Answer: [1, 2]\nAnswer: [1, 2, 3]"),
    ],
)
def test_a_field_given_two_different_values_is_a_problem_not_its_first(type_: str, reply: str) -> None:
    # The model changed its mind: which value it meant the reply does not say, and its first was taken.
    with pytest.raises(ParseError, match="two different values") as caught:
        parse_reply(Signature.parse(f"question -> answer: {type_}"), reply)
    assert caught.value.missing == ("answer",)


def test_a_field_repeated_with_its_value_or_after_the_reply_turns_to_another_question_reads() -> None:
    signature = Signature.parse("question -> answer: int")
    assert parse_reply(signature, "Answer: 3\n**Answer:** 3.") == {"answer": 3}
    assert parse_reply(signature, "Answer: 4\nQuestion: and 3+3?\nAnswer: 6") == {"answer": 4}
    assert parse_reply(QA, "Answer: Paris\nAnswer: Paris, France") == {"answer": "Paris"}


def test_a_single_output_field_without_marker_takes_the_whole_reply() -> None:
    assert parse_reply(QA, "  Paris is the capital.\n") == {"answer": "Paris is the capital."}


@pytest.mark.parametrize("reply_format", ["fields", "bare"])
def test_a_reply_that_opens_by_echoing_an_input_is_read_after_the_echo(reply_format: ReplyFormat) -> None:
    number = Signature.parse("question -> answer: int")
    reply = "Question: How many legs do 3 dogs have?\n12"
    assert parse_reply(number, reply, reply_format) == {"answer": 12}  # not the question's 3
    with pytest.raises(ParseError, match="missing"):
        parse_reply(number, "Question: How many legs do 3 dogs have?", reply_format)
    assert parse_reply(QA, "Question: What is the capital of France?\nParis", reply_format) == {
        "answer": "Paris"
    }
    two_inputs = Signature.parse("question, context -> answer: int")
    reply = "Question: How many legs?\nContext: 3 dogs.\n12"
    assert parse_reply(two_inputs, reply, reply_format) == {"answer": 12}


@pytest.mark.parametrize("reply_format", ["fields", "bare"])
def test_a_text_reply_that_is_an_echoed_line_alone_is_read_whole(reply_format: ReplyFormat) -> None:
    """A text field's answer may share the echo's line (a proposer writes ``Current instruction: ...
    New instruction: ...``, which its reply cleaning reads): with nothing after the echo, the whole reply
    is the value, as for any unlabeled reply. A typed field's echo alone stays missing (above)."""
    rewrite = Signature.parse("current_instruction -> proposed_instruction")
    reply = "Current instruction: Answer the question. New instruction: Reply with the code word only."
    assert parse_reply(rewrite, reply, reply_format) == {"proposed_instruction": reply}
    assert parse_reply(QA, "Question: What is the capital of France?", reply_format) == {
        "answer": "Question: What is the capital of France?"
    }


def test_the_field_name_works_as_a_marker_as_well_as_the_label() -> None:
    signature = Signature.parse("question -> short_answer")
    assert parse_reply(signature, "short_answer: yes") == {"short_answer": "yes"}
    assert parse_reply(signature, "Short Answer: yes") == {"short_answer": "yes"}


def test_a_missing_field_raises_parse_error_with_the_raw_text() -> None:
    with pytest.raises(ParseError) as caught:
        parse_reply(COT, "Reasoning: I am not sure.")
    assert caught.value.raw_text == "Reasoning: I am not sure."
    assert caught.value.missing == ("answer",)


def test_an_empty_value_is_a_problem() -> None:
    with pytest.raises(ParseError, match="empty"):
        parse_reply(QA, "Answer:   \n")


@pytest.mark.parametrize(
    ("type_", "text", "expected"),
    [
        ("int", "42", 42),
        ("int", "42.", 42),
        ("int", "about 7 apples", 7),
        ("int", "3,000", 3000),
        ("int", "-12", -12),
        ("int", "7.0", 7),
        ("int", "There are seven.", 7),
        ("int", "123456789012345678901234567890", 123456789012345678901234567890),
        ("float", "3.25", 3.25),
        ("float", "roughly .5 of it", 0.5),
        ("float", "1e-3", 0.001),
        ("float", "$1,234.50", 1234.5),
        ("bool", "Yes", True),
        ("bool", "no, it is not", False),
        ("bool", "TRUE.", True),
        ("bool", "0", False),
        ("bool", "not true", False),  # not its first yes/no word's True
        ("bool", "It isn't true; no.", False),
        ("Literal['positive', 'negative']", "Positive", "positive"),
        ("Literal['positive', 'negative']", "  NEGATIVE!! ", "negative"),
        ("Literal['positive', 'negative']", "It is clearly positive.", "positive"),
        ("Literal['good', 'very good']", "very good", "very good"),
        ("Literal['good', 'very good']", "I'd say very good overall", "very good"),
        ("Literal[1, 2, 3]", "2", 2),
        ("list[str]", '["a", "b c"]', ["a", "b c"]),
        ("list[str]", "['a', 'b']", ["a", "b"]),
        ("list[str]", "- a\n- b c\n* d", ["a", "b c", "d"]),
        ("list[str]", "1. a\n2) b", ["a", "b"]),
        ("list[str]", "a, b ,c", ["a", "b", "c"]),
        ("list[str]", "[]", []),
        ("list[int]", "[1, 2]", [1, 2]),
        ("list[int]", "1, two, 3", [1, 2, 3]),
        ("int", "\u22125", -5),  # the mathematical minus sign
        ("float", "\u22122.5", -2.5),
        ("int", "seven-day week", 7),
        ("list[str]", '```json\n["Paris", "London"]\n```', ["Paris", "London"]),
        ("list[str]", '`["Paris", "London"]`', ["Paris", "London"]),
        ("list[str]", '["Paris", "London"].', ["Paris", "London"]),
        ("list[int]", "1 2 3", [1, 2, 3]),
        ("list[float]", "0 0.5 -0.25", [0.0, 0.5, -0.25]),
        ("Literal[True, False]", "False", False),
        ("int", "1 000", 1000),  # not 1
        ("int", "about 1\u202f000 000 people", 1000000),
        ("float", "12 345.5", 12345.5),
        ("int", "1 000-meter race", 1000),
        ("int", "50%", 50),  # a whole number: 0.5 is no reading of it
        ("float", "50 percentile", 50.0),
        ("int", "3 or more", 3),
        ("int", "4\n- 2 cats\n- 2 dogs", 4),  # a bullet line after the value is no range
        ("int", "about 3 apples and 5 pears", 3),
        ("int", "4 (2 + 2)", 4),
        ("int", "5+ apples", 5),
        ("Literal['spam', 'not spam']", "It is not spam.", "not spam"),  # the choice, not a negated "spam"
        ("list[str]", "[Paris, New York]", ["Paris", "New York"]),  # not "[Paris" and "New York]"
        ("list[str]", "['Paris', New York]", ["Paris", "New York"]),
        ("list[str]", "[Paris]", ["Paris"]),
        ("list[int]", "[1 2 3]", [1, 2, 3]),
        ("list[int]", "1, 2 and 3", [1, 2, 3]),  # not [1, 2]
        ("list[int]", "1 and 2", [1, 2]),  # not [1]
        ("list[float]", "0.5, 1.5, and 2", [0.5, 1.5, 2.0]),
        ("list[int]", "1,0", [1, 0]),
    ],
)
def test_typed_fields_are_coerced(type_: str, text: str, expected: Any) -> None:
    signature = Signature.parse(f"question -> answer: {type_}")
    assert parse_reply(signature, f"Answer: {text}") == {"answer": expected}


def test_choices_equal_in_python_but_written_differently_each_read_as_their_own() -> None:
    # 1 == True and hash(1) == hash(True): reading one signature's choices must not answer for another's.
    numbers = Signature.parse("question -> answer: Literal[1, 'x']")
    flags = Signature.parse("question -> answer: Literal[True, 'x']")
    assert parse_reply(numbers, "Answer: 1") == {"answer": 1}
    reading = parse_reply(flags, "Answer: True")
    assert reading == {"answer": True} and reading["answer"] is True
    assert parse_reply(numbers, "Answer: 1")["answer"] is not True


@pytest.mark.parametrize(
    ("type_", "text", "message"),
    [
        ("int", "no idea", "expected an integer"),
        ("int", "4.5", "whole number"),
        ("float", "a lot", "expected a number"),
        ("bool", "maybe", "expected yes or no"),
        ("bool", "No, that is not correct... yes", "says both yes and no"),  # not False
        ("bool", "false — it is true that", "says both yes and no"),
        ("Literal['positive', 'negative']", "neutral", "is not one of"),
        ("Literal['positive', 'negative']", "positive or negative", "names several of"),
        ("Literal['positive', 'negative']", "not positive", "denies a choice"),  # not "positive"
        ("Literal['positive', 'negative', 'neutral']", "It isn't negative.", "denies a choice"),
        ("Literal[True, False]", "It is not True", "denies a choice"),  # not True
        ("Literal['positive', 'negative']", "I would not say it is positive", "denies a choice"),
        ("Literal['positive', 'negative', 'neutral']", "It's not really negative.", "denies a choice"),
        ("Literal['positive', 'negative']", "positive? No.", "denies a choice"),  # asked back, denied
        ("Literal['positive', 'negative']", "There is no positive", "denies a choice"),
        ("Literal['positive', 'negative', 'neutral']", "non-negative", "denies a choice"),  # not "negative"
        ("Literal['spam', 'ham']", "Non spam", "denies a choice"),
        ("bool", "I would not say it is true", "plain yes or no"),  # not True
        ("list[int]", "[1, [2]]", "single values"),
        ("list[int]", "[1+2j]", "single values"),  # not a TypeError out of the parser
        ("list[str]", "[b'x', {1}]", "single values"),
        ("list[int]", "[{(1, 2): 3}]", "single values"),
        ("int", "twenty-one", "in digits"),  # not 20
        ("int", "twenty one", "in digits"),
        ("int", "one hundred", "in digits"),  # not 1
        ("float", "three thousand", "in digits"),
        ("int", "1e5000", "too large"),  # not an int of 5001 digits; 1e999999999 would take minutes
        ("float", "1e400", "too large"),  # not inf
        ("float", "3/4", "decimal point"),  # not 3.0
        ("int", "3 / 4", "decimal point"),  # not 3
        ("float", "12,34", "decimal point"),  # not 12.0
        ("int", "about 1/2 of them", "decimal point"),  # not 1
        ("int", "10-20", "not a range"),  # not 10
        ("int", "10\u201320 apples", "not a range"),
        ("int", "3 to 5", "not a range"),
        ("int", "between 3 and 5", "not a range"),
        ("int", "3 or 4", "not a range"),
        ("int", "3, 4", "not a range"),  # not 3
        ("int", "3; 4", "not a range"),  # not 3
        ("float", "2.5, 3 apples", "not a range"),
        ("float", "-.5 to .5", "not a range"),
        ("int", "three to five", "not a range"),  # not 3
        ("int", "between 1 000 and 2 000", "not a range"),
        ("int", "1 000 2", "without spaces"),  # one number or two
        ("float", "1 000,5", "decimal point"),  # not 1000.0
        ("list[int]", "1 000", "JSON list"),  # not [1, 0]
        ("list[int]", "1 000 2000", "JSON list"),  # not [1, 0, 2000]
        ("list[int]", "1, between 3 and 5", "not a range"),  # not [1, 3, 5]
        ("list[int]", "1,000", "JSON list"),  # not [1, 0]
        ("list[float]", "1,000, 2,500", "JSON list"),  # not [1.0, 0.0, 2.0, 500.0]
        ("float", "50%", "percent sign"),  # 50.0 where the field means 0.5, or the other way round
        ("float", "about 12.5 % of them", "percent sign"),
        ("float", "50 percent", "percent sign"),
        ("int", "2 + 2 = 4", "not a calculation"),  # not 2
        ("float", "2.5 * 2 = 5", "not a calculation"),
        ("int", "10+5", "not a calculation"),  # not 10
        ("int", "6 \u00d7 7", "not a calculation"),
    ],
)
def test_unreadable_typed_values_are_parse_errors_with_a_reason(type_: str, text: str, message: str) -> None:
    signature = Signature.parse(f"question -> answer: {type_}")
    with pytest.raises(ParseError, match=message) as caught:
        parse_reply(signature, f"Answer: {text}")
    assert caught.value.missing == ("answer",)


def test_long_runs_of_blanks_parse_quickly() -> None:
    reply = " " * 20_000 + "\n" + "\t " * 10_000 + "x"
    with pytest.raises(ParseError):
        parse_reply(COT, reply)


def test_a_choice_demo_is_written_as_the_prompt_lists_the_choices_and_reads_back() -> None:
    signature = Signature.parse("claim -> verdict: Literal[True, False]")
    written = format_output(False, signature.outputs[0].annotation)
    assert written == "False"  # the prompt says "one of: True, False"; "no" would not read
    assert parse_reply(signature, f"Verdict: {written}") == {"verdict": False}


def test_a_punctuation_choice_reads_only_as_written() -> None:
    """ "+" and "-" both normalize to nothing: compared as written, a "-" is not the choice "+"."""
    signature = Signature.parse("review -> sentiment: Literal['+', 'neutral']")
    assert parse_reply(signature, "Sentiment: +") == {"sentiment": "+"}
    with pytest.raises(ParseError, match="is not one of"):
        parse_reply(signature, "Sentiment: -")
