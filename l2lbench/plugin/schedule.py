"""Learning-rate schedules as part of an optimiser's configuration.

    { entry = "adam", lr = 0.003, schedule = { kind = "cosine", warmup = 50 } }

A schedule multiplies every step of the optimiser it wraps by a factor of the step index:
``theta + factor(t, T) * (update(theta) - theta)``. For the hand-designed rules, linear in
their learning rate (SGD, momentum, Adam, AdamW, RMSprop), this *is* the rule run with the
scheduled learning rate ``lr * factor``. It lives inside the functional ``update`` (the factor
reads ``context.step`` and ``context.horizon``, the run's total steps), so seeds still batch
and the stored key covers it. Kinds, with ``t`` the 0-based step, ``T`` the horizon and an
optional linear warm-up over the first ``warmup`` steps (factor ``(t + 1) / warmup``) before:

* ``constant``: 1;
* ``cosine``: ``final + (1 - final) (1 + cos(pi p)) / 2``, ``p = (t - warmup) / (T - warmup)``
  (with ``warmup = 0``, ``final = 0``: ``torch.optim.lr_scheduler.CosineAnnealingLR`` with
  ``T_max = T``, stepped once per step);
* ``linear``: ``1 - (1 - final) p``;
* ``step``: ``gamma ** ((t - warmup) // every)`` (``StepLR``).

Learned optimisers take no schedule: their step is what they learned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from l2lbench.errors import ConfigError
from l2lbench.spec.hashing import content_hash
from l2lbench.plugin.base import EXECUTION_FLAGS, Optimizer, Params, StepContext, capability

KINDS = ("constant", "cosine", "linear", "step")


@dataclass(frozen=True)
class Schedule:
    kind: str = "constant"
    warmup: int = 0
    final: float = 0.0
    every: int = 0
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"invalid schedule kind: {self.kind!r} (expected one of {', '.join(KINDS)})")
        if not isinstance(self.warmup, int) or isinstance(self.warmup, bool) or self.warmup < 0:
            raise ConfigError(f"invalid schedule warmup: {self.warmup!r} (expected a number of steps >= 0)")
        if not (isinstance(self.final, (int, float)) and 0.0 <= self.final <= 1.0):
            raise ConfigError(f"invalid schedule final: {self.final!r} (expected a factor in [0, 1])")
        if self.kind == "step":
            if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 1:
                raise ConfigError(f"invalid schedule every: {self.every!r} (expected a number of steps >= 1)")
            if not (isinstance(self.gamma, (int, float)) and 0.0 < self.gamma <= 1.0):
                raise ConfigError(f"invalid schedule gamma: {self.gamma!r} (expected a factor in (0, 1])")

    @classmethod
    def from_config(cls, config: Any) -> "Schedule":
        if isinstance(config, str):
            config = {"kind": config}
        if not isinstance(config, Mapping):
            raise ConfigError(f"invalid schedule {config!r} (expected a kind or a table like {{ kind = \"cosine\" }})")
        unknown = sorted(set(config) - {"kind", "warmup", "final", "every", "gamma"})
        if unknown:
            raise ConfigError(f"unknown schedule key(s) {', '.join(map(repr, unknown))}; expected some of: "
                              "every, final, gamma, kind, warmup")
        return cls(**config)

    def config(self) -> dict[str, Any]:
        """The fields that matter for this kind (so equal schedules have one key)."""
        keep = {"constant": (), "cosine": ("final",), "linear": ("final",), "step": ("every", "gamma")}[self.kind]
        return {k: v for k, v in asdict(self).items() if k in ("kind", "warmup") or k in keep}

    @property
    def key(self) -> str:
        return content_hash(self.config())

    @property
    def label(self) -> str:
        """``cosine``, ``cosine(warmup=50, final=0.1)``: for names in reports."""
        extra = {k: v for k, v in self.config().items() if k != "kind" and v != getattr(Schedule, k)}
        return self.kind + (f"({', '.join(f'{k}={v:g}' for k, v in extra.items())})" if extra else "")

    def factor(self, step: int, horizon: int | None) -> float:
        """The step's factor (see the module docstring)."""
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return float(self.gamma) ** ((step - self.warmup) // self.every)
        if horizon is None:
            raise ValueError(f"a {self.kind} schedule needs the run's horizon (StepContext.horizon)")
        progress = min(1.0, max(0.0, (step - self.warmup) / max(1, horizon - self.warmup)))
        if self.kind == "cosine":
            return self.final + (1.0 - self.final) * (1.0 + math.cos(math.pi * progress)) / 2.0
        return 1.0 - (1.0 - self.final) * progress


class Scheduled(Optimizer):
    """``optimizer`` with every step scaled by ``schedule``; its capability flags are the
    wrapped optimiser's (the factor is a Python number of the step: it batches and
    differentiates as the optimiser does)."""

    def __init__(self, optimizer: Any, schedule: Schedule) -> None:
        if capability(optimizer, "learned"):
            raise ConfigError("schedules apply to hand-designed optimisers; a learned optimiser's step is its own")
        self.optimizer, self.schedule = optimizer, schedule
        for flag in EXECUTION_FLAGS:
            setattr(self, flag, capability(optimizer, flag))

    def __repr__(self) -> str:
        return f"Scheduled({self.optimizer!r}, {self.schedule.label})"

    def init(self, params: Params, *, generator: Any = None) -> Any:
        return self.optimizer.init(params, generator=generator)

    def update(self, grads: Params, state: Any, params: Params, context: StepContext) -> tuple[Params, Any]:
        new, state = self.optimizer.update(grads, state, params, context)
        factor = self.schedule.factor(context.step, context.horizon)
        if factor == 1.0:
            return new, state
        return {k: params[k] + factor * (new[k] - params[k]) for k in new}, state
