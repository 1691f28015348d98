"""kill -9 of a real ``l2lbench run`` at many moments, then the same command again; and two
``l2lbench run`` processes writing one results folder at once.

The processes are the installed console script and ``python -m l2lbench``, unmodified. A
``sitecustomize`` module on their ``PYTHONPATH`` (``INJECTOR`` below, written to a temporary
folder) injects the faults: it kills its own process with SIGKILL at a chosen point
(the n-th SQL statement of some kind, inside or between the store's transactions, or a
step of the checkpoint save of meta-training), or slows every row written so that
kills from outside land inside write transactions and writers queue for the lock.

After every kill: the database passes ``PRAGMA integrity_check``, holds no duplicate and
no partial run, and every checkpoint under its final name loads. After the last kill the
same command finishes, and its results equal those of an uninterrupted run, curve for
curve.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from l2lbench.store.checkpoint import load_checkpoint
from l2lbench.store.runs import DB_FILENAME, ResultsStore

pytestmark = pytest.mark.slow

INJECTOR = '''
"""Fault injection for l2lbench crash tests (loaded as sitecustomize; tests only).

L2LBENCH_FAULT, one of:
    sql:<PREFIX>:<n>        SIGKILL just before the n-th SQL statement starting with PREFIX
    after-sql:<PREFIX>:<n>  SIGKILL just before the statement that follows it
    ckpt-write:<n>          write half of the n-th checkpoint temp file, then SIGKILL
    fsync:<n>               SIGKILL at the n-th os.fsync (1: the checkpoint temp file,
                            2: its folder, after the rename)
    replace:<n>             SIGKILL just before the n-th rename of a temp file into place
L2LBENCH_FAULT_SLOW_WRITES=<s>  sleep s seconds before every row written (INSERT)
L2LBENCH_FAULT_LOG=<path>       append each store statement kind / checkpoint step
"""
import os
import signal

_spec = os.environ.get("L2LBENCH_FAULT", "")
_slow = float(os.environ.get("L2LBENCH_FAULT_SLOW_WRITES", "0") or 0)
_log_path = os.environ.get("L2LBENCH_FAULT_LOG")
_counts = {}
_armed = [False]


def _log(event):
    if _log_path:
        with open(_log_path, "a") as handle:
            handle.write(event + "\\n")


def _die(where):
    _log("KILLED " + where)
    os.kill(os.getpid(), signal.SIGKILL)


def _hit(kind):
    """True when this is the n-th event of the kind the fault names."""
    _counts[kind] = _counts.get(kind, 0) + 1
    parts = _spec.rsplit(":", 1)
    return len(parts) == 2 and parts[0] == kind and int(parts[1]) == _counts[kind]


if _spec or _slow or _log_path:
    import sqlite3
    import time

    _connect = sqlite3.connect

    def _trace(statement):
        text = " ".join(statement.split()).upper()
        _log("SQL " + text[:40])
        if _armed[0]:
            _die("after " + _armed[0])
        for prefix in ("BEGIN", "INSERT", "COMMIT", "CREATE TABLE", "CREATE INDEX", "PRAGMA USER_VERSION =", "SELECT"):
            if text.startswith(prefix):
                kind = prefix
                _counts[kind] = _counts.get(kind, 0) + 1
                n = _counts[kind]
                if _spec == "sql:%s:%d" % (kind, n):
                    _die("at %s #%d" % (kind, n))
                if _spec == "after-sql:%s:%d" % (kind, n):
                    _armed[0] = "%s #%d" % (kind, n)
        if _slow and text.startswith("INSERT"):
            time.sleep(_slow)

    def connect(*args, **kwargs):
        db = _connect(*args, **kwargs)
        db.set_trace_callback(_trace)
        db.execute("PRAGMA wal_autocheckpoint=1")  # checkpoint the WAL at every commit
        return db

    sqlite3.connect = connect

    _fsync, _replace, _fdopen = os.fsync, os.replace, os.fdopen

    def fsync(fd):
        if _hit("fsync"):
            _die("at fsync #%d" % _counts["fsync"])
        _log("CKPT fsync")
        return _fsync(fd)

    def replace(src, dst, *args, **kwargs):
        if str(src).endswith(".tmp"):
            if _hit("replace"):
                _die("at rename #%d" % _counts["replace"])
            _log("CKPT rename")
        return _replace(src, dst, *args, **kwargs)

    class _HalfWriter:
        def __init__(self, handle):
            self._handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._handle.__exit__(*exc)

        def write(self, data):
            self._handle.write(data[: len(data) // 2])
            self._handle.flush()
            _die("writing checkpoint temp file")

        def __getattr__(self, name):
            return getattr(self._handle, name)

    def fdopen(fd, *args, **kwargs):
        handle = _fdopen(fd, *args, **kwargs)
        try:
            path = os.readlink("/proc/self/fd/%d" % fd)
        except OSError:
            return handle
        if ".pt." in path and path.endswith(".tmp"):
            _log("CKPT write")
            if _hit("ckpt-write"):
                return _HalfWriter(handle)
        return handle

    os.fsync, os.replace, os.fdopen = fsync, replace, fdopen
'''

SUITE = """
seeds = 2
optimizers = ["sgd", "adam", "momentum", "lstm"]

[defaults]
steps = 4
batch_size = 8
eval_every = 2

{tasks}

[meta_training]
tasks = [{{ dataset = {{ kind = "synthetic", n_train = 32, n_test = 16, size = 8 }}, learner = {{ kind = "mlp", hidden = [2] }} }}]
steps = 3
batch_size = 8
trials = 1
unroll = 3
"""
TASK = '[[tasks]]\ndataset = {{ kind = "synthetic", n_train = 32, n_test = 16, size = 8 }}\nlearner = {{ kind = "mlp", hidden = [{h}] }}\n'
HIDDEN = range(2, 10)  # eight tasks: 8 x 4 optimisers = 32 jobs, 64 runs

# Chain 1 (console script, learned optimiser): the checkpoint save of meta-training, then
# the store's write transactions. The checkpoint exists from the fourth kill on.
CHECKPOINT_AND_WRITE_KILLS = [
    "ckpt-write:1",  # temp file half written
    "fsync:1",  # temp file written, not yet synced or renamed
    "replace:1",  # synced, not yet renamed into place
    "fsync:2",  # renamed, folder entry not yet synced
    "sql:INSERT:1",  # first row of the first job's transaction
    "sql:INSERT:2",  # second row: the first is in the open transaction
    "sql:COMMIT:2",  # COMMIT #1 is the schema check; #2 the first job's
    "after-sql:COMMIT:3",  # the second job just committed
    "sql:BEGIN:4",  # write lock about to be taken
    "sql:INSERT:7",  # mid-transaction, fourth job
]
# Chain 2 (python -m l2lbench, a fresh store): its creation, then kills from outside at
# random moments while every row written sleeps (so most land inside a transaction).
CREATION_KILLS = ["sql:CREATE TABLE:1", "sql:CREATE INDEX:1", "sql:PRAGMA USER_VERSION =:1", "sql:COMMIT:1"]
RANDOM_KILLS = 6
SLOW_WRITE_S = "0.1"


@pytest.fixture
def harness(tmp_path):
    injector = tmp_path / "injector"
    injector.mkdir()
    (injector / "sitecustomize.py").write_text(INJECTOR)
    suite = tmp_path / "crash.toml"
    suite.write_text(SUITE.format(tasks="\n".join(TASK.format(h=h) for h in HIDDEN)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(injector), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        "L2LBENCH_WORKERS": "1",
        "L2LBENCH_DATA": str(tmp_path / "data"),
        "OMP_NUM_THREADS": "1",  # three processes at once on a small machine; same numerics everywhere
    }
    env.pop("L2LBENCH_FAULT", None)
    script = shutil.which("l2lbench")
    assert script, "the l2lbench console script is not installed"
    return tmp_path, suite, env, script


def _command(program: list[str], suite: Path, results: Path, *extra: str) -> list[str]:
    return [*program, "run", "--suite", str(suite), "--results", str(results), "--no-batch", *extra]


def _start(command: list[str], env: dict, log: Path, **fault: str) -> subprocess.Popen:
    env = {**env, "L2LBENCH_FAULT_LOG": str(log), **fault}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def _last_event(log: Path) -> str:
    lines = log.read_text().splitlines() if log.exists() else []
    return lines[-1] if lines else "(before the store was opened)"


def check_store(results: Path) -> int:
    """Integrity, no duplicates, every stored run whole; read only. Returns the number of runs."""
    path = results / DB_FILENAME
    if not path.exists():
        return 0
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        if db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'runs'").fetchone()[0] == 0:
            return 0  # killed while creating the store: nothing was committed
        total, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT task_hash || optimizer_hash || seed) FROM runs"
        ).fetchone()
        assert total == distinct
    finally:
        db.close()
    with ResultsStore(results) as store:
        runs = store.runs()
    for run in runs:
        steps = run.task_config["steps"]
        assert run.status == "ok" and run.error is None, (run.optimizer_name, run.status, run.error)
        assert len(run.train_loss) == steps and run.eval_steps == [0, 2, 4], run.key
        assert len(run.test_loss) == len(run.test_accuracy) == 3 and run.provenance["torch"], run.key
    for checkpoint in (results / "checkpoints").glob("*.pt"):
        load_checkpoint(checkpoint)  # under its final name a checkpoint is whole
    return len(runs)


def _curves(results: Path) -> dict:
    with ResultsStore(results) as store:
        return {
            r.key: (r.optimizer_name, r.status, r.train_loss, r.eval_steps, r.test_loss, r.test_accuracy)
            for r in store.runs()
        }


WRITE_EVENTS = ("SQL BEGIN", "SQL INSERT", "SQL COMMIT", "SQL CREATE", "SQL PRAGMA USER_VERSION =")


def _kill_point(fault: str, code: int, log: Path, stored: int) -> dict:
    event = _last_event(log)
    if event.startswith("KILLED"):
        # The injector logged the statement (or step) it was about to run, then its death.
        lines = log.read_text().splitlines()
        event = " ".join([lines[-2] if len(lines) > 1 else "", event])
    return {
        "fault": fault, "killed": code == -signal.SIGKILL, "event": event, "stored": stored,
        "in_write": any(w in event for w in WRITE_EVENTS) or fault.startswith("sql:"),
        "in_checkpoint_save": fault.split(":")[0] in ("ckpt-write", "fsync", "replace"),
    }


def _chain_with_deterministic_kills(command, env, results, log, faults) -> list[dict]:
    points = []
    for fault in faults:
        code, out, err = _finish(_start(command, env, log, L2LBENCH_FAULT=fault))
        assert code == -signal.SIGKILL, f"{fault}: the fault point was never reached (exit {code}): {err[-2000:]}"
        points.append(_kill_point(fault, code, log, check_store(results)))
    return points


def _chain_with_random_kills(command, env, results, log, seed) -> list[dict]:
    points, rng = [], random.Random(seed)
    for _ in range(RANDOM_KILLS):
        process = _start(command, env, log, L2LBENCH_FAULT_SLOW_WRITES=SLOW_WRITE_S)
        first = process.stdout.readline()  # printed once the store is open and the runs planned
        assert first.startswith("suite "), first + process.stderr.read()
        process.stdout.readline()  # --verbose: the first job is stored (later ones are quicker)
        delay = rng.uniform(0.0, 0.3)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        code, _, _ = _finish(process)
        points.append(_kill_point(f"random, {delay:.2f}s after a job", code, log, check_store(results)))
    return points


def test_kill_9_at_20_points_then_rerun_gives_the_uninterrupted_results(harness):
    tmp_path, suite, env, script = harness
    console, module = [script], [sys.executable, "-m", "l2lbench"]
    first_results, second_results, reference = tmp_path / "r1", tmp_path / "r2", tmp_path / "reference"

    def first_chain():
        started = time.monotonic()
        log = tmp_path / "chain1.log"
        points = _chain_with_deterministic_kills(_command(console, suite, first_results), env, first_results, log,
                                                 CHECKPOINT_AND_WRITE_KILLS)
        code, out, err = _finish(_start(_command(console, suite, first_results), env, log))
        assert code == 0, err
        print(f"chain 1: {time.monotonic() - started:.0f}s")
        return points, out

    def second_chain():
        started = time.monotonic()
        log = tmp_path / "chain2.log"
        command = _command(module, suite, second_results, "--optimizers", "sgd,adam,momentum", "--verbose")
        points = _chain_with_deterministic_kills(command, env, second_results, log, CREATION_KILLS)
        points += _chain_with_random_kills(command, env, second_results, log, seed=7)
        code, out, err = _finish(_start(command, env, log))
        assert code == 0, err
        print(f"chain 2: {time.monotonic() - started:.0f}s")
        return points, out

    def uninterrupted():
        started = time.monotonic()
        code, out, err = _finish(_start(_command(module, suite, reference), env, tmp_path / "reference.log"))
        assert code == 0, err
        print(f"reference: {time.monotonic() - started:.0f}s")
        return out

    with ThreadPoolExecutor(3) as pool:
        chains = [pool.submit(first_chain), pool.submit(second_chain), pool.submit(uninterrupted)]
        (points1, out1), (points2, out2), _ = [c.result() for c in chains]

    points = points1 + points2
    for p in points:  # the list for the record (pytest -s shows it)
        print(f"{p['fault']:>40}: {'killed' if p['killed'] else 'finished first'} at {p['event']!r}; "
              f"store intact, {p['stored']} whole runs")
    assert sum(p["killed"] for p in points) >= 20
    assert sum(p["killed"] and p["in_write"] for p in points) >= 10
    assert sum(p["killed"] and p["in_checkpoint_save"] for p in points) == 4

    expected = _curves(reference)
    assert len(expected) == len(HIDDEN) * 4 * 2
    assert check_store(first_results) == len(expected) and _curves(first_results) == expected
    hand_designed = {k: v for k, v in expected.items() if v[0] != "lstm"}
    assert check_store(second_results) == len(hand_designed) and _curves(second_results) == hand_designed
    # The interrupted meta-training gave the same meta-parameters as the uninterrupted one.
    (checkpoint,) = (first_results / "checkpoints").glob("*.pt")
    (again,) = (reference / "checkpoints").glob("*.pt")
    assert checkpoint.name == again.name
    for key, value in load_checkpoint(again).state_dict.items():
        assert load_checkpoint(checkpoint).state_dict[key].equal(value)
    # The last (uninterrupted) command computed only what the killed ones had not stored.
    assert "already stored (skipped)" in out1 and "already stored (skipped)" in out2


def test_two_runs_on_one_results_folder_at_once(harness):
    """Two suites and the same suite twice, three processes, one store; every write waits
    for the others' (each row written sleeps, so transactions overlap)."""
    tmp_path, suite, env, script = harness
    other = tmp_path / "other.toml"
    other.write_text(SUITE.format(tasks=TASK.format(h=12)).replace('["sgd", "adam", "momentum", "lstm"]', '["sgd", "momentum"]'))
    results = tmp_path / "shared"
    commands = [
        _command([script], suite, results, "--optimizers", "sgd,adam"),
        _command([sys.executable, "-m", "l2lbench"], suite, results, "--optimizers", "sgd,adam"),
        _command([sys.executable, "-m", "l2lbench"], other, results),
    ]
    processes = [_start(c, env, tmp_path / f"writer{i}.log", L2LBENCH_FAULT_SLOW_WRITES="0.05")
                 for i, c in enumerate(commands)]
    outcomes = [_finish(p) for p in processes]
    for code, out, err in outcomes:
        assert code == 0, err
        assert "locked" not in err and "Traceback" not in err, err
    runs = check_store(results)
    assert runs == len(HIDDEN) * 2 * 2 + 1 * 2 * 2
    # The same suite twice: every run computed at least once, stored exactly once.
    done = [int(out.split("done: ")[1].split(" ok")[0]) for _, out, _ in outcomes]
    assert done[0] + done[1] >= len(HIDDEN) * 2 * 2 and done[2] == 4
