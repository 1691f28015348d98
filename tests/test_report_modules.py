"""The report's parts on their own: the two-level bootstrap, a group's meta-training
datasets, the renderer's format check, and every format rendering one hand-made report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from l2lbench.report import stats
from l2lbench.report.grouping import Group
from l2lbench.report.model import NOTES, build_report
from l2lbench.report.render import FORMATS, render
from l2lbench.report.render.cells import estimate, num
from l2lbench.store.runs import RunRecord


def _record(seed: int, final: float, *, meta: dict | None = None) -> RunRecord:
    return RunRecord(task_hash="t" * 16, optimizer_hash="o" * 16, seed=seed, task_name="task", optimizer_name="opt",
                     task_config={"steps": 20}, optimizer_config={"entry": "opt"}, status="ok",
                     train_loss=[2.0, 1.0], eval_steps=[0, 20], test_loss=[2.0, final], test_accuracy=[0.1, 0.9],
                     wall_time_s=1.0, provenance={"meta_training": meta} if meta else {})


def test_two_level_interval_on_known_answers():
    # Two meta-training seeds with constant values 1 and 3: a resample's mean is 1 (both
    # draws pick the first, p = 1/4), 2 (p = 1/2) or 3 (p = 1/4), so with 2000 resamples
    # the 2.5% and 97.5% quantiles are 1 and 3.
    low, high = stats.two_level_interval([np.array([1.0, 1.0]), np.array([3.0, 3.0])], seed=0)
    assert (low, high) == (1.0, 3.0)
    assert stats.two_level_interval([np.array([0.5, 0.5])] * 3, seed=1) == (0.5, 0.5)
    # Fewer than two meta-training seeds with values: no interval.
    assert all(math.isnan(v) for v in stats.two_level_interval([np.array([1.0]), np.array([])], seed=0))


def test_meta_datasets_of_a_group():
    hand = Group("task", "opt", (_record(0, 0.5),))
    learned = Group("task", "opt", (_record(0, 0.5, meta={"datasets": ["mnist", 7], "horizon": 10}),))
    assert hand.meta_datasets is None and hand.label() == "opt"
    assert learned.meta_datasets == ("mnist", "7")
    assert learned.label() == "opt (meta-trained on mnist, 7, 10 steps)"
    assert list(learned.ok_finals()) == [0.5]


def test_render_refuses_an_unknown_format_in_one_line():
    report = build_report([_record(0, 0.5)], results="r", reference=None)
    with pytest.raises(ValueError, match=r"^unknown report format 'pdf'; expected one of: markdown, github, latex, "
                                         r"html, csv, json$"):
        render(report, "pdf")


def test_every_format_renders_the_same_numbers():
    report = build_report([_record(0, 0.5), _record(1, 0.25)], results="r", reference=None)
    texts = {fmt: render(report, fmt) for fmt in FORMATS}
    # The mean final loss (0.5 + 0.25) / 2 = 0.375, at full precision in csv and json.
    data = json.loads(texts["json"])
    assert data["leaderboard"][0]["final_loss"] == 0.375 and data["notes"][:len(NOTES)] == list(NOTES)
    assert "0.375" in texts["csv"].splitlines()[1]
    for fmt in ("markdown", "github", "latex", "html"):
        assert "0.375" in texts[fmt], fmt
    assert texts["latex"].startswith("\\documentclass{article}") and texts["html"].startswith("<!DOCTYPE html>")
    assert (num(0.375), estimate(0.375, 0.25, 0.5)) == ("0.375", "0.375 [0.25, 0.5]")
