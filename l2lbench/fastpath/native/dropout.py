"""Dropout masks from a counter-based generator (Philox4x32-10), keyed by one 64-bit seed
drawn from the run's ``torch.Generator``: the C kernel (``dropout.c``) draws a mask of the
MTL2L hypernetworks' inputs in parallel and in vectors, where ``torch.rand`` on the CPU's
mt19937 draws one number after another (timings: ``docs/performance.md``), and
:func:`philox_words` gives the same numbers with PyTorch operations
wherever the kernel cannot run (CUDA, other dtypes, no compiler). A mask is thus a function
of the generator's state alone, the same on every device and path."""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from l2lbench.fastpath.native.build import load

_MASK32 = 0xFFFFFFFF
_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_WEYL = (0x9E3779B9, 0xBB67AE85)
_LANES = 16  # counters per pass of the kernel; fixes which word lands on which element


def dropout(x: Tensor, rate: float, generator: torch.Generator) -> Tensor:
    """``x * dropout_mask(x.shape, ...)``, in one pass where the kernel can do it (``x`` a
    float32 CPU tensor that needs no gradient, such as a batch of inputs): the same mask,
    from the same single draw of ``generator``, and the same products."""
    kernel = None if x.requires_grad or x.device.type != "cpu" or x.dtype != torch.float32 else _kernel()
    if kernel is None:
        return x * dropout_mask(x.shape, rate, generator, dtype=x.dtype, device=x.device)
    x = x.contiguous()
    out = torch.empty_like(x)
    kernel(x.numel(), _seed(generator), rate, 1.0 / (1.0 - rate), x.data_ptr(), out.data_ptr(), torch.get_num_threads())
    return out


def dropout_mask(shape: torch.Size | tuple[int, ...], rate: float, generator: torch.Generator, *,
                 dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(u >= rate) / (1 - rate)`` with ``u`` uniform on [0, 1) in steps of 2^-24: word i
    of the Philox stream shifted right by 8 bits, the stream keyed by a seed drawn from
    ``generator`` (one draw per mask, whatever its size)."""
    seed = _seed(generator)
    scale = 1.0 / (1.0 - rate)
    numel = torch.Size(shape).numel()
    kernel = _kernel() if device.type == "cpu" and dtype == torch.float32 else None
    if kernel is not None:
        mask = torch.empty(shape)
        kernel(numel, seed, rate, scale, None, mask.data_ptr(), torch.get_num_threads())
        return mask
    uniform = (philox_words(numel, seed, device) >> 8).to(torch.float32) * 2.0**-24
    return (uniform >= rate).to(dtype).mul_(scale).view(shape)


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=generator.device))


def philox_words(count: int, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """The first ``count`` 32-bit words (as int64) of the stream that ``dropout.c`` draws,
    element ``i = 64 c + 16 w + l`` being word ``w`` of Philox4x32-10 at counter
    ``j = 16 c + l`` (as ``(j mod 2^32, j >> 32, 0, 0)``) with key ``(seed mod 2^32, seed >> 32)``.
    Products of two 32-bit words are formed from 16-bit halves: no int64 product overflows."""
    chunks = -(-count // (4 * _LANES))
    j = torch.arange(chunks * _LANES, dtype=torch.int64, device=device)
    x = [j & _MASK32, j >> 32, torch.zeros_like(j), torch.zeros_like(j)]
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo(_MULTIPLIERS[0], x[0])
        hi1, lo1 = _mulhilo(_MULTIPLIERS[1], x[2])
        x = [hi1 ^ x[1] ^ k0, lo1, hi0 ^ x[3] ^ k1, lo0]
        k0, k1 = (k0 + _WEYL[0]) & _MASK32, (k1 + _WEYL[1]) & _MASK32
    return torch.stack([w.view(chunks, _LANES) for w in x], dim=1).reshape(-1)[:count]


def _mulhilo(multiplier: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """The high and low 32 bits of ``multiplier * x`` (both below 2^32)."""
    low_half = multiplier * (x & 0xFFFF)  # < 2^48
    high_half = multiplier * (x >> 16)  # < 2^48, weighs 2^16
    middle = low_half + ((high_half & 0xFFFF) << 16)  # < 2^49
    return ((high_half >> 16) + (middle >> 32)) & _MASK32, middle & _MASK32


def _kernel() -> ctypes._CFuncPtr | None:
    library = load("dropout")
    if library is None:
        return None
    function = library.l2l_dropout
    if function.argtypes is None:
        # The C interface, version ABI_VERSIONS['dropout'] (native/build.py; l2l_abi_version()
        # in dropout.c): change this signature, that version and the C file together.
        function.argtypes = [ctypes.c_int64, ctypes.c_uint64, ctypes.c_float, ctypes.c_float, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_int]
        function.restype = None
    return function
