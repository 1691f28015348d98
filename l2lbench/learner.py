"""A learner in functional form: parameters as a dict, loss as a pure function of them.

``torch.func.functional_call`` evaluates the architecture with any parameter dict, which
is what lets the runner ``vmap`` S seeds of one run and lets meta-training differentiate
through the optimiser's updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

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
    plain: bool = field(init=False)  # a plain_sequential module: no functional_call needed

    def __post_init__(self) -> None:
        self.plain = plain_sequential(self.module)

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

        A :func:`plain_sequential` net runs as one batched computation (``bmm``, grouped
        convolution); anything else under ``vmap``.
        """
        if self.plain:
            logits = stacked_forward(self.module, params, inputs)  # (S, classes, B)
            return F.cross_entropy(logits, labels, reduction="none").mean(dim=1)
        return vmap(self.loss, randomness="error")(params, inputs, labels)

    def seed_gradients(self, params: Params, inputs: Tensor, labels: Tensor) -> tuple[Params, Tensor]:
        """Each seed's gradient of its own loss, and the losses ``(S,)``, for stacked
        ``params`` (see :meth:`seed_losses`); the results carry no graph.

        The seeds share no parameters, so the gradient of the *sum* of their losses with
        respect to seed s's parameters is exactly seed s's gradient: one plain backward
        pass gives all S, about half the cost of ``vmap(grad(loss))`` for the paper's MLP.
        """
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            losses = self.seed_losses(leaves, inputs, labels)
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return dict(zip(leaves, grads)), losses.detach()


_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Identity)
_POOLING = (nn.MaxPool2d, nn.AvgPool2d)


def plain_sequential(module: nn.Module) -> bool:
    """Whether :func:`sequential_forward` can run ``module``: an ``nn.Sequential`` of
    zero-padded convolutions, pooling and element-wise layers, then a flatten (from dim 1),
    then linear and element-wise layers (the MLP and CNN learners)."""
    if not isinstance(module, nn.Sequential):
        return False
    flattened = False
    for layer in module:
        if isinstance(layer, nn.Flatten):
            if flattened or layer.start_dim != 1 or layer.end_dim != -1:
                return False
            flattened = True
        elif isinstance(layer, nn.Linear):
            if not flattened:
                return False
        elif isinstance(layer, (nn.Conv2d, *_POOLING)):
            if flattened or (isinstance(layer, nn.Conv2d) and (layer.padding_mode != "zeros" or isinstance(layer.padding, str))):
                return False
        elif not isinstance(layer, _ELEMENTWISE):
            return False
    return flattened


def sequential_forward(module: nn.Sequential, params: Params, inputs: Tensor) -> Tensor:
    """Logits ``(B, classes)`` of a :func:`plain_sequential` net with parameters ``params``,
    layer by layer with ``torch.nn.functional`` (``functional_call`` costs more than the
    paper's MLP's products: it swaps every tensor into the module and back)."""
    x = inputs
    for name, layer in module.named_children():
        if isinstance(layer, nn.Flatten):
            x = x.flatten(1)
        elif isinstance(layer, nn.Linear):
            x = F.linear(x, params[f"{name}.weight"], params.get(f"{name}.bias"))
        elif isinstance(layer, nn.Conv2d):
            x = F.conv2d(x, params[f"{name}.weight"], params.get(f"{name}.bias"), layer.stride, layer.padding, layer.dilation, layer.groups)
        else:  # pooling, element-wise
            x = layer(x)
    return x


def stacked_forward(module: nn.Sequential, params: Params, inputs: Tensor) -> Tensor:
    """Logits of S parameter sets of a :func:`plain_sequential` net (stacked on dim 0),
    seed s on ``inputs[s]`` (``(S, B, ...)``), as ``(S, classes, B)``: the same numbers as
    S separate forward passes, to float rounding.

    Convolutions run as one convolution with S groups (the seeds folded into the
    channels). After the flatten, activations are kept features first, ``(S, F, B)``, so
    each linear layer is one ``baddbmm`` of ``(S, out, in)`` weights that writes its output
    and, in the backward pass, the weight gradients contiguously (examples first would
    leave the weight gradients transposed), and the loss's log-softmax runs along a
    strided class axis, vectorised over the examples, instead of along rows of 10.
    """
    x = inputs
    S, B = x.shape[:2]
    for name, layer in module.named_children():
        weight, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
        if isinstance(layer, nn.Flatten):
            x = x.flatten(2).transpose(1, 2)  # (S, F, B), a view
        elif isinstance(layer, nn.Linear):
            x = torch.bmm(weight, x) if bias is None else torch.baddbmm(bias.unsqueeze(2), weight, x)
        elif isinstance(layer, nn.Conv2d):
            folded = x.transpose(0, 1).flatten(1, 2)  # (B, S*C, H, W): seed s is channel group s
            y = F.conv2d(folded, weight.flatten(0, 1), None if bias is None else bias.flatten(),
                         layer.stride, layer.padding, layer.dilation, layer.groups * S)
            x = y.view(B, S, -1, *y.shape[2:]).transpose(0, 1)
        elif isinstance(layer, _POOLING):
            y = layer(x.flatten(0, 1))
            x = y.view(S, B, *y.shape[1:])
        else:  # element-wise
            x = layer(x)
    return x
