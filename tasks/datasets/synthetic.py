"""Class prototypes plus noise: a dataset that needs no files (smoke suite, tests)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import torch

from l2lbench.spec.hashing import derive_seed
from l2lbench.tasks.datasets.base import DatasetSpec, Splits, check_integer, check_normalisation, derived_name, set_field


@dataclasses.dataclass(frozen=True)
class SyntheticSpec(DatasetSpec):
    """Class prototypes plus noise: a dataset that needs no files (smoke suite, tests).

    Each class has a smooth random prototype image (a 7x7 uniform grid upsampled
    bilinearly). A sample of class ``y`` is ``(1 - a) * proto[y] + a * proto[z] + noise``
    with a random other class ``z``, ``a ~ U(0, 0.5)`` and Gaussian noise of std 0.5 on
    the [0, 1] scale, clipped and rounded to uint8. A 784-32-10 MLP learns it well above
    chance within 100 SGD steps but not perfectly, so optimisers can still be told apart.
    Everything derives from ``seed``; the train and test sets use separate generators, so
    changing ``n_train`` does not change the test set.

    Args:
        seed: in [0, 2**63 - 1].
        n_train, n_test: number of images, in [2, 1_000_000] and [1, 1_000_000]; the last
            sixth of the n_train images is the validation split.
        num_classes: in [2, 256].
        size: image height and width, in [4, 128].
        mean, std: normalisation (0.5/0.5: the pixels average about 0.5).

    Example:
        >>> splits = SyntheticSpec(n_train=60, n_test=16).load(Path("unused"))
        >>> splits.train_images.shape, splits.train_images.dtype, len(splits.validation_labels)
        (torch.Size([50, 1, 28, 28]), torch.uint8, 10)
    """

    kind: ClassVar[str] = "synthetic"
    seed: int = 0
    n_train: int = 2048
    n_test: int = 512
    num_classes: int = 10
    size: int = 28
    mean: float = 0.5
    std: float = 0.5

    @property
    def num_examples(self) -> int:
        return self.n_train + self.n_test

    _NOISE: ClassVar[float] = 0.5
    _MIX: ClassVar[float] = 0.5

    def __post_init__(self) -> None:
        set_field(self, "seed", check_integer(self.kind, "seed", self.seed, 0, 2**63 - 1))
        # At least 2: one to train on and one for the validation split.
        set_field(self, "n_train", check_integer(self.kind, "n_train", self.n_train, 2, 1_000_000))
        set_field(self, "n_test", check_integer(self.kind, "n_test", self.n_test, 1, 1_000_000))
        set_field(self, "num_classes", check_integer(self.kind, "num_classes", self.num_classes, 2, 256))
        set_field(self, "size", check_integer(self.kind, "size", self.size, 4, 128))
        check_normalisation(self)

    @property
    def name(self) -> str:
        return derived_name(self, "synthetic")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.size, self.size)

    def prototypes(self) -> torch.Tensor:
        """(num_classes, 1, size, size) float32 class prototypes in [0, 1]."""
        g = torch.Generator().manual_seed(derive_seed("synthetic", self.seed, "prototypes"))
        coarse = torch.rand(self.num_classes, 1, 7, 7, generator=g)
        return torch.nn.functional.interpolate(
            coarse, size=(self.size, self.size), mode="bilinear", align_corners=False
        )

    def _sample(
        self, prototypes: torch.Tensor, n: int, split: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(derive_seed("synthetic", self.seed, split))
        labels = torch.randint(self.num_classes, (n,), generator=g)
        offset = torch.randint(1, self.num_classes, (n,), generator=g)
        other = (labels + offset) % self.num_classes
        mix = (torch.rand(n, generator=g) * self._MIX).view(n, 1, 1, 1)
        noise = torch.randn(n, *prototypes.shape[1:], generator=g) * self._NOISE
        images = (1 - mix) * prototypes[labels] + mix * prototypes[other] + noise
        return torch.round(images.clamp(0, 1) * 255).to(torch.uint8), labels

    def _load(self, data_dir: Path, download: bool) -> Splits:
        protos = self.prototypes()
        train_x, train_y = self._sample(protos, self.n_train, "train")
        test_x, test_y = self._sample(protos, self.n_test, "test")
        return Splits(train_x, train_y, test_x, test_y, mean=self.mean, std=self.std)
