"""Optimisers by name from installed libraries, without a plug-in file.

    torch:NAdam                  torch.optim.NAdam with its own defaults
    torch:Adagrad(lr=0.01)       hyperparameters in parentheses (TOML values)
    pytorch_optimizer:Lion       the pytorch-optimizer package, when installed

Each runs through the torch bridge (:mod:`l2lbench.plugin.torch_bridge`): torch's own
numbers, seed by seed. The entry's default hyperparameters are the class's keyword defaults
(implementation switches such as ``foreach`` left out), so they are part of every key; its
code identity is the class's module and the package's name and version.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import tomllib
from typing import Any

from l2lbench.errors import ConfigError, UsageError

# prefix -> (module holding the classes, distribution to name in keys and errors)
LIBRARIES = {"torch": ("torch.optim", "torch"), "pytorch_optimizer": ("pytorch_optimizer", "pytorch-optimizer")}
# Keyword arguments that choose how torch computes, not what: not hyperparameters.
_SWITCHES = {"foreach", "fused", "capturable", "differentiable"}
_CALL = re.compile(r"^\s*([A-Za-z_][\w.:-]*)\s*\((.*)\)\s*$", re.DOTALL)


def is_library_name(name: str) -> bool:
    prefix, sep, rest = name.partition(":")
    return bool(sep) and prefix in LIBRARIES and bool(rest)


def parse_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """``"torch:Adagrad(lr=0.01, eps=1e-8)"`` -> ``("torch:Adagrad", {"lr": 0.01, "eps": 1e-08})``
    (any optimiser name: ``adam(lr=0.003, schedule="cosine")``); None for a plain name."""
    match = _CALL.match(text)
    if match is None:
        return None
    name, arguments = match.groups()
    try:
        values = tomllib.loads(f"x = {{ {arguments} }}")["x"] if arguments.strip() else {}
    except tomllib.TOMLDecodeError:
        raise ConfigError(f"invalid optimizer {text!r} (expected hyperparameters as name=value, e.g. "
                          "torch:Adagrad(lr=0.01, eps=1e-8))") from None
    return name, values


def _plain(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return True
    return isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value)


def _module(prefix: str) -> Any:
    module_name, distribution = LIBRARIES[prefix]
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise UsageError(f"optimizer library {prefix!r} is not installed (pip install {distribution})") from None


def classes(prefix: str) -> list[str]:
    """The optimiser classes a library offers (those that need no closure)."""
    import torch

    module = _module(prefix)
    names = []
    for name in sorted(dir(module)):
        cls = getattr(module, name)
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer:
            closure = inspect.signature(cls.step).parameters.get("closure")
            if closure is None or closure.default is not inspect.Parameter.empty:
                names.append(name)
    return names


def library_entry(name: str) -> Any:
    """The registry entry for ``torch:NAdam``-style names.

    Raises:
        UsageError: the library is not installed or has no such optimiser class.
    """
    import torch

    from l2lbench.plugin.registry import OptimizerEntry
    from l2lbench.plugin.torch_bridge import from_torch

    prefix, _, class_name = name.partition(":")
    module = _module(prefix)
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        known = classes(prefix)
        raise UsageError(f"unknown optimizer {name!r}: {LIBRARIES[prefix][0]} has no optimizer class {class_name!r}; "
                         f"expected one of: {', '.join(known[:40])}{', ...' if len(known) > 40 else ''}")
    defaults = {
        key: p.default for key, p in inspect.signature(cls.__init__).parameters.items()
        if key not in ("self", "params") and key not in _SWITCHES
        and p.default is not inspect.Parameter.empty and _plain(p.default)
    }
    distribution = LIBRARIES[prefix][1]
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(module, "__version__", "unknown")
    factory = from_torch(cls, **defaults)
    factory.__doc__ = f"{LIBRARIES[prefix][0]}.{class_name} through the torch bridge (installed, no file)."
    return OptimizerEntry(name, factory, f"library {LIBRARIES[prefix][0]}.{class_name}", cls.__module__,
                          f"{distribution} {version}")
