"""Plug-in registration: built-in table, entry points, files, modules; failures named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from l2lbench.errors import PluginError, UsageError
from l2lbench.optim.registry import BUILTIN_OPTIMIZERS, OptimizerRegistry
from l2lbench.optim.torch_bridge import from_torch

PLUGINS = str(Path(__file__).with_name("plugins.py"))


def test_builtins_are_the_explicit_table():
    registry = OptimizerRegistry.default(entry_points=False)
    assert registry.names() == list(BUILTIN_OPTIMIZERS)
    assert all(e.source == "built-in" for e in registry.entries())


def test_plugin_file_loads_once_and_is_named_by_its_path():
    registry = OptimizerRegistry.default([PLUGINS, PLUGINS], entry_points=False)
    assert registry.problems == []
    assert {"recorder", "nan-at", "raises"} <= set(registry.names())
    assert registry.get("recorder").source == f"plug-in {PLUGINS}"


def test_plugin_module_by_dotted_name(tmp_path, monkeypatch):
    package = tmp_path / "acme_opt"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "rules.py").write_text(
        "import torch\nfrom l2lbench.optim.torch_bridge import from_torch\n"
        "OPTIMIZERS = {'adagrad': from_torch(torch.optim.Adagrad, lr=0.01)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = OptimizerRegistry.default(["acme_opt.rules"], entry_points=False)
    assert registry.problems == []
    resolved = registry.resolve("adagrad")
    assert resolved.hparams == {"lr": 0.01}
    assert resolved.build().optimizer_class is torch.optim.Adagrad


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    (tmp_path / "acme_ep.py").write_text(
        "from l2lbench.optim.torch_bridge import from_torch\nimport torch\n"
        "asgd = from_torch(torch.optim.ASGD, lr=0.01)\n"
    )
    dist = tmp_path / "acme_ep-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-ep\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[l2lbench.optimizers]\nasgd = acme_ep:asgd\nbroken = acme_ep:does_not_exist\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = OptimizerRegistry.default()
    assert "asgd" in registry.names()
    assert "package 'acme-ep'" in registry.get("asgd").source
    # The broken entry point is reported by name; the good one and the built-ins still load.
    assert any("plug-in 'broken'" in p and "failed to import" in p for p in registry.problems)
    assert "sgd" in registry.names()


@pytest.mark.parametrize(
    "source,problem",
    [
        ("raise RuntimeError('nope')\n", "failed to import: RuntimeError: nope"),
        ("X = 1\n", "defines no OPTIMIZERS table"),
        ("OPTIMIZERS = {'bad': 42}\n", "is 42, not a factory"),
        ("OPTIMIZERS = {'sgd': lambda: None}\n", "clashes with the one from built-in"),
    ],
)
def test_bad_plugins_are_reported_by_name(tmp_path, source, problem):
    path = tmp_path / "bad_plugin.py"
    path.write_text(source)
    registry = OptimizerRegistry.default([str(path)], entry_points=False)
    assert len(registry.problems) == 1 and problem in registry.problems[0]
    assert "sgd" in registry.names()


def test_missing_plugin_file():
    registry = OptimizerRegistry.default(["no/such/file.py"], entry_points=False)
    assert "plug-in file 'no/such/file.py' does not exist" in registry.problems[0]


def test_plugin_without_the_interface_is_refused_when_built(tmp_path):
    path = tmp_path / "shapeless.py"
    path.write_text("class Nothing:\n    pass\nOPTIMIZERS = {'nothing': Nothing}\n")
    registry = OptimizerRegistry.default([str(path)], entry_points=False)
    with pytest.raises(PluginError, match=r"optimizer 'nothing' \(plug-in .*shapeless.py\) does not satisfy the interface: has no callable init\(\)"):
        registry.resolve("nothing").build()


def test_unknown_optimizer_lists_the_choices():
    with pytest.raises(UsageError, match="unknown optimizer 'adan'; expected one of: sgd, momentum, adam, adamw, rmsprop"):
        OptimizerRegistry.default(entry_points=False).get("adan")


def test_any_torch_optimizer_in_one_line():
    factory = from_torch(torch.optim.NAdam, lr=0.002)
    registry = OptimizerRegistry()
    from l2lbench.optim.registry import OptimizerEntry

    registry.add(OptimizerEntry("nadam", factory, "test"))
    resolved = registry.resolve("nadam")
    assert resolved.hparams == {"lr": 0.002} and resolved.name == "nadam"
    assert resolved.build().kwargs == {"lr": 0.002}


def test_importing_the_package_has_no_side_effects():
    code = (
        "import sys, torch; before = torch.initial_seed(); threads = torch.get_num_threads();"
        "import l2lbench, l2lbench.optim.registry, l2lbench.cli;"
        "assert 'l2lbench.optimizers.adam' not in sys.modules;"
        "assert torch.get_num_threads() == threads"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_plugin_calling_sys_exit_at_import_is_a_problem_not_an_exit(tmp_path):
    plugin = tmp_path / "exits_at_import.py"
    plugin.write_text("import sys\nsys.exit(3)\n")
    registry = OptimizerRegistry.default([str(plugin)], entry_points=False)
    assert len(registry.problems) == 1 and "SystemExit: 3" in registry.problems[0]
    assert "sgd" in registry.names()
