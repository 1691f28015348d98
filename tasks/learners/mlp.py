"""The paper's learner: a fully connected net (Andrychowicz et al., 2016; Kuo et al., 2020)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from l2lbench.tasks.learners.base import ACTIVATIONS, LearnerSpec, check_activation, check_sizes


@dataclass(frozen=True)
class MLP(LearnerSpec):
    """Fully connected net: flatten -> [Linear -> activation] * len(hidden) -> Linear.

    The default is the learner of Kuo et al. (2020, Appendix B.1) and Andrychowicz et al.
    (2016): 784-32-10 with ReLU, 25,450 parameters. The loss applies log-softmax.
    """

    kind: ClassVar[str] = "mlp"
    hidden: tuple[int, ...] = (32,)
    activation: str = "relu"

    def __post_init__(self) -> None:
        check_sizes("hidden sizes", self.hidden, allow_empty=True)
        check_activation(self.activation)

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
