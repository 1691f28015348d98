"""Learner architectures as frozen specs: the paper's MLP, its variants, and a small CNN.

A learner spec describes only the architecture; the input shape and number of classes
come from the dataset, so one spec serves every dataset of the same image size. Modules
are built on the ``meta`` device (no memory, no random draws) and initialised by
:func:`l2lbench.learner.default_init` from an explicit generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from l2lbench.errors import ConfigError
from l2lbench.specs import build_spec

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ConfigError(f"invalid activation {activation!r}; expected one of: {', '.join(ACTIVATIONS)}")


def _check_sizes(name: str, sizes: tuple, allow_empty: bool) -> None:
    if not isinstance(sizes, tuple) or (not sizes and not allow_empty) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise ConfigError(f"invalid {name}: {sizes!r} (expected a list of positive integers)")


@dataclass(frozen=True)
class MLP:
    """Fully connected net: flatten -> [Linear -> activation] * len(hidden) -> Linear.

    The default is the learner of Kuo et al. (2020, Appendix B.1) and Andrychowicz et al.
    (2016): 784-32-10 with ReLU, 25,450 parameters. The loss applies log-softmax.
    """

    kind: ClassVar[str] = "mlp"
    hidden: tuple[int, ...] = (32,)
    activation: str = "relu"

    def __post_init__(self) -> None:
        _check_sizes("hidden sizes", self.hidden, allow_empty=True)
        _check_activation(self.activation)

    def label(self, input_shape: tuple[int, int, int], num_classes: int) -> str:
        sizes = [math.prod(input_shape), *self.hidden, num_classes]
        return f"mlp{'x'.join(map(str, sizes))}-{self.activation}"

    def build(self, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in self.hidden:
            layers += [nn.Linear(width, size, device="meta"), ACTIVATIONS[self.activation]()]
            width = size
        layers.append(nn.Linear(width, num_classes, device="meta"))
        return nn.Sequential(*layers)


@dataclass(frozen=True)
class CNN:
    """Small convnet: [Conv3x3 -> activation -> MaxPool2] per channel count -> Linear.

    With the defaults on 28x28 greyscale images: 1->8->16 channels, 7x7x16 features,
    about 9.2k parameters, so architecture shift away from the MLP can be expressed.
    """

    kind: ClassVar[str] = "cnn"
    channels: tuple[int, ...] = (8, 16)
    activation: str = "relu"

    def __post_init__(self) -> None:
        _check_sizes("channels", self.channels, allow_empty=False)
        _check_activation(self.activation)

    def label(self, input_shape: tuple[int, int, int], num_classes: int) -> str:
        return f"cnn{'x'.join(map(str, self.channels))}-{self.activation}"

    def build(self, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        c, h, w = input_shape
        if h >> len(self.channels) == 0 or w >> len(self.channels) == 0:
            raise ConfigError(
                f"invalid cnn channels {self.channels!r} for {h}x{w} images "
                f"(expected at most {int(math.log2(min(h, w)))} pooling stages)"
            )
        layers: list[nn.Module] = []
        for out in self.channels:
            layers += [
                nn.Conv2d(c, out, kernel_size=3, padding=1, device="meta"),
                ACTIVATIONS[self.activation](),
                nn.MaxPool2d(2),
            ]
            c, h, w = out, h // 2, w // 2
        layers += [nn.Flatten(), nn.Linear(c * h * w, num_classes, device="meta")]
        return nn.Sequential(*layers)


LEARNERS: dict[str, type] = {"mlp": MLP, "cnn": CNN}
LearnerSpec = MLP | CNN


def learner_from_config(config) -> LearnerSpec:
    """``{kind = "mlp", hidden = [64, 64], activation = "tanh"}`` -> ``MLP(...)``."""
    return build_spec(LEARNERS, config, "learner")
