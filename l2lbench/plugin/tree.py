"""Minimal pytree helpers for optimiser states: dicts, tuples, NamedTuples and tensors.

Optimiser states are nested NamedTuples and ``dict[str, Tensor]``; these helpers give them
stable *named* leaves (``"mu/fc.weight"``) so that saving and loading match entries by name,
never by position.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

Leaf = Any


def _children(node: Any) -> list[tuple[str, Any]] | None:
    if isinstance(node, dict):
        return [(str(k), v) for k, v in node.items()]
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return [(name, getattr(node, name)) for name in node._fields]
    if isinstance(node, (tuple, list)):
        return [(str(i), v) for i, v in enumerate(node)]
    return None


def flatten_named(tree: Any, prefix: str = "") -> dict[str, Leaf]:
    """Named leaves of ``tree``: ``{"count": t, "mu/w": t, ...}`` in a stable order.

    >>> flatten_named({"a": 1, "b": (2, 3)})
    {'a': 1, 'b/0': 2, 'b/1': 3}
    """
    children = _children(tree)
    if children is None:
        return {prefix: tree}
    out: dict[str, Leaf] = {}
    for key, child in children:
        out.update(flatten_named(child, f"{prefix}/{key}" if prefix else key))
    return out


def unflatten_like(template: Any, leaves: dict[str, Leaf], prefix: str = "") -> Any:
    """Rebuild a tree shaped like ``template`` from named leaves.

    Raises:
        KeyError: a leaf the template needs is missing, naming it.
    """
    children = _children(template)
    if children is None:
        if prefix not in leaves:
            raise KeyError(f"missing state entry {prefix!r}")
        return leaves[prefix]
    rebuilt = {k: unflatten_like(v, leaves, f"{prefix}/{k}" if prefix else k) for k, v in children}
    if isinstance(template, dict):
        return {k: rebuilt[str(k)] for k in template}
    if hasattr(template, "_fields"):
        return type(template)(**rebuilt)
    return type(template)(rebuilt[str(i)] for i in range(len(template)))


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leafwise to ``tree`` and trees of the same structure."""
    children = _children(tree)
    if children is None:
        return fn(tree, *rest)
    keys = [k for k, _ in children]
    mapped = {}
    for i, (key, child) in enumerate(children):
        others = [(_children(r) or [])[i][1] for r in rest]
        mapped[key] = tree_map(fn, child, *others)
    if isinstance(tree, dict):
        return {k: mapped[str(k)] for k in tree}
    if hasattr(tree, "_fields"):
        return type(tree)(**mapped)
    return type(tree)(mapped[k] for k in keys)


def tensor_leaves(tree: Any) -> dict[str, torch.Tensor]:
    """The tensor leaves of ``tree`` by name (non-tensor leaves are skipped)."""
    return {k: v for k, v in flatten_named(tree).items() if isinstance(v, torch.Tensor)}


def tree_stack(trees: list[Any]) -> Any:
    """Stack same-structured trees leafwise along a new leading axis (one entry per seed)."""
    return tree_map(lambda *leaves: torch.stack(leaves), *trees)
