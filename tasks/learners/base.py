"""What every learner spec shares: the base class, activations, and field checks.

A learner spec describes only the architecture; the input shape and number of classes
come from the dataset, so one spec serves every dataset of the same image size. Modules
are built on the ``meta`` device (no memory, no random draws) and initialised by
:func:`l2lbench.execute.learner.default_init` from an explicit generator.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from l2lbench.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class LearnerSpec:
    """Base of the learner specs: a frozen dataclass with ``kind``, ``label`` and ``build``.

    A subclass (one file per learner in this package, or a third-party module registered
    under the entry-point group ``l2lbench.learners``) defines ``kind``, its fields (which,
    with ``kind``, make its config and hash) and the two methods below.
    """

    kind: ClassVar[str]

    def label(self, input_shape: tuple[int, int, int], num_classes: int) -> str:
        """The learner's part of a task name (``mlp784x32x10-relu``), derived from its fields."""
        raise NotImplementedError

    def build(self, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        """The module on the ``meta`` device, mapping (N, C, H, W) float images to (N, classes) logits."""
        raise NotImplementedError


def check_activation(activation: Any) -> None:
    """A one-line ConfigError unless ``activation`` names one of :data:`ACTIVATIONS`."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"invalid activation {activation!r}; expected one of: {', '.join(ACTIVATIONS)}")


def check_sizes(name: str, sizes: Any, allow_empty: bool) -> None:
    """A one-line ConfigError unless ``sizes`` is a tuple of positive ints (non-empty unless allowed)."""
    if not isinstance(sizes, tuple) or (not sizes and not allow_empty) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise ConfigError(f"invalid {name}: {sizes!r} (expected a list of positive integers)")
