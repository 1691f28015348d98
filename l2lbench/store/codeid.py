"""Code identity: which code produced a stored run, so that changed code is never served
old numbers.

Two parts enter every run's key (see :func:`l2lbench.spec.optimizer.config_hash`):

* a **fingerprint of the optimiser's code**: SHA-256 of its module's source with comments,
  docstrings, blank lines and formatting removed (the source is parsed with :mod:`ast`, its
  docstrings dropped, and written back with :func:`ast.unparse`), so a comment-only edit
  keeps the key and any change to what the code does gives a new one. Which source counts:
  for a ``--plugin`` file, that file (the exact text that was executed); for an installed
  entry point, its module plus the distribution's name and version; for a built-in, its
  module under ``optimizers/``. Modules that a plug-in imports are not part of it.
* :data:`PROTOCOL_VERSION`, the version of what the harness computes around an optimiser.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import sys
from typing import Any, Mapping

#: Bump whenever the harness changes what a run computes for the same spec: batch order,
#: learner initialisation, seed derivation, evaluation, meta-training's algorithm or random
#: draws. Stored runs of another protocol are then neither skipped nor reported as current.
#: 1: the first keyed protocol (l2lbench 0.1: batch schedules and initialisations from
#:    derive_seed(task hash, seed, purpose); evaluation on the full test split every
#:    eval_every steps and at the last step; MTL2L dropout from Philox4x32-10 streams;
#:    every run and meta-training on one torch thread, l2lbench.execute.parallel.RUN_THREADS).
#: 2: three splits: the last sixth of every training split is the validation split, which
#:    learners and meta-training no longer train on; runs record validation curves, and a
#:    seed diverges on its train or validation loss, never on its test loss.
PROTOCOL_VERSION = 2

# Source text of plug-in files as executed, by module name (see remember_source).
_EXECUTED: dict[str, str] = {}


def source_fingerprint(source: str) -> str:
    """16 hex digits identifying what ``source`` does, blind to comments and docstrings.

    >>> source_fingerprint("x = 1  # one") == source_fingerprint('"Doc."\\nx = (1)\\n')
    True
    >>> source_fingerprint("x = 1") == source_fingerprint("x = 2")
    False
    """
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                # A body must not end up empty: `pass` stands where a lone docstring was.
                node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()[:16]


def remember_source(module_name: str, source: str) -> None:
    """Record the text a plug-in module was executed from (its fingerprint's source)."""
    _EXECUTED[module_name] = source


def executed_source(module_name: str) -> str | None:
    """The text a plug-in module was executed from, if it was (see remember_source)."""
    return _EXECUTED.get(module_name)


def module_source(module_name: str) -> str | None:
    """The source of ``module_name``: as executed for plug-in files, else read from its
    file (without importing it); None where there is none (a C extension, a REPL)."""
    if module_name in _EXECUTED:
        return _EXECUTED[module_name]
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None) if module is not None else None
    if path is None:
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            return None
        path = spec.origin if spec is not None and spec.has_location else None
    if not path or not str(path).endswith(".py"):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def code_identity(module_name: str | None, distribution: str | None = None) -> dict[str, Any]:
    """What identifies an optimiser's code: ``fingerprint`` (None if the source cannot be
    read), ``module`` and, for an installed package, ``distribution`` ("name version")."""
    source = module_source(module_name) if module_name else None
    try:
        fingerprint = source_fingerprint(source) if source is not None else None
    except SyntaxError:  # a file changed on disk into something else since it was imported
        fingerprint = None
    identity: dict[str, Any] = {"fingerprint": fingerprint, "module": module_name}
    if distribution:
        identity["distribution"] = distribution
    return identity


def plugin_code(module_name: str) -> dict[str, Any]:
    """What keys the code of a third-party spec class (a dataset or learner plug-in): the
    fingerprint of its module and, when an installed package provides it, the package's
    name and version."""
    identity = code_identity(module_name, _distribution(module_name.split(".")[0], tuple(sys.path)))
    return {"fingerprint": identity["fingerprint"], "distribution": identity.get("distribution")}


_DISTRIBUTIONS: dict[tuple[str, ...], Mapping[str, list[str]]] = {}


def _distribution(top_level: str, path: tuple[str, ...]) -> str | None:
    """"name version" of the installed package that provides ``top_level``, if one does
    (the table is read once per ``sys.path``: reading it scans every installed package)."""
    if path not in _DISTRIBUTIONS:
        _DISTRIBUTIONS.clear()
        _DISTRIBUTIONS[path] = importlib.metadata.packages_distributions()
    names = _DISTRIBUTIONS[path].get(top_level)
    if not names:
        return None
    try:
        return f"{names[0]} {importlib.metadata.version(names[0])}"
    except importlib.metadata.PackageNotFoundError:
        return None


def key_part(identity: Mapping[str, Any], protocol: Any = None) -> dict[str, Any]:
    """The part of a code identity that enters the results key, with the protocol version
    (the current one unless given, e.g. a stored run's): not where the code lives (moving a
    plug-in file keeps its runs), only what it is."""
    return {"fingerprint": identity.get("fingerprint"), "distribution": identity.get("distribution"),
            "protocol": PROTOCOL_VERSION if protocol is None else protocol}
