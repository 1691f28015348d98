"""Register any ``torch.optim.Optimizer`` class as a benchmark entry in one line.

    OPTIMIZERS = {"adagrad": from_torch(torch.optim.Adagrad, lr=0.01)}

The bridge keeps the functional contract (out of place, explicit state): each update
builds the torch optimiser over fresh copies of the parameters, hands it a copy of the
state, takes one ``step()`` and returns the new parameters and state. That costs a few
tens of microseconds per step and is exact: the numbers are torch's own. It cannot be
batched over seeds with ``vmap`` or differentiated through (torch.optim steps in place
under ``no_grad``), and says so through its capability flags.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from l2lbench.errors import ConfigError
from l2lbench.plugin.base import Optimizer, Params, StepContext


def _copy(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


class TorchOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` class driven through the functional interface."""

    batchable = False
    differentiable = False

    def __init__(self, optimizer_class: type[torch.optim.Optimizer], **kwargs: Any) -> None:
        self.optimizer_class = optimizer_class
        self.kwargs = kwargs
        # Fail at construction, not mid-run, on bad hyperparameters: torch validates them.
        try:
            optimizer_class([torch.zeros(1, requires_grad=True)], **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid arguments for {optimizer_class.__name__}: {exc}") from None

    def init(self, params: Params, *, generator: torch.Generator | None = None) -> dict[str, dict]:
        # torch.optim creates its state lazily on the first step; an empty dict per
        # parameter is the faithful initial state.
        return {name: {} for name in params}

    def update(
        self, grads: Params, state: dict[str, dict], params: Params, context: StepContext
    ) -> tuple[Params, dict[str, dict]]:
        with torch.no_grad():
            held = {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}
            for name, p in held.items():
                p.grad = grads[name].detach().clone()
            opt = self.optimizer_class(list(held.values()), **self.kwargs)
            for name, p in held.items():
                if state[name]:
                    opt.state[p] = {k: _copy(v) for k, v in state[name].items()}
            opt.step()
            new_state = {name: {k: _copy(v) for k, v in opt.state[p].items()} for name, p in held.items()}
        return {name: p.detach() for name, p in held.items()}, new_state


def from_torch(optimizer_class: type[torch.optim.Optimizer], **defaults: Any):
    """A factory for the registry: ``from_torch(torch.optim.Adagrad, lr=0.01)``.

    The keyword arguments become the entry's default hyperparameters (they are part of
    its config hash); a suite may override any of them.

    Raises:
        ConfigError: the class is not a ``torch.optim.Optimizer`` or needs a closure.
    """
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise ConfigError(f"invalid optimizer class {optimizer_class!r} (expected a torch.optim.Optimizer subclass)")
    closure = inspect.signature(optimizer_class.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ConfigError(
            f"{optimizer_class.__name__} needs a closure that re-evaluates the loss; "
            "the harness takes one gradient per step (expected an optimizer whose step() takes no closure)"
        )

    def factory(**kwargs: Any) -> TorchOptimizer:
        return TorchOptimizer(optimizer_class, **{**defaults, **kwargs})

    factory.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in defaults.items()]
    )
    factory.__name__ = f"torch_{optimizer_class.__name__.lower()}"
    factory.__doc__ = f"torch.optim.{optimizer_class.__name__} through the functional bridge."
    factory.accepts_any_kwargs = True  # torch's own keyword arguments beyond the defaults
    return factory
