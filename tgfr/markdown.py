"""Markdown tables: the one writer every report of the package uses."""
from __future__ import annotations

ALIGNMENTS = {"l": "---", "r": "---:"}


def _cell(text: str) -> str:
    if not text:
        return " "
    # a pipe would end the cell and a line break would end the row
    return " " + text.replace("|", "\\|").replace("\n", " ") + " "


def table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    """A Markdown table of ``header`` and ``rows`` (one string per cell), one line per row.

    ``align`` gives ``"l"`` (left) or ``"r"`` (right) per column; by default the first column is
    left-aligned and the others right-aligned (labels, then numbers).
    """
    width = len(header)
    if width == 0:
        raise ValueError("header must name at least one column")
    align = list(align) if align is not None else ["l"] + ["r"] * (width - 1)
    if len(align) != width or any(a not in ALIGNMENTS for a in align):
        raise ValueError(f"align must give one of {sorted(ALIGNMENTS)} per column ({width}), got {align}")
    for number, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"row {number} has {len(row)} cells, the header {width}: {row}")
    lines = [header, *rows]
    separator = "|" + "|".join(ALIGNMENTS[a] for a in align) + "|"
    text = ["|" + "|".join(_cell(c) for c in line) + "|" for line in lines]
    return "\n".join([text[0], separator, *text[1:]])
