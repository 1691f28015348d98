"""Bad values are refused before anything runs: exit 2, one line naming the value, nothing
written. Sizes are estimated from the specs, so a typo such as ``steps = 10**12`` is
refused instead of running until the machine is out of memory."""

from __future__ import annotations

import re
import time

import pytest
import torch

from l2lbench.cli import main
from l2lbench.errors import CheckpointError
from l2lbench.store.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from l2lbench.plugin.registry import OptimizerRegistry
from l2lbench.spec.suite import parse_suite

SUITE = """
seeds = 2
optimizers = [{optimizer}]

[defaults]
steps = {steps}
batch_size = {batch}
eval_every = 5

[[tasks]]
dataset = {{ kind = "synthetic", n_train = {n_train}, n_test = 64, size = {size} }}
learner = {{ kind = "mlp", hidden = [8] }}
"""


def _refused(capsys, tmp_path, *argv, optimizer='"sgd"', steps=10, batch=16, n_train=128, size=8):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE.format(optimizer=optimizer, steps=steps, batch=batch, n_train=n_train, size=size))
    results = tmp_path / "r"
    start = time.monotonic()
    code = main(["run", "--suite", str(suite), "--results", str(results), *argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("l2lbench: error: ") and "Traceback" not in err, err
    assert not results.exists(), "nothing may be written"
    assert time.monotonic() - start < 20
    return err


@pytest.mark.parametrize(
    "value,message",
    [
        ("nan", "invalid lr: nan for optimizer 'adam' (expected a finite number)"),
        ("inf", "invalid lr: inf for optimizer 'adam' (expected a finite number)"),
        ('"fast"', "invalid lr: 'fast' (expected a number in [0, 10000])"),
        ("-1", "invalid lr: -1 (expected a number in [0, 10000])"),
        ("1e308", "invalid lr: 1e+308 (expected a number in [0, 10000])"),
    ],
)
def test_hyperparameters_are_checked_by_the_plugins_own_validation_at_plan_time(tmp_path, capsys, value, message):
    err = _refused(capsys, tmp_path, optimizer=f'{{ entry = "adam", lr = {value} }}')
    assert message in err


def test_a_batch_larger_than_the_dataset(tmp_path, capsys):
    err = _refused(capsys, tmp_path, batch=500)
    # 128 images: the last sixth (21) is the validation split, 107 are left to train on.
    assert "batch_size 500 is larger than its training split of 107 images (expected at most 107)" in err


@pytest.mark.parametrize(
    "argv,fields,what",
    [
        ([], {"steps": 10**12}, "1000000000000steps-bs16-eval5 with 2 seeds"),
        (["--seeds", "1000000"], {}, "with 1000000 seeds"),
        ([], {"n_train": 1_000_000, "size": 128}, "n_train1000000-n_test64-size128"),
        (["--max-memory", "0.5"], {}, "with 2 seeds"),
    ],
)
def test_jobs_that_cannot_fit_are_refused_before_they_start(tmp_path, capsys, argv, fields, what):
    err = _refused(capsys, tmp_path, *argv, **fields)
    match = re.search(r"needs about ([0-9.]+) GiB of memory \(estimated from its spec\), more than the ([0-9.]+) GiB "
                      r"a worker may take \(expected fewer steps, seeds or images, a larger --max-memory, or --force "
                      r"to try anyway\)", err)
    assert match and what in err, err
    needed, budget = map(float, match.groups())
    assert needed > budget
    if argv[:1] == ["--max-memory"]:
        assert budget == 0.5


def test_too_many_workers_are_capped_with_a_note(tiny_suite, tmp_path, capsys):
    assert main(["run", "--suite", tiny_suite(), "--results", str(tmp_path / "r"), "--workers", "64"]) == 0
    out = capsys.readouterr().out
    assert "note: 64 workers do not fit this machine" in out and "; using " in out


@pytest.mark.parametrize("argv,message", [
    (["--run-timeout", "1e300"], "argument --run-timeout: invalid value '1e300' (expected a positive number of "
                                 "seconds, at most 604800)"),
])
def test_timeouts_have_a_sane_maximum(tmp_path, capsys, argv, message):
    assert message in _refused(capsys, tmp_path, *argv)


def test_deeply_nested_toml_is_one_line(tmp_path, capsys):
    suite = tmp_path / "deep.toml"
    suite.write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    assert main(["run", "--suite", str(suite), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "invalid TOML: nested too deeply" in err and err.count("\n") == 1


def test_long_names_are_refused_at_the_door(tmp_path):
    from l2lbench.errors import ConfigError, PluginError

    text = SUITE.format(optimizer=f'{{ entry = "sgd", name = "{"x" * 100_000}" }}', steps=5, batch=8, n_train=64, size=8)
    with pytest.raises(ConfigError, match=r"of at most 100 characters"):
        parse_suite(text, name="s", source="s.toml")
    plugin = tmp_path / "long.py"
    plugin.write_text(f"from l2lbench.plugin.torch_bridge import from_torch\nimport torch\n"
                      f"OPTIMIZERS = {{{'y' * 5000!r}: from_torch(torch.optim.SGD, lr=0.1)}}\n")
    with pytest.raises(PluginError, match=r"of at most 100 characters"):
        OptimizerRegistry.default([str(plugin)], entry_points=False)


def test_suite_validation_is_linear_in_its_tasks():
    tasks = "".join(f'[[tasks]]\ndataset = {{ kind = "synthetic", seed = {i} }}\n' for i in range(20_000))
    start = time.monotonic()
    suite = parse_suite('seeds = 1\noptimizers = ["sgd", "adam"]\n' + tasks, name="big", source="big.toml")
    assert len(suite.tasks) == 20_000 and time.monotonic() - start < 10  # 4,000 took 12.8 s when quadratic


def test_a_checkpoint_with_non_finite_meta_parameters_is_refused(tmp_path):
    from l2lbench.optimizers.lstm import lstm

    module = lstm().init_meta(generator=torch.Generator().manual_seed(0))
    state = module.state_dict()
    name = next(iter(state))
    state[name] = torch.full_like(state[name], float("nan"))
    hparams = OptimizerRegistry.default(entry_points=False).resolve("lstm").hparams
    path = save_checkpoint(Checkpoint("lstm", hparams, state), tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=rf"has non-finite meta-parameters \({name}"):
        load_checkpoint(path).bind(lstm(), entry="lstm", hparams=hparams)


def test_data_import_into_a_folder_that_cannot_be_one(tmp_path, capsys):
    (tmp_path / "src" / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "a-file").write_text("")
    assert main(["data", "import", str(tmp_path / "src"), "--data-dir", str(tmp_path / "a-file" / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create data folder" in err and "Not a directory" in err


def test_a_stored_row_whose_curves_disagree_is_named_not_a_traceback(tiny_suite, tmp_path, capsys):
    import json
    import sqlite3

    results = tmp_path / "r"
    assert main(["run", "--suite", tiny_suite(), "--results", str(results)]) == 0
    db = sqlite3.connect(results / "l2lbench.sqlite")
    loss = json.loads(db.execute("SELECT test_loss FROM runs WHERE optimizer_name = 'sgd' AND seed = 1").fetchone()[0])
    db.execute("UPDATE runs SET test_loss = ? WHERE optimizer_name = 'sgd' AND seed = 1", (json.dumps(loss[:-1]),))
    db.commit()
    capsys.readouterr()
    assert main(["report", "--results", str(results), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has a malformed run (sgd on" in err and "seed 1" in err
    assert f"its curves disagree in length (eval_steps {len(loss)}, test_loss {len(loss) - 1}" in err


def test_report_reads_a_store_on_a_read_only_file_system(tiny_suite, tmp_path, capsys):
    import shutil
    import subprocess

    results = tmp_path / "r"
    assert main(["run", "--suite", tiny_suite(), "--results", str(results)]) == 0
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "none", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a file system here (needs root)")
    try:
        shutil.copytree(results, mount / "r")
        assert subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True).returncode == 0
        capsys.readouterr()
        assert main(["report", "--results", str(mount / "r"), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
        out, err = capsys.readouterr()
        assert "| sgd " in out and (tmp_path / "out" / "report.md").is_file()
        # Without --out the report has nowhere to go: one line, exit 2.
        assert main(["report", "--results", str(mount / "r"), "--no-plots"]) == 2
        assert "Read-only file system (expected a writable --out folder)" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
