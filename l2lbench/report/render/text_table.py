"""A table of text cells as markdown, github, LaTeX (booktabs) or HTML, through tabulate."""

from __future__ import annotations

import pandas as pd
from tabulate import tabulate


def _colalign(frame: pd.DataFrame) -> tuple[str, ...]:
    # Right-align columns whose cells all look like numbers, so digits line up.
    def numeric(cell: str) -> bool:
        return cell == "" or cell == "-" or cell[:1].isdigit() or cell[:1] in ">.-"

    return tuple("right" if frame[c].map(lambda v: numeric(str(v))).all() else "left" for c in frame.columns)


def table_text(frame: pd.DataFrame, tablefmt: str) -> str:
    """``frame`` (text cells) in tabulate's ``tablefmt``, cells taken as they are (no number parsing)."""
    cells = frame.astype(str)
    if tablefmt in ("pipe", "github"):
        # A literal | would end a markdown cell early.
        cells = cells.apply(lambda col: col.str.replace("|", "\\|", regex=False))
    return tabulate(cells.values.tolist(), headers=list(cells.columns), tablefmt=tablefmt,
                    disable_numparse=True, colalign=_colalign(cells) or None)
