"""Every fault answered: plug-ins that break in every way, hung runs, corrupt data, bad
input, a full disk, stores of other schema versions.

Runtime faults of a plug-in become failed runs with their reason while the other runs
finish (exit code 1); bad input is one line with exit code 2, runtime trouble one line
with exit code 1; no traceback unless --debug.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import torch

import l2lbench.store.runs as store_module
from l2lbench.cli import main
from l2lbench.errors import RunError, UsageError
from l2lbench.plugin.registry import OptimizerRegistry
from l2lbench.spec.optimizer import OptimizerSpec
from l2lbench.execute.runner import execute_job
from l2lbench.execute.timeouts import time_limit
from l2lbench.plan.runs import RunJob
from l2lbench.store.runs import DB_FILENAME, SCHEMA_VERSION, ResultsStore, RunRecord
from l2lbench.spec.suite import load_suite

HERE = Path(__file__).parent
PLUGINS = str(HERE / "plugins.py")
BROKEN_IMPORT = str(HERE / "plugin_broken_import.py")

FAULTY = """
seeds = 2
optimizers = [
    {{ entry = "hangs", how = "sleep", name = "hangs-sleep" }},
    {{ entry = "hangs", how = "spin", name = "hangs-spin" }},
    {{ entry = "fails-to-construct", explode = true, name = "fails-to-construct" }},
    "raises", "raises-on-init", "wrong-shape", "exits", "nan-at", "sgd",
]

[defaults]
steps = 6
batch_size = 16
eval_every = 3

[[tasks]]
dataset = {{ kind = "synthetic", n_train = 64, n_test = 32, size = 8 }}
learner = {{ kind = "mlp", hidden = [8] }}
{extra}
"""


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("l2lbench: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture
def faulty_suite(tmp_path):
    def write(extra: str = "") -> str:
        path = tmp_path / "faulty.toml"
        path.write_text(FAULTY.format(extra=extra))
        return str(path)

    return write


# --------------------------------------------------------------------------- plug-ins


def test_every_faulty_plugin_is_a_failed_run_with_its_reason_and_the_rest_finish(faulty_suite, tmp_path, capsys):
    results = tmp_path / "r"
    names = "hangs-sleep,hangs-spin,raises,raises-on-init,fails-to-construct,wrong-shape,exits,nan-at,sgd"
    start = time.monotonic()
    # --no-check: the faults at run time, each in its own runs (wrong-shape would otherwise be
    # refused up front by the conformance checks: tests/test_plugin_checks.py).
    code, out, err = _cli(capsys, "run", "--suite", faulty_suite(), "--results", str(results), "--plugin", PLUGINS,
                          "--optimizers", names, "--run-timeout", "1", "--no-check")
    assert code == 1, err
    # Two hung jobs of two batched seeds: at most 2 x 1 s each, then the rest went on.
    assert time.monotonic() - start < 60
    assert "at most 1s per run" in out and "done: 2 ok, 2 diverged, 14 failed" in out
    assert "Traceback" not in err
    runs = {(r.optimizer_name, r.seed): r for r in ResultsStore(results).runs()}
    assert len(runs) == 18
    reasons = {name: {runs[name, s].error for s in (0, 1)} for name, _ in runs}
    assert reasons["hangs-sleep"] == reasons["hangs-spin"] == {"exceeded --run-timeout 1s"}
    assert reasons["raises"] == {"RuntimeError: plug-in exploded at update"}
    assert reasons["raises-on-init"] == {"RuntimeError: plug-in exploded at init"}
    (constructor,) = reasons["fails-to-construct"]
    assert "optimizer 'fails-to-construct'" in constructor and "failed to construct: RuntimeError: plug-in exploded" in constructor
    (shape,) = reasons["wrong-shape"]
    assert shape.startswith("PluginError: optimizer 'wrong-shape': update returned parameter")
    assert "as (1, 8) torch.float32, expected (8,) torch.float32" in shape
    assert reasons["exits"] == {"SystemExit: 3"}
    assert {runs["nan-at", s].status for s in (0, 1)} == {"diverged"}
    # The runs after the interrupted ones, in the same process, are untouched.
    assert {runs["sgd", s].status for s in (0, 1)} == {"ok"} and len(runs["sgd", 0].train_loss) == 6
    for line in err.splitlines():
        assert line.startswith("l2lbench: "), line
    assert err.count("l2lbench: failed: ") == 14
    # A re-run retries the failed runs only.
    code, out, _ = _cli(capsys, "run", "--suite", faulty_suite(), "--results", str(results), "--plugin", PLUGINS,
                        "--optimizers", "raises,sgd", "--run-timeout", "1")
    assert code == 1 and "2 runs already stored (skipped), 2 to run" in out


@pytest.mark.slow
def test_run_timeout_stops_hung_runs_on_worker_processes(faulty_suite, tmp_path, capsys):
    results = tmp_path / "r"
    code, out, err = _cli(capsys, "run", "--suite", faulty_suite(), "--results", str(results), "--plugin", PLUGINS,
                          "--optimizers", "hangs-sleep,hangs-spin,sgd", "--run-timeout", "2", "--workers", "2",
                          "--no-batch")
    assert code == 1, err
    assert "on 2 worker processes" in out
    statuses = {(r.optimizer_name, r.status, r.error) for r in ResultsStore(results).runs()}
    assert statuses == {
        ("hangs-sleep", "failed", "exceeded --run-timeout 2s"),
        ("hangs-spin", "failed", "exceeded --run-timeout 2s"),
        ("sgd", "ok", None),
    }


PARENT_ONLY = """
import os

if os.environ.get("L2LBENCH_TEST_PARENT_PID") != str(os.getpid()):
    raise RuntimeError("plug-in unavailable in this process")

from l2lbench.optimizers.sgd import sgd

OPTIMIZERS = {"parent-only": sgd}
"""


def test_a_plugin_that_fails_to_import_on_workers_fails_its_runs_only(faulty_suite, tmp_path, capsys, monkeypatch):
    plugin = tmp_path / "parent_only.py"
    plugin.write_text(PARENT_ONLY)
    monkeypatch.setenv("L2LBENCH_TEST_PARENT_PID", str(os.getpid()))
    results = tmp_path / "r"
    code, out, err = _cli(capsys, "run", "--suite", faulty_suite(), "--results", str(results), "--plugin", str(plugin),
                          "--plugin", PLUGINS, "--optimizers", "parent-only,sgd", "--workers", "2")
    assert code == 1, err
    runs = {(r.optimizer_name, r.seed): r for r in ResultsStore(results).runs()}
    assert {runs["sgd", s].status for s in (0, 1)} == {"ok"}  # the other job went on
    for s in (0, 1):
        failed = runs["parent-only", s]
        assert failed.status == "failed"
        assert "optimizer 'parent-only' cannot be built in the worker process" in failed.error
        assert "plug-in unavailable in this process" in failed.error


@pytest.fixture
def setup(faulty_suite, tmp_path):
    suite = load_suite(faulty_suite())
    registry = OptimizerRegistry.default([PLUGINS], entry_points=False)
    return suite, registry, tmp_path / "data"


def test_run_timeout_in_a_worker_thread(setup):
    """Dask runs jobs on threads, where no signal can be delivered: the limit is an
    asynchronous exception there (it stops Python code, not a blocking call)."""
    suite, registry, data_dir = setup
    (hangs,) = [o for o in suite.optimizers if o.name == "hangs-spin"]
    job = RunJob(suite.tasks[0], registry.resolve(hangs), (0, 1))
    records = []
    worker = threading.Thread(target=lambda: records.extend(
        execute_job(job, data_dir=data_dir, device=torch.device("cpu"), vectorize=False, run_timeout=0.5)
    ))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert [(r.status, r.error) for r in records] == [("failed", "exceeded --run-timeout 0.5s")] * 2
    assert records[0].provenance["run_timeout_s"] == 0.5


def test_time_limit_leaves_other_alarms_and_handlers_as_they_were():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with time_limit(5):
            pass
        assert signal.getsignal(signal.SIGALRM) is not previous and not fired
        time.sleep(0.6)
        assert fired == [True]  # the outer timer still fired, into the outer handler
        with time_limit(None):
            assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_learned_plugin_that_fails_to_meta_train_fails_its_runs_only(faulty_suite, tmp_path, capsys):
    meta = '[meta_training]\ntasks = "same-as-test"\nsteps = 3\ntrials = 1\nunroll = 3\nbatch_size = 16\n'
    code, out, err = _cli(capsys, "run", "--suite", faulty_suite(meta), "--results", str(tmp_path / "r"),
                          "--plugin", PLUGINS, "--optimizers", "fails-to-meta-train,sgd")
    assert code == 1, err
    assert "fails-to-meta-train: meta-training failed: RuntimeError: cannot meta-train" in out
    runs = ResultsStore(tmp_path / "r").runs()
    assert {(r.optimizer_name, r.status, r.error) for r in runs} == {
        ("fails-to-meta-train", "failed", "meta-training failed: RuntimeError: cannot meta-train"),
        ("sgd", "ok", None),
    }


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_dataset_archive_fails_the_run_naming_the_file(damage, dataset_files, tmp_path, monkeypatch, capsys):
    import torchvision

    from l2lbench.tasks.datasets import CHECKSUMS, clear_cache

    monkeypatch.setattr(torchvision.datasets.KMNIST, "mirrors", ["http://127.0.0.1:9/"])  # no network
    data = tmp_path / "data"
    md5s = dataset_files.write_idx_dataset(data, "KMNIST", dataset_files.make_idx_arrays(n_train=32, n_test=8))
    monkeypatch.setitem(CHECKSUMS, "KMNIST", md5s)
    archive = data / "KMNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    content = archive.read_bytes()
    archive.write_bytes(content[:20] if damage == "truncated" else content[:-5] + bytes(5))
    suite = tmp_path / "kmnist.toml"
    suite.write_text('seeds = 1\noptimizers = ["sgd"]\n[[tasks]]\ndataset = "kmnist"\nsteps = 2\nbatch_size = 4\n')
    clear_cache()
    try:
        code, out, err = _cli(capsys, "run", "--suite", str(suite), "--results", str(tmp_path / "r"), "--data-dir", str(data))
    finally:
        clear_cache()
    assert code == 2
    line = _one_line(err)
    assert f"dataset file {archive} fails its checksum: md5 " in line and md5s[f"KMNIST/raw/{archive.name}"] in line
    assert not (tmp_path / "r").exists()  # nothing trained, nothing stored


# --------------------------------------------------------------------------- input


def _bad_inputs(tmp_path: Path, suite: str) -> list[tuple[list[str], str]]:
    def suite_file(name: str, text: str) -> str:
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return str(path)

    base = 'optimizers = ["sgd"]\n[[tasks]]\ndataset = "synthetic"\n'
    return [
        (["--suite", suite, "--run-timeout", "0"], "argument --run-timeout: invalid value '0' (expected a positive number of seconds, at most 604800)"),
        (["--suite", suite, "--run-timeout", "-3"], "invalid value '-3'"),
        (["--suite", suite, "--run-timeout", "nan"], "invalid value 'nan'"),
        (["--suite", suite, "--run-timeout", "soon"], "invalid value 'soon'"),
        (["--suite", suite, "--steps", "0"], "argument --steps: invalid value '0' (expected a positive integer)"),
        (["--suite", suite, "--steps", "-5"], "argument --steps: invalid value '-5'"),
        (["--suite", suite, "--seeds", "1.5"], "argument --seeds: invalid value '1.5'"),
        (["--suite", suite, "--backend", "mpi"], "unknown backend 'mpi'; expected one of: local, dask"),
        (["--suite", suite, "--optimizers", "adamx"], "unknown optimizer 'adamx'"),
        (["--suite", suite, "--tasks", "imagenet"], "matches 'imagenet'"),
        (["--suite", suite_file("malformed", "optimizers = [\"sgd\"\n[[tasks]\n")], "malformed.toml: invalid TOML: "),
        (["--suite", suite_file("seeds", "seeds = 0\n" + base)], "invalid seeds: 0 (expected a positive integer)"),
        (["--suite", suite_file("negative", "seeds = -2\n" + base)], "invalid seeds: -2"),
        (["--suite", suite_file("steps", base + "steps = 0\n")], "task #1: invalid steps: 0 (expected a positive integer)"),
        (["--suite", suite_file("neg_steps", base + "steps = -10\n")], "invalid steps: -10"),
        (["--suite", suite_file("dataset", base.replace("synthetic", "imagenet"))], "unknown dataset 'imagenet'; expected one of"),
        (["--suite", suite_file("learner", base + 'learner = "rnn"\n')], "unknown learner 'rnn'; expected one of: cnn, mlp"),
        (["--suite", suite_file("optimizer", base.replace('"sgd"', '"sgdx"'))], "unknown optimizer 'sgdx'"),
        (["--suite", suite_file("empty_name", base.replace('"sgd"', '""'))], "invalid optimizer ''"),
        (["--suite", suite_file("kind", base.replace('"synthetic"', "{ kind = [1] }"))], "unknown dataset [1]"),
    ]


def test_bad_input_is_one_line_with_exit_code_2(tiny_suite, tmp_path, capsys):
    for argv, message in _bad_inputs(tmp_path, tiny_suite()):
        code, out, err = _cli(capsys, "run", *argv, "--results", str(tmp_path / "r"))
        assert code == 2, (argv, err)
        assert message in _one_line(err), (argv, err)
    assert not (tmp_path / "r").exists()


def test_debug_shows_the_traceback_of_bad_input(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("seeds = 0\n")
    with pytest.raises(Exception, match="invalid seeds"):
        main(["--debug", "run", "--suite", str(path)])


def test_results_folder_that_is_not_writable(tiny_suite, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):  # root: permissions do not stop writes, simulate them
            real_access = os.access
            monkeypatch.setattr(
                "l2lbench.store.runs.os.access", lambda p, mode: False if Path(p) == folder else real_access(p, mode)
            )
        code, _, err = _cli(capsys, "run", "--suite", tiny_suite(), "--results", str(folder))
    finally:
        folder.chmod(0o700)
    assert code == 2
    assert f"results folder {str(folder)!r} is not writable" in _one_line(err)
    assert not (folder / DB_FILENAME).exists()


def _limited(pages_over: int):
    """sqlite3.connect whose connections cannot grow the database past its current size
    plus ``pages_over`` pages: what a full disk looks like to SQLite (SQLITE_FULL)."""
    connect = sqlite3.connect

    def limited(*args, **kwargs):
        db = connect(*args, **kwargs)
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages + pages_over}")
        return db

    return limited


def test_full_disk_during_a_write_is_one_line_with_exit_code_1(tiny_suite, tmp_path, monkeypatch, capsys):
    results = tmp_path / "r"
    ResultsStore(results).close()  # the schema fits; not every run will
    with monkeypatch.context() as patch:
        patch.setattr(sqlite3, "connect", _limited(0))
        code, out, err = _cli(capsys, "run", "--suite", tiny_suite(), "--results", str(results))
    assert code == 1
    line = _one_line(err)
    assert f"results store {str(results / DB_FILENAME)!r} cannot be written: database or disk is full" in line
    assert "run the same command again" in line
    db = sqlite3.connect(results / DB_FILENAME)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    stored = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    db.close()
    assert stored < 4  # what fitted is whole (integrity, all columns), the rest was rolled back
    # With space again, the same command completes what is missing.
    code, out, _ = _cli(capsys, "run", "--suite", tiny_suite(), "--results", str(results))
    assert code == 0 and f"{stored} runs already stored (skipped), {4 - stored} to run" in out
    assert len(ResultsStore(results).runs()) == 4


def test_other_os_errors_while_running_are_one_line_with_exit_code_1(tiny_suite, tmp_path, monkeypatch, capsys):
    import errno

    from l2lbench.tasks.datasets import SyntheticSpec

    def no_space(self, data_dir, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(data_dir / "synthetic.cache"))

    monkeypatch.setattr(SyntheticSpec, "load", no_space)
    code, _, err = _cli(capsys, "run", "--suite", tiny_suite(), "--results", str(tmp_path / "r"))
    assert code == 1 and "No space left on device: " in _one_line(err) and "synthetic.cache" in err


def _record(seed: int = 0) -> RunRecord:
    return RunRecord(task_hash="t" * 16, optimizer_hash="o" * 16, seed=seed, task_name="task", optimizer_name="opt",
                     task_config={}, optimizer_config={}, status="ok", train_loss=[1.0] * 300, eval_steps=[0],
                     test_loss=[1.0], test_accuracy=[0.5])


def test_full_disk_rolls_back_the_batch_and_the_store_stays_usable(tmp_path, monkeypatch):
    ResultsStore(tmp_path).close()
    monkeypatch.setattr(sqlite3, "connect", _limited(1))
    store = ResultsStore(tmp_path)
    with pytest.raises(RunError, match="database or disk is full"):
        store.put([_record(seed) for seed in range(50)])
    assert not store._db.in_transaction and store.count() == 0  # all or nothing
    assert store.put([_record(0)]) == 1
    store.close()


# --------------------------------------------------------------------------- versioned results


def _store_db(tmp_path: Path) -> sqlite3.Connection:
    with ResultsStore(tmp_path) as store:
        store.put([_record(0)])
    return sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)


def test_unversioned_store_with_a_runs_table_is_refused(tmp_path):
    db = _store_db(tmp_path)
    db.execute("PRAGMA user_version = 0")
    db.close()
    with pytest.raises(RunError, match=r"has a runs table but no schema version \(user_version 0\)"):
        ResultsStore(tmp_path)


def test_store_with_a_missing_column_is_refused_naming_it(tmp_path):
    db = _store_db(tmp_path)
    db.execute("ALTER TABLE runs DROP COLUMN provenance")
    db.execute("ALTER TABLE runs ADD COLUMN mood TEXT")
    db.close()
    with pytest.raises(RunError, match="missing column[(]s[)] provenance and unknown column[(]s[)] mood; refusing"):
        ResultsStore(tmp_path)


def test_an_older_schema_is_migrated_in_one_transaction(tmp_path, monkeypatch):
    _store_db(tmp_path).close()
    columns = store_module._COLUMNS + ("note",)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setattr(store_module, "_COLUMNS", columns)

    def broken(db):
        db.execute("ALTER TABLE runs ADD COLUMN note TEXT")
        raise sqlite3.OperationalError("migration interrupted")

    monkeypatch.setattr(store_module, "MIGRATIONS", {SCHEMA_VERSION: broken})
    with pytest.raises(RunError, match="migration interrupted"):
        ResultsStore(tmp_path)
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # rolled back whole
    assert "note" not in [r[1] for r in db.execute("PRAGMA table_info(runs)")]
    db.close()
    monkeypatch.setattr(store_module, "MIGRATIONS", {SCHEMA_VERSION: lambda db: db.execute("ALTER TABLE runs ADD COLUMN note TEXT")})
    with ResultsStore(tmp_path) as store:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert store.count() == 1
    monkeypatch.setattr(store_module, "MIGRATIONS", {})
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    with pytest.raises(RunError, match=f"schema version {SCHEMA_VERSION + 1}; this l2lbench reads version "
                                       f"{SCHEMA_VERSION + 2} and cannot migrate it"):
        ResultsStore(tmp_path)


def test_a_malformed_run_is_refused_naming_it(tmp_path):
    db = _store_db(tmp_path)
    db.execute("UPDATE runs SET train_loss = '[1.0, oops'")
    db.close()
    with ResultsStore(tmp_path) as store, pytest.raises(UsageError, match="malformed run [(]opt on task, seed 0[)]"):
        store.runs()


@pytest.mark.parametrize("damage, message", [
    ("newer", f"has schema version {SCHEMA_VERSION + 1}; this l2lbench reads version {SCHEMA_VERSION}"),
    ("garbage", "cannot be opened: file is not a database"),
])
def test_unreadable_store_is_one_line_with_exit_code_1(damage, message, tiny_suite, tmp_path, capsys):
    results = tmp_path / "r"
    if damage == "newer":
        db = _store_db(results)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.close()
    else:
        results.mkdir()
        (results / DB_FILENAME).write_bytes(b"not a database, not at all" * 200)
    code, _, err = _cli(capsys, "run", "--suite", tiny_suite(), "--results", str(results))
    assert code == 1 and message in _one_line(err)
