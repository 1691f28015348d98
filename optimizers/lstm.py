"""The coordinatewise LSTM optimiser of Andrychowicz et al. (2016), "Learning to learn by
gradient descent by gradient descent" (the cyan curves of Kuo et al. 2020, Table 1 left).

One small LSTM is shared by every learner coordinate: the |theta| coordinates are the rows
of one batch, each with the two preprocessed gradient features of
:func:`~l2lbench.plugin.learned.preprocess_gradients` (p = 10) as input. Per layer, with
gates in PyTorch's order (input, forget, cell, output)::

    [i; f; a; o] = W [x; h_{t-1}] + b
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(a)
    h_t = sigmoid(o) * tanh(c_t)

and the learner moves by ``theta <- theta + output_scale * out`` (output_scale 0.1).

Every choice and where it comes from (A: Andrychowicz et al. 2016; K: Kuo et al. 2020,
the paper; C: the authors' public code, Nic5472K/AutoML2020_ICML_MTL2L, file
``B001d_AutoML_LSTMoptimiser.py``; L: l2lbench's own):

* two layers, the gradient preprocessing with p = 10, the output scaled by 0.1 (A, K);
* layer 1 has ``hidden`` (20) units; the last layer has a single unit whose hidden state
  *is* the output, with no separate head (C; ``head = "authors"``, the default).
  ``head = "linear"`` is the textbook variant (L, after A's figure): every layer has
  ``hidden`` units and a linear layer (hidden -> 1) reads the last one;
* ``init_scheme = "authors"`` (the default, C): a layer with n units starts with weights and two
  bias vectors (the input and recurrent ``nn.Linear`` biases) drawn from
  U(-1/sqrt(4n), 1/sqrt(4n)), i.e. U(+-1/sqrt(80)) in layer 1 and U(+-0.5) in the one-unit
  layer 2; layer 1's input and forget gates have offsets of their own, starting at -1 and
  +1, that are separate meta-parameters. The meta-optimiser (Adam) is element-wise, so
  each of these terms takes its own Adam step, as in the authors' code: the effective bias
  of an input or forget gate moves up to three times as fast as a single bias would;
* ``init_scheme = "pytorch"`` (L, l2lbench before this choice was made to follow C): PyTorch's
  ``nn.LSTMCell`` initialisation, U(-1/sqrt(n), 1/sqrt(n)), about twice as wide, with the
  two bias draws summed into one meta-parameter and the -1/+1 offsets added into it;
* meta-gradients are first-order (A, K): learner gradients are data.

Per-run state (hidden and cell states of each layer, one row per coordinate) lives in
:class:`LSTMState`; the meta-parameters never change during a run. Learner gradients are
inputs, not functions of the meta-parameters: meta-training has no second-order terms.

Speed: :func:`lstm_layer` and the loop of :meth:`LSTMOptimizer.update` are the reference.
``update`` first asks :func:`l2lbench.fastpath.lstm.lstm_update` for a faster form of the
same step (in place at meta-test, a hand-written backward in meta-training, C kernels on a
CPU), equal to the reference to float rounding (``tests/test_fastpath.py``); with several
seeds the runner hands ``update`` the seeds' coordinates side by side, a few seeds at a
time (``context_free``, ``max_coordinates``; see :mod:`l2lbench.fastpath.seeds`). What
each form does and why: ``docs/performance.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2lbench.fastpath import lstm as fast
from l2lbench.plugin.base import Params, StepContext
from l2lbench.plugin.factory import from_dataclass
from l2lbench.plugin.learned import (
    LearnedOptimizer,
    flatten_coordinates,
    preprocess_gradients,
    uniform_,
    unflatten_coordinates,
)
from l2lbench.plugin.validate import check_range

HEADS = ("authors", "linear")
INITS = ("authors", "pytorch")


class LSTMState(NamedTuple):
    # Per layer, (units, coordinates): units first, so that each gate of the fused gate
    # matrix is a contiguous block of rows and element-wise work runs on contiguous memory.
    hidden: tuple[Tensor, ...]
    cell: tuple[Tensor, ...]


class CoordinatewiseLSTM(nn.Module):
    """The meta-parameters: per layer a fused gate matrix ``[W U]`` and its bias terms, and
    (``init_scheme = "authors"``) layer 1's input- and forget-gate offsets.

    ``biases[k]`` is ``(terms, 4 units)``: the terms are summed into the layer's bias
    (:meth:`bias`). They are separate rows, not one vector, because each takes its own
    step of the element-wise meta-optimiser, as separate ``nn.Linear`` biases do."""

    def __init__(self, sizes: list[int], head: str, bias_terms: int = 1, offsets: bool = False) -> None:
        super().__init__()
        self.sizes = sizes  # [inputs, units of layer 1, ..., units of the last layer]
        # (4 units, inputs + units): nn.LSTMCell's weight_ih and weight_hh side by side.
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(4 * n_out, n_in + n_out)) for n_in, n_out in zip(sizes, sizes[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(bias_terms, 4 * n_out)) for n_out in sizes[1:])
        # Rows: input gate, forget gate (layer 1 only).
        self.offsets = nn.Parameter(torch.empty(2, sizes[1])) if offsets else None
        self.head = nn.Linear(sizes[-1], 1) if head == "linear" else None

    @property
    def units(self) -> list[int]:
        return self.sizes[1:]

    def bias(self, layer: int) -> Tensor:
        """Layer ``layer``'s bias, (4 units,): its terms summed, plus the gate offsets."""
        bias = self.biases[layer].sum(dim=0)
        if layer == 0 and self.offsets is not None:  # the offsets cover the first two gates' rows
            bias = bias + F.pad(self.offsets.flatten(), (0, bias.numel() - self.offsets.numel()))
        return bias


def lstm_layer(x: Tensor, h: Tensor, c: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM cell step for a batch of columns (gates i, f, a, o as in ``nn.LSTMCell``).

    The reference form, differentiable; the faster forms that equal it to float rounding
    are in :mod:`l2lbench.fastpath.lstm`.

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

    # It flattens the coordinates itself; handed one flat vector, it skips that copy.
    coordinatewise: ClassVar[bool] = True
    # Seeds run as more coordinates of one update (it reads no context), at most 2**16 at a
    # time on a CPU: the gate matrix (80 floats per coordinate, 21 MB) then stays below
    # glibc's 32 MB mmap threshold, above which every step would fault in fresh pages.
    context_free: ClassVar[bool] = True
    max_coordinates: ClassVar[int | None] = 2**16

    hidden: int = 20
    layers: int = 2
    preprocess_p: float = 10.0
    output_scale: float = 0.1
    head: str = "authors"
    init_scheme: str = "authors"
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
        if self.init_scheme not in INITS:
            raise ValueError(f"invalid init_scheme: {self.init_scheme!r} (expected one of {', '.join(INITS)})")

    def init_meta(self, *, generator: torch.Generator) -> CoordinatewiseLSTM:
        last = 1 if self.head == "authors" else self.hidden
        sizes = [2] + [self.hidden] * (self.layers - 1) + [last]
        authors = self.init_scheme == "authors"
        module = CoordinatewiseLSTM(sizes, self.head, bias_terms=2 if authors else 1, offsets=authors)
        for weight, bias, units in zip(module.weights, module.biases, module.units):
            bound = 1 / math.sqrt(4 * units if authors else units)
            uniform_(weight, bound, generator)
            with torch.no_grad():  # two bias vectors (input and recurrent), as in nn.LSTMCell
                first = torch.empty(bias.shape[1]).uniform_(-bound, bound, generator=generator)
                second = torch.empty(bias.shape[1]).uniform_(-bound, bound, generator=generator)
                bias.copy_(torch.stack([first, second]) if authors else (first + second).unsqueeze(0))
        with torch.no_grad():
            n = module.units[0]
            # Input gate -1: start by writing little into the cell; forget gate +1: by remembering.
            offsets = torch.tensor([-1.0, 1.0]).repeat_interleave(n)
            if module.offsets is not None:
                module.offsets.copy_(offsets.view(2, n))
            else:
                module.biases[0][0, : 2 * n] += offsets
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
        """``theta + output_scale * LSTM(preprocess(grad))`` on the flat coordinates.

        The fast path (:func:`l2lbench.fastpath.lstm.lstm_update`) runs the step wherever
        one of its forms applies; the loop below is the reference.
        """
        module = self.module
        grad = flatten_coordinates(grads).to(module.weights[0].dtype)
        flat = flatten_coordinates(params)
        biases = [module.bias(k) for k in range(len(module.weights))]
        done = fast.lstm_update(
            grad, flat, state.hidden, state.cell, module.weights, biases,
            preprocess_p=self.preprocess_p, output_scale=self.output_scale, head=module.head,
        )
        if done is not None:
            new_flat, hidden, cell = done
            return unflatten_coordinates(new_flat, params), LSTMState(hidden, cell)
        x = preprocess_gradients(grad, self.preprocess_p).movedim(-1, 0)  # (2, coordinates)
        hidden, cell = [], []
        for weight, bias, h, c in zip(module.weights, biases, state.hidden, state.cell):
            x, c = lstm_layer(x, h, c, weight, bias)
            hidden.append(x)
            cell.append(c)
        out = (module.head(x.t()).t() if module.head is not None else x).squeeze(0)  # (coordinates,)
        new_flat = flat + (self.output_scale * out).to(flat.dtype)
        return unflatten_coordinates(new_flat, params), LSTMState(tuple(hidden), tuple(cell))


# The registry's factory: the fields carry the defaults (``meta`` is bound after
# meta-training and is never a hyperparameter).
lstm = from_dataclass(
    LSTMOptimizer, "Coordinatewise LSTM optimiser (Andrychowicz et al. 2016); learned, meta-train it first."
)
