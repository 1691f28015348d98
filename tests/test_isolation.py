"""A misbehaving plug-in costs only its own runs: it may end its process, hang past every
exception handler, leave a thread running or allocate without end, and the suite goes on,
with the reason stored, on one worker process or several."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import l2lbench.execute.runner as runner
from l2lbench.cli import main
from l2lbench.store.runs import ResultsStore

PLUGINS = str(Path(__file__).with_name("plugins.py"))


def _run(capsys, suite, results, *args):
    code = main(["run", "--suite", suite, "--results", str(results), "--plugin", PLUGINS, *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err, {(r.optimizer_name, r.seed): r for r in ResultsStore(results).runs()}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_plugin_that_ends_its_process_fails_its_runs_only(tiny_suite, tmp_path, capsys, workers):
    code, out, err, runs = _run(capsys, tiny_suite(), tmp_path / "r", "--optimizers", "exits-process,sgd,adam",
                                "--workers", workers)
    assert code == 1
    assert "done: 4 ok, 0 diverged, 2 failed" in out
    assert {runs["exits-process", s].error for s in (0, 1)} == {"its process exited with code 3"}
    assert {runs[name, s].status for name in ("sgd", "adam") for s in (0, 1)} == {"ok"}
    assert err.count("l2lbench: failed: exits-process") == 2


def test_a_process_killed_by_the_kernel_is_named_as_such(tiny_suite, tmp_path, capsys):
    code, out, err, runs = _run(capsys, tiny_suite(), tmp_path / "r", "--optimizers", "killed,sgd",
                                "--max-memory", "4")
    assert code == 1
    assert {runs["killed", s].error for s in (0, 1)} == {
        "its process was killed by SIGKILL (out of memory? each worker may take 4.0 GiB, see --max-memory)"
    }
    assert {runs["sgd", s].status for s in (0, 1)} == {"ok"}


def test_a_hang_that_swallows_the_time_limit_ends_with_its_process(tiny_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "HARD_LIMIT_GRACE_S", 2.0)
    start = time.monotonic()
    code, out, err, runs = _run(capsys, tiny_suite(), tmp_path / "r", "--optimizers", "swallows-everything,sgd",
                                "--run-timeout", "1")
    assert code == 1 and time.monotonic() - start < 40
    assert {runs["swallows-everything", s].error for s in (0, 1)} == {
        "exceeded --run-timeout 1s (it did not stop when asked; its process was ended)"
    }
    assert {runs["sgd", s].status for s in (0, 1)} == {"ok"}


def test_a_plugin_thread_that_never_ends_does_not_keep_the_command(tiny_suite, tmp_path):
    env = {**os.environ, "L2LBENCH_DATA": str(tmp_path / "data")}
    command = [sys.executable, "-m", "l2lbench", "run", "--suite", tiny_suite(), "--results", str(tmp_path / "r"),
               "--plugin", PLUGINS, "--optimizers", "starts-thread", "--workers", "1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {r.status for r in ResultsStore(tmp_path / "r").runs()} == {"ok"}


def test_an_allocation_storm_fails_its_run_under_max_memory(tiny_suite, tmp_path, capsys):
    code, out, err, runs = _run(capsys, tiny_suite(), tmp_path / "r", "--optimizers", "hoards,sgd",
                                "--max-memory", "2")
    assert code == 1 and "at most 2.0 GiB each" in out
    for seed in (0, 1):
        assert "can't allocate memory" in runs["hoards", seed].error
    assert {runs["sgd", s].status for s in (0, 1)} == {"ok"}


@pytest.mark.parametrize("value", ["0", "-1", "nan", "lots", "1e300"])
def test_max_memory_is_checked(tiny_suite, tmp_path, capsys, value):
    assert main(["run", "--suite", tiny_suite(), "--results", str(tmp_path / "r"), "--max-memory", value]) == 2
    err = capsys.readouterr().err
    assert f"argument --max-memory: invalid value {value!r} (expected GiB between 0.25 and 1048576" in err
    assert not (tmp_path / "r").exists()


def test_no_fault_changes_a_finished_run(tiny_suite, tmp_path, capsys, monkeypatch):
    """The fault list replayed against one results folder: each fault is its own command
    with its exit code and message, and the runs finished before it stay as they were."""
    monkeypatch.setattr(runner, "HARD_LIMIT_GRACE_S", 2.0)
    suite, results = tiny_suite(), tmp_path / "r"
    assert main(["run", "--suite", suite, "--results", str(results)]) == 0
    capsys.readouterr()

    def finished():
        return {(r.optimizer_name, r.seed): (r.created_at, r.test_loss, r.train_loss, r.provenance)
                for r in ResultsStore(results).runs() if r.optimizer_name in ("sgd", "adam")}

    before = finished()
    assert len(before) == 4
    faults = [
        (["--optimizers", "exits-process"], 1, "its process exited with code 3"),
        (["--optimizers", "killed"], 1, "its process was killed by SIGKILL"),
        (["--optimizers", "swallows-everything", "--run-timeout", "1"], 1, "it did not stop when asked"),
        (["--optimizers", "hoards", "--max-memory", "2"], 1, "can't allocate memory"),
        (["--optimizers", "interrupts"], 1, "raised KeyboardInterrupt"),
        (["--optimizers", "sgd", "--run-timeout", "1e300"], 2, "at most 604800"),
        (["--optimizers", "sgd", "--steps", "1000000000000"], 2, "of memory (estimated from its spec)"),
    ]
    for argv, expected, message in faults:
        code = main(["run", "--suite", suite, "--results", str(results), "--plugin", PLUGINS, *argv])
        out, err = capsys.readouterr()
        assert code == expected and message in err and "Traceback" not in err, (argv, err)
        assert finished() == before, argv
