"""Test plug-ins, importable as a module: a recorder, a NaN injector, failing ones.

Some fail on purpose in every way a plug-in can (raise in the factory, at init, at update,
return the wrong shape, hang, fail to meta-train): a run with ``--plugin`` on this file
should name its ``--optimizers``, or it runs them all (and ``hangs`` sleeps for an hour
unless ``--run-timeout`` stops it).
"""

from __future__ import annotations

import time


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


class RaisesOnInit:
    def init(self, params, *, generator=None):
        raise RuntimeError("plug-in exploded at init")

    def update(self, grads, state, params, context):
        return params, state


def fails_to_construct(lr: float = 0.1, explode: bool = False):
    """Its factory raises when asked to explode (a constructor broken for some settings;
    one broken on its defaults is refused when the plug-in loads)."""
    if explode:
        raise RuntimeError("plug-in exploded in its constructor")
    return RaisesOnUpdate()


class WrongShape:
    """Returns every bias as a row, (n,) -> (1, n): it would broadcast, silently."""

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        new = {k: p - 0.01 * grads[k] for k, p in params.items()}
        return {k: v.unsqueeze(0) if v.dim() == 1 else v for k, v in new.items()}, state


class Hangs:
    """Plain SGD that stops responding at step ``at``: sleeping, or spinning in Python."""

    def __init__(self, at: int = 2, how: str = "sleep"):
        self.at, self.how = at, how

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        if context.step == self.at:
            if self.how == "sleep":
                time.sleep(3600)
            while True:
                try:  # a plug-in that swallows exceptions must still be stoppable
                    pass
                except Exception:
                    pass
        return {k: p - 0.01 * grads[k] for k, p in params.items()}, state


class Exits:
    """Calls sys.exit() in update: that must end its own runs, not the benchmark."""

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        raise SystemExit(3)


class FailsToMetaTrain:
    """A learned plug-in whose meta-initialisation raises."""

    learned = True

    def init_meta(self, *, generator=None):
        raise RuntimeError("cannot meta-train")

    def with_meta(self, module):
        return self

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        return params, state


def recorder(lr: float = 0.1) -> Recorder:
    """Records batches (tests only)."""
    return Recorder(lr)


OPTIMIZERS = {
    "recorder": recorder,
    "nan-at": NaNAt,
    "raises": RaisesOnUpdate,
    "raises-on-init": RaisesOnInit,
    "fails-to-construct": fails_to_construct,
    "wrong-shape": WrongShape,
    "hangs": Hangs,
    "exits": Exits,
    "fails-to-meta-train": FailsToMetaTrain,
}


class Interrupts:
    """Raises KeyboardInterrupt itself in update: a fault of its own runs, not a stop."""

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        raise KeyboardInterrupt


OPTIMIZERS["interrupts"] = Interrupts


class ExitsProcess:
    """Ends its whole process at update (os._exit): only its own runs may fail."""

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        import os

        os._exit(3)


class SwallowsEverything:
    """Hangs in update and swallows every exception, the time limit's too."""

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        while True:
            try:
                time.sleep(3600)
            except BaseException:
                pass


class StartsThread:
    """Plain SGD that starts a non-daemon thread that never ends."""

    def init(self, params, *, generator=None):
        import threading

        threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
        return ()

    def update(self, grads, state, params, context):
        return {k: p - 0.01 * grads[k] for k, p in params.items()}, state


HOARD: list = []


class Hoards:
    """Allocates 256 MiB more at every update and never lets go."""

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        import torch

        HOARD.append(torch.ones(64 * 2**20))
        return {k: p - 0.01 * grads[k] for k, p in params.items()}, state


OPTIMIZERS.update({"exits-process": ExitsProcess, "swallows-everything": SwallowsEverything,
                   "starts-thread": StartsThread, "hoards": Hoards})


class KilledByTheKernel:
    """Its process is SIGKILLed at update, as the kernel's OOM killer would."""

    def init(self, params, *, generator=None):
        return ()

    def update(self, grads, state, params, context):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


OPTIMIZERS["killed"] = KilledByTheKernel
