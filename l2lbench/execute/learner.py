"""A learner in functional form: parameters as a dict, loss as a pure function of them.

``torch.func.functional_call`` evaluates the architecture with any parameter dict, which
is what lets the runner ``vmap`` S seeds of one run and lets meta-training differentiate
through the optimiser's updates. That is the reference; for the architectures it knows
(the MLP and CNN learners) the fast path runs the same forward with plain
``torch.nn.functional`` calls, and S seeds as one stacked computation
(:mod:`l2lbench.fastpath.learner`); any other architecture says once, with a
:class:`~l2lbench.fastpath.learner.SlowPathWarning`, that it takes the reference.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from l2lbench import fastpath
from l2lbench.fastpath.learner import (
    SlowPathWarning,
    sequential_forward,
    stacked_forward,
    stacked_forward_problem,
)
from l2lbench.plugin.base import Params


def default_init(module: nn.Module, generator: torch.Generator) -> Params:
    """PyTorch's default initialisation of ``nn.Linear``/``nn.Conv2d``, from ``generator``.

    Same distributions and the same draw order as constructing the modules under
    ``torch.manual_seed``: weight ~ kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), then bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), layer by layer. The
    authors' MTL2L code meant to scale weights by 0.01 but never did, so this default is
    what produced the paper's figures.
    """
    params: Params = {}
    for prefix, layer in module.named_modules():
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            continue
        weight = torch.empty(layer.weight.shape)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        params[f"{prefix}.weight"] = weight
        if layer.bias is not None:
            fan_in = math.prod(layer.weight.shape[1:])
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            params[f"{prefix}.bias"] = torch.empty(layer.bias.shape).uniform_(-bound, bound, generator=generator)
    return params


@dataclass
class FunctionalLearner:
    """An architecture (on the meta device) plus pure ``init``/``logits``/``loss``."""

    module: nn.Module
    # Why the fast forwards cannot run this module (None: they run, ``plain``).
    slow_path_reason: str | None = field(init=False)
    plain: bool = field(init=False)
    _warned: bool = field(init=False, default=False, repr=False)

    def __post_init__(self) -> None:
        self.slow_path_reason = stacked_forward_problem(self.module)
        self.plain = self.slow_path_reason is None and fastpath.enabled()

    def init(self, generator: torch.Generator, device: torch.device | str = "cpu") -> Params:
        """Fresh parameters drawn on the CPU (identical on every device), then moved."""
        return {k: v.to(device) for k, v in default_init(self.module, generator).items()}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def logits(self, params: Params, inputs: Tensor) -> Tensor:
        if self.plain:
            return sequential_forward(self.module, params, inputs)
        return functional_call(self.module, params, (inputs,))

    def loss(self, params: Params, inputs: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy (log-softmax + negative log-likelihood), as in the paper."""
        return F.cross_entropy(self.logits(params, inputs), labels)

    def loss_and_correct(self, params: Params, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Summed loss and number of correct predictions (for chunked evaluation)."""
        logits = self.logits(params, inputs)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        correct = (logits.argmax(dim=-1) == labels).sum()
        return loss, correct

    def seed_losses(self, params: Params, inputs: Tensor, labels: Tensor) -> Tensor:
        """Mean losses ``(S,)`` of S seeds' parameters stacked on a leading dimension, each
        on its own minibatch (``inputs`` ``(S, B, ...)``, ``labels`` ``(S, B)``).

        The reference is :meth:`loss` under ``vmap``; where the fast path can run the
        module, :func:`~l2lbench.fastpath.learner.stacked_forward` (``bmm``, grouped
        convolution) instead. Otherwise it warns once why not.
        """
        if self.plain:
            logits = stacked_forward(self.module, params, inputs)  # (S, classes, B)
            return F.cross_entropy(logits, labels, reduction="none").mean(dim=1)
        if self.slow_path_reason is not None and fastpath.enabled() and not self._warned:
            self._warned = True
            warnings.warn(
                f"the learner's seeds run under torch.func.vmap, not the stacked fast path: {self.slow_path_reason}",
                SlowPathWarning, stacklevel=2,
            )
        return vmap(self.loss, randomness="error")(params, inputs, labels)

    def seed_gradients(self, params: Params, inputs: Tensor, labels: Tensor) -> tuple[Params, Tensor]:
        """Each seed's gradient of its own loss, and the losses ``(S,)``, for stacked
        ``params`` (see :meth:`seed_losses`); the results carry no graph.

        The seeds share no parameters, so the gradient of the *sum* of their losses with
        respect to seed s's parameters is exactly seed s's gradient: one plain backward
        pass gives all S, without the cost of transforming the loss with ``vmap(grad(...))``.
        """
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            losses = self.seed_losses(leaves, inputs, labels)
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return dict(zip(leaves, grads)), losses.detach()
