"""The API reference's overview names every public export, so a new export cannot go undocumented."""

from __future__ import annotations

import re
from pathlib import Path

import aprompt

INDEX = Path(__file__).resolve().parent.parent / "docs" / "reference" / "index.md"


def test_the_reference_overview_links_every_name_aprompt_exports() -> None:
    shown = re.findall(r"\[`([\w.]+)`\]\[aprompt\.[\w.]+\]", INDEX.read_text(encoding="utf-8"))
    linked = {name.removeprefix("aprompt.") for name in shown}
    assert set(aprompt.__all__) - linked == set()
