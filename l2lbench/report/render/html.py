"""One self-contained HTML page: styles and a sorting script inline, plots embedded by the
caller as data URIs (:mod:`l2lbench.cli.report`)."""

from __future__ import annotations

from html import escape
from typing import Sequence

from l2lbench.report.render.document import Block
from l2lbench.report.render.text_table import table_text

# A click on a column heading sorts its table (numbers by value, "-" and words after them);
# on load the page records in <body data-...> how many tables and rendered figures it holds,
# which a browser check (tests/test_html_browser.py) reads back.
_HTML_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.title = "click to sort";
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var column = Array.prototype.indexOf.call(th.parentNode.children, th);
    var ascending = th.dataset.order !== "ascending";
    th.dataset.order = ascending ? "ascending" : "descending";
    var key = function (row) {
      var text = row.children[column].textContent.trim(), number = parseFloat(text);
      return isNaN(number) ? [1, text] : [0, number];
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      var order = x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
      return ascending ? order : -order;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  document.body.dataset.tables = document.querySelectorAll("table").length;
  document.body.dataset.figures = images.length;
  document.body.dataset.figuresRendered = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
});
"""

_HTML_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:110em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px}"
    "th{background:#f3f3f3;cursor:pointer;position:sticky;top:0}th[data-order=ascending]::after{content:' \\25B2'}"
    "th[data-order=descending]::after{content:' \\25BC'}tr:nth-child(even) td{background:#fafafa}"
    "img{max-width:100%}"
)


def to_html(blocks: Sequence[Block]) -> str:
    """The blocks as one self-contained HTML page with sortable tables."""
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\"><title>l2lbench report</title>",
           f"<style>{_HTML_STYLE}</style></head><body>"]
    for block in blocks:
        if block.kind == "heading":
            out.append(f"<h{block.level}>{escape(block.content)}</h{block.level}>")
        elif block.kind == "text":
            out.append(f"<p>{escape(block.content)}</p>")
        elif block.kind == "list":
            out.append("<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block.content) + "</ul>")
        elif block.kind == "table":
            out.append(table_text(block.content, "html").replace("<table>", "<table class=\"sortable\">", 1))
        elif block.kind == "image":
            path, alt = block.content
            out.append(f"<figure><img src=\"{escape(path)}\" alt=\"{escape(alt)}\"></figure>")
    out.append(f"<script>{_HTML_SCRIPT}</script></body></html>")
    return "\n".join(out) + "\n"
