"""The one writer of Markdown tables: cross-validation reports, Table 1, stage 1's summary, model cards."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["markdown_table"]


def _row(cells: Sequence[object]) -> str:
    # An empty cell is "| |", not "|  |".
    return "|" + "".join(f" {cell} |" if str(cell) else " |" for cell in cells)


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table's lines: ``header``, the ``|---|`` rule, then ``rows`` (cells as ``str()``
    gives them: format and escape before; a row may be shorter than the header).

    Example:
        >>> print("\\n".join(markdown_table(["", "WA (%)"], [["fold1", "75.00"], ["**mean**", ""]])))
        | | WA (%) |
        |---|---|
        | fold1 | 75.00 |
        | **mean** | |
    """
    return [_row(header), "|---" * len(header) + "|", *(_row(row) for row in rows)]
