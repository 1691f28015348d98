"""A plug-in's faults stay its own: an interrupt it raises, or parameters it returns with
the wrong names, shapes or dtypes, fail its runs and not the benchmark."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch

from l2lbench.errors import PluginError, Stopped


class PluginInterrupt(RuntimeError):
    """A ``KeyboardInterrupt`` that a plug-in raised itself: a fault of its own runs."""


@contextmanager
def own_interrupts(name: str) -> Iterator[None]:
    """Turn a ``KeyboardInterrupt`` raised inside ``name``'s code into a fault of its own
    runs; a real stop (Ctrl-C, SIGTERM, SIGHUP: :class:`Stopped`) still stops everything.
    Worker processes ignore the stop signals (the parent decides), so there a
    ``KeyboardInterrupt`` is always the plug-in's."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if isinstance(exc, Stopped):
            raise
        raise PluginInterrupt(f"optimizer {name!r} raised KeyboardInterrupt (a plug-in may not stop the benchmark)") from None


class CheckedOptimizer:
    """A plug-in whose ``update`` must give back parameters named, shaped and typed like
    the ones it got: a wrong shape could otherwise broadcast into silent nonsense."""

    def __init__(self, optimizer: Any, name: str) -> None:
        self._optimizer, self._name = optimizer, name

    def __getattr__(self, attribute: str) -> Any:  # capability flags, meta-parameters, ...
        return getattr(self._optimizer, attribute)

    def init(self, *args: Any, **kwargs: Any) -> Any:
        with own_interrupts(self._name):
            return self._optimizer.init(*args, **kwargs)

    def update(self, grads: Any, state: Any, params: Mapping[str, torch.Tensor], context: Any) -> Any:
        with own_interrupts(self._name):
            result = self._optimizer.update(grads, state, params, context)
        if not isinstance(result, tuple) or len(result) != 2:
            raise PluginError(
                f"optimizer {self._name!r}: update returned {type(result).__name__}, expected a pair (new_params, new_state)"
            )
        new = result[0]
        if not isinstance(new, Mapping) or set(new) != set(params):
            got = sorted(new) if isinstance(new, Mapping) else type(new).__name__
            raise PluginError(
                f"optimizer {self._name!r}: update returned parameters {got}, expected {sorted(params)}"
            )
        for key, old in params.items():
            value = new[key]
            if not isinstance(value, torch.Tensor) or value.shape != old.shape or value.dtype != old.dtype:
                got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise PluginError(
                    f"optimizer {self._name!r}: update returned parameter {key!r} as {got}, "
                    f"expected {tuple(old.shape)} {old.dtype}"
                )
        return result

