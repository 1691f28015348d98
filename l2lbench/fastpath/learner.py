"""Faster forwards of a learner: plain ``torch.nn.functional`` calls instead of
``functional_call``, and S seeds' parameter sets as one stacked computation.

The reference is :class:`~l2lbench.execute.learner.FunctionalLearner`'s
``functional_call`` of the architecture, under ``vmap`` for stacked seeds. Both forms here
equal it to float rounding (``tests/test_fastpath.py``, ``tests/test_learner.py``). They
run only an ``nn.Sequential`` of the layers they know (:func:`stacked_forward_problem`);
any other architecture takes the reference, with one :class:`SlowPathWarning` that says
why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2lbench.plugin.base import Params

_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Identity)
_POOLING = (nn.MaxPool2d, nn.AvgPool2d)


class SlowPathWarning(UserWarning):
    """A computation takes its plain reference form, not the fast path (same numbers, slower)."""


def stacked_forward_problem(module: nn.Module) -> str | None:
    """Why :func:`sequential_forward` and :func:`stacked_forward` cannot run ``module``, or
    ``None`` when they can: an ``nn.Sequential`` of zero-padded convolutions, pooling and
    element-wise layers, then a flatten (from dim 1), then linear and element-wise layers
    (the MLP and CNN learners)."""
    if not isinstance(module, nn.Sequential):
        return f"{type(module).__name__} is not an nn.Sequential"
    flattened = False
    for name, layer in module.named_children():
        kind = type(layer).__name__
        if isinstance(layer, nn.Flatten):
            if flattened or layer.start_dim != 1 or layer.end_dim != -1:
                return f"layer {name} ({kind}) is a second flatten or does not flatten from dim 1"
            flattened = True
        elif isinstance(layer, nn.Linear):
            if not flattened:
                return f"layer {name} ({kind}) comes before the flatten"
        elif isinstance(layer, (nn.Conv2d, *_POOLING)):
            if flattened:
                return f"layer {name} ({kind}) comes after the flatten"
            if isinstance(layer, nn.Conv2d) and (layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
                return f"layer {name} ({kind}) pads other than with explicit zeros"
        elif not isinstance(layer, _ELEMENTWISE):
            return f"layer {name} ({kind}) is not a layer the stacked forward knows"
    return None if flattened else "it has no flatten"


def plain_sequential(module: nn.Module) -> bool:
    """Whether :func:`sequential_forward` and :func:`stacked_forward` can run ``module``
    (see :func:`stacked_forward_problem`)."""
    return stacked_forward_problem(module) is None


def sequential_forward(module: nn.Sequential, params: Params, inputs: Tensor) -> Tensor:
    """Logits ``(B, classes)`` of a :func:`plain_sequential` net with parameters ``params``,
    layer by layer with ``torch.nn.functional`` (``functional_call`` swaps every tensor
    into the module and back, which costs more than a small MLP's products)."""
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
