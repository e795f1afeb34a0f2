"""Readers of untrusted input take anything without crashing (hypothesis).

- the reply parser: any text, from any bytes, raises only ``ParseError``;
- the journal reader: any bytes in the journal file (or its WAL), random or a damaged real journal,
  open and read back or raise only ``JournalError``;
- the state loader: any JSON value, random or a damaged real state, loads or raises only ``StateError``.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aprompt
from aprompt._errors import JournalError, ParseError, StateError
from aprompt.program import Signature, parse_reply
from aprompt.run.journal import JOURNAL_FILE, RunJournal

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- the reply parser ------------------------------------------------------------------------------

OUTPUT_TYPES = ["", ": int", ": float", ": bool", ": list[str]", ": list[int]", ": Literal['yes', 'no']"]
SIGNATURES = st.lists(
    st.tuples(
        st.sampled_from(["answer", "reasoning", "score", "label", "tags"]), st.sampled_from(OUTPUT_TYPES)
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda field: field[0],
).map(lambda fields: Signature.parse("question -> " + ", ".join(name + kind for name, kind in fields)))
ENCODINGS = st.sampled_from(["utf-8", "latin-1", "utf-16"])


@FUZZ
@given(signature=SIGNATURES, raw=st.binary(max_size=400), encoding=ENCODINGS)
def test_the_reply_parser_takes_any_bytes(signature: Signature, raw: bytes, encoding: str) -> None:
    text = raw.decode(encoding, errors="replace")
    try:
        values = parse_reply(signature, text)
    except ParseError as exc:
        assert exc.raw_text == text
    else:
        assert list(values) == list(signature.output_names)


# -- the journal reader ----------------------------------------------------------------------------


def read_everything(folder: Path) -> None:
    """Open the journal in ``folder`` and read and write through every entry point."""
    with RunJournal.open(folder) as journal:
        for kind in journal.kinds():
            journal.records(kind)
            journal.latest(kind)
        for kind in ("config", "trial", "full_eval"):
            list(journal.entries(kind, key="0"))
        journal.append("trial", {"number": 99})


class Files(dict[str, bytes]):
    """File contents by name, shown briefly (hypothesis prints the arguments of a failing example)."""

    def __repr__(self) -> str:
        return f"Files({sorted(self)})"


@pytest.fixture(scope="module")
def real_journal() -> Files:
    """A small journal with records of several kinds: ``closed`` is its file after closing (the WAL
    checkpointed into it); ``open:<name>`` are its files while open with a record still in the WAL."""
    with tempfile.TemporaryDirectory() as folder:
        with RunJournal.open(folder) as journal:
            journal.append("config", {"seed": 3, "budget": {"n_trials": 12}})
            for number in range(30):
                scores = {f"ex{i}": 0.5 for i in range(20)}
                journal.append("trial", {"number": number, "scores": scores}, key=str(number))
        files = Files(closed=(Path(folder) / JOURNAL_FILE).read_bytes())
        with RunJournal.open(folder) as journal:
            journal.append("full_eval", {"score": 0.75, "scores": {"ex1": 1.0}}, key="[]")
            files.update({f"open:{p.name}": p.read_bytes() for p in Path(folder).iterdir()})
    return files


def reads_or_refuses(files: dict[str, bytes]) -> None:
    """Put ``files`` in a fresh folder; the journal there reads back or raises only JournalError."""
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        try:
            read_everything(Path(folder))
        except JournalError:
            pass


@FUZZ
@given(raw=st.binary(max_size=2048))
def test_the_journal_reader_takes_any_bytes(raw: bytes) -> None:
    reads_or_refuses({JOURNAL_FILE: raw})


MUTATIONS = st.lists(
    st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=16)), min_size=1, max_size=8
)


def mutate(data: bytes, mutations: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(data)
    for offset, patch in mutations:
        at = offset % len(out)
        out[at : at + len(patch)] = patch
    return bytes(out)


@FUZZ
@given(mutations=MUTATIONS, truncate=st.none() | st.integers(min_value=0))
def test_the_journal_reader_takes_a_damaged_journal(
    real_journal: Files, mutations: list[tuple[int, bytes]], truncate: int | None
) -> None:
    data = mutate(real_journal["closed"], mutations)
    if truncate is not None:
        data = data[: truncate % len(data)]
    reads_or_refuses({JOURNAL_FILE: data})


@FUZZ
@given(mutations=MUTATIONS, target=st.sampled_from(["-wal", "-shm"]))
def test_the_journal_reader_takes_a_damaged_wal(
    real_journal: Files, mutations: list[tuple[int, bytes]], target: str
) -> None:
    files = {
        name.removeprefix("open:"): data for name, data in real_journal.items() if name.startswith("open:")
    }
    name = JOURNAL_FILE + target
    files[name] = mutate(files[name], mutations)
    reads_or_refuses(files)


# -- the state loader ------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)


class QA:
    def __init__(self) -> None:
        self.answer = aprompt.Predict("question -> answer: int")
        self.check = aprompt.ChainOfThought("question, answer -> ok: bool")


def valid_state() -> dict[str, Any]:
    program = QA()
    program.answer.demos = [{"question": "1+1?", "answer": 2}]
    return aprompt.program_state(program)


def loads_or_refuses(data: Any) -> None:
    program = QA()
    before = aprompt.program_state(program)
    try:
        aprompt.load_state(program, data)
    except StateError:
        assert aprompt.program_state(program) == before, "a refused state changes nothing"


@FUZZ
@given(data=JSON)
def test_the_state_loader_takes_any_json(data: Any) -> None:
    loads_or_refuses(data)


@st.composite
def damaged_states(draw: st.DrawFn) -> Any:
    """A valid state with one to three values somewhere inside replaced by arbitrary JSON."""
    state = valid_state()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        node: Any = state
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = draw(st.sampled_from(keys))
            child = node[key]
            if not isinstance(child, dict | list) or not child or draw(st.booleans()):
                node[key] = draw(JSON)
                break
            node = child
    return copy.deepcopy(state)


@FUZZ
@given(data=damaged_states())
def test_the_state_loader_takes_a_damaged_state(data: Any) -> None:
    loads_or_refuses(data)
