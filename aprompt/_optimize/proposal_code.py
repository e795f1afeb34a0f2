"""Code, fences, headings and made-up examples in a proposal: prose fences opened, the rest removed."""

from __future__ import annotations

import re

from aprompt._optimize.proposal_text import _ends_with_colon

#: A line of code: a definition, an import, a return, an assignment to a name (``x = ...``, ``x.y +=
#: ...``, ``x[0] = ...``), a block's head (``try:``, ``except Exception as e:``, ``if x > 0:``), a call
#: alone on its line (``print(f"...")``, ``classify(``), or brackets alone; no instruction reads so.
_CODE_LINE = re.compile(
    r"^\s*(?:(?:def|class)\s+\w+\s*[(:]|(?:import|from)\s+[\w.]+(?:\s+import\b|\s*$)|return\b"
    r"|[A-Za-z_][\w.]*(?:\[[^\]\n]*\])?\s*[-+*/]?=(?!=)"
    r"|(?:try|else|finally|(?:except|if|elif|for|while|with|async\s+(?:def|for|with))\b[^\n]*?):\s*$"
    r"|[A-Za-z_][\w.]*\((?:[^()\n]*\)[;,]?)?\s*$"
    r"|[()\[\]{},;]+\s*$)"
)
_FENCE = re.compile(r"^\s*(?:```|~~~)")
#: A fence whose info string names prose (```text, ```markdown): the block holds the instruction itself.
_PROSE_FENCE = re.compile(
    r"^\s*(?:```|~~~)[ \t]*(?:text|txt|plain|plaintext|markdown|md|prompt|instructions?)[ \t]*$",
    re.IGNORECASE,
)


def unfenced_prose(text: str) -> str:
    """``text`` without the fence lines of a block tagged as prose (```text ... ```, to the end when
    none closes it): a proposer that fences its instruction so means the text, and the tag is no part of
    it. A block fenced without a tag, or tagged with a language, is left for :func:`clean_proposal` to
    remove as code.

    Example::

        >>> unfenced_prose("```text\\nAnswer in one word.\\n```")
        'Answer in one word.'
    """
    kept: list[str] = []
    in_prose = False
    for line in text.splitlines():
        if not in_prose and _PROSE_FENCE.match(line):
            in_prose = True
        elif in_prose and _FENCE.match(line):
            in_prose = False
        else:
            kept.append(line)
    return "\n".join(kept) if len(kept) < len(text.splitlines()) else text


#: What continues code on the next line: an indented line, a string or a statement alone on its line.
_CODE_GOES_ON = re.compile(
    r"^(?:\s+\S|\s*(?:\"[^\"\n]*\"|'[^'\n]*'),?\s*$|\s*(?:pass|break|continue)\s*$|\s*raise\b)"
)


def _without_code(text: str, removed: list[str]) -> str:
    """``text`` without fenced code blocks (an unclosed fence runs to the end), lines of code and what
    continues them, and a line ending in a colon right before removed code (it introduced the code)."""
    kept: list[str] = []
    in_fence = in_code = False
    lines = text.splitlines()
    for line in lines:
        fence = bool(_FENCE.match(line))
        if fence or in_fence or _CODE_LINE.match(line) or (in_code and _CODE_GOES_ON.match(line)):
            if not in_code:  # the code starts: drop the line that introduced it
                while kept and not kept[-1].strip():
                    kept.pop()
                if kept and _ends_with_colon(kept[-1]):
                    kept.pop()
            in_fence, in_code = in_fence != fence, True
            continue
        in_code = False
        kept.append(line)
    if len(kept) == len(lines):
        return text
    removed.append("code")
    return "\n".join(kept)


_HEADING = re.compile(r"^\s*#{1,6}\s+(?P<title>.*)$")
#: A line labeled as an example: maybe a bullet or emphasis, "Example" or "Examples", at most six more
#: words, a colon.
_EXAMPLE_LABEL = re.compile(
    r"^\s*(?:[-*+•]\s+|\d+[.)]\s+)?[*_]*(?:(?:the|an|for)\s+)?examples?\b(?P<rest>[^:\n]{0,60}?):[*_]*"
    r"(?P<value>.*)$",
    re.IGNORECASE,
)


def _without_examples(text: str, removed: list[str]) -> str:
    """``text`` without the proposer's made-up examples and without heading lines (see the module doc)."""
    kept: list[str] = []
    skipping = ""  # "heading": to the next heading; "label": to a blank line or a heading
    cut = False
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if skipping and (heading or (skipping == "label" and not line.strip())):
            skipping = ""
        if skipping:
            cut = True
            continue
        if heading:
            cut = True
            if heading.group("title").strip(" *_`").lower().startswith("example"):
                skipping = "heading"
            continue
        label = _EXAMPLE_LABEL.match(line)
        if label and len(label.group("rest").split()) <= 6:
            cut = True
            if not label.group("value").strip():
                skipping = "label"
            continue
        kept.append(line)
    if not cut:
        return text
    removed.append("made-up examples and headings")
    return "\n".join(kept)
