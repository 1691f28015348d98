"""Faster forms of the coordinatewise LSTM step, for the LSTM optimiser and MTL2L.

The reference is :func:`l2lbench.optimizers.lstm.lstm_layer` with
:func:`~l2lbench.plugin.learned.preprocess_gradients`. Every form here equals it to float
rounding (``tests/test_fastpath.py``); :func:`lstm_update` picks one for a whole step:

* meta-test on a CPU (autograd off, float32): the C kernel's whole step in one pass over
  the coordinates, the gates never written to memory (:mod:`l2lbench.fastpath.native.lstm`);
* meta-test elsewhere: :func:`lstm_layer_inplace`, the gate matrix written once and
  worked on in place, the first layer reading its whole input from one block;
* meta-training: :func:`lstm_layer_fused`, the same forward with a hand-written backward
  (on a CPU, the C kernels' fused forward and backward);
* under ``vmap`` with autograd off: :func:`lstm_layer_inplace` in its vmap-safe form.

Under a ``torch.func`` transform with autograd on, and with ``L2LBENCH_FASTPATH=0``,
:func:`lstm_update` returns ``None`` and the caller runs its reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from l2lbench import fastpath
from l2lbench.fastpath.native import lstm as native
from l2lbench.plugin.learned import functorch_active, preprocess_gradients

aten = torch.ops.aten


def lstm_update(
    grad: Tensor,
    flat: Tensor,
    hidden: Sequence[Tensor],
    cell: Sequence[Tensor],
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    *,
    preprocess_p: float,
    output_scale: float,
    head: nn.Linear | None = None,
) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]] | None:
    """One step of a stack of coordinatewise LSTM layers by the fastest form that applies:
    ``(flat + output_scale * out, hidden, cell)``, or ``None`` where none does (then run
    the reference).

    Args:
        grad: the flat gradient in the layers' dtype, (coordinates,).
        flat: the flat parameters, (coordinates,).
        hidden, cell: per layer, (units, coordinates).
        weights: per layer ``[W U]``, (4 units, inputs + units); biases: (4 units,).
        head: a linear map (units -> 1) read from the last layer, else that layer has one
            unit whose hidden state is the output.
    """
    if not fastpath.enabled():
        return None
    differentiable = torch.is_grad_enabled()
    if differentiable and functorch_active():
        return None  # grad/jacrev of the update: the reference is what autograd needs
    if native.applies(grad, flat, weights):  # meta-test on a CPU: one fused pass
        return native.lstm_step(
            grad, flat, hidden, cell, weights, biases, preprocess_p=preprocess_p, output_scale=output_scale, head=head
        )
    new_hidden, new_cell = [], []
    layers = list(zip(weights, biases, hidden, cell))
    if differentiable or functorch_active():
        x = gradient_features(grad, preprocess_p)
    else:  # meta-test: the first layer reads its whole input from one block
        weight, bias, h, c = layers.pop(0)
        x, c = lstm_layer_inplace(None, h, c, weight, bias, block=first_layer_block(grad, h, preprocess_p))
        new_hidden.append(x)
        new_cell.append(c)
    layer = lstm_layer_fused if differentiable else lstm_layer_inplace
    for weight, bias, h, c in layers:
        x, c = layer(x, h, c, weight, bias)
        new_hidden.append(x)
        new_cell.append(c)
    out = (head(x.t()).t() if head is not None else x).squeeze(0)  # (coordinates,)
    if differentiable:
        new_flat = flat + (output_scale * out).to(flat.dtype)
    else:
        new_flat = torch.add(flat, out.to(flat.dtype), alpha=output_scale)
    return new_flat, tuple(new_hidden), tuple(new_cell)


def preprocess_rows(grad: Tensor, p: float = 10.0, *, out: Tensor | None = None) -> Tensor:
    """:func:`~l2lbench.plugin.learned.preprocess_gradients` with the feature axis second
    to last, for meta-test: ``(..., coordinates) -> (..., 2, coordinates)``.

    Equal to ``preprocess_gradients(grad, p).movedim(-1, -2)`` to float rounding (exactly at
    the threshold in float32), written as two clamps, a few passes over the coordinates
    instead of a dozen::

        log|g| / p  if |g| >= e^-p else -1   ==  log(max(|g|, e^-p)) / p
        sgn g       if |g| >= e^-p else e^p g  ==  clamp(e^p g, -1, 1)

    (a NaN gradient gives NaN features instead of ``(-1, NaN)``). It works in place on
    its own temporaries: use it on gradients that need no gradient themselves (the
    learner's gradients are data to a learned optimiser). Safe under ``vmap`` (without
    ``out``). ``out``, a ``(2, coordinates)`` tensor (e.g. the first rows of an LSTM
    layer's input block), receives the features instead of a new tensor.

    >>> preprocess_rows(torch.tensor([1.0, -1.0, 0.0])).tolist()
    [[0.0, 0.0, -1.0], [1.0, -1.0, 0.0]]
    """
    if out is not None:
        torch.clamp(grad.abs(), min=math.exp(-p), out=out[0]).log_().mul_(1.0 / p)
        torch.mul(grad, math.exp(p), out=out[1]).clamp_(-1.0, 1.0)
        return out
    log_part = grad.abs().clamp(min=math.exp(-p)).log_().mul_(1.0 / p)  # clamp_ has no vmap rule
    sign_part = (grad * math.exp(p)).clamp(-1.0, 1.0)
    return torch.stack([log_part, sign_part], dim=-2)


def gradient_features(grad: Tensor, p: float = 10.0) -> Tensor:
    """The preprocessed flat gradient as ``(2, coordinates)``, the layout the coordinatewise
    LSTMs read: :func:`preprocess_rows` (in place), unless the gradient itself needs a
    gradient (differentiating through the learner's gradient, as the conformance checks
    do), then :func:`~l2lbench.plugin.learned.preprocess_gradients`."""
    if grad.requires_grad:
        return preprocess_gradients(grad, p).movedim(-1, 0)
    return preprocess_rows(grad, p)


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
    (:func:`preprocess_rows` with ``out``) instead of into a stacked tensor that
    :func:`_gate_matrix` would copy again."""
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
    """:func:`~l2lbench.optimizers.lstm.lstm_layer` for meta-test: the same numbers (to
    float rounding), fewer passes over memory and fewer allocations. Not differentiable:
    call it with autograd off.

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
    """:func:`~l2lbench.optimizers.lstm.lstm_layer` with a hand-written backward (see
    :func:`lstm_layer_fused`)."""

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
            # splits this orientation's long reduction across threads.
            d_wb = _input_block(x, h).mm(d_gates.t()).t()
            d_w, d_b = d_wb[:, :-1], d_wb[:, -1]
        return d_x, d_h, d_c.mul_(f) if need_c else None, d_w, d_b


def lstm_layer_fused(x: Tensor, h: Tensor, c: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`~l2lbench.optimizers.lstm.lstm_layer` for meta-training: the same forward (one
    gate product, activations in place) and a hand-written backward that writes the four
    gates' gradients into one matrix with ATen's fused sigmoid/tanh derivatives, instead of
    autograd's graph of a dozen element-wise nodes whose gate gradients are concatenated
    again at the end. Per step it keeps only the activated gate matrix of its own (x, h,
    c_{t-1} and c_t are kept by their neighbours anyway; ``tanh(c_t)`` and ``[x; h; 1]``
    are recomputed), so it holds less memory than autograd's graph.

    First-order only (no gradient of the gradient). Under ``torch.func`` transforms
    (``vmap``, ``grad``) it is the reference itself. On a CPU in float32, the C kernels'
    form of the same two passes (:func:`l2lbench.fastpath.native.lstm.lstm_layer`).
    """
    if functorch_active():
        from l2lbench.optimizers.lstm import lstm_layer  # here: the reference imports this module

        return lstm_layer(x, h, c, weight, bias)
    if native.layer_applies(x, h, c, weight, bias):
        return native.lstm_layer(x, h, c, weight, bias)
    return _FusedLSTMLayer.apply(x, h, c, weight, bias)
