"""Optimisers by name without a file (torch:NAdam) and single tasks without a suite (run --task)."""

from __future__ import annotations

import argparse
import importlib.util

import pytest
import torch

from l2lbench.cli.argtypes import csv_list
from l2lbench.cli import main
from l2lbench.errors import ConfigError, UsageError
from l2lbench.plugin.base import StepContext
from l2lbench.plugin.library import parse_call
from l2lbench.plugin.registry import OptimizerRegistry
from l2lbench.spec.optimizer import OptimizerSpec
from l2lbench.store.runs import ResultsStore


def test_names_with_hyperparameters_parse_and_split():
    assert parse_call("torch:Adagrad(lr=0.01, eps=1e-8)") == ("torch:Adagrad", {"lr": 0.01, "eps": 1e-8})
    assert parse_call("torch:NAdam") is None
    assert OptimizerSpec.from_config("torch:Adagrad(lr=0.1)") == OptimizerSpec("torch:Adagrad", (("lr", 0.1),))
    assert csv_list("sgd, torch:Adagrad(lr=0.01, eps=1e-8),adam") == ["sgd", "torch:Adagrad(lr=0.01, eps=1e-8)", "adam"]
    with pytest.raises(ConfigError, match="expected hyperparameters as name=value"):
        parse_call("torch:Adagrad(lr=)")
    with pytest.raises(argparse.ArgumentTypeError):
        csv_list(" , ")


def test_torch_class_by_name_has_its_defaults_in_the_key_and_torchs_numbers():
    registry = OptimizerRegistry.default()
    nadam = registry.resolve("torch:NAdam")
    assert nadam.hparams["lr"] == 0.002 and nadam.hparams["momentum_decay"] == 0.004
    assert "foreach" not in nadam.hparams  # how torch computes, not what
    assert nadam.config()["code"]["distribution"].startswith("torch ")
    faster = registry.resolve(OptimizerSpec.from_config("torch:NAdam(lr=0.01)"))
    assert faster.hash != nadam.hash and faster.display_name == "torch:NAdam(lr=0.01)"
    # One step through the bridge is torch.optim.NAdam's own step.
    rule = nadam.build()
    theta = torch.tensor([1.0, -2.0])
    grad = torch.tensor([0.5, 0.25])
    new, _ = rule.update({"w": grad}, rule.init({"w": theta}), {"w": theta}, StepContext(0))
    p = torch.nn.Parameter(theta.clone())
    p.grad = grad.clone()
    torch.optim.NAdam([p], lr=0.002).step()
    assert torch.equal(new["w"], p.detach())


def test_unknown_classes_and_missing_libraries_are_named():
    registry = OptimizerRegistry.default()
    with pytest.raises(UsageError, match="torch.optim has no optimizer class 'Nadam'; expected one of: .*NAdam"):
        registry.resolve("torch:Nadam")
    if importlib.util.find_spec("pytorch_optimizer") is None:
        with pytest.raises(UsageError, match=r"'pytorch_optimizer' is not installed \(pip install pytorch-optimizer\)"):
            registry.resolve("pytorch_optimizer:Lion")


def test_list_all_shows_the_library_classes(capsys):
    assert main(["list", "optimizers", "--all"]) == 0
    out = capsys.readouterr().out
    assert "torch:NAdam" in out and "torch:Adagrad" in out and "torch:LBFGS" not in out  # LBFGS needs a closure


def test_run_one_task_with_library_optimizers_and_no_file(tmp_path, capsys):
    results = tmp_path / "r"
    argv = ["run", "--task", "synthetic-cnn8x16-relu-50steps-bs64", "--optimizers", "sgd,torch:NAdam,torch:Adagrad(lr=0.05)",
            "--seeds", "1", "--steps", "5", "--results", str(results), "--workers", "1"]
    assert main(argv) == 0
    assert "suite task synthetic-cnn8x16-relu-50steps-bs64: 1 tasks x 3 optimizers x 1 seeds" in capsys.readouterr().out
    runs = ResultsStore(results).runs()
    assert sorted(r.optimizer_name for r in runs) == ["sgd", "torch:Adagrad-lr0.05", "torch:NAdam"]
    assert all(r.status == "ok" and len(r.train_loss) == 5 for r in runs)
    assert main(["run", "--task", "no-such-task", "--results", str(results)]) == 2
    assert "unknown task 'no-such-task'; expected a name from `l2lbench list tasks`" in capsys.readouterr().err
    assert main(["run", "--results", str(results)]) == 2
    assert "run needs --suite NAME or --task NAME" in capsys.readouterr().err
