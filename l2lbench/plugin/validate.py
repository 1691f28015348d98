"""Hyperparameter checks shared by the reference optimisers: one line, with the bad value."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from l2lbench.errors import ConfigError

#: The largest learning rate the reference rules accept: none of them takes a sane step
#: beyond it, and a value like 1e308 is a typo that would only store diverged runs.
MAX_LR = 1e4


def _as_float(value: Any) -> float | None:
    if isinstance(value, Tensor):
        return float(value.detach()) if value.numel() == 1 else None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def check_range(
    name: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False
) -> None:
    """Raise ``ConfigError`` unless ``low <= value <= high`` (strict where open).

    Tensors are accepted (meta-learned hyperparameters) and checked by their value.

    >>> check_range("lr", 0.1, 0.0)
    >>> check_range("lr", -1, 0.0)
    Traceback (most recent call last):
    ...
    l2lbench.errors.ConfigError: invalid lr: -1 (expected a number in [0, inf])
    """
    number = _as_float(value)
    lower, upper = ("(" if low_open else "["), (")" if high_open else "]")
    below = number is None or not (low <= number) or (low_open and number <= low)
    if below or number > high or (high_open and number >= high):
        raise ConfigError(f"invalid {name}: {value!r} (expected a number in {lower}{low:g}, {high:g}{upper})")


def check_lr(value: Any) -> None:
    """A learning rate in [0, :data:`MAX_LR`]."""
    check_range("lr", value, 0.0, MAX_LR)
