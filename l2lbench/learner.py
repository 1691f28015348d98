"""A learner in functional form: parameters as a dict, loss as a pure function of them.

``torch.func.functional_call`` evaluates the architecture with any parameter dict, which
is what lets the runner ``vmap`` S seeds of one run and lets meta-training differentiate
through the optimiser's updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .optim.base import Params


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

    def init(self, generator: torch.Generator, device: torch.device | str = "cpu") -> Params:
        """Fresh parameters drawn on the CPU (identical on every device), then moved."""
        return {k: v.to(device) for k, v in default_init(self.module, generator).items()}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def logits(self, params: Params, inputs: Tensor) -> Tensor:
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
