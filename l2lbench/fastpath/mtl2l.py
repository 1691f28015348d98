"""MTL2L's hypernetworks at meta-test, faster: the reference is
:meth:`l2lbench.optimizers.mtl2l.MTL2L.context_values`'s loop over the four
:class:`~l2lbench.optimizers.mtl2l.Hypernetwork` modules, each averaged over the batch and
smoothed on its own (Eq. 17). Its LSTM layers take the coordinatewise LSTM's fast forms
(:func:`l2lbench.fastpath.lstm.lstm_update`), and its dropout masks come from a Philox
stream whose C kernel and PyTorch form give the same mask
(:mod:`l2lbench.fastpath.native.dropout`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from l2lbench import fastpath


def smoothed_context(
    hypernetworks: list[nn.Module], x: Tensor, previous: tuple[Tensor, ...], *, smoothing: float, relu_rows: int,
    training: bool,
) -> tuple[Tensor, ...] | None:
    """Eq. 17 at meta-test (autograd off, eval mode: no dropout): the four hypernetworks'
    outputs as one vector, the first ``relu_rows`` of it through a ReLU, smoothed in one
    operation; ``None`` where it does not apply (then run the reference).

    Args:
        hypernetworks: the four hypernetworks in the order of ``previous``.
        x: the input batch, (examples, features).
        previous: the running averages, one per hypernetwork.
        smoothing: m in ``N_t = m N_{t-1} + (1 - m) MLP(x_t)``.
        relu_rows: how many leading outputs pass through a ReLU before smoothing.
        training: whether the module is in training mode (dropout active).
    """
    if training or torch.is_grad_enabled() or not fastpath.enabled():
        return None
    raw_all = hypernetworks_without_dropout(hypernetworks, x)
    raw_all[:relu_rows].relu_()
    smoothed = raw_all if smoothing == 0 else torch.lerp(raw_all, torch.cat(previous), smoothing)  # m prev + (1 - m) raw
    return smoothed.split([p.numel() for p in previous])


def hypernetworks_without_dropout(hypernetworks: list[nn.Module], x: Tensor) -> Tensor:
    """The hypernetworks without dropout, their batch-mean outputs concatenated: the first
    layers as one product, the batch mean taken before the (affine) second layers, which
    equals the mean of their outputs to float rounding, and the second layers as one
    block-diagonal product (a few operations instead of a few per hypernetwork)."""
    first_w = torch.cat([h.first.weight for h in hypernetworks])
    first_b = torch.cat([h.first.bias for h in hypernetworks])
    z = torch.addmm(first_b, x, first_w.t()).relu_().mean(dim=0)
    second_w = torch.block_diag(*(h.second.weight for h in hypernetworks))
    return torch.addmv(torch.cat([h.second.bias for h in hypernetworks]), second_w, z)
