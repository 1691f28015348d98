"""What a report lacks: a suite's runs that are not stored, and the runs that failed."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import pandas as pd

from l2lbench.spec.suite import Suite
from l2lbench.store.runs import RunRecord


def _seed_list(seeds: Iterable[int]) -> str:
    return ", ".join(map(str, sorted(seeds)))


def missing_runs(records: Sequence[RunRecord], suite: Suite, renamed: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Runs the suite expects (task x optimiser x seed index) that are not stored as
    ok/diverged; ``renamed``: the names its optimisers run under (a tuned suite's winners)."""
    renamed = renamed or {}
    finished = {(r.task_hash, r.optimizer_name, r.seed) for r in records if r.status in ("ok", "diverged")}
    failed = {(r.task_hash, r.optimizer_name, r.seed) for r in records if r.status == "failed"}
    rows = []
    for task in suite.tasks:
        for optimizer in suite.optimizers:
            name = renamed.get(optimizer.name, optimizer.name)
            keys = [(task.hash, name, s) for s in range(suite.seeds)]
            missing = [k[2] for k in keys if k not in finished]
            if missing:
                rows.append({"task": task.name, "optimizer": name, "missing": len(missing),
                             "seeds": _seed_list(missing), "failed_seeds": _seed_list(k[2] for k in keys if k in failed)})
    return pd.DataFrame(rows, columns=["task", "optimizer", "missing", "seeds", "failed_seeds"])


def failures(records: Sequence[RunRecord]) -> pd.DataFrame:
    """Failed runs with the first line of their error message."""
    rows = [
        {"task": r.task_name, "optimizer": r.optimizer_name, "seed": r.seed,
         "error": (r.error or "").strip().splitlines()[0] if (r.error or "").strip() else "(no message)"}
        for r in records if r.status == "failed"
    ]
    return pd.DataFrame(rows, columns=["task", "optimizer", "seed", "error"])
