"""The coordinatewise LSTM in C (``lstm.c``), for the LSTM optimiser and MTL2L on a CPU:

* :func:`lstm_step`, a whole meta-test step in one pass over the coordinates instead of a
  dozen over the gate matrix;
* :func:`lstm_layer`, one differentiable layer for meta-training, forward and backward
  fused per block of coordinates.

Each has a condition (:func:`applies`, :func:`layer_applies`) under which
:func:`l2lbench.fastpath.lstm.lstm_update` uses it instead of the PyTorch forms (timings:
``docs/performance.md``)."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from l2lbench.fastpath.native.build import load
from l2lbench.plugin.learned import functorch_active

_POINTER, _I64, _INT, _FLOAT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
# The C interface, version ABI_VERSIONS['lstm'] (native/build.py; l2l_abi_version() in lstm.c):
# change a signature here, there and in the C file together.
_SIGNATURES = {
    "l2l_lstm_step": (
        [_I64, _INT] + [_POINTER] * 8 + [_FLOAT, _POINTER, _FLOAT, _POINTER, _POINTER, _FLOAT, _INT], None
    ),
    "l2l_lstm_layer_forward": ([_I64, _I64, _I64] + [_POINTER] * 8 + [_INT], None),
    "l2l_lstm_layer_backward": ([_I64, _I64, _I64] + [_POINTER] * 12 + [_INT], _INT),
}


def _kernel(name: str = "l2l_lstm_step") -> ctypes._CFuncPtr:
    function = getattr(load("lstm"), name)
    if function.argtypes is None:
        function.argtypes, function.restype = _SIGNATURES[name]
    return function


def _pointers(tensors: Sequence[Tensor]) -> ctypes.Array:
    return (_POINTER * len(tensors))(*(t.data_ptr() for t in tensors))


def applies(grad: Tensor, flat_params: Tensor, weights: Sequence[Tensor]) -> bool:
    """Whether :func:`lstm_step` can run this step: autograd off and :func:`_runs_here`."""
    return not torch.is_grad_enabled() and _runs_here((grad, flat_params, *weights), weights)


def layer_applies(x: Tensor, h: Tensor, c: Tensor, weight: Tensor, bias: Tensor) -> bool:
    """Whether :func:`lstm_layer` can run: :func:`_runs_here`."""
    return _runs_here((x, h, c, weight, bias), [weight])


def _runs_here(tensors: Sequence[Tensor], weights: Sequence[Tensor]) -> bool:
    """No ``torch.func`` transform active, every tensor float32 on the CPU, no layer wider
    than the kernel's limit, and the kernel built on this machine."""
    if functorch_active() or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    library = load("lstm")
    return library is not None and max(w.shape[1] for w in weights) <= library.l2l_lstm_max_inputs()


def lstm_layer(x: Tensor, h: Tensor, c: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM layer, ``(h', c')``, differentiable (first order), by the C kernels: the
    forward keeps the activated gates, the backward fuses the gate gradients with both
    products (``W^T dG`` and ``dG [x; h; 1]^T``) per block of coordinates. The numbers of
    :func:`l2lbench.optimizers.lstm.lstm_layer` to float rounding (``tests/test_native.py``);
    call it where :func:`layer_applies` holds."""
    return _Layer.apply(x, h, c, weight, bias)


class _Layer(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, h: Tensor, c: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        x, h, c, weight, bias = (t.contiguous() for t in (x, h, c, weight, bias))
        (inputs, coordinates), n = x.shape, h.shape[0]
        gates = x.new_empty((4 * n, coordinates))
        h_new, c_new = x.new_empty((n, coordinates)), x.new_empty((n, coordinates))
        _kernel("l2l_lstm_layer_forward")(
            coordinates, inputs, n, *(t.data_ptr() for t in (weight, bias, x, h, c, gates, h_new, c_new)),
            torch.get_num_threads(),
        )
        # As the PyTorch form: x, h, c and c' are kept by their neighbours anyway; of this
        # step's own memory only the gate matrix.
        ctx.save_for_backward(x, h, c, weight, gates, c_new)
        return h_new, c_new

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dh: Tensor, dc: Tensor) -> tuple[Tensor | None, ...]:
        x, h, c, weight, gates, c_new = ctx.saved_tensors
        (inputs, coordinates), n = x.shape, h.shape[0]
        need_x, need_h, need_c, need_w, need_b = ctx.needs_input_grad
        d_x = x.new_empty(x.shape) if need_x else None
        d_h, d_c = torch.empty_like(h), torch.empty_like(c)
        d_wb = weight.new_empty((4 * n, inputs + n + 1))
        failed = _kernel("l2l_lstm_layer_backward")(
            coordinates, inputs, n, *(t.data_ptr() for t in (weight, x, h, c, gates, c_new, dh.contiguous(), dc.contiguous())),
            None if d_x is None else d_x.data_ptr(), d_h.data_ptr(), d_c.data_ptr(), d_wb.data_ptr(),
            torch.get_num_threads(),
        )
        if failed:
            raise MemoryError("the LSTM layer's backward kernel could not allocate its scratch memory")
        return (
            d_x, d_h if need_h else None, d_c if need_c else None,
            d_wb[:, :-1] if need_w else None, d_wb[:, -1] if need_b else None,
        )


def lstm_step(
    grad: Tensor,
    flat_params: Tensor,
    hidden: Sequence[Tensor],
    cell: Sequence[Tensor],
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    *,
    preprocess_p: float,
    output_scale: float,
    head: torch.nn.Linear | None = None,
) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``(new flat params, hidden, cell)`` of one step; call it where :func:`applies`.

    The same numbers as the PyTorch form to float rounding (``tests/test_native.py``).
    Layer l reads the gradient's two features (l = 0) or layer l-1's new hidden state;
    ``head`` reads the last layer's hidden state, else that state (one unit) is the output.
    Each layer's new hidden and cell states share one ``(2 units, coordinates)`` block.
    """
    step = _kernel()  # callers check applies() first
    coordinates = grad.numel()
    units = [h.shape[0] for h in hidden]
    if head is None and units[-1] != 1:
        raise ValueError(f"without a head the last layer must have 1 unit, not {units[-1]}")
    weights = [w.detach().contiguous() for w in weights]
    biases = [b.detach().contiguous() for b in biases]
    hidden = [h.contiguous() for h in hidden]
    cell = [c.contiguous() for c in cell]
    blocks = [torch.empty((2 * n, coordinates)) for n in units]
    new_hidden = tuple(block[:n] for block, n in zip(blocks, units))
    new_cell = tuple(block[n:] for block, n in zip(blocks, units))
    grad, flat_params = grad.contiguous(), flat_params.contiguous()
    new_params = torch.empty_like(flat_params)
    head_weight = head.weight.detach().contiguous() if head is not None else None
    step(
        coordinates, len(units), (ctypes.c_int64 * len(units))(*units), _pointers(weights), _pointers(biases),
        _pointers(hidden), _pointers(cell), _pointers(new_hidden), _pointers(new_cell),
        grad.data_ptr(), preprocess_p, None if head_weight is None else head_weight.data_ptr(),
        0.0 if head is None else float(head.bias), flat_params.data_ptr(), new_params.data_ptr(),
        output_scale, torch.get_num_threads(),
    )
    return new_params, new_hidden, new_cell
