"""The command line end to end: runs, skip on re-run, listings, one-line errors, exit codes."""

from __future__ import annotations

import json
import time
import subprocess
import sys
from pathlib import Path

import pytest

from l2lbench.cli import main
from l2lbench.store.runs import ResultsStore

PLUGINS = str(Path(__file__).with_name("plugins.py"))


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_then_rerun_computes_nothing_new(tiny_suite, tmp_path, capsys):
    suite, results = tiny_suite(), str(tmp_path / "results")
    code, out, _ = _cli(capsys, "run", "--suite", suite, "--results", results)
    assert code == 0, out
    assert "0 runs already stored (skipped), 4 to run" in out and "done: 4 ok" in out
    code, out, _ = _cli(capsys, "run", "--suite", suite, "--results", results)
    assert code == 0 and "4 runs already stored (skipped), 0 to run" in out
    code, out, _ = _cli(capsys, "run", "--suite", suite, "--results", results, "--seeds", "3")
    assert "4 runs already stored (skipped), 2 to run" in out
    runs = ResultsStore(results).runs()
    assert len(runs) == 6 and {r.provenance["torch"] for r in runs}
    assert all(r.provenance["device"].startswith("cpu") for r in runs)


def test_plugin_file_runs_beside_the_suite(tiny_suite, tmp_path, capsys):
    plugin = tmp_path / "sign_sgd.py"
    plugin.write_text(
        "import torch\n"
        "class SignSGD:\n"
        "    def __init__(self, lr=0.01):\n        self.lr = lr\n"
        "    def init(self, params, *, generator=None):\n        return ()\n"
        "    def update(self, grads, state, params, context):\n"
        "        return {k: p - self.lr * torch.sign(grads[k]) for k, p in params.items()}, state\n"
        "OPTIMIZERS = {'signsgd': SignSGD}\n"
    )
    results = str(tmp_path / "results")
    code, out, err = _cli(capsys, "run", "--suite", tiny_suite(), "--results", results, "--plugin", str(plugin))
    assert code == 0, err
    assert "1 tasks x 3 optimizers x 2 seeds" in out
    assert {r.optimizer_name for r in ResultsStore(results).runs()} == {"sgd", "adam", "signsgd"}


def test_failed_runs_are_stored_and_exit_code_is_1(tiny_suite, tmp_path, capsys):
    results = str(tmp_path / "results")
    code, out, err = _cli(capsys, "run", "--suite", tiny_suite(), "--results", results,
                          "--plugin", PLUGINS, "--optimizers", "sgd,raises")
    assert code == 1
    assert "done: 2 ok, 0 diverged, 2 failed" in out
    assert "failed: raises on synthetic" in err and "RuntimeError: plug-in exploded at update" in err


@pytest.mark.parametrize(
    "source,reason",
    [
        ("import not_a_module_anywhere\n", "failed to import: ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
        ("def update(:\n", "failed to import: SyntaxError: "),
        ("X = 1\n", "defines no OPTIMIZERS table"),
    ],
)
@pytest.mark.parametrize("command", [["run", "--suite", "{suite}"], ["list", "optimizers"],
                                     ["report"], ["meta-train", "lstm", "--tasks", "synthetic"]])
def test_a_broken_plugin_stops_every_command_before_anything_is_written(tiny_suite, tmp_path, capsys, source, reason,
                                                                       command):
    broken = tmp_path / "broken.py"
    broken.write_text(source)
    results = tmp_path / "results"
    argv = [a.format(suite=tiny_suite()) for a in command] + ["--plugin", str(broken)]
    if command[0] != "list":
        argv += ["--results", str(results)]
    start = time.monotonic()
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and out == "", err
    assert err.count("\n") == 1 and err.startswith(f"l2lbench: error: plug-in {str(broken)!r}") and reason in err
    assert not results.exists()  # nothing computed, nothing written
    assert time.monotonic() - start < 10


def _bad_inputs(tmp_path):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    return [
        (["run", "--suite", "nope"], "unknown suite 'nope'; expected one of: "),
        (["run", "--suite", "smoke", "--optimizers", "adamx"], "unknown optimizer 'adamx'; expected one of: sgd, momentum"),
        (["run", "--suite", "smoke", "--tasks", "cifar"], "no task of suite 'smoke' matches 'cifar'"),
        (["run", "--suite", "smoke", "--seeds", "0"], "argument --seeds: invalid value '0' (expected a positive integer)"),
        (["run", "--suite", "smoke", "--seeds", "-2"], "invalid value '-2'"),
        (["run", "--suite", "smoke", "--device", "tpu"], "invalid device 'tpu' (expected cpu, cuda or cuda:N)"),
        (["run", "--suite", "smoke", "--results", str(not_a_folder)], "cannot create results folder"),
        (["run", "--suite", str(tmp_path / "missing.toml")], "cannot read suite file"),
        (["list", "widgets"], "argument what: invalid choice: 'widgets'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["data", "import", str(tmp_path / "nowhere")], "is not a folder"),
        (["run"], "run needs --suite NAME or --task NAME"),
    ]


def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, capsys):
    for argv, message in _bad_inputs(tmp_path):
        code, out, err = _cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("l2lbench: error: "), (argv, err)
        assert message in err, (argv, err)
        assert "Traceback" not in err


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(Exception, match="unknown suite"):
        main(["--debug", "run", "--suite", "nope"])


def test_list_formats(capsys):
    code, out, _ = _cli(capsys, "list", "optimizers", "--format", "json")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows][:5] == ["sgd", "momentum", "adam", "adamw", "rmsprop"]
    code, out, _ = _cli(capsys, "list", "suites", "--format", "json")
    assert any(r["name"] == "smoke" for r in json.loads(out))
    code, out, _ = _cli(capsys, "list", "tasks")
    assert "synthetic-mlp784x32x10-relu-100steps-bs64" in out


def test_installed_console_script_works():
    out = subprocess.run(["l2lbench", "list", "suites", "--format", "json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "smoke" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "l2lbench", "run", "--suite", "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0


def test_missing_dataset_fails_fast_with_one_line(tmp_path, capsys):
    suite = tmp_path / "fashion.toml"
    suite.write_text('optimizers = ["sgd"]\n[[tasks]]\ndataset = {kind = "fashion-mnist"}\n')
    code, out, err = _cli(capsys, "run", "--suite", str(suite), "--results", str(tmp_path / "r"),
                          "--data-dir", str(tmp_path / "data"))
    assert code == 2 and err.count("\n") == 1, err
    assert "fashion-mnist" in err and str(tmp_path / "data") in err and "l2lbench data import" in err
    assert not (tmp_path / "r").exists()  # nothing computed, nothing created


def test_bare_command_version_and_error_prefix(capsys):
    from importlib.metadata import version

    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: l2lbench") and "meta-train" in out and "report" in out
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"l2lbench {version('l2lbench')}\n"
    assert main(["run", "--suite", "smoke", "--seeds", "0"]) == 2
    assert capsys.readouterr().err == ("l2lbench: error: run: argument --seeds: invalid value '0' "
                                       "(expected a positive integer)\n")
