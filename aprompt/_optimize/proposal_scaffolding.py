"""The proposer's echoed scaffolding: sections under its prompt's labels, and lines under the program's
field labels, cut from a proposal; what follows an answer label is kept."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from aprompt.program.predictor import Predict

#: Labels of the proposer's prompt (propose.py) and of the grounding prompts (summaries.py); a proposal
#: line starting with one of them is an echo of the scaffolding, never part of an instruction.
SCAFFOLDING_LABELS: tuple[str, ...] = (
    "Module",
    "Modules",
    "Program",
    "Current Instruction",
    "Current Instructions",
    "Dataset Summary",
    "Data Summary",
    "Program Description",
    "Program Code",
    "Examples Of Good Calls",
    "Example Of Good Calls",
    "Examples Of Good Call",
    "Example Of Good Call",
    "Previous Instructions",
    "Previous Instruction",
    "Tip",
    "Tips",
    # The answer field's label in the plural: the proposer listing several instructions, an echo.
    "Proposed Instructions",
    "New Instructions",
    "Improved Instructions",
    "Observations",
    "Input Fields",
    "Output Fields",
    "Input Field",
    "Output Field",
)
#: Labels after which a proposer writes the instruction itself: what follows is kept.
ANSWER_LABELS: tuple[str, ...] = (
    "Proposed Instruction",
    "New Instruction",
    "Improved Instruction",
    # Other words a proposer heads its answer with; without them a label inside a line would leave its
    # first word ("Revised") as a line of the instruction.
    "Revised Instruction",
    "Updated Instruction",
    "Refined Instruction",
    "Optimized Instruction",
    "Enhanced Instruction",
    "Rewritten Instruction",
    "Suggested Instruction",
    "Better Instruction",
    "Final Instruction",
    "Instruction",
)

_BULLET = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+")


def field_labels(predictor: Predict) -> tuple[str, ...]:
    """The labels the program's predictor shows the model (``Question``, ``Answer``, ...)."""
    return tuple(f.label for f in predictor.signature.fields)


def _alternatives(labels: Iterable[str]) -> str:
    return "|".join(
        re.escape(label).replace(r"\ ", r"[ _]+") for label in sorted(set(labels), key=len, reverse=True)
    )


_ANSWER_NAMES = _alternatives(ANSWER_LABELS)
_TWO_WORD_ANSWER_NAMES = _alternatives(label for label in ANSWER_LABELS if " " in label)


def _marker_pattern(labels: Iterable[str], *, line_start: bool, proposer: bool = True) -> str:
    names = _alternatives(labels)
    if line_start:
        # A label at the start of a line, maybe after a bullet, a quote mark or markdown emphasis; a
        # proposer's own label also after a one-letter label and an article, as the embedded proposer
        # writes them ("A: The module: classify"). A field label keeps to the line's start: "The
        # answer: ..." may be prose.
        prefix = r"(?:[a-z][ \t]*:[ \t]*)?(?:the[ \t]+)?" if proposer else ""
        return (
            rf"(?im)^[ \t>]*(?:[-*+•][ \t]+)?(?:\#{{1,6}}[ \t]*)?{prefix}"
            rf"[*_`\"']*(?P<label>{names})[*_`]*[ \t]*:[*_]*"
        )
    # Inside a line: the exact title-case label after a space or punctuation ("... Dataset Summary: ..."),
    # or an answer label of two words in any case opening a sentence ("... New instruction: ...").
    if names == _ANSWER_NAMES:
        names = rf"{names}|(?<=[.!?;][ \t])(?i:{_TWO_WORD_ANSWER_NAMES})"
    return rf"(?m)(?<=[\s.;,!?\"'])(?P<label>{names})[ \t]*:"


def _cut_sections(text: str, labels: Sequence[str], removed: list[str]) -> str:
    """Keep the text outside scaffolding sections and field-label lines (answer sections are kept)."""
    kinds: list[tuple[int, int, str, str]] = []  # (start, end of marker, kind, label)
    groups = (("scaffolding", SCAFFOLDING_LABELS), ("answer", ANSWER_LABELS), ("field label", tuple(labels)))
    for kind, names in groups:
        if not names:
            continue
        # Field labels count at a line's start only: inside a sentence "the Answer:" may be prose.
        for line_start in (True,) if kind == "field label" else (True, False):
            pattern = _marker_pattern(names, line_start=line_start, proposer=kind != "field label")
            for match in re.finditer(pattern, text):
                said = re.sub(r"[^a-z]", "", match.group("label").lower())
                label = next(n for n in names if re.sub(r"[^a-z]", "", n.lower()) == said)
                kinds.append((match.start(), match.end(), kind, label))
    markers: list[tuple[int, int, str, str]] = []
    for marker in sorted(kinds, key=lambda m: (m[0], -(m[1] - m[0]))):
        if markers and marker[0] < markers[-1][1]:
            continue  # overlaps an earlier, longer marker
        markers.append(marker)
    if not markers:
        return text
    parts = [text[: markers[0][0]]]
    for position, (_, end, kind, label) in enumerate(markers):
        limit = markers[position + 1][0] if position + 1 < len(markers) else len(text)
        if kind == "answer":
            parts.append("\n" + text[end:limit])
            continue
        removed.append(f"{kind}: {label}")
        cut = _section_end(text, end, limit) if kind == "scaffolding" else _line_end(text, end, limit)
        parts.append("\n" + text[cut:limit])
    return "".join(parts)


def _line_end(text: str, start: int, limit: int) -> int:
    newline = text.find("\n", start, limit)
    return limit if newline < 0 else newline


def _section_end(text: str, start: int, limit: int) -> int:
    """Where a scaffolding section ends: the rest of its line, then the bullet lines under it (and its
    value's first line when the label stood alone on its line); a blank or plain line ends it."""
    end = _line_end(text, start, limit)
    has_value = bool(text[start:end].strip())
    while end < limit:
        next_end = _line_end(text, end + 1, limit)
        line = text[end + 1 : next_end]
        if not line.strip():
            break
        if _BULLET.match(line) or not has_value:
            has_value = True
            end = next_end
            continue
        break
    return end
