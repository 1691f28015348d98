"""Plug-in registration: built-in table, entry points, files, modules; failures named."""

from __future__ import annotations

import dataclasses
import inspect
import sys
import time
from pathlib import Path

import pytest
import torch

from l2lbench.errors import ConfigError, PluginError, UsageError
from l2lbench.plugin.factory import from_dataclass
from l2lbench.plugin.registry import BUILTIN_OPTIMIZERS, OptimizerEntry, OptimizerRegistry
from l2lbench.plugin.torch_bridge import from_torch
from l2lbench.spec.optimizer import OptimizerSpec

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
        "import torch\nfrom l2lbench.plugin.torch_bridge import from_torch\n"
        "OPTIMIZERS = {'adagrad': from_torch(torch.optim.Adagrad, lr=0.01)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = OptimizerRegistry.default(["acme_opt.rules"], entry_points=False)
    assert registry.problems == []
    resolved = registry.resolve("adagrad")
    assert resolved.hparams == {"lr": 0.01}
    assert resolved.build().optimizer_class is torch.optim.Adagrad


def _install_entry_points(tmp_path, monkeypatch, module: str, entry_points: str, name: str = "acme_ep") -> None:
    """A fake installed distribution ``acme-ep 1.0`` with ``module`` as ``acme_ep.py``."""
    (tmp_path / f"{name}.py").write_text(module)
    dist = tmp_path / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[l2lbench.optimizers]\n{entry_points}")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_entry_point_plugins_are_discovered_and_imported_only_when_named(tmp_path, monkeypatch):
    _install_entry_points(
        tmp_path, monkeypatch,
        "from l2lbench.plugin.torch_bridge import from_torch\nimport torch\nasgd = from_torch(torch.optim.ASGD, lr=0.01)\n",
        "asgd = acme_ep:asgd\nbroken = acme_ep:does_not_exist\n",
    )
    registry = OptimizerRegistry.default()
    assert {"asgd", "broken", "sgd"} <= set(registry.names())
    assert "acme_ep" not in sys.modules and registry.problems == []  # nothing imported yet
    assert "package 'acme-ep'" in registry.get("asgd").source
    assert registry.resolve("asgd").hparams == {"lr": 0.01}
    # The broken one fails only when asked for, by name, with the reason.
    with pytest.raises(PluginError, match=r"plug-in 'broken' \(entry point 'acme_ep:does_not_exist' of package "
                                          r"'acme-ep'\) failed to import: AttributeError"):
        registry.resolve("broken")


def test_an_entry_point_that_fails_at_import_stops_only_commands_that_name_it(tmp_path, monkeypatch, capsys):
    _install_entry_points(tmp_path, monkeypatch, "raise RuntimeError('broken package')\n", "bad = acme_broken:bad\n",
                          name="acme_broken")
    from l2lbench.cli import main

    assert main(["list", "optimizers"]) == 0  # listed with a warning, nobody asked for it
    out, err = capsys.readouterr()
    assert "bad" in out and "warning: plug-in 'bad'" in err and "RuntimeError: broken package" in err
    suite = tmp_path / "s.toml"
    suite.write_text(TINY.format(optimizers='["sgd"]'))
    assert main(["run", "--suite", str(suite), "--results", str(tmp_path / "r")]) == 0  # not named: not imported
    capsys.readouterr()
    assert main(["run", "--suite", str(suite), "--results", str(tmp_path / "r2"), "--optimizers", "sgd,bad"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "failed to import: RuntimeError: broken package" in err
    assert not (tmp_path / "r2").exists()


def test_an_entry_point_that_hangs_at_import_is_given_up_on(tmp_path, monkeypatch):
    import l2lbench.plugin.registry as registry_module

    _install_entry_points(tmp_path, monkeypatch, "import time\ntime.sleep(3600)\n", "slow = acme_slow:slow\n",
                          name="acme_slow")
    monkeypatch.setattr(registry_module, "ENTRY_POINT_IMPORT_S", 1.0)
    registry = OptimizerRegistry.default()  # not imported: nobody asked for it
    start = time.monotonic()
    with pytest.raises(PluginError, match=r"plug-in 'slow' \(entry point 'acme_slow:slow' of package 'acme-slow'\) "
                                          r"did not finish importing within 1 s"):
        registry.resolve("slow")
    assert time.monotonic() - start < 10


def test_an_explicit_plugin_wins_over_an_installed_entry_point_with_a_note(tmp_path, monkeypatch, capsys):
    _install_entry_points(
        tmp_path, monkeypatch,
        "from l2lbench.plugin.torch_bridge import from_torch\nimport torch\nsignum = from_torch(torch.optim.SGD, lr=0.5)\n",
        "signum = acme_win:signum\n", name="acme_win",
    )
    plugin = tmp_path / "mine.py"
    plugin.write_text("from l2lbench.plugin.torch_bridge import from_torch\nimport torch\n"
                      "OPTIMIZERS = {'signum': from_torch(torch.optim.SGD, lr=0.25)}\n")
    registry = OptimizerRegistry.default([str(plugin)])
    assert registry.get("signum").source == f"plug-in {plugin}"
    assert registry.resolve("signum").hparams == {"lr": 0.25}
    assert registry.notes == [f"optimizer 'signum': using plug-in {plugin} instead of the installed entry point "
                              "'acme_win:signum' of package 'acme-win'"]
    from l2lbench.cli import main

    assert main(["list", "optimizers", "--plugin", str(plugin)]) == 0
    assert "l2lbench: note: optimizer 'signum': using plug-in" in capsys.readouterr().err


TINY = """
seeds = 1
optimizers = {optimizers}
[defaults]
steps = 3
batch_size = 8
eval_every = 3
[[tasks]]
dataset = {{ kind = "synthetic", n_train = 32, n_test = 16, size = 8 }}
learner = {{ kind = "mlp", hidden = [4] }}
"""


@pytest.mark.parametrize(
    "source,problem",
    [
        ("raise RuntimeError('nope')\n", "failed to import: RuntimeError: nope"),
        ("def broken(:\n", "failed to import: SyntaxError: "),
        ("X = 1\n", "defines no OPTIMIZERS table"),
        ("OPTIMIZERS = {'bad': 42}\n", "is 42, not a factory"),
        ("OPTIMIZERS = {'sgd': lambda: None}\n", "which the built-in optimizer already has (expected another name)"),
        ("def f(lr=0.1):\n    raise RuntimeError('boom')\nOPTIMIZERS = {'f': f}\n",
         "failed to construct: RuntimeError: boom (with its default hyperparameters)"),
        ("def f(lr=-1.0):\n    raise ValueError(f'invalid lr: {lr!r}')\nOPTIMIZERS = {'f': f}\n",
         "optimizer 'f': invalid lr: -1.0 (with its default hyperparameters)"),
        ("class Nothing:\n    pass\nOPTIMIZERS = {'nothing': Nothing}\n",
         "does not satisfy the interface: has no callable init()"),
        ("import sys\nsys.exit(3)\n", "failed to import: SystemExit: 3"),
    ],
)
def test_a_bad_plugin_stops_loading_with_one_line_naming_it(tmp_path, source, problem):
    path = tmp_path / "bad_plugin.py"
    path.write_text(source)
    with pytest.raises(PluginError) as info:
        OptimizerRegistry.default([str(path)], entry_points=False)
    message = str(info.value)
    assert problem in message and str(path) in message and "\n" not in message
    # A worker process rebuilding what its parent checked records an import problem
    # instead (and does not build factories: a failing one fails its runs there).
    registry = OptimizerRegistry.default([str(path)], entry_points=False, strict=False)
    built_only = "default hyperparameters" in problem or "interface" in problem
    assert len(registry.problems) == (0 if built_only else 1) and "sgd" in registry.names()


def test_two_plugins_may_not_share_a_name(tmp_path):
    for name in ("one.py", "two.py"):
        (tmp_path / name).write_text("from l2lbench.plugin.torch_bridge import from_torch\nimport torch\n"
                                     "OPTIMIZERS = {'twin': from_torch(torch.optim.SGD, lr=0.1)}\n")
    with pytest.raises(PluginError, match=r"plug-in .*two.py defines optimizer 'twin', which the plug-in .*one.py"):
        OptimizerRegistry.default([str(tmp_path / "one.py"), str(tmp_path / "two.py")], entry_points=False)


def test_missing_plugin_file():
    with pytest.raises(PluginError, match="plug-in file 'no/such/file.py' does not exist"):
        OptimizerRegistry.default(["no/such/file.py"], entry_points=False)


def test_unknown_optimizer_lists_the_choices():
    with pytest.raises(UsageError, match="unknown optimizer 'adan'; expected one of: sgd, momentum, adam, adamw, rmsprop"):
        OptimizerRegistry.default(entry_points=False).get("adan")


def test_any_torch_optimizer_in_one_line():
    factory = from_torch(torch.optim.NAdam, lr=0.002)
    registry = OptimizerRegistry()
    from l2lbench.plugin.registry import OptimizerEntry

    registry.add(OptimizerEntry("nadam", factory, "test"))
    resolved = registry.resolve("nadam")
    assert resolved.hparams == {"lr": 0.002} and resolved.name == "nadam"
    assert resolved.build().kwargs == {"lr": 0.002}


def test_importing_the_package_has_no_side_effects():
    code = (
        "import sys, torch; before = torch.initial_seed(); threads = torch.get_num_threads();"
        "import l2lbench, l2lbench.plugin.registry, l2lbench.cli;"
        "assert 'l2lbench.optimizers.adam' not in sys.modules;"
        "assert torch.get_num_threads() == threads"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# What each built-in states besides its class's fields, written here by hand: the defaults
# in which it differs from the fields, and the fields that are not its hyperparameters.
# Any built-in not listed states no defaults and has no such field but a learned one's meta.
STATED_DEFAULTS = {
    "momentum": ({"momentum": 0.9}, {"meta"}),
    "adam": ({}, {"meta", "decoupled"}),
    "adamw": ({"weight_decay": 0.01}, {"meta", "decoupled"}),
}


def _field_defaults(cls: type, not_hparams: set[str]) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.init and f.name not in not_hparams:
            out[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return out


@pytest.mark.parametrize("name", list(BUILTIN_OPTIMIZERS))
def test_builtin_defaults_are_the_dataclass_fields(name):
    """One source of truth: a second copy of a default (in a factory) cannot drift."""
    resolved = OptimizerRegistry.default(entry_points=False).resolve(name)
    cls = type(resolved.build())
    assert dataclasses.is_dataclass(cls), f"built-in {name!r} builds {cls.__name__}, not a dataclass"
    overrides, not_hparams = STATED_DEFAULTS.get(name, ({}, {"meta"}))
    assert resolved.hparams == {**_field_defaults(cls, not_hparams), **overrides}
    assert resolved.non_default == {} and resolved.display_name == name


def test_builtin_defaults_by_hand():
    # The values the paper's baselines and the stored keys depend on, written out.
    registry = OptimizerRegistry.default(entry_points=False)
    assert registry.resolve("sgd").hparams == {"lr": 0.01, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
                                               "nesterov": False}
    assert registry.resolve("momentum").hparams == {"lr": 0.01, "momentum": 0.9, "dampening": 0.0,
                                                    "weight_decay": 0.0, "nesterov": False}
    assert registry.resolve("adamw").hparams == {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                                                 "weight_decay": 0.01, "amsgrad": False}
    assert registry.resolve("lstm").hparams == {"hidden": 20, "layers": 2, "preprocess_p": 10.0, "output_scale": 0.1,
                                                "head": "authors", "init_scheme": "authors"}
    assert registry.resolve("adam").build().decoupled is False
    assert registry.resolve("adamw").build().decoupled is True
    assert registry.get("momentum").description == "SGD with momentum 0.9 and lr 0.01, the paper's second baseline."


@pytest.mark.parametrize("name,hparam", [("adam", "decoupled"), ("adamw", "decoupled"), ("lstm", "meta"),
                                         ("mtl2l", "meta")])
def test_fields_that_are_not_hyperparameters_are_refused(name, hparam):
    with pytest.raises(ConfigError, match=f"unknown hyperparameter\\(s\\) '{hparam}' for optimizer '{name}'"):
        OptimizerRegistry.default(entry_points=False).resolve(OptimizerSpec(name, ((hparam, True),)))


@dataclasses.dataclass(frozen=True)
class _Toy:
    lr: float = 0.1
    beta: float = 0.5
    mode: str = "a"
    meta: object = dataclasses.field(default=None, compare=False)


def test_from_dataclass_states_only_what_differs():
    factory = from_dataclass(_Toy, "A toy rule.", fixed={"mode": "b"}, beta=0.9)
    assert [(k, p.default) for k, p in inspect.signature(factory).parameters.items()] == [("lr", 0.1), ("beta", 0.9)]
    assert factory() == _Toy(0.1, 0.9, "b") and factory(lr=0.2) == _Toy(0.2, 0.9, "b")
    assert factory.__doc__ == "A toy rule." and factory.__module__ == __name__
    with pytest.raises(TypeError, match="unexpected keyword argument 'mode'"):
        factory(mode="a")
    registry = OptimizerRegistry()
    registry.add(OptimizerEntry("toy", factory, "test"))
    assert registry.resolve("toy").hparams == {"lr": 0.1, "beta": 0.9}
    assert registry.get("toy").description == "A toy rule."
    with pytest.raises(ConfigError, match="unknown hyperparameter\\(s\\) 'meta' for optimizer 'toy'; expected some of: lr, beta"):
        registry.resolve(OptimizerSpec("toy", (("meta", 1.0),)))


@pytest.mark.parametrize("args,kwargs,error,message", [
    ((dict, "x"), {}, TypeError, "invalid class <class 'dict'> (expected a dataclass optimiser)"),
    ((_Toy(), "x"), {}, TypeError, "invalid class _Toy(lr=0.1, beta=0.5, mode='a', meta=None) (expected a dataclass optimiser)"),
    ((_Toy, "x"), {"gamma": 1.0}, ValueError, "unknown default field(s) 'gamma' of _Toy; expected some of: lr, beta, mode"),
    ((_Toy, "x"), {"meta": None}, ValueError, "unknown default field(s) 'meta' of _Toy; expected some of: lr, beta, mode"),
    ((_Toy, "x"), {"fixed": {"lr": 1.0, "z": 1}}, ValueError,
     "unknown fixed field(s) 'z' of _Toy; expected some of: lr, beta, mode"),
    ((_Toy, "x"), {"fixed": {"lr": 1.0}, "lr": 2.0}, ValueError,
     "field(s) 'lr' of _Toy both fixed and defaulted (expected a hyperparameter with a default or a fixed field, not both)"),
])
def test_from_dataclass_refuses_what_is_not_a_field(args, kwargs, error, message):
    with pytest.raises(error) as info:
        from_dataclass(*args, **kwargs)
    assert str(info.value) == message
