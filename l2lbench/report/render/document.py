"""A report as format-independent blocks: which sections it has, in what order, with what
prose; the text formats (:mod:`~l2lbench.report.render.markdown`,
:mod:`~l2lbench.report.render.latex`, :mod:`~l2lbench.report.render.html`) each write them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd

from l2lbench.report import published, target
from l2lbench.report.grouping import Group, learned_datasets
from l2lbench.report.model import Report
from l2lbench.report.render.cells import (
    comparisons_display,
    generalisation_display,
    leaderboard_display,
    meta_seeds_display,
    missing_display,
    num,
    published_display,
    ranks_display,
    target_display,
    tuning_display,
)


@dataclass(frozen=True)
class Block:
    """One piece of a text report: a heading (level 1-3), a paragraph, a list, a table or an image."""

    kind: str  # "heading", "text", "list", "table", "image"
    content: Any
    level: int = 0


def _task_domain_note(groups: Sequence[Group], domains: Mapping[str, tuple[str, ...]]) -> str | None:
    dataset = groups[0].dataset if groups else None
    if not domains or dataset is None:
        return None
    inside = [name for name, ds in sorted(domains.items()) if dataset in ds]
    outside = [name for name, ds in sorted(domains.items()) if dataset not in ds]
    parts = [f"dataset {dataset}"]
    if inside:
        parts.append(f"in the meta-training domain of {', '.join(inside)}")
    if outside:
        parts.append(f"shifted for {', '.join(outside)}")
    return "; ".join(parts) + "."


def document(report: Report, images: Mapping[str, str] | None = None) -> list[Block]:
    """The report as format-independent blocks (text cells already formatted)."""
    images = images or {}
    blocks = [Block("heading", "l2lbench report", 1)]
    scope = f"results: {report.results} ({report.runs} runs stored"
    scope += f", suite {report.suite})" if report.suite else ")"
    blocks.append(Block("text", f"{scope}; reference optimiser: {report.reference or 'none'}."))
    domains = learned_datasets(report.groups)
    blocks.append(Block("heading", "Leaderboards", 2))
    if report.leaderboard.empty:
        blocks.append(Block("text", "No finished runs to rank."))
    for task, board in report.leaderboard.groupby("task", sort=True) if not report.leaderboard.empty else []:
        blocks.append(Block("heading", task, 3))
        note = _task_domain_note(report.groups.get(task, []), domains)
        if note:
            blocks.append(Block("text", note))
        blocks.append(Block("table", leaderboard_display(board, report.reference)))
        if f"task/{task}" in images:
            blocks.append(Block("image", (images[f"task/{task}"], f"test loss on {task}")))
    blocks += _summary_blocks(report, images)
    if not report.tuning.empty:
        blocks += _tuning_blocks(report.tuning, images)
    if not report.time_to_target.empty:
        blocks += _target_blocks(report.time_to_target, images)
    blocks.append(Block("heading", "Paired comparisons", 2))
    if report.comparisons.empty:
        blocks.append(Block("text", "Nothing to compare (one optimiser per task)."))
    else:
        blocks.append(Block("text", "Each optimiser against the task's best-ranked one and against the reference, "
                                    "seeds paired by index; mean loss difference = optimizer - versus, with its 95% "
                                    "bootstrap interval over the pairs ('interval': the optimiser's final loss is "
                                    "lower or higher than versus' when the interval excludes 0). The Wilcoxon "
                                    "signed-rank verdict (alpha 0.05) reads 'optimizer is ... than versus'; with "
                                    "fewer than 6 seeds it cannot resolve anything. A bootstrap interval over fewer than 8 pairs "
                                    "is too narrow: read it with care."))
    for task, rows in report.comparisons.groupby("task", sort=True) if not report.comparisons.empty else []:
        blocks.append(Block("heading", task, 3))
        blocks.append(Block("table", comparisons_display(rows)))
    if not report.meta_seeds.empty:
        blocks += _meta_seed_blocks(report.meta_seeds)
    if not report.published.empty:
        blocks += _published_blocks(report.published)
    if report.missing is not None:
        blocks.append(Block("heading", "Missing runs", 2))
        if report.missing.empty:
            blocks.append(Block("text", f"None: every run of suite {report.suite} is stored."))
        else:
            total = int(report.missing["missing"].sum())
            blocks.append(Block("text", f"{total} runs of suite {report.suite} are not stored (finished):"))
            blocks.append(Block("table", missing_display(report.missing)))
    if not report.failures.empty:
        blocks.append(Block("heading", "Failed runs", 2))
        blocks.append(Block("list", [f"{r['task']} / {r['optimizer']} / seed {r['seed']}: {r['error']}"
                                     for r in report.failures.to_dict("records")]))
    blocks.append(Block("heading", "Notes", 2))
    blocks.append(Block("list", report.all_notes()))
    return blocks


def _summary_blocks(report: Report, images: Mapping[str, str]) -> list[Block]:
    blocks = [Block("heading", "Suite summary", 2)]
    if report.ranks.empty:
        return blocks + [Block("text", "No finished runs to rank.")]
    blocks.append(Block("text", "Mean rank over the tasks each optimiser ran (1 = best)."))
    blocks.append(Block("table", ranks_display(report.ranks)))
    if "ranks" in images:
        blocks.append(Block("image", (images["ranks"], "rank per task")))
    if not report.generalisation.empty:
        blocks.append(Block("heading", "Generalisation gap", 3))
        blocks.append(Block("text", "Mean final test loss on the shifted tasks minus on the in-domain tasks, within "
                                    "one setting (learner and budget). Hand-designed optimisers use the union of the "
                                    "learned optimisers' meta-training datasets as their in-domain set."))
        blocks.append(Block("table", generalisation_display(report.generalisation)))
    for key in sorted(k for k in images if k.startswith("domain-shift/")):
        blocks.append(Block("image", (images[key], f"domain shift: {key.split('/', 1)[1]}")))
    return blocks


def _tuning_blocks(table: pd.DataFrame, images: Mapping[str, str]) -> list[Block]:
    blocks = [
        Block("heading", "Tuning", 2),
        Block("text", "The suite's ruleset is 'tuned': each optimiser's candidates ran on tuning seeds (disjoint "
                      "from the final seeds) and the one with the lowest validation loss was run on the final "
                      "seeds (its leaderboard row, '<name>-tuned'); no choice read the test split. A value on the "
                      "edge of its range means the range may be too narrow. Learned optimisers are not tuned; "
                      "their meta-training cost is in the leaderboards."),
        Block("table", tuning_display(table)),
    ]
    for key in sorted(k for k in images if k.startswith("tuning/")):
        blocks.append(Block("image", (images[key], f"validation objective against each candidate, {key[7:]}")))
    return blocks


def _target_blocks(table: pd.DataFrame, images: Mapping[str, str]) -> list[Block]:
    blocks = [
        Block("heading", "Time to target", 2),
        Block("text", f"Per task, the target is {target.TARGET_SLACK:g} x the lowest mean final validation loss of "
                      "a hand-designed optimiser there. Steps: the median over seeds of the first evaluation at or "
                      "below the target (a seed that never gets there counts as never); time: that many steps at "
                      "the row's time per step."),
    ]
    for task, rows in table.groupby("task", sort=True):
        blocks.append(Block("heading", f"{task} (target validation loss {num(rows['target'].iloc[0])})", 3))
        blocks.append(Block("table", target_display(rows)))
    if "profile" in images:
        blocks.append(Block("text", "Performance profile: for each tau, the fraction of tasks on which an optimiser "
                                    "reaches the target within tau times the fewest steps any optimiser needs there."))
        blocks.append(Block("image", (images["profile"], "performance profile")))
    return blocks


def _meta_seed_blocks(table: pd.DataFrame) -> list[Block]:
    return [
        Block("heading", "Meta-training seeds", 2),
        Block("text", "A learned optimiser is a draw from its meta-training: each one meta-trained under several "
                      "seeds is summarised over them (the leaderboards show each copy as 'name [meta-seed k]'). "
                      "Median, best and worst of the copies' mean final test loss; a meta-training failed when, at "
                      "its own horizon, its mean test loss is worse than SGD's on the task ('-': no SGD run); the "
                      "interval resamples the meta-training seeds, then each one's seeds."),
        Block("table", meta_seeds_display(table)),
    ]


def _published_blocks(table: pd.DataFrame) -> list[Block]:
    return [
        Block("heading", "Against the published curves", 2),
        Block("text", f"Mean test loss of the runs that repeat a setting of Kuo et al. (2020) beside the curve "
                      f"published for it ({published.SOURCE}: the learned optimisers' curves multiplied back by "
                      "126.58, the baselines' by 31.95; the paper's figures plot the learned curves on a scale about "
                      "4x smaller). Published min and max are over its runs; the plots draw each published curve "
                      "dotted."),
        Block("table", published_display(table)),
    ]
