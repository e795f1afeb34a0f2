"""The reply format of a predictor: ``Label: value`` lines, or for one output field the bare value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aprompt._errors import ConfigError, StateError
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.program import ChainOfThought, Demo, Predict, Signature, format_messages, parse_reply
from aprompt.program.adapter import correction_message
from aprompt.program.overrides import PromptOverride, override_prompts
from aprompt.program.reply_reading import answered_before_cut, read_reply
from aprompt.program.state import load_state, load_state_file, program_state, save_state
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer

COUNT = Signature.parse("question -> answer: int", "Count the objects in the question.")
TWO_OUTPUTS = Signature.parse("question -> answer: int, unit")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Program:
    def __init__(self, lm: OpenAICompatibleLM | None = None) -> None:
        self.count = Predict(COUNT, lm=lm, temperature=0.0)
        self.solve = ChainOfThought("question -> answer: int", lm=lm)


# -- rendering -------------------------------------------------------------------------------------
def test_a_bare_prompt_asks_for_the_value_alone_and_shows_demos_bare() -> None:
    demos = [Demo({"question": "two cats?", "answer": 2}), Demo({"question": "a dog?", "answer": 1})]
    messages = format_messages(COUNT, {"question": "three owls?"}, demos=demos, reply_format="bare")
    assert messages == [
        {
            "role": "system",
            "content": (
                "Count the objects in the question.\n"
                "\n"
                "Input fields:\n"
                "- Question\n"
                "\n"
                "Output fields:\n"
                "- Answer: an integer\n"
                "\n"
                "Reply with the Answer (an integer) only: no label, no other text."
            ),
        },
        {"role": "user", "content": "Question: two cats?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "Question: a dog?"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "Question: three owls?"},
    ]


def test_a_bare_prompt_of_a_text_field_names_no_type() -> None:
    messages = format_messages(Signature.parse("text -> summary"), {"text": "t"}, reply_format="bare")
    assert messages[0]["content"].endswith("\n\nReply with the Summary only: no label, no other text.")


def test_the_fields_format_is_the_default_and_unchanged() -> None:
    demos = [Demo({"question": "two cats?", "answer": 2})]
    default = format_messages(COUNT, {"question": "q"}, demos=demos)
    assert default == format_messages(COUNT, {"question": "q"}, demos=demos, reply_format="fields")
    assert default[0]["content"].endswith("in this order:\nAnswer: <an integer>")
    assert default[2] == {"role": "assistant", "content": "Answer: 2"}


def test_a_bare_correction_asks_again_for_the_value_alone() -> None:
    message = correction_message(COUNT, {"answer": "missing"}, "bare")
    assert message == (
        "Your reply could not be read:\n- Answer: missing\n"
        "Reply again with the Answer (an integer) only: no label, no other text."
    )


# -- parsing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply", ["7", "  7\n", "7.", "**7**"])
def test_a_bare_reply_is_read_whole(reply: str) -> None:
    assert parse_reply(COUNT, reply, "bare") == {"answer": 7}


@pytest.mark.parametrize("reply", ["Answer: 7", "answer:7\n", "**Answer:** 7"])
def test_a_bare_reply_that_labels_its_value_anyway_reads(reply: str) -> None:
    assert parse_reply(COUNT, reply, "bare") == {"answer": 7}


def test_a_bare_text_value_ends_where_an_echoed_input_label_begins() -> None:
    signature = Signature.parse("question -> answer")
    text = "Paris\nQuestion: and of Spain?"
    assert read_reply(signature, text, "bare").values == {"answer": "Paris"}
    # The fields format keeps its old reading: with no output label, the whole reply is the value.
    assert read_reply(signature, text, "fields").values == {"answer": text}


@pytest.mark.parametrize(
    ("text", "answered"),
    [
        ("91", False),
        ("919\nBecause", True),
        ("Paris\nQuestion: next", True),
        ("Answer: 91", False),
        ("Question: 3 dogs?\n1", False),  # the value after the echo, cut
        ("Question: 3 dogs?\n12\nBecause", True),
    ],
)
def test_a_cut_bare_reply_counts_as_answered_only_when_its_value_visibly_ended(
    text: str, answered: bool
) -> None:
    numeric = text[0].isdigit() or text.startswith(("Answer", "Question"))
    signature = COUNT if numeric else Signature.parse("question -> a")
    assert answered_before_cut(signature, text, "bare") is answered


# -- where bare applies ----------------------------------------------------------------------------
def test_a_predictor_with_several_outputs_refuses_a_bare_reply() -> None:
    with pytest.raises(
        ConfigError, match=r"reply_format 'bare' needs exactly one output field.*answer, unit"
    ):
        Predict(TWO_OUTPUTS, reply_format="bare")


def test_chain_of_thought_refuses_a_bare_reply_because_of_its_reasoning_field() -> None:
    solve = ChainOfThought("question -> answer: int")
    with pytest.raises(ConfigError, match="reasoning, answer"):
        solve.reply_format = "bare"
    assert solve.reply_format == "fields"


def test_an_unknown_reply_format_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="'json'"):
        Predict(COUNT, reply_format="json")  # type: ignore[arg-type]


def test_a_bare_override_of_a_multi_output_predictor_is_a_config_error() -> None:
    with (
        pytest.raises(ConfigError, match="predictor 'solve'"),
        override_prompts(Program(), {"solve": PromptOverride("Solve.", (), "bare")}),
    ):
        pass


# -- calling ---------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_bare_predictor_sends_a_bare_prompt_and_reads_a_bare_reply(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = lambda request: "12"
    count = Predict(COUNT, lm=lm, reply_format="bare", demos=[{"question": "two cats?", "answer": 2}])
    prediction = await count(question="twelve eggs?")
    assert prediction.answer == 12
    messages = (fake_server.chat_requests[-1].body or {})["messages"]
    assert messages[0]["content"].endswith(
        "Reply with the Answer (an integer) only: no label, no other text."
    )
    assert messages[2] == {"role": "assistant", "content": "2"}


@pytest.mark.anyio
async def test_an_override_sets_the_reply_format_for_the_block_only(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    def reply(request: ChatRequest) -> str:
        bare = request.messages[0]["content"].endswith("no other text.")
        return "5" if bare else "Answer: 6"

    fake_server.responder = reply
    program = Program(lm)
    with override_prompts(program, {"count": PromptOverride(program.count.instruction, (), "bare")}):
        inside = await program.count(question="q")
    outside = await program.count(question="q")
    assert (inside.answer, outside.answer) == (5, 6)
    assert program.count.reply_format == "fields"


# -- state -----------------------------------------------------------------------------------------
def test_a_bare_reply_format_survives_a_save_and_load(tmp_path: Path) -> None:
    program = Program()
    program.count.reply_format = "bare"
    save_state(program, tmp_path / "state.json")
    assert json.loads((tmp_path / "state.json").read_text())["predictors"]["count"]["reply_format"] == "bare"
    fresh = Program()
    load_state_file(fresh, tmp_path / "state.json")
    assert (fresh.count.reply_format, fresh.solve.reply_format) == ("bare", "fields")


def test_a_state_saved_before_reply_formats_loads_as_fields() -> None:
    program = Program()
    old = program_state(Program())
    assert all("reply_format" not in p for p in old["predictors"].values())
    program.count.reply_format = "bare"
    load_state(program, old)
    assert program.count.reply_format == "fields"


def test_a_saved_bare_format_for_a_multi_output_predictor_is_a_state_error() -> None:
    state = program_state(Program())
    state["predictors"]["solve"]["reply_format"] = "bare"
    with pytest.raises(StateError, match=r"predictor 'solve'.*needs exactly one output field"):
        load_state(Program(), state)


def test_a_bare_text_reply_that_says_its_field_is_something_is_read_whole() -> None:
    """Told to write the summary alone, "This summary is short: ..." is the summary, not a prose
    marker ("<label> is ...") that cuts it; with labeled fields a prose answer is still read."""
    summary = Signature.parse("text -> summary")
    reply = "This summary is short: the cat sat on the mat."
    assert read_reply(summary, reply, "bare").values == {"summary": reply}
    assert read_reply(COUNT, "The answer is 4.", "fields").values == {"answer": 4}
