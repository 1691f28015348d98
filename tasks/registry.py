"""Which datasets and learners exist: a built-in table, plus installed entry points.

Each kind of task part has one :class:`SpecRegistry`: its built-in table (``DATASETS``,
``LEARNERS``: kind -> spec class, imported with the package) and an entry-point group
(``l2lbench.datasets``, ``l2lbench.learners``) through which an installed package adds
kinds, one entry point per spec class::

    [project.entry-points."l2lbench.datasets"]
    emnist-letters = "acme_data.emnist:EMNISTLettersSpec"

A config names a kind (``{kind = "emnist-letters", ...}``); the registry resolves it to the
class. Built-in kinds never touch entry-point metadata. An entry point is imported only
when its kind is asked for, and a plug-in that fails to import, names something other
than a frozen spec class, or whose class has another ``kind`` stops that lookup with one
line naming it (:class:`~l2lbench.errors.PluginError`); the others are unaffected. A kind
defined twice is refused: an entry point never replaces a built-in, and two installed
packages defining the same kind make it ambiguous, which stored results (keyed by kind
and fields, not by package) cannot afford. The import itself, its time limit and the way
messages name a plug-in are the optimiser registry's (:mod:`l2lbench.plugin.registry`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import sys
from typing import Any, Iterator, Mapping

from l2lbench.errors import PluginError


class SpecRegistry(Mapping[str, type]):
    """kind -> spec class: the built-ins, then the installed entry points of ``group``.

    A read-only mapping, so :func:`l2lbench.spec.base.build_spec` takes it as it takes a
    plain table: ``kind in registry`` and iterating list kinds without importing any
    plug-in; ``registry[kind]`` imports (once) and checks an entry point's class.

    Args:
        what: what a spec is, for messages (``"dataset"``).
        group: the entry-point group (``"l2lbench.datasets"``).
        builtins: the built-in table, kind -> class.
        base: the class every spec class of this registry subclasses.
    """

    def __init__(self, what: str, group: str, builtins: Mapping[str, type], base: type) -> None:
        self.what = what
        self.group = group
        self.base = base
        self._builtins = dict(builtins)
        # (kind, entry-point value, distribution) -> class: each plug-in imported and checked once
        self._loaded: dict[tuple[str, str, str | None], type] = {}
        self._scanned: tuple[tuple[str, ...], dict[str, list[importlib.metadata.EntryPoint]]] | None = None

    def _installed(self) -> dict[str, list[importlib.metadata.EntryPoint]]:
        """Installed entry points by name, read from package metadata once per ``sys.path``
        (reading it scans every installed package; a folder added to the path is seen)."""
        path = tuple(sys.path)
        if self._scanned is None or self._scanned[0] != path:
            found: dict[str, list[importlib.metadata.EntryPoint]] = {}
            for ep in importlib.metadata.entry_points(group=self.group):
                same = [e for e in found.get(ep.name, []) if e.value == ep.value]
                if not same:  # one package seen twice on sys.path is one definition
                    found.setdefault(ep.name, []).append(ep)
            self._scanned = (path, found)
        return self._scanned[1]

    def __contains__(self, kind: object) -> bool:
        return isinstance(kind, str) and (kind in self._builtins or kind in self._installed())

    def __iter__(self) -> Iterator[str]:
        yield from self._builtins
        yield from (name for name in self._installed() if name not in self._builtins)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, kind: str) -> type:
        if kind in self._builtins:
            return self._builtins[kind]
        eps = self._installed().get(kind)
        if not eps:
            raise KeyError(kind)
        from l2lbench.plugin.registry import entry_point_source

        if len(eps) > 1:
            sources = " and ".join(entry_point_source(ep) for ep in eps)
            raise PluginError(
                f"{self.what} {kind!r} is defined by {sources} (expected one definition per kind: "
                "uninstall or rename one)"
            )
        return self._load(eps[0])

    def _load(self, ep: importlib.metadata.EntryPoint) -> type:
        from l2lbench.plugin.registry import entry_point_source, import_entry_point

        key = (ep.name, ep.value, ep.dist.name if ep.dist else None)
        if key not in self._loaded:
            source = entry_point_source(ep)
            self._loaded[key] = self._checked(ep.name, import_entry_point(ep, source), source)
        return self._loaded[key]

    def _checked(self, kind: str, cls: Any, source: str) -> type:
        """``cls`` if it is a frozen dataclass subclassing ``base`` whose kind is ``kind``."""
        base = f"{self.base.__module__}.{self.base.__qualname__}"
        is_spec = isinstance(cls, type) and issubclass(cls, self.base) and dataclasses.is_dataclass(cls)
        if not (is_spec and cls.__dataclass_params__.frozen):
            raise PluginError(
                f"{self.what} {kind!r} ({source}) is {cls!r}, not a spec class "
                f"(expected a frozen dataclass subclassing {base})"
            )
        if getattr(cls, "kind", None) != kind:
            raise PluginError(
                f"{self.what} {kind!r} ({source}) is {cls.__name__} of kind {getattr(cls, 'kind', None)!r} "
                f"(expected kind = {kind!r}, the entry point's name, by which configs name it)"
            )
        return cls

    def problems(self) -> list[str]:
        """One line per installed entry point that cannot be used: it clashes with a built-in
        or another package, or fails to import or to check. Imports every plug-in."""
        from l2lbench.plugin.registry import entry_point_source

        lines = []
        for kind, eps in self._installed().items():
            if kind in self._builtins:
                lines += [
                    f"{self.what} {kind!r} from {entry_point_source(ep)} clashes with the built-in "
                    f"{self.what} of that name; keeping the built-in (rename the plug-in's kind)"
                    for ep in eps
                ]
                continue
            try:
                self[kind]
            except PluginError as exc:
                lines.append(str(exc))
        return lines
