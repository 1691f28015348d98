"""Time to a target validation loss (AlgoPerf's measure) and performance profiles across tasks.

The target of a task is ``TARGET_SLACK`` times the lowest mean final validation loss of a
hand-designed optimiser on it: "as good as the best baseline ends, within 10%". Derived from
validation curves, it reads nothing of the test split. A seed reaches the target at the first
evaluation whose validation loss is at or below it; a row gives the median of its seeds'
steps (a seed that never reaches it, or diverged, counts as never) and that many steps at
the row's own time per step. The performance profile (Dolan & More 2002) of an optimiser
is, for each tau >= 1, the fraction of tasks on which it reaches the target within tau
times the fewest steps any optimiser needs there.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

TARGET_SLACK = 1.1
COLUMNS = ["task", "optimizer", "target", "reached", "seeds", "steps_to_target", "time_to_target_s"]


def _final_validation(group: Any) -> float:
    finals = [r.validation_loss[-1] for r in group.ok if r.validation_loss]
    return float(np.mean(finals)) if finals else math.nan


def targets(groups: Mapping[str, Sequence[Any]]) -> dict[str, float]:
    """Per task, the target validation loss (nan where no hand-designed optimiser has
    validation curves: runs stored before l2lbench recorded them)."""
    out = {}
    for task, task_groups in groups.items():
        finals = [_final_validation(g) for g in task_groups if g.meta_training is None]
        finals = [v for v in finals if math.isfinite(v)]
        out[task] = TARGET_SLACK * min(finals) if finals else math.nan
    return out


def _steps_to(record: Any, target: float) -> float:
    if record.status != "ok":
        return math.inf
    for step, value in zip(record.eval_steps, record.validation_loss):
        if math.isfinite(value) and value <= target:
            return float(step)
    return math.inf


def time_to_target(groups: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """One row per task and optimiser (see the module docstring)."""
    rows = []
    for task, target in sorted(targets(groups).items()):
        if not math.isfinite(target):
            continue
        for group in groups[task]:
            steps = [_steps_to(r, target) for r in group.records]
            median = float(np.median(steps)) if steps else math.inf
            per_step = group.wall_times()[1]
            rows.append({
                "task": task, "optimizer": group.optimizer, "target": target,
                "reached": sum(math.isfinite(s) for s in steps), "seeds": len(steps),
                "steps_to_target": median,
                "time_to_target_s": median * per_step if math.isfinite(median) else math.inf,
            })
    return pd.DataFrame(rows, columns=COLUMNS)


def profile(table: pd.DataFrame, taus: Sequence[float] | None = None) -> pd.DataFrame:
    """The performance profile: fraction of tasks each optimiser solves within tau x best."""
    taus = list(taus) if taus is not None else list(np.geomspace(1.0, 64.0, 61))
    if table.empty:
        return pd.DataFrame(columns=["optimizer", "tau", "fraction"])
    best = table.groupby("task")["steps_to_target"].min()
    tasks = sorted(best.index)
    rows = []
    for optimizer, runs in table.groupby("optimizer", sort=True):
        ratios = []
        for task in tasks:
            mine = runs.loc[runs["task"] == task, "steps_to_target"]
            fewest = best[task]
            if mine.empty or not math.isfinite(mine.iloc[0]) or not math.isfinite(fewest):
                ratios.append(math.inf)
            else:  # step 0 reaches nothing in practice; guard the ratio anyway
                ratios.append(max(mine.iloc[0], 1.0) / max(fewest, 1.0))
        for tau in taus:
            rows.append({"optimizer": optimizer, "tau": float(tau),
                         "fraction": sum(r <= tau for r in ratios) / len(tasks)})
    return pd.DataFrame(rows)
