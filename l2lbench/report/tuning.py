"""The report side of a ``tuned`` suite: what each tuning chose, from the stored tuning runs.

The choice is recomputed from the suite (its candidates are deterministic) and the stored
runs, exactly as ``run`` made it (:mod:`l2lbench.plan.tuning`), so a report never shows the
final runs of a candidate that is no longer the winner.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

import pandas as pd

from l2lbench.plan.tuning import Tuned, is_tuning_seed, score, tuning_plan

COLUMNS = ["task", "optimizer", "chosen", "objective", "range", "candidates", "tuning_seeds", "on_edge",
           "tuning_runs", "tuning_learner_steps", "tuning_time_s"]


def _device_types(records: Sequence[Any]) -> list[str]:
    # A non-learned optimiser's numerics is its device type ("cpu", "cuda"): part of its key.
    found = {str(r.optimizer_config.get("numerics") or "cpu").split("+")[0] for r in records if is_tuning_seed(r.seed)}
    return sorted(found) or ["cpu"]


def plans_for(suite: Any, registry: Any, records: Sequence[Any]) -> list[Tuned]:
    """The suite's tunings, scored from ``records`` (every stored run of its tasks), for
    each device type its tuning runs were computed on."""
    import dataclasses

    index: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for record in records:
        index[(record.task_hash, record.optimizer_hash)].append(record)
    plans = []
    resolved: dict[int, Any] = {}  # each optimiser resolved (its plug-in built) once, not once per task
    for device_type in _device_types(records):
        pairs = []
        for task, spec in suite.pairs():
            if id(spec) not in resolved:
                resolved[id(spec)] = registry.resolve(spec)
            optimizer = resolved[id(spec)]
            if not optimizer.learned:  # learned optimisers are never tuned
                pairs.append((task, dataclasses.replace(optimizer, numerics=device_type)))
        found = tuning_plan(pairs, suite.tuning, registry)
        score(found, lambda task, optimizer: index.get((task, optimizer), []), suite.tuning)
        plans += [p for p in found if p.runs]
    return plans


def final_records(records: Sequence[Any], plans: Sequence[Tuned]) -> tuple[list[Any], list[str]]:
    """The runs to report: no tuning runs, and of each tuned optimiser only its current
    winner's final runs; notes on what was left out."""
    chosen = {}
    for plan in plans:
        if plan.best is not None:
            chosen[(plan.task.hash, plan.tuned_name)] = plan.trials[plan.best][1].hash
    kept, stale, tuning = [], 0, 0
    for record in records:
        if is_tuning_seed(record.seed):
            tuning += 1
            continue
        winner = chosen.get((record.task_hash, record.optimizer_name))
        if winner is not None and record.optimizer_hash != winner:
            stale += 1
            continue
        kept.append(record)
    notes = []
    if tuning:
        notes.append(f"{tuning} tuning runs (validation only; seeds from 1000000) are not in the leaderboards"
                     + ("; the Tuning section summarises them." if plans else "; report with --suite to see the tuning."))
    if stale:
        notes.append(f"Left out {stale} final runs of tuned candidates that are no longer the winner.")
    return kept, notes


def table(plans: Sequence[Tuned], tuning: Any) -> pd.DataFrame:
    """One row per tuned optimiser and task: the winner, its validation objective, the
    range, what the tuning cost, and which hyperparameters ended on the edge of their range."""
    rows = []
    for plan in plans:
        best = plan.best
        rows.append({
            "task": plan.task.name,
            "optimizer": plan.base.name,
            "chosen": "-" if best is None else ", ".join(f"{k}={v:g}" for k, v in plan.trials[best][0].items()),
            "objective": math.nan if best is None else plan.objectives[best],
            "range": ", ".join(f"{k} in [{lo:g}, {hi:g}]" for k, (lo, hi) in sorted(plan.space.items())),
            "candidates": len(plan.trials),
            "tuning_seeds": tuning.seeds,
            "on_edge": ", ".join(plan.on_edge),
            "tuning_runs": plan.runs,
            "tuning_learner_steps": plan.learner_steps,
            "tuning_time_s": plan.wall_time_s,
        })
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.attrs["objective"] = tuning.objective
    return frame
