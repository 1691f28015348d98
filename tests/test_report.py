"""`l2lbench report` on constructed stores: leaderboards by hand, divergence, learned
optimisers and domain shift, partial suites, every format, plots, and bad input."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from l2lbench.store.codeid import PROTOCOL_VERSION
from l2lbench.errors import UsageError
from l2lbench.plugin.registry import OptimizerRegistry
from l2lbench.cli import report as command
from l2lbench.report import plots
from l2lbench.report.grouping import group_runs
from l2lbench.report.model import build_report
from l2lbench.report.render import FORMATS, render
from l2lbench.report.render.cells import leaderboard_display
from l2lbench.store.runs import DB_FILENAME, ResultsStore, RunRecord
from l2lbench.spec.suite import load_suite
from l2lbench.spec.task import TaskSpec

META = {"horizon": 10, "datasets": ["mnist"], "trials": 3, "wall_time_s": 12.5}


def make_task(dataset: dict | None = None) -> TaskSpec:
    """A 30-step task evaluated at steps 0, 10, 20, 30 (nothing is loaded)."""
    return TaskSpec.from_config({"dataset": dataset or {"kind": "synthetic"}, "learner": {"kind": "mlp", "hidden": [4]},
                                 "steps": 30, "eval_every": 10})


def current_code(entry: str) -> dict:
    """The code identity a run of ``entry`` stored now has (built-ins: their module's;
    others: a made-up plug-in fingerprint)."""
    registry = OptimizerRegistry.default(entry_points=False)
    if entry in registry.names():
        return dict(registry.get(entry).code)
    return {"fingerprint": "feedfacecafebeef", "module": "a_plugin"}


def run_record(task, optimizer, seed, losses, *, status="ok", meta=None, error=None, diverged_step=None):
    provenance = {"torch": "x", **({"meta_training": meta} if meta else {})}
    config = {"entry": optimizer, "code": current_code(optimizer), "protocol": PROTOCOL_VERSION}
    return RunRecord(
        task_hash=task.hash, optimizer_hash=f"{optimizer:0<16}"[:16], seed=seed, task_name=task.name,
        optimizer_name=optimizer, task_config=task.config(), optimizer_config=config, status=status,
        train_loss=list(losses), eval_steps=task.eval_steps()[:len(losses)], test_loss=list(losses),
        test_accuracy=[1 - v / 2 for v in losses], wall_time_s=0.1, provenance=provenance,
        diverged_step=diverged_step, error=error,
    )


# Curves on eval steps 0, 10, 20, 30, chosen so every number has a hand-computed answer.
HAND = {
    "adam": [[2.0, 1.0, 0.5, 0.4], [2.0, 1.2, 0.7, 0.6], [2.0, 1.1, 0.6, 0.5]],  # mean 2, 1.1, 0.6, 0.5
    "fast": [[2.0, 0.45, 0.3, 0.35], [2.0, 0.55, 0.5, 0.55], [2.0, 0.5, 0.4, 0.45]],  # mean 2, .5, .4, .45
    "sgd": [[2.0, 1.5, 1.0, 0.8]] * 3,
}


def hand_records(task=None):
    task = task or make_task()
    return [run_record(task, name, seed, curve) for name, curves in HAND.items() for seed, curve in enumerate(curves)]


def store_with(tmp_path, records, name="results"):
    folder = tmp_path / name
    with ResultsStore(folder) as store:
        store.put(records)
    return folder


def report(capsys, *argv):
    """Run the report command as the CLI would; returns (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    code = command.run(parser.parse_args(list(argv)))
    out, err = capsys.readouterr()
    return code, out, err


def board_of(records, reference="adam"):
    return build_report(records, results="r", reference=reference).leaderboard.set_index("optimizer")


# --------------------------------------------------------------------------- leaderboard


def test_leaderboard_numbers_by_hand():
    board = board_of(hand_records())
    assert list(board.index) == ["fast", "adam", "sgd"] and list(board["rank"]) == [1, 2, 3]
    adam, fast, sgd = board.loc["adam"], board.loc["fast"], board.loc["sgd"]
    assert adam["final_loss"] == pytest.approx(0.5) and adam["final_loss_low"] < 0.5 < adam["final_loss_high"]
    assert adam["final_accuracy"] == pytest.approx(0.75)
    assert adam["auc"] == pytest.approx((0.975 + 1.125 + 1.05) / 3)
    assert fast["best_loss"] == pytest.approx(0.4) and fast["best_step"] == 20
    assert fast["stability"] == pytest.approx((0.35 / 0.3 + 0.55 / 0.5 + 0.45 / 0.4) / 3)
    assert adam["stability"] == 1.0 and adam["best_step"] == 30
    # sgd's final 0.8: adam's mean curve gets there at step 20, sgd at 30.
    assert sgd["speedup"] == pytest.approx(20 / 30) and not sgd["speedup_lower_bound"]
    # fast's final 0.45 (first reached at 20): adam never gets below 0.5 in 30 steps.
    assert fast["speedup"] == pytest.approx(30 / 20) and fast["speedup_lower_bound"]
    assert math.isnan(adam["speedup"])
    assert sgd["final_loss_low"] == sgd["final_loss_high"] == pytest.approx(0.8)  # identical seeds


def test_leaderboard_text_shows_intervals_bounds_and_reference(tmp_path):
    board = board_of(hand_records()).reset_index()
    text = leaderboard_display(board, "adam").set_index("optimizer")
    assert text.loc["fast", "speed-up vs adam"] == ">1.5"
    assert text.loc["sgd", "speed-up vs adam"] == "0.667"
    assert text.loc["adam", "speed-up vs adam"] == "-"
    assert text.loc["sgd", "final test loss [95% CI]"] == "0.8 [0.8, 0.8]"
    assert text.loc["fast", "best test loss @ step"] == "0.4 @ 20"
    assert text.loc["adam", "meta-train horizon"] == "" and text.loc["adam", "diverged"] == "0/3"


def test_divergence_is_counted_and_ranks_diverged_seeds_as_worst():
    task = make_task()
    records = hand_records(task) + [
        # Two of three seeds diverged (curves cut where they did): ranks last despite 0.1.
        run_record(task, "wild", 0, [2.0, 0.1], status="diverged", diverged_step=15),
        run_record(task, "wild", 1, [2.0], status="diverged", diverged_step=4),
        run_record(task, "wild", 2, [2.0, 0.2, 0.1, 0.1]),
        # One of three diverged: its finished mean 0.3 beats fast's 0.45, but counted as the
        # worst finished loss on the task (sgd's 0.8) the mean is (0.8 + 0.3 + 0.3) / 3 > 0.45.
        run_record(task, "shaky", 0, [2.0, 0.3], status="diverged", diverged_step=12),
        run_record(task, "shaky", 1, [2.0, 0.3, 0.2, 0.3]),
        run_record(task, "shaky", 2, [2.0, 0.3, 0.2, 0.3]),
    ]
    board = board_of(records)
    wild, shaky = board.loc["wild"], board.loc["shaky"]
    assert wild["diverged"] == 2 and wild["diverged_fraction"] == pytest.approx(2 / 3) and wild["seeds"] == 3
    assert wild["final_loss"] == pytest.approx(0.1) and math.isnan(wild["final_loss_low"])  # one finished seed
    assert wild["rank"] == 5
    assert shaky["final_loss"] == pytest.approx(0.3) and shaky["rank_loss"] == pytest.approx(1.4 / 3)
    assert list(board.index) == ["fast", "shaky", "adam", "sgd", "wild"]
    text = leaderboard_display(board.reset_index(), "adam").set_index("optimizer")
    assert text.loc["wild", "diverged"] == "2/3" and text.loc["wild", "final test loss [95% CI]"] == "0.1"


def test_all_seeds_diverged_still_gets_a_row():
    task = make_task()
    records = hand_records(task) + [run_record(task, "boom", s, [2.0], status="diverged", diverged_step=1) for s in range(3)]
    boom = board_of(records).loc["boom"]
    assert boom["rank"] == 4 and boom["diverged"] == 3 and math.isnan(boom["final_loss"])


def test_paired_comparisons_find_a_real_difference_and_not_noise():
    task = make_task()
    base = 1.0 + 0.01 * np.arange(8)
    noise = np.array([0.01, -0.02, 0.03, -0.04, 0.05, -0.06, 0.07, -0.08])
    records = [
        run_record(task, name, seed, [2.0, 1.5, 1.2, final])
        for name, finals in (("good", base - 0.5), ("adam", base), ("twin", base + noise))
        for seed, final in enumerate(finals)
    ]
    rows = build_report(records, results="r", reference="adam").comparisons
    verdicts = {(r["optimizer"], r["versus"]): r for r in rows.to_dict("records")}
    # good is best-ranked; each pair appears once, the better-ranked optimiser first.
    assert verdicts[("good", "adam")]["verdict"] == "better"
    assert verdicts[("good", "adam")]["p_value"] == pytest.approx(2 / 2**8)
    assert verdicts[("good", "adam")]["mean_difference"] == pytest.approx(-0.5)
    assert verdicts[("twin", "adam")]["verdict"] == "not resolved with 8 seeds"
    assert verdicts[("twin", "good")]["verdict"] == "worse"
    assert ("adam", "good") not in verdicts and len(verdicts) == 3


def test_one_optimizer_name_with_two_configs_is_never_mixed():
    task = make_task()
    first = run_record(task, "adam", 0, [2.0, 1.0, 0.5, 0.5])
    second = run_record(task, "adam", 0, [2.0, 1.0, 0.5, 0.9])
    second.optimizer_hash = "f" * 16
    names = sorted(board_of([first, second]).index)
    assert names == ["adam [adam0000]", "adam [ffffffff]"]


# --------------------------------------------------------------------------- learned optimisers


def domain_shift_records():
    """lstm meta-trained on mnist vs adam on mnist and two rotations, one seed each."""
    finals = {"mnist": (0.2, 0.5), "rotated-mnist45": (0.9, 0.6), "rotated-mnist90": (1.1, 0.8)}
    records = []
    for key, (lstm, adam) in finals.items():
        dataset = {"kind": "mnist"} if key == "mnist" else {"kind": "rotated-mnist", "angle": int(key[13:])}
        task = make_task(dataset)
        records.append(run_record(task, "lstm", 0, [2.3, 1.0, 0.5, lstm], meta=META))
        records.append(run_record(task, "adam", 0, [2.3, 1.2, 0.8, adam]))
    return records


def test_learned_optimizers_show_meta_training_and_generalisation_gap():
    result = build_report(domain_shift_records(), results="r", reference="adam")
    lstm = result.leaderboard[result.leaderboard["optimizer"] == "lstm"].iloc[0]
    assert lstm["meta_horizon"] == 10 and lstm["meta_time_s"] == 12.5 and lstm["meta_datasets"] == "mnist"
    text = leaderboard_display(result.leaderboard[result.leaderboard["task"] == lstm["task"]], "adam")
    row = text.set_index("optimizer").loc["lstm"]
    assert row["meta-train horizon"] == "10 (< 30 task steps)" and row["meta-train time (s)"] == "12.5"
    assert row["final test loss [95% CI]"] in ("0.2", "0.9", "1.1")  # one seed: the value, no interval
    assert row["meta-train learner steps"] == "" and text.set_index("optimizer").loc["adam", "meta-train learner steps"] == ""
    gaps = result.generalisation.set_index("optimizer")
    assert gaps.loc["lstm", "learned"] and gaps.loc["lstm", "in_tasks"] == 1 and gaps.loc["lstm", "out_tasks"] == 2
    assert gaps.loc["lstm", "gap"] == pytest.approx((0.9 + 1.1) / 2 - 0.2)
    assert not gaps.loc["adam", "learned"] and gaps.loc["adam", "gap"] == pytest.approx((0.6 + 0.8) / 2 - 0.5)
    assert gaps.loc["adam", "in_domain"] == "mnist"
    assert list(result.ranks.columns[:4]) == ["optimizer", "mean_rank", "tasks", "first_places"]


def test_no_generalisation_table_without_learned_optimizers():
    result = build_report(hand_records(), results="r", reference="adam")
    assert result.generalisation.empty
    assert "Generalisation gap" not in render(result, "markdown")


# --------------------------------------------------------------------------- the command


def test_partial_suite_lists_missing_and_failed_runs(tmp_path, capsys, tiny_suite):
    path = tiny_suite()
    suite = load_suite(path)
    task = suite.tasks[0]
    other = make_task({"kind": "mnist"})
    folder = store_with(tmp_path, [
        run_record(task, "sgd", 0, [2.3, 2.0, 1.9]),
        run_record(task, "sgd", 1, [], status="failed", error="ValueError: boom\nTraceback (most recent call last)"),
        run_record(task, "adam", 0, [2.3, 1.0, 0.9]),
        run_record(other, "adam", 0, [2.3, 1.0, 0.5, 0.4]),  # not in the suite
    ])
    code, out, _ = report(capsys, "--results", str(folder), "--suite", path, "--no-plots")
    assert code == 0
    assert other.name not in out
    missing = out.split("## Missing runs")[1].split("##")[0]
    assert "2 runs of suite tiny are not stored" in missing
    assert "sgd" in missing and "adam" in missing
    assert "## Failed runs" in out and f"- {task.name} / sgd / seed 1: ValueError: boom" in out
    assert "Traceback" not in out
    result = json.loads(report(capsys, "--results", str(folder), "--suite", path, "--no-plots", "--format", "json")[1])
    assert result["missing"] == [
        {"task": task.name, "optimizer": "sgd", "missing": 1, "seeds": "1", "failed_seeds": "1"},
        {"task": task.name, "optimizer": "adam", "missing": 1, "seeds": "1", "failed_seeds": ""},
    ]


@pytest.mark.parametrize("fmt, file, marker", [
    ("markdown", "report.md", "|   rank | optimizer"),
    ("github", "report.md", "| optimizer"),
    ("latex", "report.tex", "\\begin{tabular}"),
    ("html", "report.html", "<table class=\"sortable\">"),
])
def test_every_text_format(tmp_path, capsys, fmt, file, marker):
    folder = store_with(tmp_path, hand_records())
    code, out, err = report(capsys, "--results", str(folder), "--format", fmt, "--no-plots")
    assert code == 0 and marker in out and "fast" in out
    assert (folder / file).read_text() == out
    assert str(folder / file) in err and not (folder / "plots").exists()


def _same(stored, value):
    if stored in (None, ""):
        return value is None or (isinstance(value, float) and math.isnan(value))
    return stored == value


def test_csv_and_json_read_back_at_full_precision(tmp_path, capsys):
    records = hand_records()
    folder = store_with(tmp_path, records)
    expected = build_report(ResultsStore(folder).runs(), results=str(folder), reference="adam").leaderboard
    floats = [c for c in expected.columns if expected[c].dtype == float]
    assert {"final_loss_low", "auc", "stability", "speedup"} <= set(floats)

    _, out, _ = report(capsys, "--results", str(folder), "--format", "csv", "--out", str(tmp_path / "out"))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert (tmp_path / "out" / "leaderboard.csv").read_text() == out
    assert (tmp_path / "out" / "comparisons.csv").is_file() and (tmp_path / "out" / "ranks.csv").is_file()
    for row, want in zip(rows, expected.to_dict("records")):
        for column in floats:
            assert _same(float(row[column]) if row[column] else None, want[column]), column

    _, out, _ = report(capsys, "--results", str(folder), "--format", "json", "--no-plots")
    data = json.loads(out)
    assert data["reference"] == "adam" and data["runs"] == len(records)
    for row, want in zip(data["leaderboard"], expected.to_dict("records")):
        for column in floats:
            assert _same(row[column], want[column]), column
    assert {"leaderboard", "ranks", "comparisons", "generalisation", "failures", "notes"} <= set(data)


def test_plots_are_written_as_png_and_svg(tmp_path, capsys):
    folder = store_with(tmp_path, domain_shift_records())
    out_dir = tmp_path / "out"
    code, out, _ = report(capsys, "--results", str(folder), "--out", str(out_dir), "--log-y")
    assert code == 0
    stems = sorted(p.stem for p in (out_dir / "plots").glob("*.png"))
    assert stems == sorted(p.stem for p in (out_dir / "plots").glob("*.svg"))
    assert "ranks" in stems and "domain-shift-mlp784x4x10-relu-30steps" in stems
    assert sum(s.startswith("loss-") for s in stems) == 3
    for path in (out_dir / "plots").iterdir():
        assert path.stat().st_size > 5000, path
    image = imread(out_dir / "plots" / "domain-shift-mlp784x4x10-relu-30steps.png")
    assert image.ndim == 3 and image.shape[2] == 4 and image.shape[1] > image.shape[0] > 300
    assert "](plots/ranks.png)" in out and "](plots/domain-shift-" in out
    assert "Generalisation gap" in out and (out_dir / "report.md").is_file()


def test_task_figure_axes_legend_and_log_scale():
    groups = group_runs(domain_shift_records())
    task = next(t for t in groups if t.startswith("mnist"))
    figure = plots.task_figure(task, groups[task], log_y=True, subtitle="dataset mnist")
    ax = figure.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "step" and ax.get_ylabel().startswith("test loss")
    assert [a.get_ylabel().split(" (")[0] for a in figure.axes] == ["test loss", "train loss", "test accuracy"]
    assert figure.axes[2].get_yscale() == "linear"  # accuracy never on a log axis
    assert task in figure.get_suptitle()
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels == ["adam", "lstm (meta-trained on mnist, 10 steps)", "meta-training horizon"]
    lines = {line.get_label(): line.get_color() for line in ax.get_lines()}
    assert lines["adam"] == "#1f77b4" and lines["lstm (meta-trained on mnist, 10 steps)"] == "#00a5c8"
    # The LSTM's 10-step horizon, dotted in its colour, on every panel of the 30-step task.
    for a in figure.axes:
        marks = [line for line in a.get_lines() if line.get_linestyle() == ":"]
        assert [(tuple(m.get_xdata()), m.get_color()) for m in marks] == [((10, 10), "#00a5c8")]


def test_loss_axes_turn_logarithmic_when_curves_span_a_decade():
    groups = group_runs(domain_shift_records())
    task = next(t for t in groups if t.startswith("mnist"))
    span = max(g.curves()[1].mean(axis=0).max() for g in groups[task]) / min(
        g.curves()[1].mean(axis=0).min() for g in groups[task])
    figure = plots.task_figure(task, groups[task])
    assert figure.axes[0].get_yscale() == ("log" if span > plots.AUTO_LOG_SPAN else "linear")


def test_paper_colours_then_a_colour_blind_safe_palette():
    chosen = plots.colours(["mtl2l", "lstm", "sgd", "momentum", "adam", "adam-lr0.01", "rmsprop"])
    assert chosen["mtl2l"][0] == "#000000" and chosen["lstm"][0] == "#00a5c8" and chosen["sgd"][0] == "#d62728"
    assert chosen["momentum"][0] == "#ff7f0e" and chosen["adam"][0] == "#1f77b4"
    assert chosen["adam-lr0.01"][0] in plots.PALETTE and chosen["rmsprop"][0] in plots.PALETTE
    assert chosen["adam-lr0.01"] != chosen["rmsprop"]
    assert plots.colours(["adam-lr0.01"])["adam-lr0.01"][0] == "#1f77b4"  # a lone variant keeps its colour


def test_missing_default_reference_gives_no_speed_ups(tmp_path, capsys):
    records = [r for r in hand_records() if r.optimizer_name != "adam"]
    _, out, _ = report(capsys, "--results", str(store_with(tmp_path, records)), "--no-plots", "--format", "json")
    data = json.loads(out)
    assert data["reference"] is None and all(row["speedup"] is None for row in data["leaderboard"])
    assert any("No speed-ups" in note for note in data["notes"])


# --------------------------------------------------------------------------- bad input


def test_a_folder_without_a_store_is_refused_and_left_alone(tmp_path, capsys):
    with pytest.raises(UsageError, match=r"^no runs stored in .*absent; run `l2lbench run` first$"):
        report(capsys, "--results", str(tmp_path / "absent"))
    assert not (tmp_path / "absent").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no runs stored in"):
        report(capsys, "--results", str(tmp_path / "empty"))
    assert not (tmp_path / "empty" / DB_FILENAME).exists()


@pytest.mark.parametrize("argv, message", [
    (["--suite", "no-such-suite"], "unknown suite 'no-such-suite'"),
    (["--reference", "nope"], "unknown reference optimizer 'nope'; expected one of the reported optimizers: adam, fast, sgd"),
    (["--suite", "smoke"], "no runs of suite 'smoke' stored in"),
])
def test_bad_input_is_a_one_line_usage_error(tmp_path, capsys, argv, message):
    folder = store_with(tmp_path, hand_records())
    with pytest.raises(UsageError, match=message) as info:
        report(capsys, "--results", str(folder), "--no-plots", *argv)
    assert "\n" not in str(info.value)


def test_empty_store_and_bad_format(tmp_path, capsys):
    ResultsStore(tmp_path / "r").close()
    with pytest.raises(UsageError, match=r"no runs stored in .*r; run `l2lbench run` first"):
        report(capsys, "--results", str(tmp_path / "r"))
    args = argparse.Namespace(results=str(tmp_path / "r"), format="pdf")
    with pytest.raises(UsageError, match="unknown report format 'pdf'; expected one of: markdown, github"):
        command.run(args)


def test_arguments_and_formats():
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.suite, args.format, args.results, args.out, args.reference, args.log_y, args.no_plots) == (
        None, "markdown", "results", None, "adam", False, False)
    assert command.FORMATS == FORMATS and set(command.REPORT_FILES) == set(command.FORMATS)


def test_imports_have_no_side_effects():
    code = (
        "import sys, l2lbench.cli.report as c\n"
        "assert 'pandas' not in sys.modules and 'matplotlib' not in sys.modules, 'command is heavy'\n"
        "import matplotlib; backend = matplotlib.rcParams._get_backend_or_none()\n"
        "import l2lbench.report.plots\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert matplotlib.rcParams._get_backend_or_none() == backend\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- published curves


def test_the_published_curves_ship_on_one_scale():
    from l2lbench.report.published import curves

    shipped = curves()
    assert len(shipped) == 28  # Figures 2a, 2b, 4a-c, 5: every optimiser drawn there
    # The independent check of the scale (shared/papers/README.md): SGD on MNIST x 31.95.
    sgd = shipped["4a", "MNIST", "SGD"]
    assert [round(sgd.at(s)[0], 3) for s in (10, 100, 1000)] == [2.198, 1.094, 0.327]
    assert sgd.runs == 10 and shipped["4a", "MNIST", "LSTMoptimiser"].runs == 5


def _paper_record(optimizer, seed, losses, *, non_default=None, meta=None):
    task = TaskSpec.from_config({"dataset": "mnist", "steps": 300, "eval_every": 100})
    record = run_record(task, optimizer, seed, losses, meta=meta)
    record.optimizer_config["non_default"] = non_default or {}
    return record


def test_runs_that_repeat_the_papers_setting_are_set_beside_its_curves():
    # Evaluated at steps 0, 100, 200, 300; the mean at step 100 is 1.1.
    records = [_paper_record("sgd", s, [2.3, 1.0 + s * 0.2, 0.7, 0.5]) for s in range(2)]
    records += [_paper_record("lstm", 0, [2.3, 0.5, 0.6, 0.8], meta={"datasets": ["mnist"], "horizon": 100})]
    # Not the paper's setting: another learning rate, a learned optimiser meta-trained elsewhere.
    records += [_paper_record("adam", 0, [2.3, 0.4, 0.35, 0.3], non_default={"lr": 0.001})]
    records += [_paper_record("mtl2l", 0, [2.3, 0.4, 0.35, 0.3], meta={"datasets": ["kmnist"], "horizon": 100})]
    table = build_report(records, results="r", reference="sgd").published
    assert set(table["optimizer"]) == {"sgd", "lstm"}
    rows = {(r["optimizer"], r["step"]): r for r in table.to_dict("records")}
    assert rows["sgd", 100]["l2lbench"] == pytest.approx(1.1)
    assert rows["sgd", 100]["published"] == 1.0942 and rows["sgd", 100]["published_min"] == 0.9775
    assert rows["sgd", 100]["ratio"] == pytest.approx(1.1 / 1.0942)
    assert rows["sgd", 300]["ratio"] == pytest.approx(0.5 / 0.5109)
    assert math.isnan(rows["sgd", 1000]["l2lbench"])  # these runs stop at step 300
    assert rows["lstm", 100]["ratio"] == pytest.approx(0.5 / 0.5912) and rows["lstm", 100]["figure"] == "4a"
    text = render(build_report(records, results="r", reference="sgd"), "markdown")
    assert "## Against the published curves" in text and "126.58" in text and "31.95" in text


# --------------------------------------------------------------------------- meta-training seeds


def _copy(task, meta_seed, seed, curve):
    record = run_record(task, "lstm", seed, curve, meta={"horizon": 10, "datasets": ["synthetic"], "trials": 2})
    record.optimizer_hash = f"lstm-meta{meta_seed}".ljust(16, "0")[:16]
    record.optimizer_config["meta_training"] = {"seed": meta_seed}
    return record


def test_a_learned_optimizer_is_summarised_over_its_meta_training_seeds():
    task = make_task()
    records = [run_record(task, "sgd", s, [2.0, 1.5, 1.0, 0.8]) for s in range(2)]  # SGD at step 10: 1.5
    finals = {0: (0.4, 0.6), 1: (0.3, 0.5), 2: (2.0, 2.2)}  # means 0.5, 0.4, 2.1
    at_horizon = {0: 1.0, 1: 1.2, 2: 1.8}  # the third is worse than SGD at its horizon (step 10)
    for meta_seed, pair in finals.items():
        records += [_copy(task, meta_seed, s, [2.0, at_horizon[meta_seed], 1.0, final]) for s, final in enumerate(pair)]
    report = build_report(records, results="r", reference="sgd")
    (row,) = report.meta_seeds.to_dict("records")
    assert row["optimizer"] == "lstm" and row["meta_seeds"] == 3
    assert row["median_final_loss"] == pytest.approx(0.5)
    assert row["best_final_loss"] == pytest.approx(0.4) and row["worst_final_loss"] == pytest.approx(2.1)
    assert row["failed"] == 1 and row["horizon"] == 10
    assert 0.3 <= row["final_loss_low"] < 1.0 < row["final_loss_high"] <= 2.2
    names = set(report.leaderboard["optimizer"])
    assert names == {"sgd", "lstm [meta-seed 0]", "lstm [meta-seed 1]", "lstm [meta-seed 2]"}
    text = render(report, "markdown")
    assert "## Meta-training seeds" in text and " 1/3 |" in text


def test_a_meta_training_by_pes_names_its_estimator_and_its_learner_steps():
    meta = {**META, "horizon": 1000, "estimator": "pes", "learner_steps": 160000}
    task = make_task({"kind": "mnist"})
    records = [run_record(task, "lstm", 0, [2.3, 1.0, 0.5, 0.4], meta=meta), run_record(task, "adam", 0, [2.3, 1.2, 0.8, 0.5])]
    result = build_report(records, results="r", reference="adam")
    row = leaderboard_display(result.leaderboard, "adam").set_index("optimizer").loc["lstm"]
    assert row["meta-train horizon"] == "1000 by PES" and row["meta-train learner steps"] == "160000"
