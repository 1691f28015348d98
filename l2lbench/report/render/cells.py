"""Tables as text cells for people: numbers rounded to 4 significant digits, intervals,
blanks, and the column headings each text table shows.

Every ``*_display`` function takes a full-precision frame of a
:class:`~l2lbench.report.model.Report` and returns a frame of strings, the same for every
text format (markdown, github, latex, html).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd


def is_missing(value: Any) -> bool:
    """None, nan or pandas' NA."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def num(value: Any, digits: int = 4) -> str:
    """A number for people: ``digits`` significant digits, whole numbers above that; '-' for none.

    >>> num(0.123456), num(123456.7), num(float("nan"))
    ('0.1235', '123457', '-')
    """
    if is_missing(value):
        return "-"
    value = float(value)
    if abs(value) >= 10 ** digits:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def estimate(mean: float, low: float, high: float) -> str:
    """A mean with its interval, ``0.5 [0.4, 0.6]``; the mean alone without one, '-' without either.

    >>> estimate(0.5, 0.4, 0.6), estimate(0.5, math.nan, math.nan)
    ('0.5 [0.4, 0.6]', '0.5')
    """
    if math.isnan(mean):
        return "-"
    if math.isnan(low):
        return num(mean)
    return f"{num(mean)} [{num(low)}, {num(high)}]"


def blank_num(value: Any) -> str:
    """:func:`num`, but an empty cell for none (columns most rows leave empty)."""
    return "" if is_missing(value) else num(value)


def blank_text(value: Any) -> str:
    return "" if is_missing(value) else str(value)


def lr_cell(value: Any) -> str:
    # The learning rate beside every name, defaults too: the knob most comparisons hinge on.
    number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and not is_missing(value)
    return f"{value:g}" if number else "-"


def _speedup(row: Mapping[str, Any]) -> str:
    if math.isnan(row["speedup"]):
        return "-"
    return (">" if row["speedup_lower_bound"] else "") + num(row["speedup"], 3)


def _horizon(row: Mapping[str, Any]) -> str:
    horizon = row["meta_horizon"]
    if is_missing(horizon):
        return ""
    steps = row["task_steps"]
    # The estimator where it is not the papers' truncated back-propagation.
    estimator = row.get("meta_estimator")
    by = f" by {estimator.upper()}" if isinstance(estimator, str) and estimator != "tbptt" else ""
    # Say so where the task runs longer than the optimiser was ever unrolled for.
    if not is_missing(steps) and horizon < steps:
        return f"{num(horizon)}{by} (< {num(steps)} task steps)"
    return f"{num(horizon)}{by}"


def leaderboard_display(board: pd.DataFrame, reference: str | None) -> pd.DataFrame:
    """One task's leaderboard as text cells."""
    rows = []
    for row in board.to_dict("records"):
        best = "-" if math.isnan(row["best_loss"]) else f"{num(row['best_loss'])} @ {row['best_step']:.0f}"
        rows.append({
            "rank": num(row["rank"], 3),
            "optimizer": row["optimizer"],
            "lr": lr_cell(row["lr"]),
            "seeds": str(row["seeds"]),
            "final test loss [95% CI]": estimate(row["final_loss"], row["final_loss_low"], row["final_loss_high"]),
            "final test acc [95% CI]": estimate(row["final_accuracy"], row["final_accuracy_low"], row["final_accuracy_high"]),
            "best test loss @ step": best,
            "AUC": num(row["auc"]),
            f"speed-up vs {reference or '-'}": _speedup(row),
            "final/best": num(row["stability"], 3),
            "diverged": f"{row['diverged']}/{row['seeds']}",
            "time/run (s)": num(row["time_per_run_s"], 3),
            "time/step (ms)": num(row["time_per_step_s"] * 1000, 3),
            "meta-train horizon": _horizon(row),
            "meta-train time (s)": blank_num(row["meta_time_s"]),
            "meta-train learner steps": blank_num(row["meta_learner_steps"]),
        })
    return pd.DataFrame(rows)


def ranks_display(ranks: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([
        {"optimizer": r["optimizer"], "mean rank": num(r["mean_rank"], 3), "tasks": str(r["tasks"]),
         "first places": str(r["first_places"]), "meta-trained on": blank_text(r["meta_datasets"]).replace(",", ", "),
         "meta-train horizon": blank_num(r["meta_horizon"]), "meta-train time (s)": blank_num(r["meta_time_s"]),
         "meta-train learner steps": blank_num(r["meta_learner_steps"])}
        for r in ranks.to_dict("records")
    ])


def generalisation_display(gaps: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([
        {"optimizer": r["optimizer"], "kind": "learned" if r["learned"] else "hand-designed",
         "in-domain datasets": r["in_domain"].replace(",", ", "), "setting": r["setting"],
         "in-domain loss (tasks)": f"{num(r['in_loss'])} ({r['in_tasks']})",
         "shifted loss (tasks)": f"{num(r['out_loss'])} ({r['out_tasks']})",
         "gap (shifted - in)": num(r["gap"]),
         "diverged in / shifted": f"{num(r['in_diverged'], 2)} / {num(r['out_diverged'], 2)}"}
        for r in gaps.to_dict("records")
    ])


def comparisons_display(comparisons: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([
        {"optimizer": r["optimizer"], "versus": r["versus"], "pairs": str(r["pairs"]),
         "mean loss difference [95% CI]": estimate(r["mean_difference"], r["difference_low"], r["difference_high"]),
         "interval": r["interval"], "p": num(r["p_value"], 3), "Wilcoxon verdict": r["verdict"]}
        for r in comparisons.to_dict("records")
    ])


def target_display(rows: pd.DataFrame) -> pd.DataFrame:
    """One task's time-to-target rows (:mod:`l2lbench.report.target`), fastest first."""
    def steps(value: float) -> str:
        return "not reached" if not math.isfinite(value) else f"{value:.0f}"

    shown = rows.sort_values(["steps_to_target", "optimizer"], kind="stable")
    return pd.DataFrame([
        {"optimizer": r["optimizer"], "seeds reaching it": f"{r['reached']}/{r['seeds']}",
         "steps to target": steps(r["steps_to_target"]),
         "time to target (s)": "-" if not math.isfinite(r["time_to_target_s"]) else num(r["time_to_target_s"], 3)}
        for r in shown.to_dict("records")
    ])


def tuning_display(table: pd.DataFrame) -> pd.DataFrame:
    """A tuned suite's choices (:func:`l2lbench.report.tuning.table`)."""
    return pd.DataFrame([
        {"task": r["task"], "optimizer": r["optimizer"], "chosen": r["chosen"],
         f"validation {table.attrs.get('objective', 'final')} loss": num(r["objective"]), "range": r["range"],
         "candidates x tuning seeds": f"{r['candidates']} x {r['tuning_seeds']}",
         "on the edge": r["on_edge"] or "-", "tuning runs": str(r["tuning_runs"]),
         "tuning learner steps": str(r["tuning_learner_steps"]), "tuning time (s)": num(r["tuning_time_s"], 3)}
        for r in table.to_dict("records")
    ])


def meta_seeds_display(table: pd.DataFrame) -> pd.DataFrame:
    """Learned optimisers over their meta-training seeds (:func:`l2lbench.report.comparisons.meta_seed_summary`)."""
    return pd.DataFrame([
        {"task": r["task"], "optimizer": r["optimizer"], "meta-training seeds": str(r["meta_seeds"]),
         "median final loss": num(r["median_final_loss"]), "best": num(r["best_final_loss"]),
         "worst": num(r["worst_final_loss"]) if not is_missing(r["worst_final_loss"]) else "diverged",
         "failed meta-trainings": "-" if is_missing(r["failed"]) else f"{int(r['failed'])}/{r['meta_seeds']}",
         "mean final loss, 95% CI (both levels)": f"[{num(r['final_loss_low'])}, {num(r['final_loss_high'])}]"}
        for r in table.to_dict("records")
    ])


def published_display(table: pd.DataFrame) -> pd.DataFrame:
    """l2lbench beside the published curves (:func:`l2lbench.report.published.comparison`)."""
    return pd.DataFrame([
        {"task": r["task"], "optimizer": r["optimizer"], "figure": r["figure"], "step": str(r["step"]),
         "l2lbench": num(r["l2lbench"]), "published [min, max]": estimate(r["published"], r["published_min"],
                                                                         r["published_max"]),
         "l2lbench / published": num(r["ratio"], 3), "meta-trained on": blank_text(r["meta_trained_on"]).replace(",", ", ")}
        for r in table.to_dict("records")
    ])


def missing_display(missing: pd.DataFrame) -> pd.DataFrame:
    """A suite's missing runs (:func:`l2lbench.report.completeness.missing_runs`)."""
    return missing.rename(columns={"failed_seeds": "failed seeds", "seeds": "missing seeds"}).astype(str)
