"""Datasets and learners as plug-ins: built-in tables, entry points, and stable hashes."""

from __future__ import annotations

import sys

import pytest

import l2lbench.tasks.datasets as datasets
import l2lbench.tasks.learners as learners
from l2lbench.errors import ConfigError, PluginError
from l2lbench.spec.hashing import content_hash
from l2lbench.spec.task import TaskSpec
from l2lbench.store.codeid import source_fingerprint
from l2lbench.tasks.datasets import MNISTSpec, dataset_from_config
from l2lbench.tasks.learners import learner_from_config

# Recorded before datasets and learners moved to one file each: stored results are keyed
# by these hashes and names, so a refactor that changes one orphans every stored run.
PINNED = [
    ({"dataset": {"kind": "mnist"}},
     "mnist-mlp784x32x10-relu-1000steps", "2dd51e6d017edc79"),
    ({"dataset": {"kind": "mnist", "mean": 0.5, "std": 0.25}, "learner": {"kind": "cnn"}, "steps": 50, "batch_size": 32},
     "mnist-mean0.5-std0.25-cnn8x16-relu-50steps-bs32", "28bb4dc0cfa62094"),
    ({"dataset": {"kind": "fashion-mnist", "std": 0.3},
      "learner": {"kind": "mlp", "hidden": [64, 64], "activation": "tanh"}},
     "fashion-mnist-std0.3-mlp784x64x64x10-tanh-1000steps", "c1fbbc2ee275ab9f"),
    ({"dataset": {"kind": "kmnist", "mean": 0.2},
      "learner": {"kind": "cnn", "channels": [4], "activation": "sigmoid"}, "eval_every": 5},
     "kmnist-mean0.2-cnn4-sigmoid-1000steps-eval5", "930011ce4b79bd52"),
    ({"dataset": {"kind": "cifar10-grey", "weights": [0.299, 0.587, 0.114], "crop": 24},
      "learner": {"kind": "mlp", "hidden": []}},
     "cifar10grey-weights0.299x0.587x0.114-crop24-mlp576x10-relu-1000steps", "0f0247ccaed08847"),
    ({"dataset": {"kind": "rotated-mnist", "angle": -15.5, "std": 0.4}, "learner": {"kind": "cnn"},
      "eval_examples": 100},
     "rotmnist-15.5-std0.4-cnn8x16-relu-1000steps-test100", "f1d7edb087886a46"),
    ({"dataset": {"kind": "permuted-mnist", "seed": 7, "mean": 0.2},
      "learner": {"kind": "mlp", "hidden": [64, 64], "activation": "tanh"}},
     "permmnist-s7-mean0.2-mlp784x64x64x10-tanh-1000steps", "572be8542df68127"),
    ({"dataset": {"kind": "synthetic", "seed": 3, "n_train": 64, "n_test": 16, "num_classes": 3, "size": 12},
      "learner": {"kind": "cnn", "channels": [4], "activation": "sigmoid"}, "steps": 50},
     "synthetic-seed3-n_train64-n_test16-num_classes3-size12-cnn4-sigmoid-50steps", "f1485c706e30bf42"),
]


@pytest.mark.parametrize("config,name,digest", PINNED, ids=[p[1] for p in PINNED])
def test_task_names_and_hashes_stay_those_of_stored_results(config, name, digest):
    task = TaskSpec.from_config(config)
    assert (task.name, task.hash) == (name, digest)


# --------------------------------------------------------------------------- plug-ins


def install(tmp_path, monkeypatch, module: str, source: str, entry_points: dict[str, str],
            dist: str | None = None) -> None:
    """A fake installed distribution holding ``module`` (its source) and ``entry_points``
    (group -> the lines of that section), found through ``sys.path`` like a real one."""
    dist = dist or module.replace("_", "-")
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / f"{module}.py").write_text(source)
    info = tmp_path / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("".join(f"[{group}]\n{lines}\n" for group, lines in entry_points.items()))
    monkeypatch.syspath_prepend(str(tmp_path))


#: A third-party dataset in one file: image i is all grey level 10 * i, its label i % 3.
STRIPES = '''
import dataclasses
from pathlib import Path
from typing import ClassVar

import torch

from l2lbench.tasks.datasets import DatasetSpec, Splits
from l2lbench.tasks.datasets.base import check_integer, derived_name, set_field


@dataclasses.dataclass(frozen=True)
class StripesSpec(DatasetSpec):
    """Image i is 4x4 of grey level 10 * i; its label is i % 3."""

    kind: ClassVar[str] = "{kind}"
    n_train: int = 12
    n_test: int = 3

    def __post_init__(self) -> None:
        set_field(self, "n_train", check_integer(self.kind, "n_train", self.n_train, 2, 25))
        set_field(self, "n_test", check_integer(self.kind, "n_test", self.n_test, 1, 25))

    @property
    def name(self) -> str:
        return derived_name(self, "stripes")

    @property
    def input_shape(self):
        return (1, 4, 4)

    @property
    def num_classes(self) -> int:
        return 3

    def _load(self, data_dir: Path, download: bool) -> Splits:
        def images(n):
            return (torch.arange(n, dtype=torch.uint8) * 10).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()

        return Splits(images(self.n_train), torch.arange(self.n_train) % 3,
                      images(self.n_test), torch.arange(self.n_test) % 3, mean=0.5, std=0.25)
'''

#: A third-party learner in one file: one linear layer, optionally without bias.
LINEAR = '''
import dataclasses
import math
from typing import ClassVar

from torch import nn

from l2lbench.tasks.learners import LearnerSpec


@dataclasses.dataclass(frozen=True)
class Linear(LearnerSpec):
    kind: ClassVar[str] = "{kind}"
    bias: bool = True

    def label(self, input_shape, num_classes):
        return "linear" if self.bias else "linear-nobias"

    def build(self, input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes, bias=self.bias, device="meta"))
'''


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_an_installed_dataset_is_used_by_name_in_a_task_and_loads(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "acme_stripes", STRIPES.format(kind="acme-stripes"),
            {"l2lbench.datasets": "acme-stripes = acme_stripes:StripesSpec"})
    assert "acme-stripes" in datasets.REGISTRY and "acme_stripes" not in sys.modules  # listed, not imported

    task = TaskSpec.from_config({"dataset": {"kind": "acme-stripes", "n_train": 18},
                                 "learner": {"kind": "mlp", "hidden": [4]}, "steps": 5})

    assert task.name == "stripes-n_train18-mlp16x4x3-relu-5steps"
    # A plug-in's code keys its tasks, as an optimiser plug-in's keys its runs.
    code = {"fingerprint": source_fingerprint(STRIPES.format(kind="acme-stripes")), "distribution": None}
    config = {"kind": "task", "dataset": {"kind": "acme-stripes", "n_train": 18, "n_test": 3, "code": code},
              "learner": {"kind": "mlp", "hidden": [4], "activation": "relu"},
              "steps": 5, "batch_size": 128, "eval_every": 10, "eval_examples": None}
    assert task.config() == config and task.hash == content_hash(config)
    splits = task.dataset.load(tmp_path)
    # 18 images: the first 15 to train on, the last sixth (3) to validate; grey level 10 * i.
    assert splits.train_images[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140]
    assert splits.validation_images[:, 0, 2, 3].tolist() == [150, 160, 170]
    assert splits.validation_labels.tolist() == [0, 1, 2] and splits.test_labels.tolist() == [0, 1, 2]
    assert (splits.mean, splits.std) == (0.5, 0.25)
    # A stored config rebuilds the same spec, as the report and the checkpoints do.
    assert dataset_from_config(config["dataset"]) == task.dataset


def test_an_installed_learner_is_used_by_name_in_a_task(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "acme_linear", LINEAR.format(kind="acme-linear"),
            {"l2lbench.learners": "acme-linear = acme_linear:Linear"})
    task = TaskSpec.from_config({"dataset": {"kind": "synthetic", "size": 8, "num_classes": 3},
                                 "learner": {"kind": "acme-linear", "bias": False}})
    assert task.name == "synthetic-num_classes3-size8-linear-nobias-1000steps"
    code = {"fingerprint": source_fingerprint(LINEAR.format(kind="acme-linear")), "distribution": None}
    assert task.config()["learner"] == {"kind": "acme-linear", "bias": False, "code": code}
    module = task.learner.build(task.dataset.input_shape, task.dataset.num_classes)
    assert [tuple(p.shape) for p in module.parameters()] == [(3, 64)]
    assert learner_from_config({"kind": "acme-linear", "bias": False}) == task.learner


BROKEN = "raise RuntimeError('acme is broken')\n"


@pytest.mark.parametrize("what,build,builtin", [
    ("datasets", dataset_from_config, "mnist"),
    ("learners", learner_from_config, "cnn"),
])
def test_a_broken_plugin_fails_in_one_line_naming_it_and_the_builtins_still_work(tmp_path, monkeypatch, what, build,
                                                                                 builtin):
    module = f"acme_broken_{what}"
    install(tmp_path, monkeypatch, module, BROKEN, {f"l2lbench.{what}": f"acme-broken = {module}:Spec"},
            dist="acme-broken")
    assert build({"kind": builtin}).kind == builtin and module not in sys.modules
    with pytest.raises(PluginError) as info:
        build({"kind": "acme-broken"})
    assert one_line(info) == (f"plug-in 'acme-broken' (entry point '{module}:Spec' of package 'acme-broken') "
                              "failed to import: RuntimeError: acme is broken")
    assert build({"kind": builtin}).kind == builtin
    registry = datasets.REGISTRY if what == "datasets" else learners.REGISTRY
    assert registry.problems() == [str(info.value)]


@pytest.mark.parametrize("source,needle", [
    ("Spec = 42\n", "dataset 'acme-odd' (entry point 'acme_odd_{n}:Spec' of package 'acme-odd-{n}') is 42, not a spec "
                    "class (expected a frozen dataclass subclassing l2lbench.tasks.datasets.base.DatasetSpec)"),
    ("import dataclasses\nfrom l2lbench.tasks.datasets import DatasetSpec\n"
     "@dataclasses.dataclass\nclass Spec(DatasetSpec):\n    kind = 'acme-odd'\n",
     "not a spec class (expected a frozen dataclass"),
    (STRIPES.format(kind="stripes") + "Spec = StripesSpec\n",
     "is StripesSpec of kind 'stripes' (expected kind = 'acme-odd', the entry point's name, by which configs name it)"),
])
def test_an_entry_point_that_is_not_a_spec_class_of_its_kind_is_refused(tmp_path, monkeypatch, source, needle):
    n = len(source)  # a module name per case: sys.modules keeps what an earlier case imported
    install(tmp_path, monkeypatch, f"acme_odd_{n}", source, {"l2lbench.datasets": f"acme-odd = acme_odd_{n}:Spec"})
    with pytest.raises(PluginError) as info:
        dataset_from_config({"kind": "acme-odd"})
    assert needle.format(n=n) in one_line(info)


def test_a_plugin_may_not_take_a_builtin_name_or_one_another_package_has(tmp_path, monkeypatch):
    install(tmp_path / "a", monkeypatch, "acme_twin_a", STRIPES.format(kind="twin"),
            {"l2lbench.datasets": "twin = acme_twin_a:StripesSpec\nmnist = acme_twin_a:StripesSpec"})
    install(tmp_path / "b", monkeypatch, "acme_twin_b", STRIPES.format(kind="twin"),
            {"l2lbench.datasets": "twin = acme_twin_b:StripesSpec"})
    # The built-in keeps its name; the clash is reported, not silently resolved.
    assert type(dataset_from_config({"kind": "mnist"})) is MNISTSpec
    with pytest.raises(PluginError) as info:
        dataset_from_config({"kind": "twin"})
    assert one_line(info) == (
        "dataset 'twin' is defined by entry point 'acme_twin_b:StripesSpec' of package 'acme-twin-b' and entry point "
        "'acme_twin_a:StripesSpec' of package 'acme-twin-a' (expected one definition per kind: uninstall or rename one)"
    )
    assert datasets.REGISTRY.problems() == [
        "dataset 'twin' is defined by entry point 'acme_twin_b:StripesSpec' of package 'acme-twin-b' and entry point "
        "'acme_twin_a:StripesSpec' of package 'acme-twin-a' (expected one definition per kind: uninstall or rename one)",
        "dataset 'mnist' from entry point 'acme_twin_a:StripesSpec' of package 'acme-twin-a' clashes with the built-in "
        "dataset of that name; keeping the built-in (rename the plug-in's kind)",
    ]
    assert "acme_twin_a" not in sys.modules and "acme_twin_b" not in sys.modules


def test_an_unknown_kind_is_one_line_listing_builtins_and_installed_kinds(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "acme_listed", BROKEN, {"l2lbench.datasets": "acme-listed = acme_listed:Spec",
                                                          "l2lbench.learners": "acme-net = acme_listed:Net"})
    with pytest.raises(ConfigError) as info:
        dataset_from_config({"kind": "mnst"})
    assert one_line(info) == ("unknown dataset 'mnst'; expected one of: acme-listed, cifar10-grey, fashion-mnist, "
                              "kmnist, mnist, permuted-mnist, rotated-mnist, synthetic")
    with pytest.raises(ConfigError) as info:
        learner_from_config({"kind": "resnet"})
    assert one_line(info) == "unknown learner 'resnet'; expected one of: acme-net, cnn, mlp"
    assert "acme_listed" not in sys.modules  # listing names imports no plug-in


def test_a_suite_runs_on_an_installed_dataset_and_learner(tmp_path, monkeypatch, capsys):
    install(tmp_path / "dist", monkeypatch, "acme_suite", STRIPES.format(kind="acme-suite-data")
            + LINEAR.format(kind="acme-suite-net"),
            {"l2lbench.datasets": "acme-suite-data = acme_suite:StripesSpec",
             "l2lbench.learners": "acme-suite-net = acme_suite:Linear"})
    suite = tmp_path / "s.toml"
    suite.write_text('seeds = 1\noptimizers = ["sgd"]\n[defaults]\nsteps = 3\nbatch_size = 4\neval_every = 3\n'
                     '[[tasks]]\ndataset = { kind = "acme-suite-data", n_train = 24 }\n'
                     'learner = { kind = "acme-suite-net" }\n')
    from l2lbench.cli import main

    assert main(["run", "--suite", str(suite), "--results", str(tmp_path / "r"), "--workers", "1"]) == 0
    assert "done: 1 ok, 0 diverged, 0 failed" in capsys.readouterr().out


def test_a_changed_plugin_dataset_gets_new_task_hashes_and_a_comment_does_not(tmp_path, monkeypatch):
    """Stored results of a plug-in dataset's older code are never served: its code is part
    of every task's hash (what runs are keyed by), comments and layout aside."""
    source = STRIPES.format(kind="acme-edit")
    install(tmp_path, monkeypatch, "acme_edit", source, {"l2lbench.datasets": "acme-edit = acme_edit:StripesSpec"})
    config = {"dataset": {"kind": "acme-edit", "n_train": 18}, "learner": {"kind": "mlp", "hidden": [4]}, "steps": 5}
    before = TaskSpec.from_config(config)
    (tmp_path / "acme_edit.py").write_text(source + "\n# a comment changes nothing it computes\n")
    assert TaskSpec.from_config(config).hash == before.hash
    edited = source.replace("dtype=torch.uint8) * 10)", "dtype=torch.uint8) * 11)")
    (tmp_path / "acme_edit.py").write_text(edited)
    after = TaskSpec.from_config(config)
    assert edited != source and after.hash != before.hash and after.name == before.name
    assert TaskSpec.from_config(before.config()) == before  # a stored config, code and all, rebuilds


def test_an_installed_plugins_package_version_keys_its_tasks(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "acme_versioned", STRIPES.format(kind="acme-versioned"),
            {"l2lbench.datasets": "acme-versioned = acme_versioned:StripesSpec"}, dist="acme-versioned")
    (tmp_path / "acme_versioned-1.0.dist-info" / "top_level.txt").write_text("acme_versioned\n")
    task = TaskSpec.from_config({"dataset": {"kind": "acme-versioned"}, "learner": {"kind": "mlp", "hidden": [4]}})
    assert task.config()["dataset"]["code"]["distribution"] == "acme-versioned 1.0"


#: A learner that is not an nn.Sequential: its seeds cannot take the stacked fast path.
RESIDUAL = LINEAR.replace("@dataclasses.dataclass(frozen=True)\nclass Linear(LearnerSpec):", """class Skip(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.flat, self.linear = nn.Flatten(), nn.Linear(n, 3, device="meta")

    def forward(self, x):
        return self.linear(self.flat(x))


@dataclasses.dataclass(frozen=True)
class Linear(LearnerSpec):""").replace(
    "return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes, bias=self.bias, device=\"meta\"))",
    "return Skip(math.prod(input_shape))")


def test_a_learner_off_the_stacked_fast_path_is_named_in_its_runs_records(tmp_path, monkeypatch, capsys):
    assert "Skip(" in RESIDUAL and "return Skip(" in RESIDUAL
    install(tmp_path / "dist", monkeypatch, "acme_skip", RESIDUAL.format(kind="acme-skip"),
            {"l2lbench.learners": "acme-skip = acme_skip:Linear"})
    suite = tmp_path / "s.toml"
    suite.write_text('seeds = 2\noptimizers = ["sgd"]\n[defaults]\nsteps = 3\nbatch_size = 4\neval_every = 3\n'
                     '[[tasks]]\ndataset = { kind = "synthetic", size = 4, num_classes = 3, n_train = 24, n_test = 6 }\n'
                     'learner = { kind = "acme-skip" }\n')
    from l2lbench.cli import main
    from l2lbench.store.runs import ResultsStore

    with pytest.warns(Warning, match="not the stacked fast path"):
        assert main(["run", "--suite", str(suite), "--results", str(tmp_path / "r")]) == 0
    runs = ResultsStore(tmp_path / "r").runs()
    assert len(runs) == 2 and {r.provenance["learner_slow_path"] for r in runs} == {"Skip is not an nn.Sequential"}
