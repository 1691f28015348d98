"""The SQLite store: whole-or-nothing writes, first finished result wins, versioned."""

from __future__ import annotations

import math
import sqlite3

import pytest

from l2lbench.errors import RunError, UsageError
from l2lbench.store.runs import SCHEMA_VERSION, ResultsStore, RunRecord


def _record(seed=0, status="ok", loss=1.0, **extra):
    return RunRecord(
        task_hash="t" * 16, optimizer_hash="o" * 16, seed=seed, task_name="task", optimizer_name="opt",
        task_config={"kind": "task"}, optimizer_config={"entry": "opt"}, status=status,
        train_loss=[loss, loss / 2], eval_steps=[0, 2], test_loss=[loss, loss / 3], test_accuracy=[0.1, 0.5],
        wall_time_s=0.5, provenance={"torch": "x"}, **extra,
    )


def test_round_trip_keeps_every_number_and_nan(tmp_path):
    store = ResultsStore(tmp_path)
    store.put([_record(0, loss=1 / 3), _record(1, "diverged", loss=math.nan, diverged_step=1)])
    a, b = store.runs()
    assert a.train_loss == [1 / 3, 1 / 6] and a.test_loss[1] == (1 / 3) / 3
    assert b.status == "diverged" and b.diverged_step == 1 and math.isnan(b.train_loss[0])
    assert store.finished_seeds("t" * 16, "o" * 16) == {0, 1}


def test_a_finished_run_is_never_overwritten_but_a_failure_is_replaced(tmp_path):
    store = ResultsStore(tmp_path)
    assert store.put([_record(0, loss=1.0), _record(1, "failed", error="boom")]) == 2
    assert store.put([_record(0, loss=9.0), _record(1, loss=2.0)]) == 1
    runs = {r.seed: r for r in store.runs()}
    assert runs[0].train_loss[0] == 1.0 and runs[1].status == "ok" and runs[1].error is None
    assert store.count() == 2


def test_a_batch_is_written_whole_or_not_at_all(tmp_path):
    store = ResultsStore(tmp_path)
    bad = _record(1)
    bad.status = "unknown-status"  # violates the CHECK constraint mid-batch
    with pytest.raises(sqlite3.IntegrityError):
        store.put([_record(0), bad])
    assert store.count() == 0


def test_two_connections_see_each_others_runs(tmp_path):
    first, second = ResultsStore(tmp_path), ResultsStore(tmp_path)
    first.put([_record(0)])
    assert second.finished_seeds("t" * 16, "o" * 16) == {0}
    assert first._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_of_another_schema_version_is_refused(tmp_path):
    ResultsStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / "l2lbench.sqlite")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RunError, match=f"schema version {SCHEMA_VERSION + 1}; this l2lbench reads version {SCHEMA_VERSION}"):
        ResultsStore(tmp_path)


def test_foreign_database_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / "l2lbench.sqlite")
    db.execute("CREATE TABLE other (x)")
    db.commit()
    db.close()
    with pytest.raises(RunError, match="is not an l2lbench results store"):
        ResultsStore(tmp_path)


def test_unwritable_results_folder_is_a_usage_error(tmp_path, monkeypatch):
    # Simulated: CI runs as root, for whom chmod 500 does not stop writes.
    monkeypatch.setattr("l2lbench.store.runs.os.access", lambda path, mode: False)
    with pytest.raises(UsageError, match="is not writable"):
        ResultsStore(tmp_path / "ro")


def test_results_path_that_is_a_file_is_a_usage_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(UsageError, match="cannot create results folder"):
        ResultsStore(path)
