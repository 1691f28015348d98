"""Meta-training's Adam on the meta-parameters, without ``torch.optim`` (see :class:`MetaAdam`)."""

from __future__ import annotations

import torch

from l2lbench.plugin.base import StepContext


class MetaAdam:
    """Adam on the meta-parameters, updated in place: the functional Adam of
    ``optimizers/adam.py`` (``torch.optim.Adam``'s formulas), one state per parameter, a
    parameter without a gradient left alone, as ``torch.optim.Adam`` does.

    Not ``torch.optim.Adam`` itself: constructing any ``torch.optim`` optimiser imports
    ``torch._dynamo`` and sympy, a large share of a meta-training process's resident memory
    (``docs/performance.md``). Held equal to ``torch.optim.Adam`` by
    ``tests/test_meta_training.py``.
    """

    def __init__(self, module: torch.nn.Module, lr: float) -> None:
        from l2lbench.optimizers.adam import Adam

        self.rule = Adam(lr=lr)
        self.params = dict(module.named_parameters())
        self.states = {name: self.rule.init({name: p.detach()}) for name, p in self.params.items()}

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        # The parameters whose states have taken equally many steps (all of them, unless
        # some went without a gradient) go through one update call: Adam's per-call work
        # (bias corrections) once, not once per parameter.
        cohorts: dict[int, list[str]] = {}
        for name, p in self.params.items():
            if p.grad is not None:
                cohorts.setdefault(int(self.states[name].count), []).append(name)
        for names in cohorts.values():
            first = self.states[names[0]]
            merged = first._replace(**{
                key: {name: getattr(self.states[name], key)[name] for name in names}
                for key, value in first._asdict().items() if isinstance(value, dict) and value
            })
            grads = {name: self.params[name].grad for name in names}
            new, state = self.rule.update(grads, merged, {name: self.params[name].detach() for name in names}, StepContext(step=0))
            for name in names:
                self.params[name].copy_(new[name])
                self.states[name] = state._replace(**{
                    key: {name: value[name]} for key, value in state._asdict().items() if isinstance(value, dict) and value
                })
