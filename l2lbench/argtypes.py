"""Argument types shared by the sub-commands: one-line messages naming the bad value."""

from __future__ import annotations

import argparse


def csv_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
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
