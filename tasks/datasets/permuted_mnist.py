"""MNIST with one fixed pixel permutation (Goodfellow et al., 2014)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import torch

from l2lbench.tasks.datasets.base import (
    DatasetSpec,
    Splits,
    check_integer,
    check_normalisation,
    derived_name,
    load_splits,
    set_field,
)
from l2lbench.tasks.datasets.idx import MNISTShaped
from l2lbench.tasks.datasets.mnist import MNIST_MEAN, MNIST_STD, MNISTSpec


@dataclasses.dataclass(frozen=True)
class PermutedMNISTSpec(MNISTShaped, DatasetSpec):
    """MNIST with one fixed permutation of the 784 pixels, the same for every image.

    The permutation is ``torch.randperm(784, generator=torch.Generator().manual_seed(seed))``,
    so a seed names the same task in every process (Goodfellow et al., 2014; Kirkpatrick et
    al., 2017). It destroys spatial structure but not what an MLP can learn.

    Args:
        seed: in [0, 2**63 - 1]; part of the name (``permmnist-s0``).
        mean, std: normalisation (MNIST's by default; permuting keeps the pixel statistics).
    """

    kind: ClassVar[str] = "permuted-mnist"
    sources = MNISTSpec.sources
    seed: int = 0
    mean: float = MNIST_MEAN
    std: float = MNIST_STD

    def __post_init__(self) -> None:
        set_field(self, "seed", check_integer(self.kind, "seed", self.seed, 0, 2**63 - 1))
        check_normalisation(self)

    @property
    def name(self) -> str:
        return derived_name(self, f"permmnist-s{self.seed}", shown=("seed",))

    def permutation(self) -> torch.Tensor:
        """The (784,) int64 permutation: output pixel ``i`` is input pixel ``perm[i]``."""
        return torch.randperm(784, generator=torch.Generator().manual_seed(self.seed))

    def permute(self, images: torch.Tensor) -> torch.Tensor:
        """Apply :meth:`permutation` to (N, 1, 28, 28) images."""
        flat = images.reshape(images.shape[0], -1)
        return flat[:, self.permutation()].reshape(images.shape).contiguous()

    def _load(self, data_dir: Path, download: bool) -> Splits:
        base = load_splits(MNISTSpec(), data_dir, download=download)
        return dataclasses.replace(
            base,
            train_images=self.permute(base.train_images),
            validation_images=self.permute(base.validation_images),
            test_images=self.permute(base.test_images),
            mean=self.mean,
            std=self.std,
        )
