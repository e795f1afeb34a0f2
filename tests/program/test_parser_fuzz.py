"""Property tests of the reply parser: it raises only ParseError and reads back what we format."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aprompt._errors import ParseError
from aprompt.program import Signature, format_messages, parse_reply

TYPED = Signature.parse(
    "question -> reasoning, answer: int, score: float, ok: bool, "
    "label: Literal['spam', 'not spam', 'Maybe!'], tags: list[str], counts: list[int]"
)
SINGLE_INT = Signature.parse("question -> answer: int")
SINGLE_LIST = Signature.parse("question -> answer: list[str]")

# Reply-like text: arbitrary characters mixed with fragments that look like markers and markdown.
FRAGMENTS = st.sampled_from(
    ["Answer:", "answer", "**", "##", "\n", "Reasoning:", "Question:", "[", "]", '"', ",", "- ",
     "yes", "3,000", "1e9", "Tags:", "Label: spam", "Counts: [1, 2", ": ", " ", "\t", "__",
     " answer is "]
)  # fmt: skip
REPLIES = st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(reply=st.one_of(st.text(), REPLIES))
def test_any_reply_either_parses_or_raises_parse_error(reply: str) -> None:
    for signature in (TYPED, SINGLE_INT, SINGLE_LIST):
        try:
            values = parse_reply(signature, reply)
        except ParseError as exc:
            assert exc.raw_text == reply
            assert exc.missing
        else:
            assert list(values) == list(signature.output_names)


# Free text without the characters that make markers (':' '#' '*' '_'), stripped and non-empty.
PLAIN_TEXT = (
    st.text(st.characters(codec="utf-8", exclude_characters=":#*_"), min_size=1).map(str.strip).filter(bool)
)
ANY_TEXT = st.text(st.characters(codec="utf-8"))


@settings(max_examples=200, deadline=None)
@given(
    reasoning=PLAIN_TEXT,
    answer=st.integers(),
    score=st.floats(allow_nan=False, allow_infinity=False),
    ok=st.booleans(),
    label=st.sampled_from(["spam", "not spam", "Maybe!"]),
    tags=st.lists(ANY_TEXT, max_size=4),
    counts=st.lists(st.integers(), max_size=4),
)
def test_formatted_outputs_parse_back_to_the_same_values(**outputs: Any) -> None:
    demo = {"question": "q", **outputs}
    messages = format_messages(TYPED, {"question": "q"}, demos=[demo])
    assistant_turn = messages[2]["content"]
    assert parse_reply(TYPED, assistant_turn) == outputs
