"""The fair protocol: three splits, tuned rulesets chosen on validation data, and a test split
that no choice reads."""

from __future__ import annotations

import math
import sqlite3
import textwrap
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from l2lbench.cli import main
from l2lbench.errors import ConfigError
from l2lbench.store.runs import ResultsStore
from l2lbench.spec.suite import parse_suite
from l2lbench.tasks.datasets import SyntheticSpec, clear_cache
from l2lbench.plan.tuning import TUNING_SEED_BASE, Tuned, TuningSpec, candidates, objective

# ----------------------------------------------------------------------------- candidates


def test_grid_of_one_hyperparameter_is_log_spaced_by_hand():
    # 10 ** (-4 + 4k/3), k = 0..3, to three significant digits.
    got = candidates({"lr": (1e-4, 1.0)}, TuningSpec(trials=4), seed=0)
    assert got == [{"lr": 1e-4}, {"lr": 0.00215}, {"lr": 0.0464}, {"lr": 1.0}]


def test_grid_of_two_hyperparameters_is_the_largest_square_within_the_budget():
    got = candidates({"lr": (0.01, 1.0), "wd": (1e-4, 1e-2)}, TuningSpec(trials=10), seed=0)
    assert len(got) == 9  # 3 x 3 <= 10
    assert sorted({c["lr"] for c in got}) == [0.01, 0.1, 1.0] and sorted({c["wd"] for c in got}) == [1e-4, 1e-3, 1e-2]


def test_sobol_candidates_are_seeded_and_inside_the_range():
    spec = TuningSpec(trials=8, search="sobol")
    a, b = candidates({"lr": (1e-5, 0.1)}, spec, seed=3), candidates({"lr": (1e-5, 0.1)}, spec, seed=3)
    assert a == b and len(a) == 8
    assert all(1e-5 <= c["lr"] <= 0.1 for c in a)
    assert candidates({"lr": (1e-5, 0.1)}, spec, seed=4) != a


@pytest.mark.parametrize("config,message", [
    ({"trials": 0}, "invalid tuning trials: 0 (expected an integer from 1 to 1000)"),
    ({"seeds": "2"}, "invalid tuning seeds: '2'"),
    ({"objective": "best"}, "invalid tuning objective: 'best' (expected one of final, mean)"),
    ({"search": "random"}, "invalid tuning search: 'random' (expected one of grid, sobol)"),
    ({"space": {"adam": {"lr": [0.1, 0.01]}}}, "invalid search range lr = [0.1, 0.01] of optimizer 'adam'"),
    ({"budget": 3}, "unknown tuning key(s) 'budget'"),
])
def test_bad_tuning_tables_are_refused_in_one_line(config, message):
    with pytest.raises(ConfigError) as exc:
        TuningSpec.from_config(config)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_bad_ruleset_is_refused():
    with pytest.raises(ConfigError, match="invalid ruleset: 'tuneed' \\(expected one of fixed, tuned\\)"):
        parse_suite('ruleset = "tuneed"\noptimizers = ["sgd"]\n[[tasks]]\ndataset = "synthetic"\n', name="x", source="x")


# ----------------------------------------------------------------------------- selection


def _run(seed, validation, status="ok"):
    return SimpleNamespace(seed=seed, status=status, validation_loss=validation)


def test_objective_final_or_mean_and_failures_count_as_infinite():
    seeds = [TUNING_SEED_BASE, TUNING_SEED_BASE + 1]
    runs = [_run(seeds[0], [2.0, 1.0]), _run(seeds[1], [3.0, 0.5])]
    assert objective(runs, "final", seeds) == pytest.approx(0.75)
    assert objective(runs, "mean", seeds) == pytest.approx((1.5 + 1.75) / 2)
    assert math.isinf(objective([runs[0], _run(seeds[1], [1.0], "diverged")], "final", seeds))
    assert math.isinf(objective([runs[0], _run(seeds[1], [1.0, math.nan])], "final", seeds))
    assert math.isnan(objective(runs[:1], "final", seeds))  # a tuning seed has not run yet


def test_the_winner_is_the_lowest_objective_and_an_edge_is_flagged():
    trials = [({"lr": v}, None) for v in (0.001, 0.01, 0.1)]
    plan = Tuned(task=None, base=None, space={"lr": (0.001, 0.1)}, trials=trials, objectives=[0.5, 0.3, 0.3])
    assert plan.best == 1 and plan.on_edge == []  # a tie goes to the earlier candidate
    plan.objectives = [0.5, 0.4, 0.3]
    assert plan.best == 2 and plan.on_edge == ["lr"]
    plan.objectives = [0.5, math.nan, 0.3]
    assert plan.best is None  # not every candidate has run
    plan.objectives = [math.inf] * 3
    assert plan.best is None  # every candidate failed


# ----------------------------------------------------------------------------- end to end

SUITE = """
ruleset = "tuned"
seeds = 2
optimizers = ["sgd", "adam", "lstm"]

[defaults]
steps = 12
batch_size = 16
eval_every = 4

[[tasks]]
dataset = { kind = "synthetic", n_train = 240, n_test = 48, size = 8 }
learner = { kind = "mlp", hidden = [8] }

[tuning]
trials = 3
seeds = 2

[meta_training]
tasks = "same-as-test"
steps = 6
trials = 2
batch_size = 16
"""


def _cli(*argv):
    return main([str(a) for a in argv])


def test_tuned_suite_chooses_on_validation_and_reports_on_test(tmp_path, capsys):
    suite = tmp_path / "tiny.toml"
    suite.write_text(textwrap.dedent(SUITE))
    results = tmp_path / "r"
    assert _cli("run", "--suite", suite, "--results", results, "--workers", "1") == 0
    records = ResultsStore(results).runs()
    tuning = [r for r in records if r.seed >= TUNING_SEED_BASE]
    final = [r for r in records if r.seed < TUNING_SEED_BASE]
    assert {r.seed for r in tuning} == {TUNING_SEED_BASE, TUNING_SEED_BASE + 1}
    assert {r.optimizer_name for r in tuning} == {"sgd-lr0.0001", "sgd-lr0.01", "sgd-lr1", "adam-lr1e-05",
                                                   "adam-lr0.001", "adam-lr0.1"}
    assert all(len(r.validation_loss) == len(r.test_loss) == len(r.eval_steps) == 4 for r in records if r.status == "ok")
    # The winner, recomputed here from the stored validation curves alone.
    by_candidate = defaultdict(list)
    for r in tuning:
        by_candidate[r.optimizer_name].append(r.validation_loss[-1] if r.status == "ok" else math.inf)
    for name in ("sgd", "adam"):
        means = {c: sum(v) / len(v) for c, v in by_candidate.items() if c.startswith(name + "-")}
        best = min(means, key=means.get)
        winner = [r for r in final if r.optimizer_name == f"{name}-tuned"]
        assert {r.seed for r in winner} == {0, 1}
        assert {r.optimizer_config["hparams"]["lr"] for r in winner} == {float(best.split("-lr")[1])}
    assert {r.optimizer_name for r in final} == {"sgd-tuned", "adam-tuned", "lstm"}

    capsys.readouterr()
    assert _cli("report", "--results", results, "--suite", suite, "--format", "json", "--no-plots") == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert {row["optimizer"] for row in report["tuning"]} == {"sgd", "adam"}
    assert {row["tuning_runs"] for row in report["tuning"]} == {6}
    assert all(row["seeds"] == 2 for row in report["leaderboard"])  # no tuning seed in a leaderboard
    assert not report["missing"]


def _wrong_test_labels(monkeypatch):
    real = SyntheticSpec._load

    def load(self, data_dir, download):
        splits = real(self, data_dir, download)
        wrong = (splits.test_labels + 1) % self.num_classes
        return type(splits)(splits.train_images, splits.train_labels, splits.test_images, wrong, splits.mean, splits.std)

    monkeypatch.setattr(SyntheticSpec, "_load", load)


def test_no_training_meta_training_or_choice_reads_the_test_split(tmp_path, monkeypatch):
    """The same tuned suite on a dataset whose test labels are all wrong: every choice,
    every training and validation curve and the meta-trained optimiser are unchanged;
    only the test curves differ."""
    suite = tmp_path / "tiny.toml"
    suite.write_text(textwrap.dedent(SUITE))

    def outcome(results):
        assert _cli("run", "--suite", suite, "--results", results, "--workers", "1") == 0
        runs = {(r.optimizer_hash, r.seed): r for r in ResultsStore(results).runs()}
        checkpoints = {p.name: torch.load(p, weights_only=True) for p in (results / "checkpoints").glob("*.pt")}
        return runs, checkpoints

    clear_cache()
    honest, honest_checkpoints = outcome(tmp_path / "honest")
    clear_cache()
    _wrong_test_labels(monkeypatch)
    lying, lying_checkpoints = outcome(tmp_path / "lying")
    clear_cache()
    assert honest.keys() == lying.keys()  # the same candidates, winners and seeds
    for key, run in honest.items():
        other = lying[key]
        assert run.train_loss == other.train_loss and run.validation_loss == other.validation_loss
        assert run.test_accuracy != other.test_accuracy or run.status != "ok"
    assert honest_checkpoints.keys() == lying_checkpoints.keys()
    for name, checkpoint in honest_checkpoints.items():
        state, other = checkpoint["state_dict"], lying_checkpoints[name]["state_dict"]
        assert all(torch.equal(state[k], other[k]) for k in state)


def test_a_version_1_store_gains_validation_columns(tmp_path):
    db = sqlite3.connect(tmp_path / "l2lbench.sqlite")
    db.execute("""CREATE TABLE runs (task_hash TEXT NOT NULL, optimizer_hash TEXT NOT NULL, seed INTEGER NOT NULL,
        task_name TEXT NOT NULL, optimizer_name TEXT NOT NULL, task_config TEXT NOT NULL, optimizer_config TEXT NOT NULL,
        status TEXT NOT NULL, diverged_step INTEGER, error TEXT, train_loss TEXT NOT NULL, eval_steps TEXT NOT NULL,
        test_loss TEXT NOT NULL, test_accuracy TEXT NOT NULL, wall_time_s REAL NOT NULL, provenance TEXT NOT NULL,
        created_at TEXT NOT NULL, PRIMARY KEY (task_hash, optimizer_hash, seed))""")
    db.execute("INSERT INTO runs VALUES ('t', 'o', 0, 'task', 'opt', '{}', '{}', 'ok', NULL, NULL, '[1.0]', '[0]', "
               "'[2.0]', '[0.5]', 1.0, '{}', 'now')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    (run,) = ResultsStore(tmp_path).runs()
    assert run.test_loss == [2.0] and run.validation_loss == [] and run.validation_accuracy == []


# ----------------------------------------------------------------------------- time to target, intervals

from l2lbench.report import target  # noqa: E402
from l2lbench.report.comparisons import paired_comparisons  # noqa: E402
from l2lbench.report.grouping import Group  # noqa: E402
from l2lbench.store.runs import RunRecord  # noqa: E402


def _record(name, seed, validation, *, test=1.0, learned=False, wall=2.0):
    return RunRecord(
        task_hash="t", optimizer_hash=name, seed=seed, task_name="task", optimizer_name=name,
        task_config={"steps": 20}, optimizer_config={"entry": name}, status="ok", train_loss=[1.0] * 20,
        eval_steps=[0, 10, 20], test_loss=[2.0, 1.5, test], test_accuracy=[0.1] * 3, validation_loss=list(validation),
        validation_accuracy=[0.1] * 3, wall_time_s=wall,
        provenance={"meta_training": {"datasets": ["x"], "horizon": 5}} if learned else {},
    )


def test_time_to_target_by_hand():
    # Hand-designed a ends at 0.5 and 0.7 (mean 0.6), b at 0.9: the target is 1.1 x 0.6 = 0.66.
    a = Group("task", "a", (_record("a", 0, [1.0, 0.6, 0.5]), _record("a", 1, [1.0, 0.9, 0.7])))
    b = Group("task", "b", (_record("b", 0, [1.0, 0.95, 0.9]), _record("b", 1, [1.0, 0.95, 0.9])))
    # A learned optimiser's 0.1 does not set the target, but it reaches it at step 10 on both seeds.
    c = Group("task", "c", (_record("c", 0, [1.0, 0.1, 0.1], learned=True), _record("c", 1, [1.0, 0.5, 0.1], learned=True)))
    table = target.time_to_target({"task": [a, b, c]}).set_index("optimizer")
    assert table.loc["a", "target"] == pytest.approx(0.66)
    assert table.loc["c", "steps_to_target"] == 10 and table.loc["c", "reached"] == 2
    # Time: 10 steps at 2 s per 20-step run.
    assert table.loc["c", "time_to_target_s"] == pytest.approx(10 * 2.0 / 20)
    assert math.isinf(table.loc["a", "steps_to_target"]) and table.loc["a", "reached"] == 1  # median of 10 and never
    assert math.isinf(table.loc["b", "steps_to_target"]) and table.loc["b", "reached"] == 0


def test_performance_profile_by_hand():
    import pandas as pd

    table = pd.DataFrame({"task": ["t1", "t1", "t2", "t2"], "optimizer": ["A", "B", "A", "B"],
                          "steps_to_target": [10.0, 20.0, 40.0, math.inf]})
    frame = target.profile(table, taus=[1.0, 2.0, 64.0]).set_index(["optimizer", "tau"])["fraction"]
    assert frame[("A", 1.0)] == 1.0 and frame[("A", 64.0)] == 1.0
    assert frame[("B", 1.0)] == 0.0 and frame[("B", 2.0)] == 0.5 and frame[("B", 64.0)] == 0.5


def test_paired_comparison_gives_the_bootstrap_interval_of_the_difference():
    import pandas as pd

    low = Group("task", "low", tuple(_record("low", s, [1.0] * 3, test=0.4 + 0.01 * s) for s in range(4)))
    high = Group("task", "high", tuple(_record("high", s, [1.0] * 3, test=0.5 + 0.01 * s) for s in range(4)))
    board = pd.DataFrame({"task": ["task", "task"], "optimizer": ["low", "high"]})  # ranked: low first
    rows = paired_comparisons({"task": [low, high]}, board, reference=None).set_index("optimizer")
    # Every pair differs by +0.1 exactly (high - low): a zero-width interval above 0.
    assert rows.loc["high", "versus"] == "low" and rows.loc["high", "interval"] == "higher"
    assert rows.loc["high", "difference_low"] == pytest.approx(0.1) and rows.loc["high", "difference_high"] == pytest.approx(0.1)
