"""Plain text: tables for the command line's summaries, the first line of an error's message."""
from __future__ import annotations

__all__ = ["first_line", "format_table"]


def format_table(header: list[str], body: list[list[str]]) -> str:
    """Right-aligned columns separated by `` | ``, with a rule under the header."""
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return " | ".join(cell.rjust(w) for cell, w in zip(cells, widths))

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in body)])


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (at most 200 characters), or its class name when it has none."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
