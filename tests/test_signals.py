"""Stop signals: SIGTERM and SIGHUP stop a run like Ctrl-C (finished runs kept, one line
saying how many, exit 128 + signal); no worker process outlives the command; a plug-in
that raises KeyboardInterrupt itself fails only its own runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from l2lbench.cli import main
from l2lbench.store.runs import ResultsStore

PLUGINS = str(Path(__file__).with_name("plugins.py"))

SUITE = """
seeds = 2
optimizers = ["sgd", {{ entry = "hangs", at = 2, name = "hangs" }}, {{ entry = "hangs", at = 3, name = "hangs-later" }}]

[defaults]
steps = 6
batch_size = 16
eval_every = 3

[[tasks]]
dataset = {{ kind = "synthetic", n_train = 64, n_test = 32, size = 8 }}
learner = {{ kind = "mlp", hidden = [8] }}
"""


def _start(tmp_path, workers: int) -> tuple[subprocess.Popen, Path]:
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE.format())
    results = tmp_path / "r"
    env = {**os.environ, "L2LBENCH_DATA": str(tmp_path / "data")}
    command = [sys.executable, "-m", "l2lbench", "run", "--suite", str(suite), "--results", str(results),
               "--plugin", PLUGINS, "--optimizers", "sgd,hangs,hangs-later", "--workers", str(workers)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, results


def _wait_for_sgd(process: subprocess.Popen, results: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (results / "l2lbench.sqlite").exists() and any(r.optimizer_name == "sgd" for r in ResultsStore(results).runs()):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    raise AssertionError("sgd's runs were never stored")


@pytest.mark.parametrize("signum,workers", [(signal.SIGTERM, 2), (signal.SIGHUP, 2), (signal.SIGTERM, 1)])
def test_a_stop_signal_keeps_finished_runs_and_leaves_no_process(tmp_path, signum, workers):
    process, results = _start(tmp_path, workers)
    try:
        _wait_for_sgd(process, results)  # the hung jobs keep their workers busy from here on
        family = psutil.Process(process.pid).children(recursive=True)
        assert len(family) >= (2 if workers == 2 else 0)
        time.sleep(0.5)
        process.send_signal(signum)
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum
    name = signal.Signals(signum).name
    assert err.endswith(f"l2lbench: stopped by {name}; 2 runs finished and stored by this command; "
                        "run the same command to resume\n"), err
    assert "Traceback" not in err
    _, alive = psutil.wait_procs(family, timeout=5)
    assert alive == [], f"left behind: {alive}"
    runs = ResultsStore(results).runs()
    assert sorted((r.optimizer_name, r.status) for r in runs) == [("sgd", "ok"), ("sgd", "ok")]


def test_workers_die_with_a_killed_parent(tmp_path):
    process, results = _start(tmp_path, 2)
    try:
        _wait_for_sgd(process, results)
        family = psutil.Process(process.pid).children(recursive=True)
        assert family
        process.kill()  # kill -9: no handler runs in the parent
        process.communicate(timeout=10)
        _, alive = psutil.wait_procs(family, timeout=5)
        assert alive == [], f"left behind: {alive}"
    finally:
        if process.poll() is None:
            process.kill()


def test_a_plugin_raising_keyboard_interrupt_fails_only_its_runs(tiny_suite, tmp_path, capsys):
    results = tmp_path / "r"
    code = main(["run", "--suite", tiny_suite(), "--results", str(results), "--plugin", PLUGINS,
                 "--optimizers", "interrupts,sgd"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "done: 2 ok, 0 diverged, 2 failed" in out
    runs = {(r.optimizer_name, r.seed): r for r in ResultsStore(results).runs()}
    assert runs["interrupts", 0].error == ("PluginInterrupt: optimizer 'interrupts' raised KeyboardInterrupt "
                                          "(a plug-in may not stop the benchmark)")
    assert {runs["sgd", s].status for s in (0, 1)} == {"ok"}
