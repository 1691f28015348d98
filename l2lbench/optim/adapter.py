"""Drive any functional optimiser as a ``torch.optim.Optimizer`` on your own model.

    opt = FunctionalAdapter(model.parameters(), adam(lr=1e-3))
    loss.backward(); opt.step(); opt.zero_grad()

Context-aware optimisers (MTL2L reads the input batch) get it through
``opt.step(inputs=x, loss=loss)``. The functional state round-trips through
``state_dict``/``load_state_dict`` with entries keyed by name, not position.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from .base import StepContext
from .tree import flatten_named, unflatten_like


class FunctionalAdapter(torch.optim.Optimizer):
    """A thin stateful shell over ``init``/``update``; one parameter group."""

    def __init__(self, params: Iterable[torch.Tensor], optimizer: Any, *, seed: int = 0) -> None:
        super().__init__(list(params), defaults={})
        if len(self.param_groups) != 1:
            raise ValueError(f"FunctionalAdapter takes one parameter group, got {len(self.param_groups)}")
        self.functional = optimizer
        self.generator = torch.Generator().manual_seed(seed)
        self._names = [str(i) for i in range(len(self.param_groups[0]["params"]))]
        self.functional_state: Any = None
        self.steps_taken = 0

    def _params(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in zip(self._names, self.param_groups[0]["params"])}

    @torch.no_grad()
    def step(
        self,
        closure: Callable[[], torch.Tensor] | None = None,
        *,
        inputs: torch.Tensor | None = None,
        loss: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._params()
        if self.functional_state is None:
            self.functional_state = self.functional.init(params, generator=self.generator)
        grads = {
            name: (p.grad.detach() if p.grad is not None else torch.zeros_like(p))
            for name, p in zip(self._names, self.param_groups[0]["params"])
        }
        context = StepContext(step=self.steps_taken, inputs=inputs, loss=loss, generator=self.generator)
        new_params, self.functional_state = self.functional.update(grads, self.functional_state, params, context)
        for name, p in zip(self._names, self.param_groups[0]["params"]):
            p.copy_(new_params[name])
        self.steps_taken += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        leaves = flatten_named(self.functional_state) if self.functional_state is not None else {}
        return {
            "steps_taken": self.steps_taken,
            "functional_state": {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in leaves.items()},
            "initialised": self.functional_state is not None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps_taken = int(state_dict["steps_taken"])
        if not state_dict["initialised"]:
            self.functional_state = None
            return
        # The template comes from init on the current parameters, so each entry is put
        # back where its name says, and a state from another optimiser fails loudly.
        template = self.functional.init(self._params(), generator=self.generator)
        leaves = dict(state_dict["functional_state"])
        expected = set(flatten_named(template))
        if expected and set(leaves) != expected:
            raise ValueError(
                f"state does not match this optimiser: expected entries {sorted(expected)}, got {sorted(leaves)}"
            )
        self.functional_state = unflatten_like(template, leaves) if expected else _rebuild_lazy(leaves)


def _rebuild_lazy(leaves: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """States created lazily (the torch.optim bridge starts empty): nest ``a/b`` keys."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in leaves.items():
        outer, _, inner = key.partition("/")
        out.setdefault(outer, {})[inner] = value
    return out
