"""A LaTeX document (booktabs tables scaled to the page, landscape A4)."""

from __future__ import annotations

from typing import Sequence

from l2lbench.report.render.document import Block
from l2lbench.report.render.text_table import table_text

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    r"""Text safe inside LaTeX.

    >>> latex_escape("a_b 50%")
    'a\\_b 50\\%'
    """
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def to_latex(blocks: Sequence[Block]) -> str:
    """The blocks as a stand-alone LaTeX document."""
    commands = {1: "section*", 2: "subsection*", 3: "subsubsection*"}
    out = [r"\documentclass{article}", r"\usepackage{booktabs}", r"\usepackage{graphicx}",
           r"\usepackage[a4paper,landscape,margin=1.5cm]{geometry}", r"\begin{document}"]
    for block in blocks:
        if block.kind == "heading":
            out.append(f"\\{commands[block.level]}{{{latex_escape(block.content)}}}")
        elif block.kind == "text":
            out.append(latex_escape(block.content))
        elif block.kind == "list":
            items = "\n".join(f"\\item {latex_escape(item)}" for item in block.content)
            out.append(f"\\begin{{itemize}}\n{items}\n\\end{{itemize}}")
        elif block.kind == "table":
            # Leaderboards are wider than a page; scale them to the text width.
            out.append("\\resizebox{\\linewidth}{!}{%\n" + table_text(block.content, "latex_booktabs") + "\n}")
        elif block.kind == "image":
            path, _ = block.content
            out.append(f"\\includegraphics[width=0.8\\linewidth]{{{path}}}")
    out.append(r"\end{document}")
    return "\n\n".join(out) + "\n"
