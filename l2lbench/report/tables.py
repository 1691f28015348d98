"""Report tables: leaderboards, suite summary, generalisation gaps, paired tests, missing runs.

Everything here reads :class:`~l2lbench.store.RunRecord` objects and builds pandas
DataFrames whose numbers keep full precision (for csv and json); :func:`render` turns
them into text for people through tabulate, numbers rounded to 4 significant digits.
How diverged seeds enter each number is documented in :mod:`l2lbench.report.stats`
and repeated in the report's notes (:data:`NOTES`).
"""

from __future__ import annotations

import functools
import html
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from tabulate import tabulate

from ..errors import L2LBenchError
from ..store import RunRecord
from ..suite import Suite
from . import published, stats, target

#: Text formats and the tabulate table format each one uses.
TABLE_FORMATS = {"markdown": "pipe", "github": "github", "latex": "latex_booktabs", "html": "html"}
#: Every format :func:`render` writes.
FORMATS = (*TABLE_FORMATS, "csv", "json")
#: Seeds the bootstrap resampling, so a report is the same every time it is made.
BOOTSTRAP_SEED = 0
#: Provenance key under which a learned optimiser's runs describe its meta-training.
META_TRAINING = "meta_training"

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
    "Paired comparisons: seeds are paired by seed index (same initialisation and batches); Wilcoxon "
    "signed-rank test on final test loss, two-sided, alpha 0.05; a diverged seed is worse than any "
    "finished one. With fewer than 6 differing pairs no difference can reach p < 0.05.",
)


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Group:
    """The finished runs (ok or diverged) of one optimiser on one task, ordered by seed."""

    task: str
    optimizer: str
    records: tuple[RunRecord, ...]

    @property
    def ok(self) -> tuple[RunRecord, ...]:
        return tuple(r for r in self.records if r.status == "ok" and r.test_loss)

    @property
    def n_diverged(self) -> int:
        return sum(r.status == "diverged" for r in self.records)

    @property
    def meta_training(self) -> dict[str, Any] | None:
        """The learned optimiser's meta-training description; None for hand-designed ones."""
        for record in self.records:
            meta = record.provenance.get(META_TRAINING)
            if isinstance(meta, Mapping):
                return dict(meta)
        return None

    @property
    def hyperparameters(self) -> dict[str, Any] | None:
        """Every resolved hyperparameter of the runs (defaults filled in)."""
        hparams = self.records[0].optimizer_config.get("hparams")
        return dict(hparams) if isinstance(hparams, Mapping) else None

    @property
    def code(self) -> tuple[str | None, int | None]:
        """(code fingerprint, protocol version) of the runs; None where an older
        l2lbench stored them without."""
        return code_version(self.records[0])

    def wall_times(self) -> tuple[float, float]:
        """Mean wall time per run (s) and per learner step (s) over the finished runs.

        Seeds that ran batched as one computation share its time equally."""
        total = sum(r.wall_time_s for r in self.records)
        steps = sum(len(r.train_loss) for r in self.records)
        return total / len(self.records), (total / steps if steps else math.nan)

    @property
    def task_steps(self) -> int | None:
        steps = self.records[0].task_config.get("steps")
        return steps if isinstance(steps, int) else None

    @property
    def dataset(self) -> str | None:
        return dataset_name(self.records[0].task_config)

    def finals(self) -> dict[int, float]:
        """Final test loss per seed; nan for a diverged seed."""
        return {r.seed: (r.test_loss[-1] if r.status == "ok" and r.test_loss else math.nan) for r in self.records}

    def curves(self, what: str = "test_loss") -> tuple[np.ndarray, np.ndarray]:
        """(eval steps, values of shape (seeds, evals)) over the seeds that finished."""
        ok = self.ok
        if not ok:
            return np.zeros(0, int), np.zeros((0, 0))
        # Every finished seed of a task evaluates at the same steps; the cut guards
        # against stores that mix task versions under one hash.
        length = min(len(r.eval_steps) for r in ok)
        steps = np.asarray(ok[0].eval_steps[:length], dtype=int)
        return steps, np.asarray([getattr(r, what)[:length] for r in ok], dtype=float)

    def label(self) -> str:
        """The optimiser's name, with its meta-training domain and horizon when learned."""
        meta = self.meta_training
        if not meta:
            return self.optimizer
        datasets = ", ".join(map(str, meta.get("datasets", []))) or "?"
        horizon = meta.get("horizon")
        return f"{self.optimizer} (meta-trained on {datasets}" + (f", {horizon} steps)" if horizon else ")")


@functools.lru_cache(maxsize=None)
def _dataset_name(config_json: str) -> str | None:
    from ..tasks.datasets import dataset_from_config

    try:
        return dataset_from_config(json.loads(config_json)).name
    except (L2LBenchError, TypeError, ValueError, KeyError):
        return None


def dataset_name(task_config: Mapping[str, Any]) -> str | None:
    """The dataset name of a stored task config (rebuilt from its spec); None if unknown here."""
    dataset = task_config.get("dataset")
    if not isinstance(dataset, Mapping):
        return None
    return _dataset_name(json.dumps(dataset, sort_keys=True))


def setting_of(task: str, dataset: str | None) -> str:
    """The task name without its dataset: learner and budget, the same across domains.

    >>> setting_of("rotmnist45-mlp784x32x10-relu-1000steps", "rotmnist45")
    'mlp784x32x10-relu-1000steps'
    """
    if dataset and task.startswith(dataset + "-"):
        return task[len(dataset) + 1:]
    return task


def code_version(record: RunRecord) -> tuple[str | None, int | None]:
    """(code fingerprint, protocol version) a run was stored with (see l2lbench.codeid)."""
    config = record.optimizer_config
    code = config.get("code")
    fingerprint = code.get("fingerprint") if isinstance(code, Mapping) else None
    protocol = config.get("protocol")
    return fingerprint, protocol if isinstance(protocol, int) else None


def optimizer_label(record: RunRecord) -> str:
    """The optimiser's name with its non-default hyperparameters (``lion(lr=0.0001)``);
    the stored name for runs stored before labels were."""
    label = record.optimizer_config.get("display_name")
    return label if isinstance(label, str) and label else record.optimizer_name


#: Longest name a report shows (a store may hold longer ones, e.g. written by hand).
MAX_SHOWN = 100


def _display_names(pairs: Iterable[tuple[str, str]], versions: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> dict[str, str]:
    """hash -> name, cut to :data:`MAX_SHOWN` characters; where one name stands for several
    hashes, the parts of ``versions`` (hash -> {"code": ..., "meta-seed": ...}) that tell
    them apart are added (``lstm [meta-seed 1]``, ``sign [code 1a2b3c4d]``), else the hash."""
    names: dict[str, str] = {key: name if len(name) <= MAX_SHOWN else f"{name[:MAX_SHOWN - 12]}... [{key[:8]}]"
                             for key, name in pairs}
    by_name: dict[str, list[str]] = defaultdict(list)
    for key, name in names.items():
        by_name[name].append(key)
    out = {}
    for name, keys in by_name.items():
        if len(keys) == 1:
            out[keys[0]] = name
            continue
        parts = [dict((versions or {}).get(key, {})) for key in keys]
        differing = [p for p in dict.fromkeys(k for part in parts for k in part) if len({str(x.get(p)) for x in parts}) > 1]
        tags = [", ".join(f"{p} {part.get(p, 'unknown')}" for p in differing) for part in parts]
        unique = len(set(tags)) == len(tags) and all(tags)
        for key, tag in zip(keys, tags):
            out[key] = f"{name} [{tag if unique else key[:8]}]"
    return out


def version_parts(record: RunRecord) -> dict[str, Any]:
    """What can set two runs of one optimiser name apart: its code, protocol, numerics and
    meta-training seed (see l2lbench.codeid, l2lbench.runner.numerics)."""
    fingerprint, protocol = code_version(record)
    config = record.optimizer_config
    parts: dict[str, Any] = {"code": fingerprint[:8] if fingerprint else "unknown",
                             "protocol": protocol if protocol is not None else "unknown",
                             "numerics": config.get("numerics", "unknown")}
    meta = config.get("meta_training")
    if isinstance(meta, Mapping):
        parts["meta-seed"] = meta.get("seed", 0)
    return parts


def group_runs(records: Sequence[RunRecord]) -> dict[str, list[Group]]:
    """Finished runs grouped by task, then optimiser (by hash: one name never mixes
    configs or code versions)."""
    tasks = _display_names((r.task_hash, r.task_name) for r in records)
    optimizers = _display_names(((r.optimizer_hash, optimizer_label(r)) for r in records),
                                {r.optimizer_hash: version_parts(r) for r in records})
    buckets: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        if record.status in ("ok", "diverged"):
            buckets[(tasks[record.task_hash], optimizers[record.optimizer_hash])].append(record)
    grouped: dict[str, list[Group]] = defaultdict(list)
    for (task, optimizer), runs in sorted(buckets.items()):
        grouped[task].append(Group(task, optimizer, tuple(sorted(runs, key=lambda r: r.seed))))
    return dict(grouped)


def learned_datasets(groups: Mapping[str, Sequence[Group]]) -> dict[str, tuple[str, ...]]:
    """Learned optimiser -> the datasets it was meta-trained on."""
    out: dict[str, tuple[str, ...]] = {}
    for task_groups in groups.values():
        for group in task_groups:
            meta = group.meta_training
            if meta is not None and group.optimizer not in out:
                out[group.optimizer] = tuple(str(d) for d in meta.get("datasets", []))
    return out


# --------------------------------------------------------------------------- leaderboard


def _best(record: RunRecord) -> tuple[float, int]:
    losses = np.asarray(record.test_loss, dtype=float)
    i = int(np.nanargmin(losses))
    return float(losses[i]), int(record.eval_steps[i])


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _group_row(group: Group, reference: Group | None, *, worst: float, seed: int) -> dict[str, Any]:
    ok = group.ok
    finals = np.asarray([r.test_loss[-1] for r in ok], dtype=float)
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
        "meta_datasets": ",".join(map(str, meta.get("datasets", []))) if meta else None,
        "meta_horizon": meta.get("horizon"),
        "meta_trials": meta.get("trials"),
        "meta_time_s": meta.get("wall_time_s"),
    }


def task_leaderboard(groups: Sequence[Group], *, reference: str | None, seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """One row per optimiser on one task, sorted by rank (columns: see :data:`NOTES`)."""
    finals = [v for g in groups for v in g.finals().values() if math.isfinite(v)]
    worst = max(finals) if finals else math.nan
    ref = next((g for g in groups if g.optimizer == reference), None)
    rows = [_group_row(g, ref, worst=worst, seed=seed) for g in groups]
    frame = pd.DataFrame(rows)
    frame.insert(2, "rank", stats.ranks(frame["rank_loss"].to_numpy(), last=frame["diverged_fraction"].to_numpy() > 0.5))
    # Counts stay integers beside blanks (hand-designed optimisers have no horizon).
    for column in ("task_steps", "meta_horizon", "meta_trials"):
        frame[column] = frame[column].astype("Int64")
    return frame.sort_values(["rank", "optimizer"], kind="stable").reset_index(drop=True)


def leaderboard(groups: Mapping[str, Sequence[Group]], *, reference: str | None, seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """Every task's leaderboard, stacked (one row per task and optimiser)."""
    frames = [task_leaderboard(g, reference=reference, seed=seed) for _, g in sorted(groups.items())]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --------------------------------------------------------------------------- suite summary


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


# --------------------------------------------------------------------------- paired tests


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
    seed: int = BOOTSTRAP_SEED,
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


# --------------------------------------------------------------------------- meta-training seeds

#: Resamples of the two-level bootstrap over meta-training seeds, then seeds.
META_BOOTSTRAP = 2000


def _at_step(group: Group, step: int) -> float:
    """The group's mean test loss at the evaluation nearest ``step``."""
    steps, curves = group.curves()
    if not curves.size:
        return math.nan
    return float(curves.mean(axis=0)[int(np.argmin(np.abs(steps - step)))])


def two_level_interval(samples: Sequence[np.ndarray], *, seed: int, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of the mean over meta-training seeds of the mean over seeds,
    resampling both levels: the meta-training seeds, then the seeds of each one drawn."""
    samples = [s for s in samples if len(s)]
    if len(samples) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    stats_ = np.empty(META_BOOTSTRAP)
    for b in range(META_BOOTSTRAP):
        chosen = rng.integers(len(samples), size=len(samples))
        stats_[b] = np.mean([rng.choice(samples[i], size=len(samples[i])).mean() for i in chosen])
    return float(np.quantile(stats_, alpha / 2)), float(np.quantile(stats_, 1 - alpha / 2))


def meta_seed_summary(groups: Mapping[str, Sequence[Group]], *, seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
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
            finals = [np.asarray([r.test_loss[-1] for r in g.ok], dtype=float) for g in members]
            means = np.asarray([f.mean() if len(f) else math.nan for f in finals])
            horizon = members[0].meta_training.get("horizon")
            failed = None
            if sgd is not None and isinstance(horizon, int):
                failed = sum(not (_at_step(g, horizon) <= _at_step(sgd, horizon)) for g in members)
            low, high = two_level_interval(finals, seed=seed)
            rows.append({"task": task, "optimizer": name, "meta_seeds": len(members),
                         "median_final_loss": float(np.nanmedian(means)) if np.isfinite(means).any() else math.nan,
                         "best_final_loss": float(np.nanmin(means)) if np.isfinite(means).any() else math.nan,
                         "worst_final_loss": float(np.max(means)) if np.isfinite(means).all() else math.nan,
                         "failed": failed, "horizon": horizon, "final_loss_low": low, "final_loss_high": high})
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- missing and failed


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


# --------------------------------------------------------------------------- the report


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


def build_report(
    records: Sequence[RunRecord],
    *,
    results: str,
    reference: str | None,
    suite: Suite | None = None,
    seed: int = BOOTSTRAP_SEED,
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


# --------------------------------------------------------------------------- formatting


def _missing(value: Any) -> bool:
    """None, nan or pandas' NA."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def num(value: Any, digits: int = 4) -> str:
    """A number for people: ``digits`` significant digits, whole numbers above that; '-' for none.

    >>> num(0.123456), num(123456.7), num(float("nan"))
    ('0.1235', '123457', '-')
    """
    if _missing(value):
        return "-"
    value = float(value)
    if abs(value) >= 10 ** digits:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def _estimate(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(low):
        return num(mean)
    return f"{num(mean)} [{num(low)}, {num(high)}]"


def _speedup(row: Mapping[str, Any], reference: str | None) -> str:
    if math.isnan(row["speedup"]):
        return "-"
    return (">" if row["speedup_lower_bound"] else "") + num(row["speedup"], 3)


def _horizon(row: Mapping[str, Any]) -> str:
    horizon = row["meta_horizon"]
    if _missing(horizon):
        return ""
    steps = row["task_steps"]
    # Say so where the task runs longer than the optimiser was ever unrolled for.
    if not _missing(steps) and horizon < steps:
        return f"{num(horizon)} (< {num(steps)} task steps)"
    return num(horizon)


def _text(value: Any) -> str:
    return "" if _missing(value) else str(value)


def _blank(value: Any) -> str:
    return "" if _missing(value) else num(value)


def _lr(value: Any) -> str:
    # The learning rate beside every name, defaults too: the knob most comparisons hinge on.
    number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and not _missing(value)
    return f"{value:g}" if number else "-"


def leaderboard_display(board: pd.DataFrame, reference: str | None) -> pd.DataFrame:
    """One task's leaderboard as text cells."""
    rows = []
    for row in board.to_dict("records"):
        best = "-" if math.isnan(row["best_loss"]) else f"{num(row['best_loss'])} @ {row['best_step']:.0f}"
        rows.append({
            "rank": num(row["rank"], 3),
            "optimizer": row["optimizer"],
            "lr": _lr(row["lr"]),
            "seeds": str(row["seeds"]),
            "final test loss [95% CI]": _estimate(row["final_loss"], row["final_loss_low"], row["final_loss_high"]),
            "final test acc [95% CI]": _estimate(row["final_accuracy"], row["final_accuracy_low"], row["final_accuracy_high"]),
            "best test loss @ step": best,
            "AUC": num(row["auc"]),
            f"speed-up vs {reference or '-'}": _speedup(row, reference),
            "final/best": num(row["stability"], 3),
            "diverged": f"{row['diverged']}/{row['seeds']}",
            "time/run (s)": num(row["time_per_run_s"], 3),
            "time/step (ms)": num(row["time_per_step_s"] * 1000, 3),
            "meta-train horizon": _horizon(row),
            "meta-train time (s)": _blank(row["meta_time_s"]),
        })
    return pd.DataFrame(rows)


def ranks_display(ranks: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([
        {"optimizer": r["optimizer"], "mean rank": num(r["mean_rank"], 3), "tasks": str(r["tasks"]),
         "first places": str(r["first_places"]), "meta-trained on": _text(r["meta_datasets"]).replace(",", ", "),
         "meta-train horizon": _blank(r["meta_horizon"]), "meta-train time (s)": _blank(r["meta_time_s"])}
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
         "mean loss difference [95% CI]": _estimate(r["mean_difference"], r["difference_low"], r["difference_high"]),
         "interval": r["interval"], "p": num(r["p_value"], 3), "Wilcoxon verdict": r["verdict"]}
        for r in comparisons.to_dict("records")
    ])


# --------------------------------------------------------------------------- documents


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
            blocks.append(Block("table", report.missing.rename(columns={"failed_seeds": "failed seeds",
                                                                        "seeds": "missing seeds"}).astype(str)))
    if not report.failures.empty:
        blocks.append(Block("heading", "Failed runs", 2))
        blocks.append(Block("list", [f"{r['task']} / {r['optimizer']} / seed {r['seed']}: {r['error']}"
                                     for r in report.failures.to_dict("records")]))
    blocks.append(Block("heading", "Notes", 2))
    blocks.append(Block("list", list(NOTES) + report.notes))
    return blocks


def _target_blocks(table: pd.DataFrame, images: Mapping[str, str]) -> list[Block]:
    def steps(value: float) -> str:
        return "not reached" if not math.isfinite(value) else f"{value:.0f}"

    blocks = [
        Block("heading", "Time to target", 2),
        Block("text", f"Per task, the target is {target.TARGET_SLACK:g} x the lowest mean final validation loss of "
                      "a hand-designed optimiser there. Steps: the median over seeds of the first evaluation at or "
                      "below the target (a seed that never gets there counts as never); time: that many steps at "
                      "the row's time per step."),
    ]
    for task, rows in table.groupby("task", sort=True):
        blocks.append(Block("heading", f"{task} (target validation loss {num(rows['target'].iloc[0])})", 3))
        shown = rows.sort_values(["steps_to_target", "optimizer"], kind="stable")
        blocks.append(Block("table", pd.DataFrame([
            {"optimizer": r["optimizer"], "seeds reaching it": f"{r['reached']}/{r['seeds']}",
             "steps to target": steps(r["steps_to_target"]),
             "time to target (s)": "-" if not math.isfinite(r["time_to_target_s"]) else num(r["time_to_target_s"], 3)}
            for r in shown.to_dict("records")
        ])))
    if "profile" in images:
        blocks.append(Block("text", "Performance profile: for each tau, the fraction of tasks on which an optimiser "
                                    "reaches the target within tau times the fewest steps any optimiser needs there."))
        blocks.append(Block("image", (images["profile"], "performance profile")))
    return blocks


def _tuning_blocks(table: pd.DataFrame, images: Mapping[str, str]) -> list[Block]:
    rows = pd.DataFrame([
        {"task": r["task"], "optimizer": r["optimizer"], "chosen": r["chosen"],
         f"validation {table.attrs.get('objective', 'final')} loss": num(r["objective"]), "range": r["range"],
         "candidates x tuning seeds": f"{r['candidates']} x {r['tuning_seeds']}",
         "on the edge": r["on_edge"] or "-", "tuning runs": str(r["tuning_runs"]),
         "tuning learner steps": str(r["tuning_learner_steps"]), "tuning time (s)": num(r["tuning_time_s"], 3)}
        for r in table.to_dict("records")
    ])
    blocks = [
        Block("heading", "Tuning", 2),
        Block("text", "The suite's ruleset is 'tuned': each optimiser's candidates ran on tuning seeds (disjoint "
                      "from the final seeds) and the one with the lowest validation loss was run on the final "
                      "seeds (its leaderboard row, '<name>-tuned'); no choice read the test split. A value on the "
                      "edge of its range means the range may be too narrow. Learned optimisers are not tuned; "
                      "their meta-training cost is in the leaderboards."),
        Block("table", rows),
    ]
    for key in sorted(k for k in images if k.startswith("tuning/")):
        blocks.append(Block("image", (images[key], f"validation objective against each candidate, {key[7:]}")))
    return blocks


def _meta_seed_blocks(table: pd.DataFrame) -> list[Block]:
    rows = pd.DataFrame([
        {"task": r["task"], "optimizer": r["optimizer"], "meta-training seeds": str(r["meta_seeds"]),
         "median final loss": num(r["median_final_loss"]), "best": num(r["best_final_loss"]),
         "worst": num(r["worst_final_loss"]) if not _missing(r["worst_final_loss"]) else "diverged",
         "failed meta-trainings": "-" if _missing(r["failed"]) else f"{int(r['failed'])}/{r['meta_seeds']}",
         "mean final loss, 95% CI (both levels)": f"[{num(r['final_loss_low'])}, {num(r['final_loss_high'])}]"}
        for r in table.to_dict("records")
    ])
    return [
        Block("heading", "Meta-training seeds", 2),
        Block("text", "A learned optimiser is a draw from its meta-training: each one meta-trained under several "
                      "seeds is summarised over them (the leaderboards show each copy as 'name [meta-seed k]'). "
                      "Median, best and worst of the copies' mean final test loss; a meta-training failed when, at "
                      "its own horizon, its mean test loss is worse than SGD's on the task ('-': no SGD run); the "
                      "interval resamples the meta-training seeds, then each one's seeds."),
        Block("table", rows),
    ]


def _published_blocks(table: pd.DataFrame) -> list[Block]:
    rows = pd.DataFrame([
        {"task": r["task"], "optimizer": r["optimizer"], "figure": r["figure"], "step": str(r["step"]),
         "l2lbench": num(r["l2lbench"]), "published [min, max]": _estimate(r["published"], r["published_min"],
                                                                          r["published_max"]),
         "l2lbench / published": num(r["ratio"], 3), "meta-trained on": _text(r["meta_trained_on"]).replace(",", ", ")}
        for r in table.to_dict("records")
    ])
    return [
        Block("heading", "Against the published curves", 2),
        Block("text", f"Mean test loss of the runs that repeat a setting of Kuo et al. (2020) beside the curve "
                      f"published for it ({published.SOURCE}: the learned optimisers' curves multiplied back by "
                      "126.58, the baselines' by 31.95; the paper's figures plot the learned curves on a scale about "
                      "4x smaller). Published min and max are over its runs; the plots draw each published curve "
                      "dotted."),
        Block("table", rows),
    ]


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


def _colalign(frame: pd.DataFrame) -> tuple[str, ...]:
    # Right-align columns whose cells all look like numbers, so digits line up.
    def numeric(cell: str) -> bool:
        return cell == "" or cell == "-" or cell[:1].isdigit() or cell[:1] in ">.-"

    return tuple("right" if frame[c].map(lambda v: numeric(str(v))).all() else "left" for c in frame.columns)


def _table(frame: pd.DataFrame, tablefmt: str) -> str:
    cells = frame.astype(str)
    if tablefmt in ("pipe", "github"):
        # A literal | would end a markdown cell early.
        cells = cells.apply(lambda col: col.str.replace("|", "\\|", regex=False))
    return tabulate(cells.values.tolist(), headers=list(cells.columns), tablefmt=tablefmt,
                    disable_numparse=True, colalign=_colalign(cells) or None)


def _markdown(blocks: Sequence[Block], tablefmt: str) -> str:
    out = []
    for block in blocks:
        if block.kind == "heading":
            out.append(f"{'#' * block.level} {block.content}")
        elif block.kind == "text":
            out.append(block.content)
        elif block.kind == "list":
            out.append("\n".join(f"- {item}" for item in block.content))
        elif block.kind == "table":
            out.append(_table(block.content, tablefmt))
        elif block.kind == "image":
            path, alt = block.content
            out.append(f"![{alt}]({path})")
    return "\n\n".join(out) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    r"""Text safe inside LaTeX.

    >>> latex_escape("a_b 50%")
    'a\\_b 50\\%'
    """
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def _latex(blocks: Sequence[Block]) -> str:
    commands = {1: "section*", 2: "subsection*", 3: "subsubsection*"}
    out = [r"\documentclass{article}", r"\usepackage{booktabs}", r"\usepackage{graphicx}",
           r"\usepackage[a4paper,landscape,margin=1.5cm]{geometry}", r"\begin{document}"]
    for block in blocks:
        if block.kind == "heading":
            out.append(f"\\{commands[block.level]}{{{latex_escape(block.content)}}}")
        elif block.kind == "text":
            out.append(latex_escape(block.content))
        elif block.kind == "list":
            items = "\n".join(f"\\item {latex_escape(item)}" for item in block.content)
            out.append(f"\\begin{{itemize}}\n{items}\n\\end{{itemize}}")
        elif block.kind == "table":
            # Leaderboards are wider than a page; scale them to the text width.
            out.append("\\resizebox{\\linewidth}{!}{%\n" + _table(block.content, "latex_booktabs") + "\n}")
        elif block.kind == "image":
            path, _ = block.content
            out.append(f"\\includegraphics[width=0.8\\linewidth]{{{path}}}")
    out.append(r"\end{document}")
    return "\n\n".join(out) + "\n"


# The HTML report is one self-contained file: styles and this script inline, plots embedded
# as data URIs (report.command). A click on a column heading sorts its table (numbers by
# value, "-" and words after them); on load the page records in <body data-...> how many
# tables and rendered figures it holds, which a browser check reads back.
_HTML_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.title = "click to sort";
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var column = Array.prototype.indexOf.call(th.parentNode.children, th);
    var ascending = th.dataset.order !== "ascending";
    th.dataset.order = ascending ? "ascending" : "descending";
    var key = function (row) {
      var text = row.children[column].textContent.trim(), number = parseFloat(text);
      return isNaN(number) ? [1, text] : [0, number];
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      var order = x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
      return ascending ? order : -order;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  document.body.dataset.tables = document.querySelectorAll("table").length;
  document.body.dataset.figures = images.length;
  document.body.dataset.figuresRendered = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
});
"""

_HTML_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:110em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px}"
    "th{background:#f3f3f3;cursor:pointer;position:sticky;top:0}th[data-order=ascending]::after{content:' \\25B2'}"
    "th[data-order=descending]::after{content:' \\25BC'}tr:nth-child(even) td{background:#fafafa}"
    "img{max-width:100%}"
)


def _html(blocks: Sequence[Block]) -> str:
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\"><title>l2lbench report</title>",
           f"<style>{_HTML_STYLE}</style></head><body>"]
    for block in blocks:
        if block.kind == "heading":
            out.append(f"<h{block.level}>{html.escape(block.content)}</h{block.level}>")
        elif block.kind == "text":
            out.append(f"<p>{html.escape(block.content)}</p>")
        elif block.kind == "list":
            out.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block.content) + "</ul>")
        elif block.kind == "table":
            out.append(_table(block.content, "html").replace("<table>", "<table class=\"sortable\">", 1))
        elif block.kind == "image":
            path, alt = block.content
            out.append(f"<figure><img src=\"{html.escape(path)}\" alt=\"{html.escape(alt)}\"></figure>")
    out.append(f"<script>{_HTML_SCRIPT}</script></body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- machine formats


def _plain(value: Any) -> Any:
    """JSON-able value: numpy scalars unboxed, nan/inf as null (JSON has neither)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    if frame is None:
        return []
    return [{k: _plain(v) for k, v in row.items()} for row in frame.astype(object).to_dict("records")]


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


def to_json(report: Report) -> str:
    """The whole report as one JSON document; floats keep every digit (repr round-trips)."""
    data: dict[str, Any] = {
        "results": report.results, "runs": report.runs, "suite": report.suite, "reference": report.reference,
        "notes": list(NOTES) + report.notes,
    }
    data.update({name: _records(frame) for name, frame in machine_tables(report).items()})
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def to_csv(frame: pd.DataFrame) -> str:
    """A table as CSV; floats are written with repr, so they read back exactly, and
    tables (the hyperparameters) as JSON."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].map(lambda v: isinstance(v, Mapping)).any():
            frame[column] = frame[column].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, Mapping) else v)
    return frame.to_csv(index=False)


def render(report: Report, fmt: str, images: Mapping[str, str] | None = None) -> str:
    """The report as text in ``fmt`` (see :data:`FORMATS`); csv is the stacked leaderboard.

    Args:
        images: plot key ("task/<task>", "ranks", "domain-shift/<setting>") -> path
            relative to the report file, shown in markdown, html and latex.
    """
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return to_csv(report.leaderboard)
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    blocks = document(report, images)
    if fmt == "latex":
        return _latex(blocks)
    if fmt == "html":
        return _html(blocks)
    return _markdown(blocks, TABLE_FORMATS[fmt])
