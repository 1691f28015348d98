"""Tables as CSV at full precision: the leaderboard is the csv report, the other tables go
beside it (:mod:`l2lbench.cli.report`)."""

from __future__ import annotations

import json
from typing import Mapping

import pandas as pd


def to_csv(frame: pd.DataFrame) -> str:
    """A table as CSV; floats are written with repr, so they read back exactly, and
    tables (the hyperparameters) as JSON."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].map(lambda v: isinstance(v, Mapping)).any():
            frame[column] = frame[column].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, Mapping) else v)
    return frame.to_csv(index=False)
