"""Test plug-ins, importable as a module: a recorder, a NaN injector, failing ones."""

from __future__ import annotations


RECORDED: list[tuple] = []


class Recorder:
    """Plain SGD that records what it was shown (not batchable: it has side effects)."""

    batchable = False

    def __init__(self, lr: float = 0.1):
        self.lr = lr

    def init(self, params, *, generator=None):
        RECORDED.append(("init", self.lr, round(sum(float(p.sum()) for p in params.values()), 6)))
        return ()

    def update(self, grads, state, params, context):
        RECORDED.append(("batch", self.lr, context.step, round(float(context.inputs.sum()), 3)))
        return {k: p - self.lr * grads[k] for k, p in params.items()}, state


class NaNAt:
    """Turns the parameters into NaN at one step: a controlled divergence."""

    def __init__(self, step: int = 3):
        self.step = step

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        bump = float("nan") if context.step == self.step else 0.0
        return {k: p - 0.01 * grads[k] + bump for k, p in params.items()}, state


class RaisesOnUpdate:
    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        raise RuntimeError("plug-in exploded at update")


def recorder(lr: float = 0.1) -> Recorder:
    """Records batches (tests only)."""
    return Recorder(lr)


OPTIMIZERS = {
    "recorder": recorder,
    "nan-at": NaNAt,
    "raises": RaisesOnUpdate,
}
