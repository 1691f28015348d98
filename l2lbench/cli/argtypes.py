"""Argument types shared by the sub-commands: one-line messages naming the bad value."""

from __future__ import annotations

import argparse


def csv_list(value: str) -> list[str]:
    """Comma-separated names; commas inside parentheses belong to the name
    (``torch:Adagrad(lr=0.01, eps=1e-8)``)."""
    items, depth, current = [], 0, ""
    for char in value:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items = [v.strip() for v in items + [current] if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"invalid list {value!r} (expected comma-separated names)")
    return items


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"invalid value {value!r} (expected a positive integer)")
    return number
