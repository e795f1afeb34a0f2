"""The CLI reads a data file as the csv and json modules read it: every record, whole, or an error
naming the record."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from aprompt._cli.loading import read_examples
from aprompt._errors import ConfigError
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.test_cli_conventions import answer_42, aprompt_cli, served

QUESTIONS = ["Line one\nline two: what is 2+2?", "Tab\u2028separated?", "plain\x85next", "form\x0cfeed"]


def test_a_csv_cell_keeps_its_line_breaks_and_every_row_is_one_example(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["question", "answer"])
        writer.writerows([question, f"answer {n}"] for n, question in enumerate(QUESTIONS))
    examples = read_examples(path, ["question"], {"question"})
    assert [e.inputs["question"] for e in examples] == QUESTIONS
    assert [e.labels["answer"] for e in examples] == [f"answer {n}" for n in range(len(QUESTIONS))]


def test_a_jsonl_line_may_hold_characters_that_other_line_breaks_are_made_of(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"question": q, "answer": "ok"}, ensure_ascii=False) for q in QUESTIONS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert [e.inputs["question"] for e in read_examples(path, ["question"], {"question"})] == QUESTIONS


def test_a_jsonl_file_with_windows_line_ends_reads(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"question": "a", "answer": "1"}\r\n{"question": "b", "answer": "2"}\r\n')
    assert [e.labels["answer"] for e in read_examples(path, ["question"], {"question"})] == ["1", "2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("question,answer\nwhat is up\nq2,ok\n", r"row 2: has 1 cell\(s\), the header names 2"),
        ("question,answer\nq1,ok\nq2,ok,stray\n", r"row 3: has 3 cell\(s\), the header names 2"),
    ],
)
def test_a_csv_row_with_another_number_of_cells_than_the_header_is_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        read_examples(path, ["question"], {"question"})


@pytest.mark.parametrize("header", ["question,answer,answer", "question,question,answer"])
def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path: Path, header: str) -> None:
    path = tmp_path / "data.csv"
    path.write_text(f"{header}\nq1,second,third\n", encoding="utf-8")
    twice = "answer" if header.endswith("answer,answer") else "question"
    with pytest.raises(ConfigError, match=rf"header names column\(s\) \['{twice}'\] more than once"):
        read_examples(path, ["question"], {"question"})


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        (
            "data.jsonl",
            '{"question": "q0", "answer": "a"}\n{"question": "q1", "answer": "a", "answer": "b"}\n',
            ", line 2:",
        ),
        ("data.json", '[{"question": "q1", "question": "q2", "answer": "a"}]', ":"),
    ],
)
def test_a_json_record_naming_a_field_twice_is_refused(
    tmp_path: Path, name: str, text: str, where: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(
        ConfigError, match=rf"{name}{where} an object names field\(s\) \['\w+'\] more than once"
    ):
        read_examples(path, ["question"], {"question"})


def test_a_csv_cell_longer_than_the_csv_modules_default_limit_is_read_whole(tmp_path: Path) -> None:
    document = "word " * 40_000  # 200,000 characters: over csv's default field limit of 131,072
    path = tmp_path / "data.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows([["question", "answer"], [document, "ok"]])
    before = csv.field_size_limit()
    assert [e.inputs["question"] for e in read_examples(path, ["question"], {"question"})] == [document]
    assert csv.field_size_limit() == before


def write_typed_task(folder: Path, rows: str) -> Path:
    """A program whose predictor answers an ``int`` (the fake answers 42), its exact metric and a CSV."""
    (folder / "typed.py").write_text(
        "import aprompt\n\n"
        "class QA:\n"
        "    def __init__(self):\n"
        '        self.answer = aprompt.Predict("question -> answer: int")\n\n'
        "    async def __call__(self, question):\n"
        "        return await self.answer(question=question)\n\n"
        "def exact(example, prediction):\n"
        '    return prediction.answer == example.labels["answer"]\n',
        encoding="utf-8",
    )
    (folder / "data.csv").write_text("question,answer\n" + rows, encoding="utf-8")
    return folder


def test_a_csv_label_of_a_number_output_field_is_read_as_a_number(tmp_path: Path) -> None:
    # A CSV cell is text: read as "42", the label never equals the int the predictor answers.
    folder = write_typed_task(tmp_path, "six times seven?,42\nforty-two?,42\ntwo plus two?,4\n")
    with served(lambda: FakeOpenAIServer(responder=answer_42)) as server:
        done = aprompt_cli(
            folder,
            *["evaluate", "typed.py:QA", "--data", "data.csv", "--metric", "typed.py:exact", "--json"],
            *["--lm", server.base_url, "--model", "m"],
        )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["score"] == pytest.approx(2 / 3) and figures["failing"] == 1


def test_a_csv_label_that_is_no_number_of_its_number_output_field_is_refused(tmp_path: Path) -> None:
    folder = write_typed_task(tmp_path, "six times seven?,42\nforty-two?,forty-two\n")
    done = aprompt_cli(
        folder,
        *["evaluate", "typed.py:QA", "--data", "data.csv", "--metric", "typed.py:exact"],
        *["--lm", "http://127.0.0.1:9/v1", "--model", "m"],
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "aprompt: error: data.csv, row 3: answer 'forty-two' is not an int "
        "(the program's output field answer: int)"
    )


def test_csv_labels_are_read_as_their_output_fields_types_and_a_blank_one_stays_blank(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("question,n,x,ok,note\nq1,42.0,nan,Yes,7\nq2,,0.5,false,8\n", encoding="utf-8")
    types = {"n": int, "x": float, "ok": bool}
    first, second = (e.labels for e in read_examples(path, ["question"], {"question"}, types))
    assert first["n"] == 42 and type(first["n"]) is int and math.isnan(first["x"]) and first["ok"] is True
    assert second == {"n": "", "x": 0.5, "ok": False, "note": "8"}
    assert first["note"] == "7"  # a label no output field types keeps its text
