"""The numbers of a bench report: rounded measurements, their min/median summaries and ratios."""

from __future__ import annotations

import statistics
from typing import Any


def rounded(value: float | None, digits: int = 3) -> float | None:
    """``value`` rounded to ``digits`` decimals; None stays None.

    >>> rounded(1.23456), rounded(None)
    (1.235, None)
    """
    return None if value is None else round(value, digits)


def difference(after: float | None, before: float | None) -> float | None:
    """``after - before`` rounded; None where either is unknown (a growth that was not measured)."""
    return rounded(after - before) if after is not None and before is not None else None


def summary(values: list[float]) -> dict[str, Any]:
    """``{"min", "median", "values"}`` of a list of measurements."""
    return {"min": rounded(min(values), 4), "median": rounded(statistics.median(values), 4),
            "values": [rounded(v, 4) for v in values]}


def ratio(values: list[float], reference: list[float]) -> dict[str, Any]:
    """``values`` over ``reference`` (paired by repeat): ratio of minima, of medians, per repeat."""
    return {
        "of_min": rounded(min(values) / min(reference), 4),
        "of_median": rounded(statistics.median(values) / statistics.median(reference), 4),
        "per_repeat": [rounded(v / r, 4) for v, r in zip(values, reference)],
    }
