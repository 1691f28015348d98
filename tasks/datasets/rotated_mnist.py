"""MNIST rotated by a fixed angle, the domains of DomainBed's RotatedMNIST."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import torch

from l2lbench.tasks.datasets.base import (
    DatasetSpec,
    Splits,
    check_normalisation,
    check_number,
    derived_name,
    format_field,
    load_splits,
    set_field,
)
from l2lbench.tasks.datasets.idx import MNISTShaped
from l2lbench.tasks.datasets.mnist import MNIST_MEAN, MNIST_STD, MNISTSpec


@dataclasses.dataclass(frozen=True)
class RotatedMNISTSpec(MNISTShaped, DatasetSpec):
    """MNIST with every image (train and test) rotated by ``angle`` degrees counter-clockwise.

    The domains of DomainBed's RotatedMNIST (Gulrajani & Lopez-Paz, 2021) are 0, 15, 30,
    45, 60 and 75 degrees. Rotation is torchvision's, about the image centre, bilinear, with
    0 (black) filling the corners, rounded back to uint8; DomainBed rotates PIL images the
    same way (mean absolute difference ~0.1 grey levels).

    Args:
        angle: degrees in [-360, 360]; part of the name (``rotmnist45``).
        mean, std: normalisation (MNIST's by default).
    """

    kind: ClassVar[str] = "rotated-mnist"
    sources = MNISTSpec.sources
    angle: float
    mean: float = MNIST_MEAN
    std: float = MNIST_STD

    def __post_init__(self) -> None:
        set_field(self, "angle", check_number(self.kind, "angle (degrees)", self.angle, -360.0, 360.0))
        check_normalisation(self)

    @property
    def name(self) -> str:
        return derived_name(self, f"rotmnist{format_field(self.angle)}", shown=("angle",))

    def rotate(self, images: torch.Tensor) -> torch.Tensor:
        """Rotate (N, 1, H, W) uint8 images by ``self.angle``; 0 degrees returns them unchanged."""
        if self.angle == 0.0:
            return images
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.functional import rotate

        return rotate(images, self.angle, interpolation=InterpolationMode.BILINEAR, fill=[0.0])

    def _load(self, data_dir: Path, download: bool) -> Splits:
        base = load_splits(MNISTSpec(), data_dir, download=download)
        return dataclasses.replace(
            base,
            train_images=self.rotate(base.train_images),
            validation_images=self.rotate(base.validation_images),
            test_images=self.rotate(base.test_images),
            mean=self.mean,
            std=self.std,
        )
