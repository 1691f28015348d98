"""Specs: derived names, content hashes, validation; learners; suite parsing."""

from __future__ import annotations

import pytest
import torch

from l2lbench.errors import ConfigError
from l2lbench.execute.learner import FunctionalLearner
from l2lbench.spec.suite import builtin_suites, load_suite, parse_suite
from l2lbench.spec.task import TaskSpec
from l2lbench.tasks.datasets import dataset_from_config
from l2lbench.tasks.learners import CNN, MLP


def _task(**fields):
    return TaskSpec(dataset=dataset_from_config({"kind": "mnist"}), **fields)


def test_names_are_derived_from_fields():
    assert _task().name == "mnist-mlp784x32x10-relu-1000steps"
    assert _task(steps=100, batch_size=64).name == "mnist-mlp784x32x10-relu-100steps-bs64"
    assert _task(learner=MLP(hidden=(64, 64), activation="tanh")).name == "mnist-mlp784x64x64x10-tanh-1000steps"
    assert _task(learner=CNN()).name == "mnist-cnn8x16-relu-1000steps"
    assert _task(eval_every=5, eval_examples=500).name.endswith("-eval5-test500")


def test_hash_is_stable_and_separates_every_field():
    base = _task()
    assert base.hash == _task().hash and len(base.hash) == 16
    variants = [
        _task(steps=999), _task(batch_size=64), _task(eval_every=20), _task(eval_examples=100),
        _task(learner=MLP(activation="tanh")), TaskSpec(dataset=dataset_from_config({"kind": "kmnist"})),
        TaskSpec(dataset=dataset_from_config({"kind": "mnist", "mean": 0.5})),
    ]
    hashes = {v.hash for v in variants}
    assert len(hashes) == len(variants) and base.hash not in hashes
    # A config round trip keeps the hash (the literal pins are in test_keys.py).
    assert TaskSpec.from_config(base.config() | {"dataset": base.config()["dataset"], "learner": base.config()["learner"]}).hash == base.hash


def test_eval_steps_include_start_and_end():
    assert _task(steps=25, eval_every=10).eval_steps() == [0, 10, 20, 25]
    assert _task(steps=20, eval_every=10).eval_steps() == [0, 10, 20]


@pytest.mark.parametrize(
    "config,message",
    [
        ({"dataset": "mnist", "steps": 0}, "invalid steps: 0 (expected a positive integer)"),
        ({"dataset": "mnist", "steps": -5}, "invalid steps: -5"),
        ({"dataset": "mnist", "batch_size": 1.5}, "invalid batch_size: 1.5"),
        ({"dataset": "mnist", "eval_every": True}, "invalid eval_every: True"),
        ({"dataset": "mnist", "speed": 3}, "unknown task field(s) 'speed'"),
        ({"steps": 10}, "has no dataset"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; expected one of:"),
        ({"dataset": "mnist", "learner": "transformer"}, "unknown learner 'transformer'; expected one of: cnn, mlp"),
        ({"dataset": "mnist", "learner": {"kind": "mlp", "activation": "gelu"}}, "invalid activation 'gelu'; expected one of: relu, tanh, sigmoid"),
        ({"dataset": "mnist", "learner": {"kind": "mlp", "hidden": [0]}}, "invalid hidden sizes: (0,)"),
        ({"dataset": "mnist", "learner": {"kind": "mlp", "depth": 3}}, "unknown field(s) 'depth' for learner 'mlp'"),
    ],
)
def test_bad_task_configs_name_the_value(config, message):
    with pytest.raises(ConfigError) as info:
        TaskSpec.from_config(config)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_paper_mlp_has_25450_parameters_and_torch_default_init():
    module = MLP().build((1, 28, 28), 10)
    learner = FunctionalLearner(module)
    assert learner.num_parameters() == 25_450
    params = learner.init(torch.Generator().manual_seed(7))
    # Same draws, in the same order, as constructing the layers under torch.manual_seed.
    torch.manual_seed(7)
    reference = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    for name, tensor in reference.named_parameters():
        assert torch.equal(params[name], tensor.detach()), name
    logits = learner.logits(params, torch.zeros(5, 1, 28, 28))
    assert logits.shape == (5, 10)


def test_cnn_builds_and_runs_functionally():
    module = CNN().build((1, 28, 28), 10)
    learner = FunctionalLearner(module)
    params = learner.init(torch.Generator().manual_seed(0))
    assert learner.logits(params, torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert learner.num_parameters() == 8 * 9 + 8 + 16 * 8 * 9 + 16 + 16 * 7 * 7 * 10 + 10
    with pytest.raises(ConfigError, match="at most 4 pooling stages"):
        CNN(channels=(2, 2, 2, 2, 2)).build((1, 28, 28), 10)


SUITE = """
seeds = 2
optimizers = ["sgd"]
[[tasks]]
dataset = {kind = "synthetic"}
"""


@pytest.mark.parametrize(
    "text,message",
    [
        ("seeds = [", "invalid TOML"),
        ("colour = 1\n" + SUITE, "unknown key(s) 'colour'"),
        (SUITE.replace("seeds = 2", "seeds = 0"), "invalid seeds: 0 (expected a positive integer)"),
        (SUITE.replace("seeds = 2", "seeds = -3"), "invalid seeds: -3"),
        (SUITE.replace('["sgd"]', "[]"), "invalid optimizers: []"),
        (SUITE.replace('["sgd"]', '["sgd", "sgd"]'), "optimizer(s) 'sgd' listed twice for task"),
        (SUITE.replace('["sgd"]', "[3]"), "invalid optimizer 3"),
        (SUITE + '[[tasks]]\ndataset = {kind = "synthetic"}\n', "task #2 (synthetic-mlp784x32x10-relu-1000steps) is listed twice"),
        (SUITE.replace("synthetic", "nope"), "task #1: unknown dataset 'nope'"),
        ('optimizers = ["sgd"]\ntasks = 3', "invalid tasks: 3"),
    ],
)
def test_bad_suite_files_give_one_line_naming_the_problem(text, message):
    with pytest.raises(ConfigError) as info:
        parse_suite(text, name="x", source="x.toml")
    assert message in str(info.value) and str(info.value).startswith("x.toml: ")
    assert "\n" not in str(info.value)


def test_builtin_suites_parse():
    assert "smoke" in builtin_suites()
    for name in builtin_suites():
        suite = load_suite(name)
        assert suite.tasks and suite.optimizers


def test_task_selection_by_name_dataset_or_glob(tiny_suite):
    suite = load_suite(tiny_suite())
    (task,) = suite.tasks
    assert suite.select_tasks([task.name]) == (task,)
    assert suite.select_tasks(["synthetic*"]) == (task,)
    with pytest.raises(Exception, match="no task of suite 'tiny' matches 'mnist'"):
        suite.select_tasks(["mnist"])
