from __future__ import annotations

import os
import tempfile
import textwrap

# The C kernels are built into a folder of this test session, never the user's cache.
os.environ.setdefault("L2LBENCH_NATIVE_CACHE", tempfile.mkdtemp(prefix="l2lbench-native-tests-"))

import pytest

TINY_SUITE = """
description = "tiny test suite"
seeds = 2
optimizers = ["sgd", "adam"]

[defaults]
steps = 12
batch_size = 16
eval_every = 5

[[tasks]]
dataset = {{ kind = "synthetic", n_train = 128, n_test = 64 }}
learner = {{ kind = "mlp", hidden = [8] }}
{extra}
"""


#: A two-learner meta-training of the tiny suite's task (for learned optimisers in it).
TINY_META = """
[meta_training]
tasks = [{ dataset = { kind = "synthetic", n_train = 128, n_test = 64 }, learner = { kind = "mlp", hidden = [8] } }]
steps = 6
batch_size = 16
trials = 2
unroll = 3
"""


@pytest.fixture
def tiny_meta() -> str:
    """TOML to append to the tiny suite so that learned optimisers can run in it."""
    return TINY_META


@pytest.fixture
def tiny_suite(tmp_path):
    """Write a tiny suite file; returns a function (extra TOML) -> path."""

    def write(extra: str = "", name: str = "tiny") -> str:
        path = tmp_path / f"{name}.toml"
        path.write_text(TINY_SUITE.format(extra=textwrap.dedent(extra)))
        return str(path)

    return write


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path, monkeypatch):
    # Never touch the user's cache folder from tests.
    monkeypatch.setenv("L2LBENCH_DATA", str(tmp_path / "data"))
    # In-process by default: worker processes would each import torch (seconds per test);
    # the parallel runner has tests of its own.
    monkeypatch.setenv("L2LBENCH_WORKERS", "1")


@pytest.fixture(scope="session")
def dataset_files():
    """tests/dataset_files.py: writers of tiny datasets in the original archive formats."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "l2lbench_tests_dataset_files"
    if name not in sys.modules:  # --import-mode=importlib keeps tests/ off sys.path
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("dataset_files.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
