"""A small convnet learner, so that architecture shift away from the MLP can be expressed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from l2lbench.errors import ConfigError
from l2lbench.tasks.learners.base import ACTIVATIONS, LearnerSpec, check_activation, check_sizes


@dataclass(frozen=True)
class CNN(LearnerSpec):
    """Small convnet: [Conv3x3 -> activation -> MaxPool2] per channel count -> Linear.

    With the defaults on 28x28 greyscale images: 1->8->16 channels, 7x7x16 features,
    about 9.2k parameters, so architecture shift away from the MLP can be expressed.
    """

    kind: ClassVar[str] = "cnn"
    channels: tuple[int, ...] = (8, 16)
    activation: str = "relu"

    def __post_init__(self) -> None:
        check_sizes("channels", self.channels, allow_empty=False)
        check_activation(self.activation)

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
