"""A :class:`~l2lbench.report.model.Report` as text, one module per format.

The text formats share one document (:mod:`.document`: sections and prose, cells from
:mod:`.cells`) and write it as :mod:`.markdown` (markdown and github), :mod:`.latex` or
:mod:`.html`; :mod:`.csv` and :mod:`.json` write the tables at full precision.
"""

from __future__ import annotations

from typing import Mapping

from l2lbench.report.model import Report
from l2lbench.report.render.csv import to_csv
from l2lbench.report.render.document import document
from l2lbench.report.render.html import to_html
from l2lbench.report.render.json import to_json
from l2lbench.report.render.latex import to_latex
from l2lbench.report.render.markdown import TABLE_FORMATS, to_markdown

#: Every format :func:`render` writes.
FORMATS = (*TABLE_FORMATS, "latex", "html", "csv", "json")


def render(report: Report, fmt: str, images: Mapping[str, str] | None = None) -> str:
    """The report as text in ``fmt`` (see :data:`FORMATS`); csv is the stacked leaderboard.

    Args:
        images: plot key ("task/<task>", "ranks", "domain-shift/<setting>") -> path
            relative to the report file, shown in markdown, html and latex.
    """
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return to_csv(report.leaderboard)
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    blocks = document(report, images)
    if fmt == "latex":
        return to_latex(blocks)
    if fmt == "html":
        return to_html(blocks)
    return to_markdown(blocks, fmt)
