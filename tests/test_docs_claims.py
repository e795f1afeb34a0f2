"""Concrete claims of the docs, checked against the code they describe: a name, a default or a rule the
code changes fails here rather than leaving the page wrong."""

from __future__ import annotations

import re
from pathlib import Path

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
