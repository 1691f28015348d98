"""The whole report as one JSON document at full precision."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from l2lbench.report.model import Report, machine_tables


def _plain(value: Any) -> Any:
    """JSON-able value: numpy scalars unboxed, nan/inf as null (JSON has neither)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in frame.astype(object).to_dict("records")]


def to_json(report: Report) -> str:
    """The whole report as one JSON document; floats keep every digit (repr round-trips)."""
    data: dict[str, Any] = {
        "results": report.results, "runs": report.runs, "suite": report.suite, "reference": report.reference,
        "notes": report.all_notes(),
    }
    data.update({name: _records(frame) for name, frame in machine_tables(report).items()})
    return json.dumps(data, indent=2, allow_nan=False) + "\n"
