"""Concrete claims of the docs, checked against the code they describe: a name, a default or a rule the
code changes fails here rather than leaving the page wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import aprompt
from aprompt.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parent.parent
#: The strategies aprompt ships (a test may have registered one of its own meanwhile).
BUILT_IN = {name for name, strategy in STRATEGIES.items() if type(strategy).__module__.startswith("aprompt.")}


def _text(relative: str) -> str:
    return (ROOT / relative).read_text(encoding="utf-8")


def test_the_readme_lists_every_built_in_strategy() -> None:
    listed = re.search(r"^Strategies: (.*?)\. Budgets", _text("README.md"), re.M | re.S)
    assert listed is not None
    assert set(re.findall(r"`(\w+)`", listed.group(1))) == BUILT_IN


def test_an_endpoint_whose_key_variable_is_unset_is_refused_as_the_docs_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GPU2_KEY", raising=False)
    endpoint = aprompt.Endpoint("http://gpu-2:8000/v1", api_key_env="GPU2_KEY")
    with pytest.raises(aprompt.ConfigError, match=r"\$GPU2_KEY"):
        aprompt.OpenAICompatibleLM("m", [endpoint], api_key="sk-client-key")  # made, not yet opened
    said = "making the client raises a `ConfigError`"
    assert said in " ".join(_text("docs/howto.md").split())
    assert "`api_key_env` is not set" in " ".join(_text("docs/guarantees.md").split())
