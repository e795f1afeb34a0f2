"""The quick start's script runs as written against the real API, with a fake server in place of the model.

The first Python block of ``docs/quickstart.md`` defines ``main(lm)`` and runs it on the local model only
under ``__main__``; the test executes the block as a module of another name and awaits ``main`` with a client
of a loopback fake server, so the page cannot drift from the library.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer
from tests.conftest import TEST_API_KEY

pytestmark = pytest.mark.anyio

QUICKSTART = Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"
REPLY_FORMAT = "Reply in exactly this format, each field on its own line, in this order:\n"


def first_python_block(markdown: str) -> str:
    found = re.search(r"^```python\n(.*?)^```$", markdown, flags=re.DOTALL | re.MULTILINE)
    assert found is not None, "docs/quickstart.md has no ```python block"
    return found.group(1)


class CountingWorld:
    """Answers every predictor in the reply format its system prompt asks for.

    With its original prompt the counting stage is off by one on odd counts, so bootstrapping finds some
    passing runs and the search has something to improve; any changed prompt (a demo or another
    instruction) makes it right.
    """

    def __init__(self, answers: dict[str, int]) -> None:
        self.answers = answers

    def __call__(self, request: ChatRequest) -> str:
        system = str(request.messages[0]["content"])
        lines = system.split(REPLY_FORMAT, 1)[1].splitlines()
        digest = hashlib.sha256(json.dumps(request.messages).encode()).hexdigest()[:8]
        return "\n".join(f"{label}: {self.value(request, system, label, digest)}" for label in _labels(lines))

    def value(self, request: ChatRequest, system: str, label: str, digest: str) -> str:
        if label == "Answer":
            question = next(q for q in self.answers if q in request.last_user)
            count = self.answers[question]
            original = system.startswith("Count the objects.") and len(request.messages) == 2
            return str(count + 1 if original and count % 2 else count)
        if label == "Objects":
            return "the objects named in the question"
        if "Instruction" in label:
            return f"Name each object in the question, then count them one by one (take {digest})."
        return f"Short questions that list objects and ask for their number ({digest})."


def _labels(format_lines: list[str]) -> list[str]:
    return [line.split(": <", 1)[0] for line in format_lines if ": <" in line]


async def test_the_quickstart_script_optimizes_and_saves_a_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = first_python_block(QUICKSTART.read_text())
    assert "aprompt.local_lm()" in source, "run as a script, the quick start uses the local model"
    module: dict[str, Any] = {"__name__": "quickstart"}  # not __main__: the local model is not started
    exec(compile(source, str(QUICKSTART), "exec"), module)
    monkeypatch.chdir(tmp_path)  # the script saves count.json in the working directory
    world = CountingWorld({e.inputs["question"]: e.labels["answer"] for e in module["trainset"]})

    async with (
        FakeOpenAIServer(responder=world, api_key=TEST_API_KEY) as server,
        aprompt.OpenAICompatibleLM("fake-model", server.base_url, api_key=TEST_API_KEY) as lm,
    ):
        result = await module["main"](lm)

    assert isinstance(result, aprompt.OptimizeResult)
    assert result.baseline_score < result.score == 1.0
    assert f"accuracy {result.baseline_score:.2f} -> 1.00" in capsys.readouterr().out
    saved = json.loads((tmp_path / "count.json").read_text())
    assert saved["score"] == result.score
    fresh = aprompt.load(module["CountObjects"](), tmp_path / "count.json")
    assert aprompt.program_state(fresh) == aprompt.program_state(result.program)
