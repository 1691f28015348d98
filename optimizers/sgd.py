"""Stochastic gradient descent, plain and with (Nesterov) momentum.

The formulas follow ``torch.optim.SGD`` term for term so the two agree to float
rounding::

    g   <- g + weight_decay * theta
    b_1 <- g;   b_t <- momentum * b_{t-1} + (1 - dampening) * g     (t > 1)
    d   <- g + momentum * b_t  if nesterov else  b_t
    theta <- theta - lr * d

The paper's baselines are ``sgd(lr=0.01)`` and ``momentum(lr=0.01, momentum=0.9)``
(Kuo et al. 2020, Section 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from l2lbench.errors import ConfigError
from l2lbench.plugin.base import Optimizer, Params, StepContext
from l2lbench.plugin.factory import from_dataclass
from l2lbench.plugin.validate import check_lr, check_range


class SGDState(NamedTuple):
    count: Tensor  # steps taken so far; momentum's first step copies the gradient
    momentum_buffer: Params  # empty when momentum == 0


@dataclass(frozen=True)
class SGD(Optimizer):
    """SGD with optional momentum, dampening, Nesterov momentum and L2 weight decay."""

    coordinatewise: ClassVar[bool] = True
    context_free: ClassVar[bool] = True
    # A tuned suite's learning-rate range (plain SGD and momentum: four decades around the paper's 0.01).
    search_space: ClassVar[dict[str, tuple[float, float]]] = {"lr": (1e-4, 1.0)}

    lr: float = 0.01
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        check_lr(self.lr)
        check_range("momentum", self.momentum, 0.0)
        check_range("dampening", self.dampening, 0.0, 1.0)
        check_range("weight_decay", self.weight_decay, 0.0)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ConfigError(
                f"invalid nesterov=True with momentum={self.momentum!r}, dampening="
                f"{self.dampening!r} (expected momentum > 0 and dampening 0)"
            )

    def init(self, params: Params, *, generator: torch.Generator | None = None) -> SGDState:
        buffers = {k: torch.zeros_like(v) for k, v in params.items()} if self.momentum else {}
        device = next(iter(params.values())).device
        return SGDState(count=torch.zeros((), dtype=torch.int64, device=device), momentum_buffer=buffers)

    def update(
        self, grads: Params, state: SGDState, params: Params, context: StepContext
    ) -> tuple[Params, SGDState]:
        new_params, new_buffers = {}, {}
        first = state.count == 0 if self.momentum else None
        for name, p in params.items():
            g = grads[name]
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                old = state.momentum_buffer[name]
                # torch.optim.SGD starts the buffer at the raw gradient (no dampening);
                # torch.where keeps that branch free of Python control flow for vmap.
                buf = torch.where(first, g, self.momentum * old + (1 - self.dampening) * g)
                new_buffers[name] = buf
                g = g + self.momentum * buf if self.nesterov else buf
            # torch.optim.SGD's add_(g, alpha=-lr): one fused pass; a tensor lr (a meta-
            # gradient with respect to it) needs the product form.
            new_params[name] = p - self.lr * g if isinstance(self.lr, Tensor) else torch.add(p, g, alpha=-self.lr)
        return new_params, SGDState(count=state.count + 1, momentum_buffer=new_buffers)



# The registry's factories: SGD's fields carry the defaults; momentum states only its own.
sgd = from_dataclass(SGD, "Plain SGD; lr 0.01 is the paper's baseline.")
momentum = from_dataclass(SGD, "SGD with momentum 0.9 and lr 0.01, the paper's second baseline.", momentum=0.9)
