"""The fused meta-test step of a coordinatewise LSTM optimiser (``lstm.c``), for the LSTM
optimiser and MTL2L: one pass over the coordinates instead of a dozen over the gate matrix
(1 seed of the paper's MLP, 2 threads: about 1.0 ms instead of 2.1 for the update)."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
from torch import Tensor

from l2lbench.native.build import load
from l2lbench.optim.learned import functorch_active

_POINTER = ctypes.c_void_p
_ARGTYPES = [
    ctypes.c_int64, ctypes.c_int, _POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _POINTER,
    _POINTER, ctypes.c_float, _POINTER, ctypes.c_float, _POINTER, _POINTER, ctypes.c_float, ctypes.c_int,
]


def _kernel() -> ctypes._CFuncPtr | None:
    library = load("lstm")
    if library is None:
        return None
    step = library.l2l_lstm_step
    if step.argtypes is None:
        step.argtypes, step.restype = _ARGTYPES, None
    return step


def _pointers(tensors: Sequence[Tensor]) -> ctypes.Array:
    return (_POINTER * len(tensors))(*(t.data_ptr() for t in tensors))


def applies(grad: Tensor, flat_params: Tensor, weights: Sequence[Tensor]) -> bool:
    """Whether the kernel can run this step: autograd off, no ``torch.func`` transform
    active, every tensor float32 on the CPU, no layer wider than the kernel's limit, and
    the kernel built on this machine."""
    if torch.is_grad_enabled() or functorch_active():
        return False
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in (grad, flat_params, *weights)):
        return False
    step = _kernel()
    return step is not None and max(w.shape[1] for w in weights) <= _max_inputs()


def _max_inputs() -> int:
    library = load("lstm")
    return int(library.l2l_lstm_max_inputs()) if library is not None else 0


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
    step = _kernel()
    assert step is not None, "call lstm_step only where applies() holds"
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
