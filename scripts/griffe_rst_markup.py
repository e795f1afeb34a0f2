"""A Griffe extension for the docs build: our docstrings' reST markup, rendered as Markdown.

The code's docstrings are Google style with a few reST habits: roles (``:class:`Trace```,
``:func:`~aprompt.program.trace.trace```), literal blocks introduced by ``::`` and simple tables (columns
marked by ``===`` borders). Python-Markdown shows them verbatim, so before a docstring is parsed this
extension turns each role into inline code (a link when the name resolves to an object the site documents),
each ``::`` block into a fenced Python block and each simple table into a pipe table. The docstrings
themselves stay as they are. Loaded by ``mkdocs.yml`` (``extensions:`` of the Python handler).
"""

from __future__ import annotations

import html
import re
import textwrap
from typing import Any

import griffe

TABLE_BORDER = re.compile(r"^ *=+(?: +=+)+ *$")
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):`(~?)([\w.]+?)(\(\))?`")


def shown_name(tilde: str, target: str) -> str:
    """What Sphinx would show: the last component after ``~``, the whole target otherwise."""
    return target.rsplit(".", 1)[-1] if tilde else target


def resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path of ``target`` as seen from ``obj`` (its scope, then its parents'), or None."""
    if target.startswith("aprompt."):
        return target
    head, _, rest = target.partition(".")
    try:
        found = obj.resolve(head)
    except griffe.NameResolutionError:
        return None
    return f"{found}.{rest}" if rest else found


def replace_roles(obj: griffe.Object, text: str) -> str:
    def one(match: re.Match[str]) -> str:
        tilde, target, call = match.groups()
        code = f"<code>{html.escape(shown_name(tilde, target))}{call or ''}</code>"
        path = resolve(obj, target)
        if path is None:
            return code
        # Optional: a target the site does not render stays plain code instead of failing the build.
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    return ROLE.sub(one, text)


def fence_literal_blocks(text: str) -> str:
    """``intro::`` + blank line + an indented block becomes ``intro:`` + a fenced Python block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        block_start = i + 2 if i + 1 < len(lines) and not lines[i + 1].strip() else None
        if not line.rstrip().endswith("::") or block_start is None:
            out.append(line)
            i += 1
            continue
        end = block_start
        while end < len(lines) and (
            not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
        ):
            end += 1
        while end > block_start and not lines[end - 1].strip():
            end -= 1
        if end == block_start:
            out.append(line)
            i += 1
            continue
        intro = line.rstrip()[:-2].rstrip()
        if intro.strip():
            out.extend([intro + ":", ""])
        code = textwrap.dedent("\n".join(lines[block_start:end]))
        pad = " " * indent
        out.extend([pad + "```python", *(pad + c if c else c for c in code.split("\n")), pad + "```"])
        i = end
    return "\n".join(out)


def table_columns(border: str) -> list[tuple[int, int]]:
    """Start and end of each column, read from a border line (the last column runs to the line's end)."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]
    return [*spans[:-1], (spans[-1][0], 10_000)]


def pipe_tables(text: str) -> str:
    """Simple tables (border, header, border, rows, border) become pipe tables; cells are split at the
    columns the border marks, as reST does."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        borders = [j for j in range(i, len(lines)) if TABLE_BORDER.match(lines[j])][:3]
        if not borders or borders[0] != i or len(borders) < 3 or borders[1] != i + 2:
            out.append(lines[i])
            i += 1
            continue
        columns = table_columns(lines[i])

        def cells(line: str, columns: list[tuple[int, int]] = columns) -> str:
            return "| " + " | ".join(line[a:b].strip() for a, b in columns) + " |"

        out.append(cells(lines[i + 1]))
        out.append("|" + "|".join("---" for _ in columns) + "|")
        out.extend(cells(line) for line in lines[i + 3 : borders[2]] if line.strip())
        i = borders[2] + 1
    return "\n".join(out)


def rewrite_docstring(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        text = replace_roles(obj, obj.docstring.value)
        obj.docstring.value = pipe_tables(fence_literal_blocks(text))


class ReSTMarkupToMarkdown(griffe.Extension):
    """Rewrites each docstring before it is parsed (the object tree is complete by then)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        rewrite_docstring(pkg)  # the top package gets no on_object event of its own

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        rewrite_docstring(obj)
