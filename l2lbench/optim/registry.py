"""Which optimisers exist: one explicit table of built-ins, plus third-party plug-ins.

Three ways in, all explicit (no import-time registration side effects):

* built-ins: ``BUILTIN_OPTIMIZERS`` below, imported lazily on first use;
* installed packages: entry-point group ``l2lbench.optimizers``, one entry point per
  optimiser (``name = "package.module:factory"``);
* ``--plugin path/to/file.py`` or ``--plugin package.module``: a module that defines
  ``OPTIMIZERS = {"name": factory, ...}``.

A factory is a callable taking hyperparameters as keyword arguments (with defaults) and
returning an object with ``init``/``update`` (see :mod:`l2lbench.optim.base`). A plug-in
that fails to load is reported by name in ``registry.problems``; the rest still load.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..errors import ConfigError, PluginError, UsageError
from .base import capability, interface_problems
from .spec import OptimizerSpec, config_hash, resolve_hparams

ENTRY_POINT_GROUP = "l2lbench.optimizers"

# name -> "module:attribute". The paper's baselines (sgd, momentum, adam at lr 0.01),
# two more hand-designed optimisers people compare against, and the learned entries.
BUILTIN_OPTIMIZERS: dict[str, str] = {
    "sgd": "l2lbench.optimizers.sgd:sgd",
    "momentum": "l2lbench.optimizers.sgd:momentum",
    "adam": "l2lbench.optimizers.adam:adam",
    "adamw": "l2lbench.optimizers.adam:adamw",
    "rmsprop": "l2lbench.optimizers.rmsprop:rmsprop",
    # The learned reference entries (meta-trained by the harness before meta-testing).
    "lstm": "l2lbench.optimizers.lstm:lstm",
    "mtl2l": "l2lbench.optimizers.mtl2l:mtl2l",
}


def _import_attribute(reference: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class OptimizerEntry:
    """A registered optimiser: its name, factory and where it came from."""

    name: str
    factory: Callable[..., Any]
    source: str

    @property
    def description(self) -> str:
        doc = (getattr(self.factory, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""


@dataclass(frozen=True)
class ResolvedOptimizer:
    """An optimiser config bound to its entry: full hyperparameters and store key.

    A learned optimiser is identified by its meta-parameters too: by the meta-training
    that produces them (``meta_training``, a :class:`~l2lbench.learned.spec.MetaTrainingSpec`)
    or, for a checkpoint given by the user, by the checkpoint file's digest.
    ``checkpoint`` is the file the meta-parameters are loaded from at meta-test.
    """

    spec: OptimizerSpec
    entry: OptimizerEntry
    hparams: dict[str, Any] = field(hash=False)
    meta_training: Any = None
    checkpoint: Path | None = None
    checkpoint_digest: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def hash(self) -> str:
        if self.meta_training is not None:
            return config_hash(self.entry.name, self.hparams, meta_training=self.meta_training.hash)
        if self.checkpoint_digest is not None:
            return config_hash(self.entry.name, self.hparams, checkpoint=self.checkpoint_digest)
        return config_hash(self.entry.name, self.hparams)

    @property
    def learned(self) -> bool:
        return capability(self.build(), "learned")

    def config(self) -> dict[str, Any]:
        config = {"entry": self.entry.name, "hparams": dict(self.hparams), "source": self.entry.source}
        if self.meta_training is not None:
            config["meta_training"] = self.meta_training.config()
        if self.checkpoint_digest is not None:
            config["checkpoint"] = {"path": str(self.checkpoint), "digest": self.checkpoint_digest}
        return config

    def build(self) -> Any:
        """Call the factory and check the interface; errors name the plug-in."""
        try:
            optimizer = self.entry.factory(**self.hparams)
        except ConfigError as exc:
            raise ConfigError(f"optimizer {self.name!r}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"optimizer {self.name!r}: {exc}") from None
        except Exception as exc:
            raise PluginError(
                f"optimizer {self.name!r} ({self.entry.source}) failed to construct: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        problems = interface_problems(optimizer)
        if problems:
            raise PluginError(
                f"optimizer {self.name!r} ({self.entry.source}) does not satisfy the interface: "
                f"{'; '.join(problems)} (expected init(params) and update(grads, state, params, context))"
            )
        return optimizer


class OptimizerRegistry:
    """Name -> entry, de-duplicated by name, with the providing source recorded."""

    def __init__(self) -> None:
        self._entries: dict[str, OptimizerEntry] = {}
        self.problems: list[str] = []  # one line per plug-in that failed to load

    @classmethod
    def default(cls, plugins: Iterable[str] = (), *, entry_points: bool = True) -> "OptimizerRegistry":
        """Built-ins, then installed entry points, then ``--plugin`` modules."""
        registry = cls()
        for name, reference in BUILTIN_OPTIMIZERS.items():
            registry.add(OptimizerEntry(name, _LazyFactory(reference), "built-in"))
        if entry_points:
            registry.load_entry_points()
        for plugin in plugins:
            registry.load_plugin(plugin)
        return registry

    def add(self, entry: OptimizerEntry) -> bool:
        """Add ``entry``; loading the same factory twice is a no-op, a clash a problem."""
        existing = self._entries.get(entry.name)
        if existing is not None:
            if existing.factory is entry.factory or existing.source == entry.source:
                return False
            self.problems.append(
                f"optimizer name {entry.name!r} from {entry.source} clashes with the one from "
                f"{existing.source}; keeping the latter (rename one of them)"
            )
            return False
        if not callable(entry.factory):
            self.problems.append(
                f"optimizer {entry.name!r} from {entry.source} is {entry.factory!r}, not a factory "
                "(expected a callable returning an object with init/update)"
            )
            return False
        self._entries[entry.name] = entry
        return True

    def load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            source = f"entry point {ep.value!r}" + (f" of package {ep.dist.name!r}" if ep.dist else "")
            try:
                factory = ep.load()
            except (Exception, SystemExit) as exc:  # a broken third-party package must not stop the rest
                self.problems.append(f"plug-in {ep.name!r} ({source}) failed to import: {type(exc).__name__}: {exc}")
                continue
            self.add(OptimizerEntry(ep.name, factory, source))

    def load_plugin(self, reference: str) -> None:
        """Load ``path/to/file.py`` or ``package.module`` and add its ``OPTIMIZERS``."""
        try:
            module = _import_plugin_module(reference)
        except PluginError as exc:
            self.problems.append(str(exc))
            return
        table = getattr(module, "OPTIMIZERS", None)
        if not isinstance(table, Mapping) or not table:
            self.problems.append(
                f"plug-in {reference!r} defines no OPTIMIZERS table "
                "(expected OPTIMIZERS = {\"name\": factory, ...} at module level)"
            )
            return
        for name, factory in table.items():
            self.add(OptimizerEntry(str(name), factory, f"plug-in {reference}"))

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[OptimizerEntry]:
        return list(self._entries.values())

    def get(self, name: str) -> OptimizerEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise UsageError(f"unknown optimizer {name!r}; expected one of: {', '.join(self._entries)}") from None

    def resolve(self, spec: OptimizerSpec | str) -> ResolvedOptimizer:
        if isinstance(spec, str):
            spec = OptimizerSpec(spec)
        entry = self.get(spec.entry)
        hparams = resolve_hparams(entry.factory, dict(spec.hparams), spec.entry)
        return ResolvedOptimizer(spec, entry, hparams)


class _LazyFactory:
    """A built-in factory imported on first call, so listing entries imports nothing heavy."""

    def __init__(self, reference: str) -> None:
        self.reference = reference
        self._target: Callable[..., Any] | None = None

    def _resolve(self) -> Callable[..., Any]:
        if self._target is None:
            self._target = _import_attribute(self.reference)
        return self._target

    def __call__(self, **kwargs: Any) -> Any:
        return self._resolve()(**kwargs)

    @property
    def __signature__(self):  # noqa: D401 - inspect.signature reads this
        import inspect

        return inspect.signature(self._resolve())

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self._resolve().__doc__


def _import_plugin_module(reference: str) -> Any:
    path = Path(reference)
    try:
        if reference.endswith(".py") or path.is_file():
            if not path.is_file():
                raise PluginError(f"plug-in file {reference!r} does not exist (expected a .py file or package.module)")
            # A unique module name per file path, so two plug-ins both called
            # my_opt.py do not overwrite each other in sys.modules.
            digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
            module_name = f"l2lbench_plugin_{path.stem}_{digest}"
            if module_name in sys.modules:
                return sys.modules[module_name]
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise PluginError(f"plug-in file {reference!r} cannot be loaded as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
            return module
        return importlib.import_module(reference)
    except PluginError:
        raise
    except (Exception, SystemExit) as exc:  # sys.exit() at import must not end the benchmark
        raise PluginError(f"plug-in {reference!r} failed to import: {type(exc).__name__}: {exc}") from exc
