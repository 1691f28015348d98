"""Learned optimisers: meta-parameters (an ``nn.Module``) plus a per-run update rule.

A learned plug-in is an ordinary optimiser plug-in (``init``/``update``, see
:mod:`l2lbench.plugin.base`) with ``learned = True`` and two more members:

* ``init_meta(*, generator) -> nn.Module``: fresh meta-parameters (and fixed buffers),
  drawn only from ``generator`` so that a meta-training seed reproduces them;
* ``with_meta(module)``: the same rule bound to those meta-parameters (a new object).

``update`` reads the bound module's tensors and keeps every per-run quantity (LSTM hidden
and cell states, running averages) in the run's ``state``; the module itself never
changes during a run. That is what lets one implementation of meta-training
(:mod:`l2lbench.execute.metatrain`) serve every learned plug-in, lets the runner ``vmap`` a
meta-trained optimiser over seeds, and lets a checkpoint be just ``module.state_dict()``.

Meta-training switches the module to ``train()`` mode (MTL2L's hypernetwork dropout is
active only then); the runner and the adapter use ``eval()`` mode.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from l2lbench.errors import UsageError
from l2lbench.plugin.base import Optimizer, Params, capability


class LearnedOptimizer(Optimizer):
    """Base class for learned plug-ins written as frozen dataclasses.

    Subclasses declare their hyperparameters as dataclass fields plus a last field
    ``meta: nn.Module | None = None`` (compare=False) and implement ``init_meta``,
    ``init`` and ``update``.
    """

    learned: ClassVar[bool] = True

    def init_meta(self, *, generator: torch.Generator) -> nn.Module:
        raise NotImplementedError

    def with_meta(self, meta: nn.Module) -> "LearnedOptimizer":
        """This rule bound to ``meta`` (a new object; ``self`` is unchanged)."""
        return dataclasses.replace(self, meta=meta)  # type: ignore[type-var]

    @property
    def module(self) -> nn.Module:
        """The bound meta-parameters; a clear error when there are none yet."""
        meta = getattr(self, "meta", None)
        if meta is None:
            raise UsageError(
                f"learned optimizer {type(self).__name__} has no meta-parameters yet: meta-train it "
                "(l2lbench meta-train) or load a checkpoint (l2lbench run --checkpoint NAME=PATH)"
            )
        return meta


def is_learned(optimizer: Any) -> bool:
    return capability(optimizer, "learned")


def bind_fresh(optimizer: Any, seed: int = 0) -> Any:
    """A learned plug-in bound to fresh meta-parameters in ``eval`` mode (others unchanged)."""
    if not is_learned(optimizer) or getattr(optimizer, "meta", None) is not None:
        return optimizer
    return optimizer.with_meta(optimizer.init_meta(generator=torch.Generator().manual_seed(seed)).eval())


def flatten_coordinates(tree: Params, lead: int = 0) -> Tensor:
    """All tensors of ``tree`` as one flat vector of coordinates, in the tree's key order;
    the first ``lead`` dimensions (e.g. stacked seeds) are kept: ``(..., coordinates)``.

    A tree of one tensor (the runner hands coordinatewise optimisers one flat vector) gives
    a view of it, not a copy: treat the result as read-only.
    """
    if len(tree) == 1:
        v = next(iter(tree.values()))
        return v.reshape(*v.shape[:lead], -1)
    return torch.cat([v.reshape(*v.shape[:lead], -1) for v in tree.values()], dim=lead)


def unflatten_coordinates(flat: Tensor, like: Mapping[str, Tensor | torch.Size]) -> Params:
    """Split ``(..., coordinates)`` back into views shaped like ``like`` (tensors or shapes),
    keeping the leading dimensions (inverse of the above)."""
    out, start = {}, 0
    for name, v in like.items():
        shape = v.shape if isinstance(v, Tensor) else torch.Size(v)
        n = shape.numel()
        out[name] = flat[..., start : start + n].view(*flat.shape[:-1], *shape)
        start += n
    return out


def preprocess_gradients(grad: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al. (2016), Appendix A: each coordinate becomes two features.

    .. math::
        g \\to (\\log|g| / p,\\ \\operatorname{sgn} g) \\text{ if } |g| \\ge e^{-p}
        \\text{ else } (-1,\\ e^{p} g)

    Args:
        grad: gradient coordinates, any shape.
        p: the scale parameter (10 in both papers).

    Returns:
        ``grad.shape + (2,)``.

    >>> preprocess_gradients(torch.tensor([1.0, -1.0, 0.0])).tolist()
    [[0.0, 1.0], [0.0, -1.0], [-1.0, 0.0]]
    """
    magnitude = grad.abs()
    large = magnitude >= math.exp(-p)
    # The clamp keeps log() finite on the branch torch.where discards, so gradients
    # through this function (conformance checks differentiate it) never become NaN.
    log_part = torch.where(large, torch.log(magnitude.clamp(min=math.exp(-p))) / p, -torch.ones_like(grad))
    sign_part = torch.where(large, torch.sign(grad), grad * math.exp(p))
    return torch.stack([log_part, sign_part], dim=-1)


def functorch_active() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``) is tracing this call: the
    in-place and native forms of the learned optimisers (:mod:`l2lbench.fastpath`) then
    give way to plain ones."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if active is None else bool(active())


def uniform_(tensor: Tensor, bound: float, generator: torch.Generator) -> Tensor:
    """In-place U(-bound, bound) from ``generator`` (initialisation helper)."""
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)
