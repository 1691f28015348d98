"""Learned optimisers through the command line: meta-train, cache, --checkpoint, run."""

from __future__ import annotations

import json

import pytest

from l2lbench.cli import main
from l2lbench.store.checkpoint import load_checkpoint
from l2lbench.store.runs import ResultsStore
from l2lbench.spec.suite import load_suite


META_ARGS = ["--tasks", "synthetic", "--steps", "6", "--trials", "2", "--batch-size", "16"]


def test_meta_train_writes_a_checkpoint_and_reuses_it(tmp_path, capsys):
    results = str(tmp_path / "results")
    out = tmp_path / "copy.pt"
    assert main(["meta-train", "lstm", *META_ARGS, "--results", results, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "meta-trained in" in first and "checkpoint:" in first
    cached = sorted((tmp_path / "results" / "checkpoints").glob("lstm-*.pt"))
    assert len(cached) == 1
    checkpoint = load_checkpoint(out)
    assert checkpoint.entry == "lstm" and checkpoint.meta_training["trials"] == 2
    assert len(checkpoint.history["trial_loss"]) == 2
    assert main(["meta-train", "lstm", *META_ARGS, "--results", results]) == 0
    assert "using cached meta-trained checkpoint" in capsys.readouterr().out
    assert main(["meta-train", "lstm", *META_ARGS, "--results", results, "--set", "head=linear"]) == 0
    assert len(list((tmp_path / "results" / "checkpoints").glob("lstm-*.pt"))) == 2  # another config, another file


@pytest.mark.parametrize(
    "args,message",
    [
        (["meta-train", "sgd", "--tasks", "synthetic"], "optimizer 'sgd' is not learned; expected one of: lstm, mtl2l"),
        (["meta-train", "lstm"], "meta-train needs training tasks"),
        (["meta-train", "lstm", "--tasks", "synthetic", "--trials", "0"], "argument --trials: invalid value '0'"),
        (["meta-train", "nope", "--tasks", "synthetic"], "unknown optimizer 'nope'"),
        (["meta-train", "lstm", "--tasks", "synthetic", "--set", "hidden=-3"], "invalid hidden: -3"),
        (["meta-train", "lstm", "--tasks", "mnist"], "mnist"),
    ],
)
def test_meta_train_bad_input(args, message, tmp_path, capsys):
    assert main([*args, "--results", str(tmp_path / "r"), "--data-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_suite_meta_trains_learned_optimizers_once_then_meta_tests(tiny_suite, tiny_meta, tmp_path, capsys):
    suite = tiny_suite(tiny_meta)
    text = open(suite).read().replace('optimizers = ["sgd", "adam"]', 'optimizers = ["sgd", "lstm", "mtl2l"]')
    open(suite, "w").write(text)
    results = str(tmp_path / "results")
    assert main(["run", "--suite", suite, "--results", results]) == 0
    out = capsys.readouterr().out
    assert out.count("meta-trained in") == 2
    runs = ResultsStore(results).runs()
    assert {r.optimizer_name for r in runs} == {"sgd", "lstm", "mtl2l"} and len(runs) == 6
    learned = [r for r in runs if r.optimizer_name != "sgd"]
    assert all(r.status == "ok" for r in runs)
    for r in learned:
        info = r.provenance["meta_training"]
        assert info["horizon"] == 6 and info["trials"] == 2 and info["wall_time_s"] > 0
        assert r.optimizer_config["meta_training"]["trials"] == 2
    assert "meta_training" not in next(r for r in runs if r.optimizer_name == "sgd").provenance
    # Second run: nothing to meta-train, nothing to run.
    assert main(["run", "--suite", suite, "--results", results]) == 0
    out = capsys.readouterr().out
    assert "6 runs already stored (skipped), 0 to run" in out and "meta-train" not in out


def test_run_with_a_given_checkpoint(tiny_suite, tmp_path, capsys):
    results = str(tmp_path / "results")
    checkpoint = str(tmp_path / "mine.pt")
    assert main(["meta-train", "mtl2l", *META_ARGS, "--results", str(tmp_path / "elsewhere"), "--out", checkpoint]) == 0
    suite = tiny_suite()
    assert main(["run", "--suite", suite, "--optimizers", "sgd,mtl2l", "--checkpoint", f"mtl2l={checkpoint}",
                 "--results", results]) == 0
    runs = [r for r in ResultsStore(results).runs() if r.optimizer_name == "mtl2l"]
    assert len(runs) == 2 and all(r.status == "ok" for r in runs)
    assert runs[0].optimizer_config["checkpoint"]["path"] == checkpoint
    assert not (tmp_path / "results" / "checkpoints").exists()  # nothing meta-trained here
    capsys.readouterr()
    # The wrong optimiser for the checkpoint, an unknown name, a missing file: one line each.
    for args, message in [
        (["--optimizers", "lstm", "--checkpoint", f"lstm={checkpoint}"], "holds optimizer mtl2l"),
        (["--checkpoint", f"lstm={checkpoint}"], "no optimizer 'lstm' in this run"),
        (["--optimizers", "mtl2l", "--checkpoint", "mtl2l=missing.pt"], "checkpoint missing.pt does not exist"),
        (["--checkpoint", "lstm"], "expected NAME=PATH"),
    ]:
        assert main(["run", "--suite", suite, "--results", results, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_learned_optimizer_in_a_suite_without_meta_training(tiny_suite, tmp_path, capsys):
    assert main(["run", "--suite", tiny_suite(), "--optimizers", "lstm", "--results", str(tmp_path / "r")]) == 2
    assert "has no meta-training config and no checkpoint" in capsys.readouterr().err


def test_smoke_suite_has_learned_entries_with_tiny_meta_training():
    suite = load_suite("smoke")
    assert {"lstm", "mtl2l", "mlp-lopt"} <= {o.name for o in suite.optimizers}
    spec = suite.meta_training_for(next(o for o in suite.optimizers if o.name == "lstm"), suite.tasks[0])
    assert spec.trials * spec.horizon <= 100  # stays a one-minute suite


def test_list_optimizers_shows_learned(capsys):
    assert main(["list", "optimizers", "--format", "json"]) == 0
    names = {row["name"] for row in json.loads(capsys.readouterr().out)}
    assert {"lstm", "mtl2l", "mlp-lopt"} <= names


def test_bench_is_a_subcommand():
    from l2lbench.cli import build_parser

    args = build_parser().parse_args(["bench", "--optimizers", "sgd,lstm", "--steps", "5", "--format", "json"])
    assert args.command == "bench" and args.optimizers == ["sgd", "lstm"] and args.steps == 5


PER_TASK = """
seeds = 1
optimizers = ["sgd", {{ entry = "lstm", hidden = 4, name = "lstm" }}]

[defaults]
steps = 6
batch_size = 16
eval_every = 3

[[tasks]]
dataset = {{ kind = "synthetic", n_train = 128, n_test = 64, size = 8 }}
learner = {{ kind = "mlp", hidden = [8] }}

[[tasks]]
dataset = {{ kind = "synthetic", n_train = 128, n_test = 64, size = 8 }}
learner = {{ kind = "mlp", hidden = [4] }}

[meta_training]
tasks = "same-as-test"
steps = 6
trials = {trials}
unroll = 3
"""


def test_meta_train_with_a_per_task_suite_is_what_run_would_meta_train(tmp_path, capsys):
    suite = tmp_path / "per-task.toml"
    suite.write_text(PER_TASK.format(trials=2))
    results = str(tmp_path / "results")
    task = load_suite(str(suite)).tasks[1].name  # the [4] learner
    assert main(["meta-train", "lstm", "--suite", str(suite), "--tasks", task, "--results", results]) == 0
    out = capsys.readouterr().out
    assert out.count("meta-trained in") == 1 and "-2x6steps-unroll3 ..." in out
    checkpoint = load_checkpoint(next((tmp_path / "results" / "checkpoints").glob("lstm-*.pt")))
    assert checkpoint.hparams["hidden"] == 4 and checkpoint.meta_training["tasks"][0]["learner"]["hidden"] == [4]
    # The run of that task finds it; the other task's meta-training is its own.
    assert main(["run", "--suite", str(suite), "--tasks", task, "--results", results]) == 0
    out = capsys.readouterr().out
    assert "using cached meta-trained checkpoint" in out and "meta-trained in" not in out
    # Without --tasks: one meta-training per task (the cached one reused); flags override.
    assert main(["meta-train", "lstm", "--suite", str(suite), "--results", results]) == 0
    out = capsys.readouterr().out
    assert out.count("using cached") == 1 and out.count("meta-trained in") == 1
    assert main(["meta-train", "lstm", "--suite", str(suite), "--tasks", task, "--trials", "3", "--results", results]) == 0
    assert "-3x6steps-unroll3 ..." in capsys.readouterr().out
    assert main(["meta-train", "lstm", "--suite", str(suite), "--results", results, "--out", str(tmp_path / "x.pt")]) == 2
    assert "--out" in capsys.readouterr().err


def test_meta_train_with_the_same_domain_suite_resolves_each_task(tmp_path, capsys):
    # No MNIST here: the command gets as far as the data, past the suite's resolution.
    code = main(["meta-train", "lstm", "--suite", "same-domain", "--tasks", "mnist", "--results", str(tmp_path / "r"),
                 "--data-dir", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert code == 2 and "same-as-test" not in err and "mnist" in err.lower(), err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_meta_seeds_meta_train_every_learned_optimizer_k_times(tiny_suite, tiny_meta, tmp_path, capsys):
    suite = tiny_suite(tiny_meta)
    text = open(suite).read().replace('optimizers = ["sgd", "adam"]', 'optimizers = ["sgd", "lstm"]')
    open(suite, "w").write(text)
    results = str(tmp_path / "results")
    assert main(["run", "--suite", suite, "--results", results, "--meta-seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("meta-trained in") == 2 and "-seed1 ..." in out
    runs = ResultsStore(results).runs()
    learned = [r for r in runs if r.optimizer_name == "lstm"]
    assert len(learned) == 4 and {r.optimizer_config["meta_training"]["seed"] for r in learned} == {0, 1}
    assert len({r.optimizer_hash for r in learned}) == 2
    assert main(["report", "--results", results, "--no-plots"]) == 0
    report = capsys.readouterr().out
    assert "## Meta-training seeds" in report and "lstm [meta-seed 1]" in report
    # Suites say it too; bad values are one line.
    assert main(["run", "--suite", suite, "--results", results, "--meta-seeds", "0"]) == 2
    assert "argument --meta-seeds: invalid value '0'" in capsys.readouterr().err
