"""Saving and loading prompt state: exact JSON round trips and clear errors on mismatches."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt._errors import StateError
from aprompt.program import (
    ChainOfThought,
    Demo,
    Predict,
    load_state,
    load_state_file,
    program_state,
    save_state,
)
from aprompt.program.adapter import format_messages


class Program:
    def __init__(self) -> None:
        self.classify = Predict("text -> label: Literal['spam', 'ham']")
        self.steps = [ChainOfThought("question, context: list[str] -> answer: int")]


def tuned() -> Program:
    program = Program()
    program.classify.instruction = "Flag unsolicited offers as spam."
    program.classify.demos = [{"text": "WIN a prize ünïcode", "label": "spam"}]
    program.steps[0].demos = [
        Demo({"question": "how many?", "context": ["a", "b"], "reasoning": "two", "answer": 2}),
        Demo({"question": "labeled only", "context": [], "answer": 0}),
    ]
    return program


def test_the_state_has_the_documented_shape() -> None:
    state = program_state(tuned())
    assert state["aprompt_state_version"] == 1
    assert list(state["predictors"]) == ["classify", "steps.0"]
    assert state["predictors"]["steps.0"] == {
        "signature": "question, context: list[str] -> reasoning, answer: int",
        "instruction": Program().steps[0].instruction,
        "demos": [
            {"question": "how many?", "context": ["a", "b"], "reasoning": "two", "answer": 2},
            {"question": "labeled only", "context": [], "answer": 0},
        ],
    }


def test_state_survives_a_json_round_trip_exactly() -> None:
    original = program_state(tuned())
    fresh = Program()
    load_state(fresh, json.loads(json.dumps(original)))
    assert program_state(fresh) == original
    assert fresh.classify.demos == tuned().classify.demos


def test_a_file_round_trip_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    save_state(tuned(), path)
    fresh = Program()
    load_state_file(fresh, path)
    assert program_state(fresh) == program_state(tuned())
    assert json.loads(path.read_text(encoding="utf-8")) == program_state(tuned())


def test_text_holding_a_lone_surrogate_round_trips(tmp_path: Path) -> None:
    """Text a program decoded with ``surrogateescape`` has characters UTF-8 cannot hold: saving them
    raised UnicodeEncodeError, and a finished optimization could not be saved."""
    program = tuned()
    program.classify.instruction = "Flag caf\udce9 offers."
    program.classify.demos = [{"text": "b\udcffd \u00fc", "label": "ham"}]
    save_state(program, tmp_path / "prompts.json")
    fresh = Program()
    load_state_file(fresh, tmp_path / "prompts.json")
    assert program_state(fresh) == program_state(program)


def test_saving_into_a_folder_that_does_not_exist_yet_creates_it(tmp_path: Path) -> None:
    """As ``OptimizeResult.save`` does: the tuned prompts are written, not lost to a FileNotFoundError
    naming a temporary file the caller never asked for."""
    path = tmp_path / "deploy" / "v2" / "prompts.json"
    save_state(tuned(), path)
    fresh = Program()
    load_state_file(fresh, path)
    assert program_state(fresh) == program_state(tuned())
    assert [p.name for p in path.parent.iterdir()] == ["prompts.json"]


def test_a_saved_file_gets_the_permissions_of_any_file_the_process_creates(tmp_path: Path) -> None:
    reference = tmp_path / "reference.txt"
    reference.write_text("", encoding="utf-8")
    path = tmp_path / "prompts.json"
    save_state(tuned(), path)
    assert path.stat().st_mode == reference.stat().st_mode  # readable by whoever deploys it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.json", "reference.txt"]


def test_tuple_values_are_saved_as_lists() -> None:
    program = Program()
    program.steps[0].demos = [{"question": "q", "context": ("a",), "answer": 1}]
    assert program_state(program)["predictors"]["steps.0"]["demos"][0]["context"] == ["a"]


def test_set_values_are_saved_as_the_lists_the_prompt_shows() -> None:
    """A set input (tags, allowed answers) is shown as a list in an order the same in every process:
    saved as that list, the loaded program sends the same prompts."""
    program = Program()
    program.steps[0].demos = [{"question": {"b", "a", "c"}, "context": frozenset({"y", "x"}), "answer": 1}]
    state = program_state(program)
    fresh = Program()
    load_state(fresh, json.loads(json.dumps(state)))
    inputs = {"question": "q", "context": ["c"]}
    assert format_messages(fresh.steps[0].signature, inputs, demos=fresh.steps[0].demos) == format_messages(
        program.steps[0].signature, inputs, demos=program.steps[0].demos
    )
    assert state["predictors"]["steps.0"]["demos"][0]["context"] == ["x", "y"]


def test_a_value_json_cannot_hold_is_a_state_error() -> None:
    program = Program()
    program.classify.demos = [{"text": object(), "label": "ham"}]
    with pytest.raises(StateError, match=r"classify\.demos\[0\]\.text"):
        program_state(program)


class Tone(str, enum.Enum):  # noqa: UP042 (the mixin is shown by its name, as StrEnum is not)
    FORMAL = "formal"


class Level(enum.IntEnum):
    HIGH = 3


class Mood(enum.StrEnum):
    CALM = "calm"


@pytest.mark.parametrize("value", [Tone.FORMAL, Level.HIGH, ["a", Tone.FORMAL]])
def test_a_demo_value_the_prompt_shows_otherwise_once_loaded_is_refused_when_saving(
    value: object, tmp_path: Path
) -> None:
    """An enum member is shown by its name (``Tone.FORMAL``, ``<Level.HIGH: 3>``) but JSON keeps only its
    value: the loaded program would send other prompts than the one saved."""
    program = Program()
    program.classify.demos = [{"text": value, "label": "ham"}]
    with pytest.raises(StateError, match=r"classify\.demos\[0\]\.text: the prompt shows"):
        save_state(program, tmp_path / "prompts.json")
    assert not (tmp_path / "prompts.json").exists()


def test_a_demo_value_the_prompt_shows_as_its_plain_value_saves_as_that_value() -> None:
    program = Program()
    program.classify.demos = [{"text": Mood.CALM, "label": "ham"}]
    # Inside a JSON-shown object an enum member is shown by its value, as it loads.
    program.steps[0].demos = [{"question": {"tone": Tone.FORMAL}, "context": [Mood.CALM], "answer": 3}]
    state = program_state(program)
    fresh = Program()
    load_state(fresh, json.loads(json.dumps(state)))
    for predictor, loaded in ((program.classify, fresh.classify), (program.steps[0], fresh.steps[0])):
        inputs = {name: "x" for name in predictor.signature.input_names}
        assert format_messages(loaded.signature, inputs, demos=loaded.demos) == format_messages(
            predictor.signature, inputs, demos=predictor.demos
        )
    assert type(state["predictors"]["classify"]["demos"][0]["text"]) is str


def test_numpy_scalars_are_saved_as_the_values_they_stand_for(tmp_path: Path) -> None:
    """Examples made from a pandas row hold numpy scalars, and demos keep them: the optimized program
    must save (as the JSON numbers and booleans they are) and load back into the same prompts."""
    numpy = pytest.importorskip("numpy")
    program = Program()
    program.steps[0].demos = [
        {"question": numpy.str_("q"), "context": ["a"], "answer": numpy.int64(7)},
        {"question": numpy.float32(0.5), "context": [], "answer": numpy.uint8(3)},
        {"question": numpy.bool_(True), "context": [], "answer": 0},
    ]
    path = tmp_path / "prompts.json"
    save_state(program, path)
    assert json.loads(path.read_text(encoding="utf-8"))["predictors"]["steps.0"]["demos"] == [
        {"question": "q", "context": ["a"], "answer": 7},
        {"question": 0.5, "context": [], "answer": 3},
        {"question": True, "context": [], "answer": 0},
    ]
    fresh = Program()
    load_state_file(fresh, path)

    def messages(predictor: Predict) -> list[Any]:  # the prompt its demos make
        demos = [d.to_dict() for d in predictor.demos]
        return format_messages(predictor.signature, {"question": "x", "context": []}, demos=demos)

    assert messages(fresh.steps[0]) == messages(program.steps[0])


def _mutated(change: Any) -> dict[str, Any]:
    state = program_state(tuned())
    change(state)
    return state


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(aprompt_state_version=2), "written by a newer aprompt.*upgrade aprompt"),
        (lambda s: s.update(aprompt_state_version="1"), "unsupported prompt state version '1'"),
        (lambda s: s.pop("predictors"), "lacks a 'predictors' object"),
        (lambda s: s["predictors"].pop("classify"), r"not in the state: \['classify'\]"),
        (
            lambda s: s["predictors"].update(extra=s["predictors"]["classify"]),
            r"not in the program: \['extra'\]",
        ),
        (
            lambda s: s["predictors"]["classify"].update(signature="text -> label"),
            r"predictor 'classify': saved signature 'text -> label' does not match",
        ),
        (
            lambda s: s["predictors"]["steps.0"].update(instruction=None),
            r"'steps.0': 'instruction' must be a string",
        ),
        (
            lambda s: s["predictors"]["steps.0"].update(demos=["not an object"]),
            r"'steps.0': 'demos' must be a list of objects",
        ),
        (  # a field renamed since the state was saved: the demo would silently show no label
            lambda s: s["predictors"]["classify"]["demos"][0].update(
                category=s["predictors"]["classify"]["demos"][0].pop("label")
            ),
            r"'classify': demos\[0\] has the field 'category', which the signature .* lacks.*rename it",
        ),
        (
            lambda s: s["predictors"]["steps.0"]["demos"][1].pop("answer"),
            r"'steps.0': demos\[1\] has none of the output fields \['reasoning', 'answer'\]",
        ),
        (  # a misspelt setting: the predictor would keep its own reply format without a word
            lambda s: s["predictors"]["classify"].update(reply_fromat="bare"),
            r"'classify': the state has \['reply_fromat'\], which this predictor does not save or load",
        ),
        (  # a setting a newer aprompt might save
            lambda s: s["predictors"]["steps.0"].update(lm_params={"temperature": 0.0}),
            r"'steps.0': the state has \['lm_params'\].*upgrade aprompt",
        ),
    ],
)
def test_a_mismatching_state_is_a_state_error_naming_the_problem(change: Any, message: str) -> None:
    with pytest.raises(StateError, match=message):
        load_state(Program(), _mutated(change))


def test_a_demo_the_state_could_not_load_is_refused_when_saving(tmp_path: Path) -> None:
    program = tuned()
    program.classify.demos = [{"text": "hi", "label": "ham", "note": "hand-written"}]
    with pytest.raises(StateError, match=r"'classify': demos\[0\] has the field 'note'"):
        save_state(program, tmp_path / "prompts.json")
    assert not (tmp_path / "prompts.json").exists()


def test_a_failed_load_leaves_the_program_unchanged() -> None:
    program = tuned()
    before = program_state(program)
    state = program_state(Program())
    state["predictors"]["steps.0"]["signature"] = "x -> y"
    with pytest.raises(StateError):
        load_state(program, state)
    assert program_state(program) == before


def test_a_non_json_file_is_a_state_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(StateError, match="not valid JSON"):
        load_state_file(Program(), path)


@pytest.mark.parametrize("load", [load_state_file, aprompt.load], ids=["load_state_file", "aprompt.load"])
def test_a_file_giving_a_key_twice_is_a_state_error(load: Any, tmp_path: Path) -> None:
    """A hand merge of two saves can give a key twice; JSON readers keep the last one without a word."""
    text = json.dumps(program_state(tuned()), indent=2)
    instruction = '"instruction": "Flag unsolicited offers as spam."'
    assert instruction in text
    path = tmp_path / "prompts.json"
    path.write_text(text.replace(instruction, f'{instruction}, "instruction": "Say ham."'), encoding="utf-8")
    program = Program()
    with pytest.raises(StateError, match=r"prompts\.json: .*'instruction' is given twice"):
        load(program, path)
    assert program_state(program) == program_state(Program())


@pytest.mark.parametrize("name", ["missing.json", "."], ids=["a missing file", "a folder"])
def test_a_file_that_cannot_be_read_is_a_state_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot read saved prompts from"):
        load_state_file(Program(), tmp_path / name)


def test_a_file_in_another_encoding_is_a_state_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(program_state(tuned()), ensure_ascii=False), encoding="utf-16")
    with pytest.raises(StateError, match=r"prompts\.json: not UTF-8 text"):
        load_state_file(Program(), path)


def test_a_single_predictor_round_trips_through_its_own_state() -> None:
    predict = Predict("q -> a", instruction="Be brief.", demos=[{"q": "x", "a": "y"}])
    other = Predict("q -> a")
    other.set_state(predict.get_state())
    assert (other.instruction, other.demos) == (predict.instruction, predict.demos)
