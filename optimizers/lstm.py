"""The coordinatewise LSTM optimiser of Andrychowicz et al. (2016), "Learning to learn by
gradient descent by gradient descent" (the cyan curves of Kuo et al. 2020, Table 1 left).

One small LSTM is shared by every learner coordinate: the |theta| coordinates are the rows
of one batch, each with the two preprocessed gradient features of
:func:`~l2lbench.optim.learned.preprocess_gradients` (p = 10) as input. Per layer, with
gates in PyTorch's order (input, forget, cell, output)::

    [i; f; a; o] = W [x; h_{t-1}] + b
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(a)
    h_t = sigmoid(o) * tanh(c_t)

and the learner moves by ``theta <- theta + output_scale * out`` (output_scale 0.1).

Choices where the papers are silent, following the authors' code (the default, ``head =
"authors"``): layer 1 has ``hidden`` (20) units; the last layer has a single unit whose
hidden state *is* the output, with no separate head; layer 1's forget-gate bias is offset
by +1 and its input-gate bias by -1. ``head = "linear"`` is the textbook variant: every
layer has ``hidden`` units and a linear layer (hidden -> 1) reads the last one. Weights and
biases start from PyTorch's ``nn.LSTMCell`` initialisation, U(-1/sqrt(H), 1/sqrt(H)) with
H the layer's hidden size, the bias being the sum of LSTMCell's two bias vectors.

Per-run state (hidden and cell states of each layer, one row per coordinate) lives in
:class:`LSTMState`; the meta-parameters never change during a run. Learner gradients are
inputs, not functions of the meta-parameters: meta-training has no second-order terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from l2lbench.optim.base import Params, StepContext
from l2lbench.optim.learned import (
    LearnedOptimizer,
    flatten_coordinates,
    preprocess_gradients,
    uniform_,
    unflatten_coordinates,
)
from l2lbench.optim.validate import check_range

HEADS = ("authors", "linear")


class LSTMState(NamedTuple):
    # Per layer, (units, coordinates): units first, so that each gate of the fused gate
    # matrix is a contiguous block of rows and element-wise work runs on contiguous memory.
    hidden: tuple[Tensor, ...]
    cell: tuple[Tensor, ...]


class CoordinatewiseLSTM(nn.Module):
    """The meta-parameters: per layer a fused gate matrix ``[W U]`` and a bias."""

    def __init__(self, sizes: list[int], head: str) -> None:
        super().__init__()
        self.sizes = sizes  # [inputs, units of layer 1, ..., units of the last layer]
        # (4 units, inputs + units): nn.LSTMCell's weight_ih and weight_hh side by side.
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(4 * n_out, n_in + n_out)) for n_in, n_out in zip(sizes, sizes[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(4 * n_out)) for n_out in sizes[1:])
        self.head = nn.Linear(sizes[-1], 1) if head == "linear" else None

    @property
    def units(self) -> list[int]:
        return self.sizes[1:]


def lstm_layer(x: Tensor, h: Tensor, c: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM cell step for a batch of columns (gates i, f, a, o as in ``nn.LSTMCell``).

    Args:
        x: inputs, (features, coordinates).
        h, c: hidden and cell state, (units, coordinates).
        weight: (4 units, features + units); bias: (4 units,).
    """
    gates = torch.addmm(bias.unsqueeze(1), weight, torch.cat([x, h], dim=0))
    i, f, a, o = gates.chunk(4, dim=0)  # contiguous row blocks, not strided column slices
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(a)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


@dataclass(frozen=True)
class LSTMOptimizer(LearnedOptimizer):
    """Coordinatewise LSTM optimiser (hyperparameters; meta-parameters bound via ``meta``)."""

    hidden: int = 20
    layers: int = 2
    preprocess_p: float = 10.0
    output_scale: float = 0.1
    head: str = "authors"
    meta: CoordinatewiseLSTM | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, int) or self.hidden < 1:
            raise ValueError(f"invalid hidden: {self.hidden!r} (expected a positive integer)")
        if not isinstance(self.layers, int) or self.layers < 1:
            raise ValueError(f"invalid layers: {self.layers!r} (expected a positive integer)")
        check_range("preprocess_p", self.preprocess_p, 0.0, low_open=True)
        check_range("output_scale", self.output_scale, 0.0, low_open=True)
        if self.head not in HEADS:
            raise ValueError(f"invalid head: {self.head!r} (expected one of {', '.join(HEADS)})")

    def init_meta(self, *, generator: torch.Generator) -> CoordinatewiseLSTM:
        last = 1 if self.head == "authors" else self.hidden
        sizes = [2] + [self.hidden] * (self.layers - 1) + [last]
        module = CoordinatewiseLSTM(sizes, self.head)
        for weight, bias, units in zip(module.weights, module.biases, module.units):
            bound = 1 / math.sqrt(units)
            uniform_(weight, bound, generator)
            with torch.no_grad():  # LSTMCell has two bias vectors; their sum is the bias
                bias.copy_(torch.empty_like(bias).uniform_(-bound, bound, generator=generator)
                           + torch.empty_like(bias).uniform_(-bound, bound, generator=generator))
        with torch.no_grad():
            first, n = module.biases[0], module.units[0]
            first[0:n] -= 1.0  # input gate: start by writing little into the cell
            first[n : 2 * n] += 1.0  # forget gate: start by remembering
        if module.head is not None:
            bound = 1 / math.sqrt(self.hidden)
            uniform_(module.head.weight, bound, generator)
            uniform_(module.head.bias, bound, generator)
        return module

    def init(self, params: Params, *, generator: torch.Generator | None = None) -> LSTMState:
        # The state lives in the meta-parameters' dtype: it is the LSTM's own activations.
        weight = self.module.weights[0]
        coordinates = sum(v.numel() for v in params.values())
        device = next(iter(params.values())).device
        zeros = tuple(torch.zeros(n, coordinates, dtype=weight.dtype, device=device) for n in self.module.units)
        return LSTMState(hidden=zeros, cell=zeros)

    def update(self, grads: Params, state: LSTMState, params: Params, context: StepContext) -> tuple[Params, LSTMState]:
        module = self.module
        dtype = module.weights[0].dtype
        x = preprocess_gradients(flatten_coordinates(grads).to(dtype), self.preprocess_p).movedim(-1, 0)
        hidden, cell = [], []
        for weight, bias, h, c in zip(module.weights, module.biases, state.hidden, state.cell):
            x, c = lstm_layer(x, h, c, weight, bias)
            hidden.append(x)
            cell.append(c)
        out = module.head(x.t()).t() if module.head is not None else x  # (1, coordinates)
        step = self.output_scale * out.squeeze(0)
        flat = flatten_coordinates(params)
        new_params = unflatten_coordinates(flat + step.to(flat.dtype), params)
        return new_params, LSTMState(tuple(hidden), tuple(cell))


def lstm(
    hidden: int = 20, layers: int = 2, preprocess_p: float = 10.0, output_scale: float = 0.1, head: str = "authors"
) -> LSTMOptimizer:
    """Coordinatewise LSTM optimiser (Andrychowicz et al. 2016); learned, meta-train it first."""
    return LSTMOptimizer(hidden=hidden, layers=layers, preprocess_p=preprocess_p, output_scale=output_scale, head=head)
