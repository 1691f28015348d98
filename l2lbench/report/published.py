"""The curves Kuo et al. (2020) published, on one scale, beside l2lbench's runs.

``data/kuo2020-curves.csv`` holds every curve behind the paper's Figures 2, 4 and 5, from
the data files in the authors' repository (Nic5472K/AutoML2020_ICML_MTL2L, MIT licence,
copyright 2020 Nic5472K; see ``data/README.md``), multiplied back to the true mean test
loss: the learned optimisers' curves were stored as the true loss / 126.58 (a batch-128
test loop summing batch means over the test-set size), the baselines' as the true loss /
31.95 (a batch-32 loader), and the figures plot the stored values, so the learned curves
appear about 4x lower than the baselines'.

A run is compared with a published curve only where it repeats the paper's setting: the
same dataset, the 784-32-10 ReLU MLP, batch 128, the optimiser at the paper's
hyperparameters (the reference defaults), and for a learned optimiser the paper's
meta-training domain (the tested dataset itself in Figure 4; Figure 5's CIFAR-10 runs are
matched whatever the meta-training, and the table says on what).
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

SOURCE = "Kuo et al. (2020), authors' figure data, on one scale"
#: Steps at which the comparison table puts l2lbench beside the paper.
TABLE_STEPS = (100, 300, 1000)
# l2lbench dataset -> (figure, dataset in the figure data): Figure 4 has every optimiser on
# the three datasets it meta-trains on; Figure 5 is the domain shift to CIFAR-10.
FIGURES = {"mnist": ("4a", "MNIST"), "fashion-mnist": ("4b", "FashionMNIST"), "kmnist": ("4c", "KMNIST"),
           "cifar10-grey": ("5", "ToyCifar10")}
OPTIMIZERS = {"sgd": "SGD", "momentum": "SGDm", "adam": "Adam", "lstm": "LSTMoptimiser", "mtl2l": "MTL2L"}
# The paper's learner and budget (Section 4): a 784-32-10 ReLU MLP, batches of 128.
PAPER_LEARNER = {"kind": "mlp", "hidden": [32], "activation": "relu"}
PAPER_BATCH = 128


@dataclass(frozen=True)
class PublishedCurve:
    """One published curve: the test loss every 10 steps, mean and min-max over its runs."""

    figure: str
    dataset: str
    optimiser: str
    runs: int
    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def at(self, step: int) -> tuple[float, float, float]:
        """(mean, min, max) at ``step``; nan where the paper has no value there."""
        hits = np.nonzero(self.steps == step)[0]
        if not len(hits):
            return math.nan, math.nan, math.nan
        i = int(hits[0])
        return float(self.mean[i]), float(self.low[i]), float(self.high[i])

    @property
    def label(self) -> str:
        return f"Fig. {self.figure} {self.optimiser}, {self.runs} runs"


@functools.lru_cache(maxsize=1)
def curves() -> dict[tuple[str, str, str], PublishedCurve]:
    """(figure, dataset, optimiser) -> curve, from the shipped CSV."""
    rows: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    text = resources.files("l2lbench.report").joinpath("data/kuo2020-curves.csv").read_text(encoding="utf-8")
    for row in csv.DictReader(text.splitlines()):
        rows.setdefault((row["figure"], row["dataset"], row["optimiser"]), []).append(row)
    out = {}
    for key, points in rows.items():
        points.sort(key=lambda r: int(r["step"]))
        column = lambda name: np.asarray([float(r[name]) for r in points])  # noqa: E731
        out[key] = PublishedCurve(*key, int(points[0]["runs"]), column("step").astype(int),
                                  column("mean_test_loss"), column("min"), column("max"))
    return out


def published_for(group: Any) -> PublishedCurve | None:
    """The published curve a group of runs repeats (see the module docstring), or None."""
    record = group.records[0]
    task, optimizer = record.task_config, record.optimizer_config
    dataset = group.dataset
    entry = optimizer.get("entry")
    if dataset not in FIGURES or entry not in OPTIMIZERS:
        return None
    if entry not in ("lstm", "mtl2l") and optimizer.get("non_default", {}) != {}:
        return None  # a baseline at other hyperparameters than the paper's (learned ones show theirs)
    learner = {k: task.get("learner", {}).get(k) for k in PAPER_LEARNER}
    if learner != PAPER_LEARNER or task.get("batch_size") != PAPER_BATCH:
        return None
    figure, name = FIGURES[dataset]
    meta = group.meta_training
    if meta is not None and figure != "5" and list(meta.get("datasets", [])) != [dataset]:
        return None  # Figure 4 meta-trains on the tested dataset itself
    if meta is None and entry in ("lstm", "mtl2l"):
        return None
    return curves().get((figure, name, OPTIMIZERS[entry]))


def comparison(groups: Mapping[str, Sequence[Any]], steps: Iterable[int] = TABLE_STEPS) -> pd.DataFrame:
    """l2lbench's mean test loss beside the published one at ``steps``, with their ratio,
    for every group that repeats a published setting."""
    columns = ["task", "optimizer", "figure", "step", "l2lbench", "published", "published_min", "published_max",
               "ratio", "meta_trained_on"]
    rows = []
    for task, task_groups in sorted(groups.items()):
        for group in task_groups:
            curve = published_for(group)
            if curve is None:
                continue
            ours_steps, ours = group.curves()
            if not ours.size:
                continue
            mean = ours.mean(axis=0)
            meta = group.meta_training
            for step in steps:
                hits = np.nonzero(ours_steps == step)[0]
                paper, low, high = curve.at(step)
                value = float(mean[hits[0]]) if len(hits) else math.nan
                rows.append({"task": task, "optimizer": group.optimizer, "figure": curve.figure, "step": step,
                             "l2lbench": value, "published": paper, "published_min": low, "published_max": high,
                             "ratio": value / paper if paper else math.nan,
                             "meta_trained_on": ",".join(group.meta_datasets or ()) if meta else None})
    return pd.DataFrame(rows, columns=columns)
