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

Speed: the step is dominated by the first layer's 80 x 22 gate matrix per coordinate, so
each form of a layer writes it once and works on it in place. :func:`lstm_layer` is the
straightforward reference; :func:`lstm_layer_inplace` serves meta-test (autograd off) and
:func:`lstm_layer_fused` meta-training (a hand-written backward). Both equal the
reference to float rounding (``tests/test_learned_optimizers.py``). On a CPU the C kernels
of :mod:`l2lbench.native.lstm` come first: at meta-test the whole step in one pass over
the coordinates, the gates never written to memory; in meta-training each layer's forward
and backward fused per block of coordinates. The PyTorch forms serve CUDA, float64, and
machines where the kernels cannot be built. With several seeds the
runner hands ``update`` the seeds' coordinates side by side, a few seeds at a time
(``context_free``, ``max_coordinates``; see :mod:`l2lbench.metatest`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from l2lbench.native import lstm as native
from l2lbench.optim.base import Params, StepContext
from l2lbench.optim.learned import (
    LearnedOptimizer,
    flatten_coordinates,
    functorch_active,
    gradient_features,
    preprocess_rows,
    uniform_,
    unflatten_coordinates,
)
from l2lbench.optim.validate import check_range

HEADS = ("authors", "linear")
INITS = ("authors", "pytorch")
aten = torch.ops.aten


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

    The straightforward, differentiable form (meta-training uses it); see
    :func:`lstm_layer_inplace` for the meta-test form.

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


def _input_block(x: Tensor, h: Tensor) -> Tensor:
    """``[x; h; 1]``: a layer's inputs with the row of ones that carries the bias."""
    return torch.cat([x, h, x.new_ones(1, x.shape[1])], dim=0)


def _gate_matrix(x: Tensor | None, h: Tensor, weight: Tensor, bias: Tensor, block: Tensor | None = None) -> Tensor:
    """``W [x; h] + b``, (4 units, coordinates), as cheaply as the layer's shape allows.

    A wide layer (4 units at least its inputs, e.g. the 80 x 22 first layer) takes the
    bias as one more column of ``W`` against a row of ones under ``[x; h]``: one product
    that writes the gate matrix once (``addmm`` first copies the broadcast bias into all of
    it, then reads it back). A narrow layer (e.g. the authors' one-unit last layer: 4 x 21)
    adds ``W_h h`` with a second product instead of copying ``[x; h]``. ``block``: a wide
    layer's ``[x; h; 1]`` already built (:func:`first_layer_block`), used instead of ``x``.
    """
    if block is not None:
        return torch.mm(torch.cat([weight, bias.unsqueeze(1)], dim=1), block)
    n, features = h.shape[0], x.shape[0]
    if features + n > 4 * n:
        gates = torch.addmm(bias.unsqueeze(1), weight[:, :features], x)
        w_h = weight[:, features:]
        return _addcmul_(gates, w_h, h) if n == 1 else gates.addmm_(w_h, h)  # n = 1: an outer product
    return _gate_matrix(None, h, weight, bias, block=_input_block(x, h))


def first_layer_block(grad: Tensor, h: Tensor, p: float) -> Tensor:
    """``[features(grad); h; 1]``, a wide first layer's whole input with the row of ones
    that carries the bias, ``(2 + units + 1, coordinates)``, for meta-test (autograd off,
    no ``vmap``): the preprocessed gradient is written straight into its rows
    (:func:`~l2lbench.optim.learned.preprocess_rows` with ``out``) instead of into a
    stacked tensor that :func:`_gate_matrix` would copy again (0.3 -> 0.2 ms here)."""
    block = torch.empty((3 + h.shape[0], h.shape[1]), dtype=h.dtype, device=h.device)
    preprocess_rows(grad.to(h.dtype), p, out=block[:2])
    block[2:-1].copy_(h)
    block[-1].fill_(1.0)
    return block


def _activate_(gates: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sigmoid on the i, f, o rows and tanh on the a rows, in place; the four row blocks."""
    i, f, a, o = gates.split(n, dim=0)
    gates[: 2 * n].sigmoid_()
    a.tanh_()
    o.sigmoid_()
    return i, f, a, o


def lstm_layer_inplace(
    x: Tensor | None, h: Tensor, c: Tensor, weight: Tensor, bias: Tensor, *, block: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`lstm_layer` for meta-test: the same numbers (to float rounding), fewer passes
    over memory and fewer allocations. Not differentiable: call it with autograd off.

    The gate matrix is one product (see :func:`_gate_matrix`), the activations are applied
    to it in place, the cell update is one ``addcmul``, and the new cell and hidden states
    go into one compact ``(2 units, coordinates)`` block, so the gate matrix is freed at
    once and the next layer or step reuses that memory while it is still in cache (many
    seeds' states stay half the size of their gate matrices). Under ``vmap`` the states
    are written over the forget and output gate rows instead.

    Args:
        x: inputs, (features, coordinates); h, c: (units, coordinates).
        weight: (4 units, features + units); bias: (4 units,).
        block: instead of ``x``, the whole input ``[x; h; 1]`` of a wide layer, as
            :func:`first_layer_block` builds it.
    """
    n = h.shape[0]
    gates = _gate_matrix(x, h, weight, bias, block=block)
    i, f, a, o = _activate_(gates, n)
    if functorch_active():  # out= cannot write into a plain tensor under vmap
        c = f.mul_(c).add_(i * a)  # addcmul_ has no vmap batching rule
        return o.mul_(torch.tanh(c)), c
    states = torch.empty((2 * n, gates.shape[1]), dtype=gates.dtype, device=gates.device)
    c = torch.mul(f, c, out=states[n:]).addcmul_(i, a)
    return torch.tanh(c, out=states[:n]).mul_(o), c


def _addcmul_(t: Tensor, a: Tensor, b: Tensor) -> Tensor:
    # addcmul_ has no vmap batching rule (a slow fallback); under vmap, multiply then add.
    return t.add_(a * b) if functorch_active() else t.addcmul_(a, b)


class _FusedLSTMLayer(torch.autograd.Function):
    """:func:`lstm_layer` with a hand-written backward (see :func:`lstm_layer_fused`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, h: Tensor, c: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        gates = _gate_matrix(x, h, weight, bias)
        i, f, a, o = _activate_(gates, h.shape[0])
        c_new = torch.mul(f, c).addcmul_(i, a)
        h_new = torch.tanh(c_new).mul_(o)
        # x and h by reference (the previous layer or step keeps them anyway) and c_new,
        # the next step's c: of this step's own memory only the gate matrix is kept.
        ctx.save_for_backward(x, h, c, weight, gates, c_new)
        return h_new, c_new

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dh: Tensor, dc: Tensor) -> tuple[Tensor | None, ...]:
        x, h, c, weight, gates, c_new = ctx.saved_tensors
        n, features = h.shape[0], x.shape[0]
        i, f, a, o = gates.split(n, dim=0)
        tanh_c = torch.tanh(c_new)
        # Gradients of the pre-activations, one block per gate, each computed in its block:
        # h' = o tanh(c'), c' = f c + i a.
        d_gates = torch.empty_like(gates)
        d_i, d_f, d_a, d_o = d_gates.split(n, dim=0)
        aten.sigmoid_backward.grad_input(torch.mul(dh, tanh_c, out=d_o), o, grad_input=d_o)
        d_c = torch.mul(dh, o)
        aten.tanh_backward.grad_input(d_c, tanh_c, grad_input=d_c).add_(dc)
        aten.sigmoid_backward.grad_input(torch.mul(d_c, a, out=d_i), i, grad_input=d_i)
        aten.sigmoid_backward.grad_input(torch.mul(d_c, c, out=d_f), f, grad_input=d_f)
        aten.tanh_backward.grad_input(torch.mul(d_c, i, out=d_a), a, grad_input=d_a)
        need_x, need_h, need_c, need_w, need_b = ctx.needs_input_grad
        d_x = weight[:, :features].t().mm(d_gates) if need_x else None
        d_h = weight[:, features:].t().mm(d_gates) if need_h else None
        d_w = d_b = None
        if need_w or need_b:
            # One product for both: the bias gradient is the column against a row of ones.
            # Written as ([x; h; 1] d_gates^T)^T: the same sums over the coordinates, but BLAS
            # splits this orientation's long reduction across threads (2x faster here).
            d_wb = _input_block(x, h).mm(d_gates.t()).t()
            d_w, d_b = d_wb[:, :-1], d_wb[:, -1]
        return d_x, d_h, d_c.mul_(f) if need_c else None, d_w, d_b


def lstm_layer_fused(x: Tensor, h: Tensor, c: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`lstm_layer` for meta-training: the same forward (one gate product, activations
    in place) and a hand-written backward that writes the four gates' gradients into one
    matrix with ATen's fused sigmoid/tanh derivatives, instead of autograd's graph of a
    dozen element-wise nodes whose gate gradients are concatenated again at the end.
    Per step it keeps only the activated gate matrix of its own (x, h, c_{t-1} and c_t
    are kept by their neighbours anyway; ``tanh(c_t)`` and ``[x; h; 1]`` are recomputed):
    about 40% less memory than autograd's graph of :func:`lstm_layer` (unroll 20 on the
    paper's MLP: about 200 MB less at the peak).

    First-order only (no gradient of the gradient). Under ``torch.func`` transforms
    (``vmap``, ``grad``) it is :func:`lstm_layer` itself.
    """
    if functorch_active():
        return lstm_layer(x, h, c, weight, bias)
    if native.layer_applies(x, h, c, weight, bias):  # on a CPU: the same two passes in C
        return native.lstm_layer(x, h, c, weight, bias)
    return _FusedLSTMLayer.apply(x, h, c, weight, bias)


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

        With autograd on (meta-training, the conformance checks) this is the
        straightforward differentiable form; with autograd off (meta-test) the in-place
        form, equal to float rounding (``tests/test_learned_optimizers.py`` compares them).
        """
        module = self.module
        differentiable = torch.is_grad_enabled()
        grad = flatten_coordinates(grads).to(module.weights[0].dtype)
        flat = flatten_coordinates(params)
        biases = [module.bias(k) for k in range(len(module.weights))]
        if native.applies(grad, flat, module.weights):  # meta-test on a CPU: one fused pass
            new_flat, hidden, cell = native.lstm_step(
                grad, flat, state.hidden, state.cell, module.weights, biases,
                preprocess_p=self.preprocess_p, output_scale=self.output_scale, head=module.head,
            )
            return unflatten_coordinates(new_flat, params), LSTMState(hidden, cell)
        hidden, cell = [], []
        layers = list(zip(module.weights, biases, state.hidden, state.cell))
        if differentiable or functorch_active():
            x = gradient_features(grad, self.preprocess_p)
        else:  # meta-test: the first layer reads its whole input from one block
            weight, bias, h, c = layers.pop(0)
            block = first_layer_block(grad, h, self.preprocess_p)
            x, c = lstm_layer_inplace(None, h, c, weight, bias, block=block)
            hidden.append(x)
            cell.append(c)
        layer = lstm_layer_fused if differentiable else lstm_layer_inplace
        for weight, bias, h, c in layers:
            x, c = layer(x, h, c, weight, bias)
            hidden.append(x)
            cell.append(c)
        out = (module.head(x.t()).t() if module.head is not None else x).squeeze(0)  # (coordinates,)
        if differentiable:
            new_flat = flat + (self.output_scale * out).to(flat.dtype)
        else:
            new_flat = torch.add(flat, out.to(flat.dtype), alpha=self.output_scale)
        return unflatten_coordinates(new_flat, params), LSTMState(tuple(hidden), tuple(cell))


def lstm(
    hidden: int = 20,
    layers: int = 2,
    preprocess_p: float = 10.0,
    output_scale: float = 0.1,
    head: str = "authors",
    init_scheme: str = "authors",
) -> LSTMOptimizer:
    """Coordinatewise LSTM optimiser (Andrychowicz et al. 2016); learned, meta-train it first."""
    return LSTMOptimizer(
        hidden=hidden, layers=layers, preprocess_p=preprocess_p, output_scale=output_scale, head=head, init_scheme=init_scheme
    )
