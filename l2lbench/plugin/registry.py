"""Which optimisers exist: one explicit table of built-ins, plus third-party plug-ins.

Three ways in, all explicit (no import-time registration side effects):

* built-ins: ``BUILTIN_OPTIMIZERS`` below, imported lazily on first use;
* installed packages: entry-point group ``l2lbench.optimizers``, one entry point per
  optimiser (``name = "package.module:factory"``), imported only when named or listed;
* ``--plugin path/to/file.py`` or ``--plugin package.module``: a module that defines
  ``OPTIMIZERS = {"name": factory, ...}``;
* by name from an installed library, without a file: ``torch:NAdam``,
  ``pytorch_optimizer:Lion`` (:mod:`l2lbench.plugin.library`), made when first named.

A factory is a callable taking hyperparameters as keyword arguments (with defaults) and
returning an object with ``init``/``update`` (see :mod:`l2lbench.plugin.base`). The
built-ins' factories are their dataclasses (:func:`l2lbench.plugin.factory.from_dataclass`),
so each default is written once, as a field.

What a user names must work or stop everything before anything runs: a ``--plugin`` that
fails to import, has no table, reuses a built-in's name or whose factory fails on its
defaults raises :class:`~l2lbench.errors.PluginError` (exit 2), and so does an entry point
that fails to import when it is asked for by name. An explicit ``--plugin`` wins over an
installed entry point of the same name (``registry.notes`` says so). Installed entry
points that nobody asked for only add a line to ``registry.problems`` (a warning).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from l2lbench.store import codeid
from l2lbench.store.codeid import code_identity, executed_source, key_part, remember_source
from l2lbench.errors import ConfigError, L2LBenchError, PluginError, UsageError
from l2lbench.plugin.base import capability, interface_problems
from l2lbench.spec.optimizer import NAME_EXPECTED, OptimizerSpec, bad_name, config_hash, display_name, non_default, resolve_hparams

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
    "mlp-lopt": "l2lbench.optimizers.mlp_lopt:mlp_lopt",
}

BUILT_IN, ENTRY_POINT, PLUG_IN = "built-in", "entry point", "plug-in"


def _import_attribute(reference: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class OptimizerEntry:
    """A registered optimiser: its name, factory and where it came from.

    ``module`` is the module whose source identifies the code (by default the factory's
    own module); ``distribution`` the installed package ("name version") of an entry point.
    """

    name: str
    factory: Callable[..., Any]
    source: str
    module: str | None = None
    distribution: str | None = None

    @property
    def kind(self) -> str:
        """``built-in``, ``entry point`` or ``plug-in`` (from where it was registered)."""
        for kind in (BUILT_IN, ENTRY_POINT, PLUG_IN):
            if self.source.startswith(kind):
                return kind
        return self.source

    @property
    def description(self) -> str:
        doc = (getattr(self.factory, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""

    @functools.cached_property
    def code(self) -> dict[str, Any]:
        """The code identity (:func:`l2lbench.store.codeid.code_identity`) behind this entry."""
        module = self.module
        if module is None:
            factory = self.factory
            module = factory.module if isinstance(factory, _LazyFactory) else getattr(factory, "__module__", None)
        return code_identity(module, self.distribution)


@dataclass(frozen=True)
class ResolvedOptimizer:
    """An optimiser config bound to its entry: full hyperparameters and store key.

    The key covers the entry, every hyperparameter (defaults filled in), the code's
    identity and the benchmark protocol version (:mod:`l2lbench.store.codeid`), and where its
    numbers are computed (``numerics``, set by the runner). A learned
    optimiser is identified by its meta-parameters too: by the meta-training that produces
    them (``meta_training``, a :class:`~l2lbench.spec.metatraining.MetaTrainingSpec`) or, for a
    checkpoint given by the user, by the checkpoint file's digest. ``checkpoint`` is the
    file the meta-parameters are loaded from at meta-test.
    """

    spec: OptimizerSpec
    entry: OptimizerEntry
    hparams: dict[str, Any] = field(hash=False)
    meta_training: Any = None
    checkpoint: Path | None = None
    checkpoint_digest: str | None = None
    # Where the numbers are computed, where that changes their rounding (see
    # l2lbench.plan.runs.numerics): "cpu", "cuda", "cpu+native", "cpu+pytorch", "cpu+reference".
    numerics: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def hash(self) -> str:
        meta = {"numerics": self.numerics} if self.numerics is not None else {}
        if self.schedule is not None:
            meta["schedule"] = self.schedule.key
        if self.meta_training is not None:
            meta["meta_training"] = self.meta_training.hash
        elif self.checkpoint_digest is not None:
            meta["checkpoint"] = self.checkpoint_digest
        return config_hash(self.entry.name, self.hparams, key_part(self.entry.code), **meta)

    @property
    def schedule(self) -> Any:
        """The spec's learning-rate schedule (:class:`~l2lbench.plugin.schedule.Schedule`) or None."""
        if self.spec.schedule is None:
            return None
        from l2lbench.plugin.schedule import Schedule

        return Schedule.from_config(self.spec.schedule)

    @property
    def non_default(self) -> dict[str, Any]:
        """The hyperparameters that differ from the factory's defaults."""
        return non_default(self.entry.factory, self.hparams)

    @property
    def display_name(self) -> str:
        """The name with its non-default hyperparameters and schedule, e.g.
        ``lion(lr=0.0001)``, ``adam(lr=0.003)+cosine``."""
        name = display_name(self.spec.label or self.entry.name, self.non_default)
        return name if self.schedule is None else f"{name}+{self.schedule.label}"

    @property
    def learned(self) -> bool:
        return capability(self.build(), "learned")

    def config(self) -> dict[str, Any]:
        config = {
            "entry": self.entry.name, "hparams": dict(self.hparams), "source": self.entry.source,
            "non_default": self.non_default, "display_name": self.display_name,
            "code": dict(self.entry.code), "protocol": codeid.PROTOCOL_VERSION,
        }
        if self.meta_training is not None:
            config["meta_training"] = self.meta_training.config()
        if self.checkpoint_digest is not None:
            config["checkpoint"] = {"path": str(self.checkpoint), "digest": self.checkpoint_digest}
        if self.numerics is not None:
            config["numerics"] = self.numerics
        if self.schedule is not None:
            config["schedule"] = self.schedule.config()
        return config

    def build(self) -> Any:
        """Call the factory and check the interface; errors name the plug-in."""
        try:
            optimizer = self.entry.factory(**self.hparams)
        except (ConfigError, ValueError) as exc:
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
        if self.schedule is not None:
            from l2lbench.plugin.schedule import Scheduled

            try:
                return Scheduled(optimizer, self.schedule)
            except ConfigError as exc:
                raise ConfigError(f"optimizer {self.name!r}: {exc}") from None
        return optimizer


class OptimizerRegistry:
    """Name -> entry, de-duplicated by name, with the providing source recorded.

    ``problems``: one line per installed entry point that cannot be used (warnings);
    ``notes``: one line per ``--plugin`` entry that replaces an installed entry point.
    """

    def __init__(self) -> None:
        self._entries: dict[str, OptimizerEntry] = {}
        self.problems: list[str] = []
        self.notes: list[str] = []

    @classmethod
    def default(
        cls, plugins: Iterable[str] = (), *, entry_points: bool = True, strict: bool = True
    ) -> "OptimizerRegistry":
        """Built-ins, then installed entry points, then ``--plugin`` modules.

        ``strict`` (the command line): a plug-in that cannot be used raises
        :class:`PluginError`. A worker process passes ``strict=False``: it rebuilds what
        the parent already checked, and a plug-in that fails only there must fail only its
        own runs, so its problem is recorded in ``problems`` instead.
        """
        registry = cls()
        for name, reference in BUILTIN_OPTIMIZERS.items():
            module = reference.partition(":")[0]
            factory = _LazyFactory(module, functools.partial(_import_attribute, reference))
            registry.add(OptimizerEntry(name, factory, BUILT_IN))
        if entry_points:
            registry.add_entry_points()
        for plugin in plugins:
            try:
                registry.load_plugin(plugin, check=strict)
            except PluginError as exc:
                if strict:
                    raise
                registry.problems.append(str(exc))
        return registry

    def add(self, entry: OptimizerEntry) -> bool:
        """Add ``entry``. Loading the same plug-in twice is a no-op; a ``--plugin`` entry
        replaces an entry point of its name (with a note) and clashes with anything else
        (``PluginError``); an entry point clashing with another entry is a problem."""
        existing = self._entries.get(entry.name)
        if existing is not None:
            if existing.factory is entry.factory or existing.source == entry.source:
                return False
            if entry.kind == PLUG_IN and existing.kind == ENTRY_POINT:
                self.notes.append(f"optimizer {entry.name!r}: using {entry.source} instead of the installed {existing.source}")
            elif entry.kind == PLUG_IN:
                raise PluginError(
                    f"{entry.source} defines optimizer {entry.name!r}, which the {existing.source} optimizer already "
                    "has (expected another name)"
                )
            else:
                self.problems.append(
                    f"optimizer name {entry.name!r} from {entry.source} clashes with the one from "
                    f"{existing.source}; keeping the latter (rename one of them)"
                )
                return False
        if not callable(entry.factory):
            raise PluginError(
                f"optimizer {entry.name!r} from {entry.source} is {entry.factory!r}, not a factory "
                "(expected a callable returning an object with init/update)"
            )
        self._entries[entry.name] = entry
        return True

    def add_entry_points(self) -> None:
        """Register the installed entry points without importing them (see _LazyFactory)."""
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else None
            source = entry_point_source(ep)
            loader = functools.partial(_load_entry_point, ep, source)
            self.add(OptimizerEntry(ep.name, _LazyFactory(ep.module, loader), source, ep.module, dist))

    def load_plugin(self, reference: str, *, check: bool = True) -> None:
        """Load ``path/to/file.py`` or ``package.module`` and add its ``OPTIMIZERS``.

        Raises:
            PluginError: it fails to import, has no table, names a non-callable, clashes
                with a built-in or another plug-in, or (``check``) a factory fails on its
                default hyperparameters.
        """
        module = _import_plugin_module(reference)
        table = getattr(module, "OPTIMIZERS", None)
        if not isinstance(table, Mapping) or not table:
            raise PluginError(
                f"plug-in {reference!r} defines no OPTIMIZERS table "
                "(expected OPTIMIZERS = {\"name\": factory, ...} at module level)"
            )
        for name, factory in table.items():
            if bad_name(name):
                raise PluginError(f"plug-in {reference!r} names an optimizer {bad_name(name)} ({NAME_EXPECTED})")
            self.add(OptimizerEntry(name, factory, f"{PLUG_IN} {reference}", module.__name__))
            if check and _builds_on_defaults(factory):
                try:
                    self.resolve(str(name)).build()
                except L2LBenchError as exc:
                    where = "" if reference in str(exc) else f"plug-in {reference!r}: "
                    raise PluginError(f"{where}{exc} (with its default hyperparameters)") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[OptimizerEntry]:
        return list(self._entries.values())

    def get(self, name: str) -> OptimizerEntry:
        from l2lbench.plugin.library import is_library_name, library_entry

        if name not in self._entries and is_library_name(name):  # torch:NAdam: made on first use
            self._entries[name] = library_entry(name)
        try:
            return self._entries[name]
        except KeyError:
            raise UsageError(f"unknown optimizer {name!r}; expected one of: {', '.join(self._entries)} "
                             "(or torch:<class>, e.g. torch:NAdam)") from None

    def resolve(self, spec: OptimizerSpec | str) -> ResolvedOptimizer:
        if isinstance(spec, str):
            spec = OptimizerSpec(spec)
        entry = self.get(spec.entry)
        if isinstance(entry.factory, _LazyFactory):
            entry.factory.load()  # an entry point asked for by name: import it now, or say why not
        hparams = resolve_hparams(entry.factory, dict(spec.hparams), spec.entry)
        return ResolvedOptimizer(spec, entry, hparams)


class _LazyFactory:
    """A factory imported on first use, so listing or loading the registry imports nothing
    heavy and an entry point nobody asks for is never imported."""

    def __init__(self, module: str, loader: Callable[[], Any]) -> None:
        self.module = module
        self._loader = loader
        self._target: Callable[..., Any] | None = None

    def load(self) -> Callable[..., Any]:
        if self._target is None:
            self._target = self._loader()
        return self._target

    def __call__(self, **kwargs: Any) -> Any:
        return self.load()(**kwargs)

    @property
    def __signature__(self):  # noqa: D401 - inspect.signature reads this
        return inspect.signature(self.load())

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self.load().__doc__


#: How long importing an installed plug-in may take before the command gives up on it.
ENTRY_POINT_IMPORT_S = 60.0


def entry_point_source(ep: importlib.metadata.EntryPoint) -> str:
    """How messages name an installed entry point: ``entry point 'mod:obj' of package 'pkg'``."""
    return f"{ENTRY_POINT} {ep.value!r}" + (f" of package {ep.dist.name!r}" if ep.dist else "")


def import_entry_point(ep: importlib.metadata.EntryPoint, source: str) -> Any:
    """The object ``ep`` names, imported now; a one-line PluginError naming it if that fails
    or takes longer than ``ENTRY_POINT_IMPORT_S`` (shared with the dataset and learner
    registries, :mod:`l2lbench.tasks.registry`)."""
    from l2lbench.execute.timeouts import RunTimeout, time_limit

    try:
        # time_limit lets an import in progress finish for up to twice its limit before it
        # interrupts; all of this is an import, so half the limit gives the limit.
        with time_limit(ENTRY_POINT_IMPORT_S / 2):
            return ep.load()
    except RunTimeout:
        raise PluginError(f"plug-in {ep.name!r} ({source}) did not finish importing within "
                          f"{ENTRY_POINT_IMPORT_S:g} s (expected a package that imports)") from None
    except (Exception, SystemExit) as exc:  # a broken third-party package: one line, exit 2
        raise PluginError(f"plug-in {ep.name!r} ({source}) failed to import: {type(exc).__name__}: {exc}") from None


def _load_entry_point(ep: importlib.metadata.EntryPoint, source: str) -> Callable[..., Any]:
    factory = import_entry_point(ep, source)
    if not callable(factory):
        raise PluginError(
            f"optimizer {ep.name!r} from {source} is {factory!r}, not a factory "
            "(expected a callable returning an object with init/update)"
        )
    return factory


def _builds_on_defaults(factory: Callable[..., Any]) -> bool:
    """Whether the factory can be called with no arguments (every parameter has a default)."""
    try:
        inspect.signature(factory).bind()
    except TypeError:
        return False
    except ValueError:  # no signature to read: try it
        return True
    return True


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
            # The text read here is both what runs and what the code fingerprint hashes;
            # a file edited since this process imported it is imported anew.
            source = path.read_text(encoding="utf-8")
            if module_name in sys.modules and executed_source(module_name) == source:
                return sys.modules[module_name]
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None:
                raise PluginError(f"plug-in file {reference!r} cannot be loaded as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                exec(compile(source, str(path), "exec"), module.__dict__)
            except BaseException:
                del sys.modules[module_name]
                raise
            remember_source(module_name, source)
            return module
        return importlib.import_module(reference)
    except PluginError:
        raise
    except (Exception, SystemExit) as exc:  # sys.exit() at import must not end the benchmark
        raise PluginError(f"plug-in {reference!r} failed to import: {type(exc).__name__}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
