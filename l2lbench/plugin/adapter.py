"""Drive any functional optimiser as a ``torch.optim.Optimizer`` on your own model.

    opt = FunctionalAdapter(model.named_parameters(), adam(lr=1e-3))
    loss.backward(); opt.step(); opt.zero_grad()

A full ``torch.optim`` citizen: parameter groups with hyperparameters of their own, so every
``torch.optim.lr_scheduler`` works. Each group's ``lr`` scales the group's step: the
functional optimiser's update ``new - old`` is multiplied by ``lr / reference``, where the
reference is the optimiser's own ``lr`` hyperparameter (a hand-designed rule: linear in its
learning rate, so this *is* that rule with the scheduled rate; SGD, momentum, Adam and AdamW
agree with ``torch.optim`` under a scheduler) or 1 for an optimiser without one (a learned
optimiser: its step scaled, as PyLO does). A group's other keys that name a hyperparameter
of the optimiser (``weight_decay``, ``momentum``, ...) replace it for that group. Each group
has its own functional state, keyed by parameter name (``named_parameters()``' names, else
``"<group>.<index>"``); ``state_dict`` round-trips into a fresh instance, group
hyperparameters (and a scheduler's ``initial_lr``) included.

Context-aware optimisers (MTL2L reads the input batch) get it through
``opt.step(inputs=x, loss=loss)``. A parameter without a gradient gets a zero gradient (the
functional state still advances), unlike ``torch.optim``, which skips it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import torch

from l2lbench.plugin.base import StepContext
from l2lbench.plugin.tree import flatten_named, unflatten_like

# Group keys that are never hyperparameters of the functional optimiser.
_GROUP_KEYS = ("params", "param_names", "lr", "initial_lr")


class FunctionalAdapter(torch.optim.Optimizer):
    """A stateful ``torch.optim.Optimizer`` shell over a functional ``init``/``update``."""

    def __init__(self, params: Iterable[Any], optimizer: Any, *, seed: int = 0, horizon: int | None = None) -> None:
        own_lr = getattr(optimizer, "lr", None)
        self.reference_lr = float(own_lr) if isinstance(own_lr, (int, float)) and own_lr > 0 else 1.0
        super().__init__(params, defaults={"lr": self.reference_lr})
        self.functional = optimizer
        self.generator = torch.Generator().manual_seed(seed)
        self.functional_states: list[Any] = [None] * len(self.param_groups)
        self.steps_taken = 0
        self.horizon = horizon  # the steps you will take, for a scheduled optimiser (StepContext.horizon)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "functional_states"):  # a group added after construction
            self.functional_states.append(None)

    # -- per group ---------------------------------------------------------------------

    def _names(self, index: int) -> list[str]:
        group = self.param_groups[index]
        return list(group.get("param_names") or [f"{index}.{j}" for j in range(len(group["params"]))])

    def _params(self, index: int) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in zip(self._names(index), self.param_groups[index]["params"])}

    def _rule(self, group: dict[str, Any]) -> Any:
        """The functional optimiser with the group's own hyperparameters."""
        if not dataclasses.is_dataclass(self.functional):
            return self.functional
        fields = {f.name for f in dataclasses.fields(self.functional)}
        changed = {k: v for k, v in group.items() if k in fields and k not in _GROUP_KEYS and getattr(self.functional, k) != v}
        return dataclasses.replace(self.functional, **changed) if changed else self.functional

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
        context = StepContext(step=self.steps_taken, inputs=inputs, loss=loss, generator=self.generator, horizon=self.horizon)
        for index, group in enumerate(self.param_groups):
            rule = self._rule(group)
            named = list(zip(self._names(index), group["params"]))  # once per group and step
            params = {name: p.detach() for name, p in named}
            if self.functional_states[index] is None:
                self.functional_states[index] = rule.init(params, generator=self.generator)
            grads = {name: (p.grad.detach() if p.grad is not None else torch.zeros_like(p)) for name, p in named}
            new_params, self.functional_states[index] = rule.update(grads, self.functional_states[index], params, context)
            scale = group["lr"] / self.reference_lr
            for name, p in named:
                if scale == 1.0:  # exactly the functional step, not old + (new - old)
                    p.copy_(new_params[name])
                else:
                    p.add_(new_params[name] - params[name], alpha=scale)
        self.steps_taken += 1
        return loss

    # -- saving ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        groups = []
        for index, group in enumerate(self.param_groups):
            saved = {k: v for k, v in group.items() if k not in ("params", "param_names")}
            saved["param_names"] = self._names(index)
            groups.append(saved)
        states = [
            {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in flatten_named(state).items()}
            if state is not None else None
            for state in self.functional_states
        ]
        return {"steps_taken": self.steps_taken, "param_groups": groups, "functional_states": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups, states = state_dict["param_groups"], state_dict["functional_states"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state has {len(groups)} parameter groups; this optimizer has {len(self.param_groups)}")
        for index, (group, saved) in enumerate(zip(self.param_groups, groups)):
            if saved["param_names"] != self._names(index):
                raise ValueError(f"parameter group {index} holds {saved['param_names']}; this optimizer's holds "
                                 f"{self._names(index)}")
        self.steps_taken = int(state_dict["steps_taken"])
        for index, (group, saved, leaves) in enumerate(zip(self.param_groups, groups, states)):
            group.update({k: v for k, v in saved.items() if k != "param_names"})
            if leaves is None:
                self.functional_states[index] = None
                continue
            # The template comes from init on the current parameters, so each entry is put
            # back where its name says, and a state from another optimiser fails loudly.
            template = self._rule(group).init(self._params(index), generator=self.generator)
            expected = set(flatten_named(template))
            if expected and set(leaves) != expected:
                raise ValueError(
                    f"state does not match this optimiser: expected entries {sorted(expected)}, got {sorted(leaves)}"
                )
            self.functional_states[index] = unflatten_like(template, dict(leaves)) if expected else _rebuild_lazy(leaves)

    def __repr__(self) -> str:
        lines = [f"FunctionalAdapter({self.functional!r}) ("]
        for index, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {index}")
            lines.append(f"    params: {', '.join(self._names(index))}")
            lines += [f"    {key}: {value}" for key, value in sorted(group.items()) if key not in ("params", "param_names")]
        return "\n".join(lines + [")"])


def _rebuild_lazy(leaves: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """States created lazily (the torch.optim bridge starts empty): nest ``a/b`` keys."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in leaves.items():
        outer, _, inner = key.partition("/")
        out.setdefault(outer, {})[inner] = value
    return out
