"""Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019).

The formulas follow ``torch.optim.Adam``/``AdamW`` term for term so the two agree to
float rounding; bias corrections are computed in float64 as torch does with Python
floats::

    g   <- g + weight_decay * theta                       (Adam's L2 form only)
    m_t <- m_{t-1} + (1 - beta1) (g - m_{t-1})
    v_t <- beta2 v_{t-1} + (1 - beta2) g^2
    theta <- theta (1 - lr * weight_decay)                (AdamW's decoupled form only)
    theta <- theta - lr / (1 - beta1^t) * m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)

``amsgrad`` keeps the running maximum of ``v_t`` in the denominator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from l2lbench.plugin.base import Optimizer, Params, StepContext
from l2lbench.plugin.factory import from_dataclass
from l2lbench.plugin.validate import check_lr, check_range


class AdamState(NamedTuple):
    count: Tensor  # number of updates taken (bias correction)
    mu: Params  # first moment
    nu: Params  # second moment
    nu_max: Params  # running max of nu (amsgrad only; empty otherwise)


@dataclass(frozen=True)
class Adam(Optimizer):
    """Adam with L2 (``decoupled=False``) or decoupled (AdamW) weight decay."""

    coordinatewise: ClassVar[bool] = True
    context_free: ClassVar[bool] = True
    # A tuned suite's learning-rate range (four decades around torch's default 0.001).
    search_space: ClassVar[dict[str, tuple[float, float]]] = {"lr": (1e-5, 0.1)}

    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    decoupled: bool = False

    def __post_init__(self) -> None:
        check_lr(self.lr)
        check_range("beta1", self.beta1, 0.0, 1.0, high_open=True)
        check_range("beta2", self.beta2, 0.0, 1.0, high_open=True)
        check_range("eps", self.eps, 0.0)
        check_range("weight_decay", self.weight_decay, 0.0)

    def init(self, params: Params, *, generator: torch.Generator | None = None) -> AdamState:
        zeros = lambda: {k: torch.zeros_like(v) for k, v in params.items()}  # noqa: E731
        device = next(iter(params.values())).device
        return AdamState(
            count=torch.zeros((), dtype=torch.int64, device=device),
            mu=zeros(),
            nu=zeros(),
            nu_max=zeros() if self.amsgrad else {},
        )

    def update(
        self, grads: Params, state: AdamState, params: Params, context: StepContext
    ) -> tuple[Params, AdamState]:
        count = state.count + 1
        t = count.to(torch.float64)
        step_size = self.lr / (1 - self.beta1**t)
        bias_correction2_sqrt = torch.sqrt(1 - self.beta2**t)
        new_params, mu, nu, nu_max = {}, {}, {}, {}
        for name, p in params.items():
            g = grads[name]
            if self.weight_decay and not self.decoupled:
                g = g + self.weight_decay * p
            # torch.optim.Adam's own fused forms (lerp_, mul_ + addcmul_, addcdiv_); the
            # in-place operations act on fresh intermediates, never on the inputs.
            mu[name] = torch.lerp(state.mu[name], g, 1 - self.beta1)
            nu[name] = torch.mul(state.nu[name], self.beta2).addcmul_(g, g, value=1 - self.beta2)
            second = nu[name]
            if self.amsgrad:
                second = nu_max[name] = torch.maximum(state.nu_max[name], nu[name])
            denom = (second.sqrt() / bias_correction2_sqrt).add_(self.eps)  # sqrt's backward needs its output intact
            if self.weight_decay and self.decoupled:
                p = p * (1 - self.lr * self.weight_decay)
            new_params[name] = torch.addcdiv(p, step_size.to(p.dtype) * mu[name], denom, value=-1)
        return new_params, AdamState(count=count, mu=mu, nu=nu, nu_max=nu_max)



# The registry's factories: Adam's fields carry the defaults. ``decoupled`` tells the two
# entries apart and is not a hyperparameter of either.
adam = from_dataclass(Adam, "Adam; lr 0.01 is the paper's baseline (torch's own default is 0.001).",
                      fixed={"decoupled": False})
adamw = from_dataclass(Adam, "AdamW: Adam with decoupled weight decay (torch's default decay 0.01).",
                       fixed={"decoupled": True}, weight_decay=0.01)
