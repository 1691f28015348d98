"""Optimisers compared seed by seed (paired tests), and learned optimisers compared over
their meta-training seeds, as pandas frames at full precision."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from l2lbench.report import stats
from l2lbench.report.grouping import Group, optimizer_label


def _pair(a: Group, b: Group) -> tuple[np.ndarray, np.ndarray]:
    fa, fb = a.finals(), b.finals()
    seeds = sorted(set(fa) & set(fb))
    return np.asarray([fa[s] for s in seeds]), np.asarray([fb[s] for s in seeds])


def paired_comparisons(
    groups: Mapping[str, Sequence[Group]],
    board: pd.DataFrame,
    *,
    reference: str | None,
    alpha: float = stats.ALPHA,
    seed: int = stats.BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """Each optimiser against its task's best-ranked one (and against the reference), paired by seed:
    the mean paired difference with its 95% bootstrap interval over the seeds both finished
    (``interval``: whether it excludes 0), and Wilcoxon's signed-rank verdict, which with
    few seeds cannot resolve anything (5 seeds: p >= 0.0625 always)."""
    columns = ["task", "optimizer", "versus", "pairs", "mean_difference", "difference_low", "difference_high",
               "interval", "p_value", "verdict"]
    rows = []
    for task, task_groups in sorted(groups.items()):
        by_name = {g.optimizer: g for g in task_groups}
        ranked = board[board["task"] == task]
        if ranked.empty:
            continue
        best = str(ranked.iloc[0]["optimizer"])  # the board is sorted by rank, then name
        opponents = [best] + ([reference] if reference in by_name and reference != best else [])
        done: set[frozenset[str]] = set()
        for name in ranked["optimizer"]:
            for versus in opponents:
                if name == versus or frozenset((name, versus)) in done:
                    continue
                done.add(frozenset((name, versus)))
                a, b = _pair(by_name[name], by_name[versus])
                test = stats.paired_wilcoxon(a, b, alpha=alpha)
                low, high = stats.bootstrap_ci(a - b, seed=seed)  # non-finite pairs (a diverged seed) left out
                interval = ("lower" if high < 0 else "higher" if low > 0 else "includes 0") if math.isfinite(low) else "-"
                rows.append({"task": task, "optimizer": name, "versus": versus, "pairs": test.n,
                             "mean_difference": test.mean_difference, "difference_low": low, "difference_high": high,
                             "interval": interval, "p_value": test.p_value, "verdict": test.verdict})
    return pd.DataFrame(rows, columns=columns)


def _at_step(group: Group, step: int) -> float:
    """The group's mean test loss at the evaluation nearest ``step``."""
    steps, curves = group.curves()
    if not curves.size:
        return math.nan
    return float(curves.mean(axis=0)[int(np.argmin(np.abs(steps - step)))])


def meta_seed_summary(groups: Mapping[str, Sequence[Group]], *, seed: int = stats.BOOTSTRAP_SEED) -> pd.DataFrame:
    """Each learned optimiser meta-trained under several seeds, per task: the distribution
    of its mean final test loss over its meta-training seeds, how many meta-trainings
    failed, and a two-level interval. A meta-training fails when, at its own horizon, its
    mean test loss is worse than SGD's (the plain ``sgd`` entry) on the same task."""
    columns = ["task", "optimizer", "meta_seeds", "median_final_loss", "best_final_loss", "worst_final_loss",
               "failed", "horizon", "final_loss_low", "final_loss_high"]
    rows = []
    for task, task_groups in sorted(groups.items()):
        sgd = next((g for g in task_groups if g.records[0].optimizer_config.get("entry") == "sgd"
                    and not g.records[0].optimizer_config.get("non_default")), None)
        copies: dict[str, list[Group]] = defaultdict(list)
        for group in task_groups:
            if group.meta_training is not None:
                copies[optimizer_label(group.records[0])].append(group)
        for name, members in sorted(copies.items()):
            if len(members) < 2:
                continue
            finals = [g.ok_finals() for g in members]
            means = np.asarray([f.mean() if len(f) else math.nan for f in finals])
            horizon = members[0].meta_training.get("horizon")
            failed = None
            if sgd is not None and isinstance(horizon, int):
                failed = sum(not (_at_step(g, horizon) <= _at_step(sgd, horizon)) for g in members)
            low, high = stats.two_level_interval(finals, seed=seed)
            rows.append({"task": task, "optimizer": name, "meta_seeds": len(members),
                         "median_final_loss": float(np.nanmedian(means)) if np.isfinite(means).any() else math.nan,
                         "best_final_loss": float(np.nanmin(means)) if np.isfinite(means).any() else math.nan,
                         "worst_final_loss": float(np.max(means)) if np.isfinite(means).all() else math.nan,
                         "failed": failed, "horizon": horizon, "final_loss_low": low, "final_loss_high": high})
    return pd.DataFrame(rows, columns=columns)
