"""The report as data: every table at full precision, built from stored runs.

:func:`build_report` turns :class:`~l2lbench.store.runs.RunRecord` objects into a
:class:`Report` of pandas frames (:mod:`l2lbench.report.leaderboard`,
:mod:`l2lbench.report.comparisons`, ...); :mod:`l2lbench.report.render` writes it in each
format. How diverged seeds enter each number is documented in
:mod:`l2lbench.report.stats` and repeated in the report's notes (:data:`NOTES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pandas as pd

from l2lbench.report import published, stats, target
from l2lbench.report.comparisons import meta_seed_summary, paired_comparisons
from l2lbench.report.completeness import failures, missing_runs
from l2lbench.report.grouping import Group, group_runs
from l2lbench.report.leaderboard import generalisation_gaps, leaderboard, rank_summary
from l2lbench.spec.suite import Suite
from l2lbench.store.runs import RunRecord

#: What every report says about how its numbers were made (after the tables).
NOTES = (
    "Means and 95% confidence intervals (BCa bootstrap, scipy.stats.bootstrap, fixed seed) are over "
    "the seeds that finished; a single seed shows its value and no interval.",
    "A diverged seed (non-finite loss; its curves stop where it diverged) is counted in 'diverged' "
    "and left out of the means, curves and areas.",
    "Rank: by mean final test loss with each diverged seed counted as the worst final loss any seed "
    "finished with on the task; optimisers with more than half of their seeds diverged rank after all "
    "others; ties share the mean rank.",
    "AUC: the mean test loss over the evaluations (area under the curve per evaluation); lower is faster.",
    "Speed-up: steps the reference needs to reach this optimiser's final mean test loss divided by the "
    "steps this optimiser needs, on the mean curves at the evaluated steps; '>x' when the reference never "
    "reaches it within its x times as many steps; '-' for the reference itself.",
    "final/best: mean over seeds of final / best test loss (1 = no backsliding).",
    "Optimizer names carry every hyperparameter that differs from the optimiser's defaults, and 'lr' gives "
    "the learning rate, default or not ('-': none); csv and json give all hyperparameters "
    "('hyperparameters'), with the code fingerprint and protocol version of the runs.",
    "time/run, time/step: mean wall time of a run and of one learner step in it (seeds batched into one "
    "computation share its time equally), on the machines named in the runs' provenance; meta-training "
    "time is apart.",
    "meta-train horizon: the longest learner run a learned optimiser was meta-trained on, with its "
    "meta-gradient estimator where that is not truncated back-propagation (ES, PES); meta-train time and "
    "learner steps: what its meta-training cost, every particle's steps counted.",
    "Paired comparisons: seeds are paired by seed index (same initialisation and batches); Wilcoxon "
    "signed-rank test on final test loss, two-sided, alpha 0.05; a diverged seed is worse than any "
    "finished one. With fewer than 6 differing pairs no difference can reach p < 0.05.",
)


@dataclass
class Report:
    """Every table of a report, at full precision, plus what it was made from."""

    results: str
    runs: int
    reference: str | None
    suite: str | None
    groups: dict[str, list[Group]]
    leaderboard: pd.DataFrame
    ranks: pd.DataFrame
    generalisation: pd.DataFrame
    comparisons: pd.DataFrame
    failures: pd.DataFrame
    missing: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    # l2lbench beside the curves Kuo et al. (2020) published (report.published).
    published: pd.DataFrame = field(default_factory=pd.DataFrame)
    # Learned optimisers over their meta-training seeds (meta_seed_summary).
    meta_seeds: pd.DataFrame = field(default_factory=pd.DataFrame)
    # A tuned suite's choices (report.tuning.table).
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)
    # Steps and time to each task's target validation loss (report.target).
    time_to_target: pd.DataFrame = field(default_factory=pd.DataFrame)

    def all_notes(self) -> list[str]:
        """The standing notes (:data:`NOTES`), then this report's own."""
        return list(NOTES) + self.notes


def build_report(
    records: Sequence[RunRecord],
    *,
    results: str,
    reference: str | None,
    suite: Suite | None = None,
    seed: int = stats.BOOTSTRAP_SEED,
    alpha: float = stats.ALPHA,
    renamed: Mapping[str, str] | None = None,
) -> Report:
    """All tables of a report on ``records`` (already restricted to a suite when given);
    ``renamed``: the names the suite's optimisers ran under, where not their own."""
    groups = group_runs(records)
    board = leaderboard(groups, reference=reference, seed=seed)
    return Report(
        results=results,
        runs=len(records),
        reference=reference,
        suite=suite.name if suite else None,
        groups=groups,
        leaderboard=board,
        ranks=rank_summary(board),
        generalisation=generalisation_gaps(board),
        comparisons=paired_comparisons(groups, board, reference=reference, alpha=alpha, seed=seed),
        failures=failures(records),
        missing=missing_runs(records, suite, renamed) if suite else None,
        published=published.comparison(groups),
        meta_seeds=meta_seed_summary(groups, seed=seed),
        time_to_target=target.time_to_target(groups),
    )


def machine_tables(report: Report) -> dict[str, pd.DataFrame]:
    """The tables csv and json carry, by name, at full precision."""
    tables = {
        "leaderboard": report.leaderboard,
        "ranks": report.ranks,
        "generalisation": report.generalisation,
        "comparisons": report.comparisons,
        "failures": report.failures,
    }
    if report.missing is not None:
        tables["missing"] = report.missing
    if not report.published.empty:
        tables["published"] = report.published
    if not report.meta_seeds.empty:
        tables["meta_seeds"] = report.meta_seeds
    if not report.tuning.empty:
        tables["tuning"] = report.tuning
    if not report.time_to_target.empty:
        tables["time_to_target"] = report.time_to_target
    return tables
