"""RMSprop (Tieleman & Hinton 2012), optionally centred and with momentum.

The formulas follow ``torch.optim.RMSprop`` term for term::

    g   <- g + weight_decay * theta
    v_t <- alpha v_{t-1} + (1 - alpha) g^2
    a_t <- a_{t-1} + (1 - alpha) (g - a_{t-1});  v~ = v_t - a_t^2     (centred only)
    d   <- g / (sqrt(v~ or v_t) + eps)
    b_t <- momentum b_{t-1} + d;  d <- b_t                           (momentum > 0)
    theta <- theta - lr * d
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from l2lbench.plugin.base import Optimizer, Params, StepContext
from l2lbench.plugin.factory import from_dataclass
from l2lbench.plugin.validate import check_lr, check_range


class RMSpropState(NamedTuple):
    square_avg: Params
    grad_avg: Params  # centred only; empty otherwise
    momentum_buffer: Params  # momentum > 0 only; empty otherwise


@dataclass(frozen=True)
class RMSprop(Optimizer):
    """RMSprop with optional momentum, centring and L2 weight decay."""

    coordinatewise: ClassVar[bool] = True
    context_free: ClassVar[bool] = True
    # A tuned suite's learning-rate range (four decades, torch's default 0.01 inside).
    search_space: ClassVar[dict[str, tuple[float, float]]] = {"lr": (1e-5, 0.1)}

    lr: float = 0.01
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False

    def __post_init__(self) -> None:
        check_lr(self.lr)
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("eps", self.eps, 0.0)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("momentum", self.momentum, 0.0)

    def init(self, params: Params, *, generator: torch.Generator | None = None) -> RMSpropState:
        zeros = lambda: {k: torch.zeros_like(v) for k, v in params.items()}  # noqa: E731
        return RMSpropState(
            square_avg=zeros(),
            grad_avg=zeros() if self.centered else {},
            momentum_buffer=zeros() if self.momentum else {},
        )

    def update(
        self, grads: Params, state: RMSpropState, params: Params, context: StepContext
    ) -> tuple[Params, RMSpropState]:
        new_params, square_avg, grad_avg, buffers = {}, {}, {}, {}
        for name, p in params.items():
            g = grads[name]
            if self.weight_decay:
                g = g + self.weight_decay * p
            square_avg[name] = self.alpha * state.square_avg[name] + (1 - self.alpha) * g * g
            if self.centered:
                grad_avg[name] = torch.lerp(state.grad_avg[name], g, 1 - self.alpha)
                avg = (square_avg[name] - grad_avg[name] * grad_avg[name]).sqrt() + self.eps
            else:
                avg = square_avg[name].sqrt() + self.eps
            direction = g / avg
            if self.momentum:
                direction = buffers[name] = self.momentum * state.momentum_buffer[name] + direction
            new_params[name] = p - self.lr * direction
        return new_params, RMSpropState(square_avg=square_avg, grad_avg=grad_avg, momentum_buffer=buffers)



# The registry's factory: RMSprop's fields carry the defaults.
rmsprop = from_dataclass(RMSprop, "RMSprop with torch's defaults (lr 0.01, alpha 0.99).")
