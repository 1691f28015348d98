"""Report figures (PNG and SVG): per task test loss, train loss and test accuracy panels, a
domain-shift figure, a rank heatmap (when there are several tasks to rank).

A loss axis is logarithmic when asked (``--log-y``) or, by default, when the mean curves on
it span more than a decade (a learned optimiser that blows up would flatten every other
curve on a linear axis). A learned optimiser's meta-training horizon is marked on its
curves by a dotted vertical line in its colour where the task runs longer.

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas, never
through pyplot, so making a report changes no global matplotlib state (no backend switch,
no open-figure registry) and works on machines without a display.

Colours follow the MTL2L paper (MTL2L black, LSTM optimiser cyan, SGD red, momentum
orange, Adam blue), solid; every other optimiser takes the next Okabe-Ito colour-blind-safe
colour, dashed, with a new line style each time the palette wraps.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, MaxNLocator

from l2lbench.report import stats
from l2lbench.report.published import published_for
from l2lbench.report.target import profile
from l2lbench.report.grouping import Group, learned_datasets, setting_of

#: The paper's colours, by optimiser name (a darker cyan than "cyan", visible on white).
PAPER_COLOURS = {"mtl2l": "#000000", "lstm": "#00a5c8", "sgd": "#d62728", "momentum": "#ff7f0e", "adam": "#1f77b4"}
#: Okabe & Ito (2008) colours not already taken by the paper's scheme, most distinct first.
PALETTE = ("#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#E69F00", "#0072B2", "#999999", "#F0E442")
#: Line styles of the optimisers outside the paper's scheme (dashed, so a curve that lies
#: on top of a paper baseline's, e.g. adamw without weight decay on adam, leaves it visible).
LINESTYLES = ("--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))
FORMATS = ("png", "svg")
DPI = 150


def colours(names: Sequence[str]) -> dict[str, tuple[str, Any]]:
    """Optimiser name -> (colour, line style), stable for a given set of names.

    A name takes its paper colour when it is one of the paper's optimisers or a variant
    of one (``adam-lr0.01``) whose base name is not itself present; everyone else takes
    the palette in name order.

    >>> colours(["adam", "adam-lr0.01", "lstm"])["adam-lr0.01"]
    ('#009E73', '--')
    """
    chosen: dict[str, tuple[str, Any]] = {}
    taken: set[str] = set()
    ordered = sorted(names, key=lambda n: (n not in PAPER_COLOURS, n))
    others = []
    for name in ordered:
        base = name.split("-")[0].split(" ")[0]
        key = name if name in PAPER_COLOURS else base
        if key in PAPER_COLOURS and key not in taken:
            chosen[name] = (PAPER_COLOURS[key], "-")
            taken.add(key)
        else:
            others.append(name)
    for i, name in enumerate(others):
        chosen[name] = (PALETTE[i % len(PALETTE)], LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)])
    return chosen


def file_stem(name: str) -> str:
    """A file-name-safe version of a task or setting name.

    >>> file_stem("rotmnist45-mlp784x32x10 [ab12cd34]")
    'rotmnist45-mlp784x32x10_ab12cd34'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "unnamed"


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg``; returns their paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FORMATS:
        path = stem.with_name(f"{stem.name}.{ext}")
        # bbox_inches="tight" keeps legends placed outside the axes inside the file.
        figure.savefig(path, format=ext, bbox_inches="tight", dpi=DPI)
        paths.append(path)
    return paths


def _legend_label(group: Group) -> str:
    label = group.label()
    n, k = len(group.records), group.n_diverged
    return label + (f" [{k}/{n} seeds diverged]" if k else "")


class _PlainLogFormatter(LogFormatter):
    """LogFormatter's choice of which ticks to label, written as plain numbers (0.6, 2)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


#: A loss axis turns logarithmic by itself when its mean curves span more than this factor.
AUTO_LOG_SPAN = 10.0


def train_curves(group: Group) -> tuple[np.ndarray, np.ndarray]:
    """(steps, train loss of shape (seeds, steps)) over the seeds that finished, each seed's
    curve smoothed by a running mean over 1% of the steps (the loss of one minibatch is noisy)."""
    ok = group.ok
    if not ok:
        return np.zeros(0, int), np.zeros((0, 0))
    length = min(len(r.train_loss) for r in ok)
    curves = np.asarray([r.train_loss[:length] for r in ok], dtype=float)
    window = max(1, length // 100)
    if window > 1:
        kernel = np.ones(window) / window
        curves = np.asarray([np.convolve(c, kernel, mode="valid") for c in curves])
    return np.arange(curves.shape[1]) + window - 1, curves


def _spans_decades(groups: Sequence[Group], what: str) -> bool:
    means = []
    for group in groups:
        _, curves = train_curves(group) if what == "train_loss" else group.curves(what)
        if curves.size:
            mean = curves.mean(axis=0)
            means.append(mean[np.isfinite(mean) & (mean > 0)])
    values = np.concatenate(means) if means else np.zeros(0)
    return bool(values.size) and float(values.max() / values.min()) > AUTO_LOG_SPAN


def horizon_marks(groups: Sequence[Group]) -> list[tuple[Group, int]]:
    """The learned optimisers whose meta-training horizon is shorter than the task, with it:
    where each one's curve leaves what it was meta-trained for."""
    task_steps = max((g.task_steps or 0 for g in groups), default=0)
    marks = []
    for group in groups:
        horizon = (group.meta_training or {}).get("horizon")
        if isinstance(horizon, int) and 0 < horizon < task_steps:
            marks.append((group, horizon))
    return marks


def draw_curves(
    ax: Axes,
    groups: Sequence[Group],
    palette: Mapping[str, tuple[str, Any]],
    *,
    log_y: bool | None,
    seed: int,
    what: str = "test_loss",
) -> list[Line2D]:
    """Mean ``what`` (test_loss, test_accuracy or train_loss) against step with a 95%
    bootstrap band over seeds; one line per optimiser. ``log_y`` None: logarithmic when the
    curves span more than a decade (losses only).

    Returns one legend handle per optimiser (also for those whose every seed diverged,
    which have no line).
    """
    handles = []
    for group in groups:
        colour, style = palette[group.optimizer]
        steps, curves = train_curves(group) if what == "train_loss" else group.curves(what)
        label = _legend_label(group)
        if curves.size == 0:
            handles.append(Line2D([], [], color=colour, linestyle=style, label=label + " (no finished seed)"))
            continue
        mean = curves.mean(axis=0)
        (line,) = ax.plot(steps, mean, color=colour, linestyle=style, linewidth=1.8, label=label)
        low, high = stats.bootstrap_band(curves, seed=seed)
        if not np.isnan(low).all():
            ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
        handles.append(line)
    for group, horizon in horizon_marks(groups):
        ax.axvline(horizon, color=palette[group.optimizer][0], linestyle=":", linewidth=1.0, alpha=0.7)
    if what == "test_accuracy":  # a proportion: always linear
        log_y = False
    elif log_y is None:
        log_y = _spans_decades(groups, what)
    if log_y:
        ax.set_yscale("log")
        # Plain numbers (0.4, 2) instead of 4x10^-1, also on the minor ticks that
        # matplotlib labels when the losses span less than a decade.
        ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xlabel("step")
    return handles


def draw_published(ax: Axes, groups: Sequence[Group], palette: Mapping[str, tuple[str, Any]]) -> list[Line2D]:
    """Each published curve that a group repeats (l2lbench.report.published), dotted in the
    group's colour, with its min-max band over the paper's runs."""
    handles, drawn = [], set()
    for group in groups:
        curve = published_for(group)
        if curve is None or curve.label in drawn:  # copies of one optimiser share its curve
            continue
        drawn.add(curve.label)
        colour, _ = palette[group.optimizer]
        name = group.optimizer.split(" [", 1)[0]
        (line,) = ax.plot(curve.steps, curve.mean, color=colour, linestyle=":", linewidth=1.4,
                          label=f"{name}, published ({curve.label})")
        ax.fill_between(curve.steps, curve.low, curve.high, color=colour, alpha=0.08, linewidth=0)
        handles.append(line)
    return handles


def _outside_legend(figure: Figure, handles: list[Line2D]) -> None:
    # Beside the axes, never over the curves; the figure grows by the legend's width
    # (about 0.06 inch per character at this size) so the axes keep theirs.
    longest = max((len(h.get_label()) for h in handles), default=0)
    width, height = figure.get_size_inches()
    figure.set_size_inches(width + 0.8 + 0.06 * longest, height)
    figure.legend(handles=handles, loc="outside right center", frameon=False, fontsize="small")


def task_figure(
    task: str,
    groups: Sequence[Group],
    *,
    log_y: bool | None = None,
    seed: int = stats.BOOTSTRAP_SEED,
    subtitle: str = "",
) -> Figure:
    """One task, every optimiser (mean line and shaded 95% band): test loss (with the
    published curves it repeats), train loss and test accuracy, side by side."""
    figure = _new_figure(15.0, 4.4)
    axes = figure.subplots(1, 3, sharex=True)
    palette = colours([g.optimizer for g in groups])
    handles = []
    for ax, what, name in zip(axes, ("test_loss", "train_loss", "test_accuracy"), ("test loss", "train loss", "test accuracy")):
        drawn = draw_curves(ax, groups, palette, log_y=log_y, seed=seed, what=what)
        if what == "test_loss":
            handles = drawn + draw_published(ax, groups, palette)
        label = name + (" (running mean over 1% of the steps)" if what == "train_loss" else "")
        ax.set_ylabel(label + (" (log scale)" if ax.get_yscale() == "log" else ""))
    if horizon_marks(groups):
        handles.append(Line2D([], [], color="grey", linestyle=":", label="meta-training horizon"))
    figure.suptitle("\n".join([task, *textwrap.wrap(subtitle, 150)]), fontsize="medium")
    _outside_legend(figure, handles)
    return figure


def _task_subtitle(groups: Sequence[Group], domains: Mapping[str, tuple[str, ...]]) -> str:
    dataset = groups[0].dataset if groups else None
    parts = [] if dataset is None else [f"dataset {dataset}"]
    # Copies of one learned optimiser (meta-training seeds) share one phrase.
    described: dict[tuple[str, tuple[str, ...]], None] = {}
    for name, datasets in sorted(domains.items()) if dataset is not None else []:
        described[(name.split(" [", 1)[0], datasets)] = None
    for name, datasets in described:
        where = "in-domain" if dataset in datasets else "shifted"
        parts.append(f"{where} for {name} (meta-trained on {', '.join(datasets) or '?'})")
    seeds = max((len(g.ok) for g in groups), default=0)
    parts.append("mean and 95% CI over seeds" if seeds > 1 else "one seed each, no confidence band")
    return "; ".join(parts)


def domain_splits(groups: Mapping[str, Sequence[Group]]) -> dict[str, tuple[list[str], list[str]]]:
    """Setting -> (in-domain tasks, shifted tasks), in-domain = the learned optimisers' datasets.

    Only settings with both kinds of task; empty when no learned optimiser ran.
    """
    domains = learned_datasets(groups)
    union = set().union(*domains.values()) if domains else set()
    splits: dict[str, tuple[list[str], list[str]]] = {}
    for task, task_groups in sorted(groups.items()):
        dataset = task_groups[0].dataset if task_groups else None
        if not union or dataset is None:
            continue
        inside, outside = splits.setdefault(setting_of(task, dataset), ([], []))
        (inside if dataset in union else outside).append(task)
    return {s: split for s, split in splits.items() if split[0] and split[1]}


def domain_shift_figure(
    setting: str,
    split: tuple[list[str], list[str]],
    groups: Mapping[str, Sequence[Group]],
    *,
    log_y: bool | None = None,
    seed: int = stats.BOOTSTRAP_SEED,
) -> Figure:
    """Panels side by side, in-domain tasks then shifted ones, sharing both axes."""
    tasks = [(t, "in-domain") for t in split[0]] + [(t, "shifted") for t in split[1]]
    names = sorted({g.optimizer for t, _ in tasks for g in groups[t]})
    palette = colours(names)
    figure = _new_figure(3.4 * len(tasks) + 0.6, 4.0)
    axes = figure.subplots(1, len(tasks), sharex=True, sharey=True, squeeze=False)[0]
    handles: dict[str, Line2D] = {}
    for ax, (task, where) in zip(axes, tasks):
        task_groups = groups[task]
        for group, handle in zip(task_groups, draw_curves(ax, task_groups, palette, log_y=log_y, seed=seed)):
            # One legend entry per optimiser (without per-task divergence counts).
            handles.setdefault(group.optimizer, Line2D([], [], color=handle.get_color(),
                                                       linestyle=handle.get_linestyle(), label=group.label()))
        # Divergence is the instability a domain shift shows; say it where it happens.
        diverged = [f"{g.optimizer} {g.n_diverged}/{len(g.records)} diverged" for g in task_groups if g.n_diverged]
        ax.set_title("\n".join([f"{where}: {task_groups[0].dataset}", *(["; ".join(diverged)] if diverged else [])]),
                     fontsize="medium")
    axes[0].set_ylabel("test loss" + (" (log scale)" if axes[0].get_yscale() == "log" else ""))
    domains = learned_datasets(groups)
    trained = "; ".join(f"{n} meta-trained on {', '.join(d)}" for n, d in sorted(domains.items()))
    figure.suptitle(f"Domain shift, {setting} ({trained}); mean and 95% CI over seeds", fontsize="medium")
    _outside_legend(figure, [handles[n] for n in names])
    return figure


def rank_heatmap(board: pd.DataFrame) -> Figure:
    """Optimisers (rows, best mean rank first) x tasks, coloured by rank, ranks written in."""
    table = board.pivot_table(index="optimizer", columns="task", values="rank", aggfunc="first")
    table = table.loc[table.mean(axis=1).sort_values(kind="stable").index]
    values = table.to_numpy(dtype=float)
    rows, cols = values.shape
    # Room for the tick labels too (about 0.06 inch per character, task names at 30 degrees),
    # or constrained layout has no space left for the cells.
    task_chars = max(len(str(t)) for t in table.columns)
    optimizer_chars = max(len(str(o)) for o in table.index)
    width = max(2.5 + 1.1 * cols, 2.0 + 0.87 * 0.06 * task_chars) + 0.06 * optimizer_chars
    figure = _new_figure(width, 1.6 + 0.45 * rows + 0.5 * 0.06 * task_chars)
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r", vmin=1, vmax=max(rows, 2), aspect="auto")
    ax.set_xticks(range(cols), labels=list(table.columns), rotation=30, ha="right", fontsize="small")
    ax.set_yticks(range(rows), labels=list(table.index), fontsize="small")
    ax.set_xlabel("task")
    ax.set_ylabel("optimizer")
    for i in range(rows):
        for j in range(cols):
            if math.isfinite(values[i, j]):
                # viridis_r is light (yellow) for good ranks and dark for bad ones.
                light = values[i, j] < (1 + max(rows, 2)) / 2
                ax.text(j, i, f"{values[i, j]:g}", ha="center", va="center", fontsize="small",
                        color="black" if light else "white")
    colorbar = figure.colorbar(image, ax=ax, label="rank (1 = best)")
    colorbar.locator = MaxNLocator(integer=True)
    colorbar.update_ticks()
    colorbar.ax.invert_yaxis()  # best at the top
    ax.set_title("Rank per task (by mean final test loss)", fontsize="medium")
    return figure


def write_plots(
    groups: Mapping[str, Sequence[Group]],
    board: pd.DataFrame,
    folder: Path,
    *,
    log_y: bool | None = None,
    seed: int = stats.BOOTSTRAP_SEED,
) -> dict[str, Path]:
    """Write every figure as PNG and SVG under ``folder``.

    Returns:
        key -> PNG path, keys "task/<task>", "ranks" and "domain-shift/<setting>".
    """
    written: dict[str, Path] = {}
    domains = learned_datasets(groups)
    for task, task_groups in sorted(groups.items()):
        figure = task_figure(task, task_groups, log_y=log_y, seed=seed, subtitle=_task_subtitle(task_groups, domains))
        written[f"task/{task}"] = save(figure, folder / f"loss-{file_stem(task)}")[0]
    if not board.empty and board["task"].nunique() > 1:  # one task: its leaderboard says it all
        written["ranks"] = save(rank_heatmap(board), folder / "ranks")[0]
    for setting, split in domain_splits(groups).items():
        figure = domain_shift_figure(setting, split, groups, log_y=log_y, seed=seed)
        written[f"domain-shift/{setting}"] = save(figure, folder / f"domain-shift-{file_stem(setting)}")[0]
    return written


def tuning_figure(task: str, plans: Sequence[Any]) -> Figure:
    """A tuned suite on one task: the validation objective of every candidate against its
    (one) tuned hyperparameter, log scale, one line per optimiser, the winner ringed, so a
    reader sees whether the range was wide enough."""
    figure = _new_figure(6.0, 4.0)
    ax = figure.add_subplot()
    palette = colours([plan.base.name for plan in plans])
    for plan in plans:
        (name,) = plan.space
        xs = [values[name] for values, _ in plan.trials]
        ys = [v if math.isfinite(v) else math.nan for v in plan.objectives]
        colour, style = palette[plan.base.name]
        ax.plot(xs, ys, marker="o", color=colour, linestyle=style, label=f"{plan.base.name} ({name})")
        if plan.best is not None:
            ax.plot([xs[plan.best]], [ys[plan.best]], marker="o", markersize=14, fillstyle="none", color=colour)
    ax.set_xscale("log")
    ax.set_xlabel("candidate value (log scale)")
    ax.set_ylabel("validation objective (lower is better)")
    ax.set_title(f"tuning on {task} (ringed: the winner)", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def profile_figure(table: pd.DataFrame) -> Figure:
    """The performance profile over tasks (report.target.profile) as step lines, log tau."""
    frame = profile(table)
    figure = _new_figure(6.0, 4.0)
    ax = figure.add_subplot()
    palette = colours(sorted(frame["optimizer"].unique()))
    for optimizer, rows in frame.groupby("optimizer", sort=True):
        colour, style = palette[optimizer]
        ax.step(rows["tau"], rows["fraction"], where="post", color=colour, linestyle=style, label=optimizer)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau: steps to target relative to the fastest optimiser on the task")
    ax.set_ylabel("fraction of tasks")
    ax.set_title("performance profile (time to the target validation loss)", fontsize="medium")
    ax.grid(True, alpha=0.3)
    _outside_legend(figure, ax.get_legend_handles_labels()[0])
    return figure


def write_extra_plots(plans: Sequence[Any], time_to_target: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """A tuned suite's tuning figures ("tuning/<task>", single-hyperparameter tunings that
    finished) and the performance profile ("profile", with two tasks or more)."""
    written: dict[str, Path] = {}
    by_task: dict[str, list[Any]] = {}
    for plan in plans:
        if len(plan.space) == 1 and plan.complete:
            by_task.setdefault(plan.task.name, []).append(plan)
    for task, task_plans in sorted(by_task.items()):
        written[f"tuning/{task}"] = save(tuning_figure(task, task_plans), folder / f"tuning-{file_stem(task)}")[0]
    if not time_to_target.empty and time_to_target["task"].nunique() > 1:
        written["profile"] = save(profile_figure(time_to_target), folder / "performance-profile")[0]
    return written

