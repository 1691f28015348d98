"""Markdown (pipe tables) and GitHub-flavoured markdown."""

from __future__ import annotations

from typing import Sequence

from l2lbench.report.render.document import Block
from l2lbench.report.render.text_table import table_text

#: Flavour -> the tabulate table format its tables use.
TABLE_FORMATS = {"markdown": "pipe", "github": "github"}


def to_markdown(blocks: Sequence[Block], flavour: str = "markdown") -> str:
    """The blocks as markdown of ``flavour`` (see :data:`TABLE_FORMATS`)."""
    tablefmt = TABLE_FORMATS[flavour]
    out = []
    for block in blocks:
        if block.kind == "heading":
            out.append(f"{'#' * block.level} {block.content}")
        elif block.kind == "text":
            out.append(block.content)
        elif block.kind == "list":
            out.append("\n".join(f"- {item}" for item in block.content))
        elif block.kind == "table":
            out.append(table_text(block.content, tablefmt))
        elif block.kind == "image":
            path, alt = block.content
            out.append(f"![{alt}]({path})")
    return "\n\n".join(out) + "\n"
