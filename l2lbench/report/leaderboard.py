"""Leaderboards (one row per optimiser and task), the suite's mean ranks and the
generalisation gaps, as pandas frames at full precision.

How diverged seeds enter each number is documented in :mod:`l2lbench.report.stats` and
repeated in the report's notes (:data:`l2lbench.report.model.NOTES`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from l2lbench.report import stats
from l2lbench.report.grouping import Group, setting_of
from l2lbench.store.runs import RunRecord


def _best(record: RunRecord) -> tuple[float, int]:
    losses = np.asarray(record.test_loss, dtype=float)
    i = int(np.nanargmin(losses))
    return float(losses[i]), int(record.eval_steps[i])


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _group_row(group: Group, reference: Group | None, *, worst: float, seed: int) -> dict[str, Any]:
    ok = group.ok
    finals = group.ok_finals()
    accuracy = np.asarray([r.test_accuracy[-1] for r in ok if r.test_accuracy], dtype=float)
    bests = [_best(r) for r in ok]
    loss, acc = stats.mean_ci(finals, seed=seed), stats.mean_ci(accuracy, seed=seed)
    steps, curves = group.curves()
    up = None
    if reference is not None and reference is not group and curves.size:
        ref_steps, ref_curves = reference.curves()
        if ref_curves.size:
            up = stats.speed_up(steps, curves.mean(axis=0), ref_steps, ref_curves.mean(axis=0))
    meta = group.meta_training or {}
    n = len(group.records)
    per_run, per_step = group.wall_times()
    fingerprint, protocol = group.code
    return {
        "task": group.task,
        "optimizer": group.optimizer,
        "dataset": group.dataset,
        "setting": setting_of(group.task, group.dataset),
        "seeds": n,
        "diverged": group.n_diverged,
        "diverged_fraction": group.n_diverged / n,
        "final_loss": loss.mean,
        "final_loss_low": loss.low,
        "final_loss_high": loss.high,
        "final_accuracy": acc.mean,
        "final_accuracy_low": acc.low,
        "final_accuracy_high": acc.high,
        "best_loss": _mean([b[0] for b in bests]),
        "best_step": _mean([b[1] for b in bests]),
        "auc": _mean([stats.area_under_curve(r.test_loss) for r in ok]),
        "speedup": up.value if up else math.nan,
        "speedup_lower_bound": bool(up and up.lower_bound),
        "stability": stats.stability(finals, np.asarray([b[0] for b in bests])),
        "rank_loss": stats.penalised_mean(np.asarray(list(group.finals().values())), worst),
        "time_per_run_s": per_run,
        "time_per_step_s": per_step,
        "lr": (group.hyperparameters or {}).get("lr"),
        "hyperparameters": group.hyperparameters,
        "code": fingerprint,
        "protocol": protocol,
        "numerics": group.records[0].optimizer_config.get("numerics"),
        "task_steps": group.task_steps,
        "meta_datasets": ",".join(group.meta_datasets or ()) if meta else None,
        "meta_horizon": meta.get("horizon"),
        "meta_trials": meta.get("trials"),
        "meta_time_s": meta.get("wall_time_s"),
        "meta_learner_steps": meta.get("learner_steps"),
        "meta_estimator": meta.get("estimator"),
    }


def task_leaderboard(groups: Sequence[Group], *, reference: str | None, seed: int = stats.BOOTSTRAP_SEED
                     ) -> pd.DataFrame:
    """One row per optimiser on one task, sorted by rank (columns: see the report's notes)."""
    finals = [v for g in groups for v in g.finals().values() if math.isfinite(v)]
    worst = max(finals) if finals else math.nan
    ref = next((g for g in groups if g.optimizer == reference), None)
    rows = [_group_row(g, ref, worst=worst, seed=seed) for g in groups]
    frame = pd.DataFrame(rows)
    frame.insert(2, "rank", stats.ranks(frame["rank_loss"].to_numpy(), last=frame["diverged_fraction"].to_numpy() > 0.5))
    # Counts stay integers beside blanks (hand-designed optimisers have no horizon).
    for column in ("task_steps", "meta_horizon", "meta_trials", "meta_learner_steps"):
        frame[column] = frame[column].astype("Int64")
    return frame.sort_values(["rank", "optimizer"], kind="stable").reset_index(drop=True)


def leaderboard(groups: Mapping[str, Sequence[Group]], *, reference: str | None, seed: int = stats.BOOTSTRAP_SEED
                ) -> pd.DataFrame:
    """Every task's leaderboard, stacked (one row per task and optimiser)."""
    frames = [task_leaderboard(g, reference=reference, seed=seed) for _, g in sorted(groups.items())]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def rank_summary(board: pd.DataFrame) -> pd.DataFrame:
    """Mean rank of each optimiser over the tasks it ran, best first."""
    if board.empty:
        return pd.DataFrame(columns=["optimizer", "mean_rank", "tasks", "first_places"])
    summary = board.groupby("optimizer", sort=True).agg(
        mean_rank=("rank", "mean"),
        tasks=("task", "nunique"),
        first_places=("rank", lambda r: int((r == 1).sum())),
        meta_datasets=("meta_datasets", "first"),
        meta_horizon=("meta_horizon", "first"),
        meta_time_s=("meta_time_s", "first"),
        meta_learner_steps=("meta_learner_steps", "first"),
    )
    return summary.reset_index().sort_values(["mean_rank", "optimizer"], kind="stable").reset_index(drop=True)


def _domain_means(rows: pd.DataFrame) -> tuple[int, float, float]:
    return len(rows), float(rows["final_loss"].mean()), float(rows["diverged_fraction"].mean())


def generalisation_gaps(board: pd.DataFrame) -> pd.DataFrame:
    """Out-of-domain minus in-domain mean final loss per optimiser and setting.

    A learned optimiser's in-domain tasks are those on the datasets it was meta-trained
    on; hand-designed optimisers use the union of the learned optimisers' datasets, so
    their gap shows how much harder the shifted tasks are without meta-training.
    Tasks are compared only within one setting (same learner and budget). Empty when no
    learned optimiser ran.
    """
    columns = ["optimizer", "learned", "in_domain", "setting", "in_tasks", "in_loss", "out_tasks", "out_loss",
               "gap", "in_diverged", "out_diverged"]
    if board.empty or board["meta_datasets"].isna().all():
        return pd.DataFrame(columns=columns)
    domains = {
        name: set(datasets.split(","))
        for name, datasets in board.dropna(subset=["meta_datasets"]).groupby("optimizer")["meta_datasets"].first().items()
    }
    union = set().union(*domains.values())
    rows = []
    known = board.dropna(subset=["dataset"])
    for (optimizer, setting), runs in known.groupby(["optimizer", "setting"], sort=True):
        domain = domains.get(optimizer, union)
        inside = runs[runs["dataset"].isin(domain)]
        outside = runs[~runs["dataset"].isin(domain)]
        if inside.empty or outside.empty:
            continue
        n_in, loss_in, div_in = _domain_means(inside)
        n_out, loss_out, div_out = _domain_means(outside)
        rows.append({
            "optimizer": optimizer, "learned": optimizer in domains, "in_domain": ",".join(sorted(domain)),
            "setting": setting, "in_tasks": n_in, "in_loss": loss_in, "out_tasks": n_out, "out_loss": loss_out,
            "gap": loss_out - loss_in, "in_diverged": div_in, "out_diverged": div_out,
        })
    frame = pd.DataFrame(rows, columns=columns)
    # Learned optimisers first within each setting, the hand-designed baselines below them.
    frame = frame.sort_values(["setting", "learned", "optimizer"], ascending=[True, False, True], kind="stable")
    return frame.reset_index(drop=True)
