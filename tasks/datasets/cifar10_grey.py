"""CIFAR-10 made 28x28 grey, the "modified CIFAR-10" of MTL2L: spec, files and md5s."""

from __future__ import annotations

import dataclasses
from numbers import Real
from pathlib import Path
from typing import ClassVar

import torch

from l2lbench.errors import ConfigError
from l2lbench.tasks.datasets.base import (
    DatasetSpec,
    Splits,
    check_integer,
    check_normalisation,
    checked_splits,
    derived_name,
    set_field,
)
from l2lbench.tasks.datasets.cifar import CIFARSource

#: torchvision's published md5s (``CIFAR10.tgz_md5``, ``train_list``, ``test_list``, ``meta``).
CHECKSUMS = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-10-batches-py/batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}

SOURCE = CIFARSource(
    name="CIFAR10",
    dataset="cifar10",
    checksums=CHECKSUMS,
    archive="cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    train=("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
    test=("test_batch",),
    meta="batches.meta",
)


def greyscale_crop(
    images: torch.Tensor, weights: tuple[float, float, float], crop: int
) -> torch.Tensor:
    """RGB uint8 (N,3,H,W) -> grey uint8 (N,1,crop,crop): ``wr*R + wg*G + wb*B``, top-left crop.

    Rounded half up (with a 1e-9 allowance so that decimal ties such as 153.5, which
    float64 may hold as 153.4999..., round the way exact arithmetic would), so the stored
    grey value is within 0.5/255 of the exact weighted sum. Computed in chunks of float64
    to keep the memory of a 60000-image conversion small.

    Example:
        >>> rgb = torch.tensor([100, 50, 200], dtype=torch.uint8).view(1, 3, 1, 1)
        >>> greyscale_crop(rgb, (0.30, 0.11, 0.59), 1).item()
        154
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected (N, 3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}"
        )
    cropped = images[:, :, :crop, :crop]
    w = torch.tensor(weights, dtype=torch.float64).view(1, 3, 1, 1)
    out = torch.empty((images.shape[0], 1, *cropped.shape[2:]), dtype=torch.uint8)
    for start in range(0, images.shape[0], 4096):
        block = cropped[start : start + 4096].to(torch.float64)
        grey = (block * w).sum(dim=1, keepdim=True)
        out[start : start + 4096] = torch.floor(grey + 0.5 + 1e-9).clamp_(0, 255).to(torch.uint8)
    return out


@dataclasses.dataclass(frozen=True)
class CIFAR10GreySpec(DatasetSpec):
    """The "modified CIFAR-10" of MTL2L (Appendix B.2): grey, 28x28, for a 784-input MLP.

    grey = 0.30 R + 0.11 G + 0.59 B, the paper's own ratio ("0.30R + 0.59B + 0.11G": it
    gives blue the weight that the usual luma formula gives green; kept as published), then
    the first ``crop`` rows and columns. Stored rounded to uint8 (error <= 0.5/255).
    Assumption: the paper does not say how it normalised these images; we use 0.5/0.5.
    50000/10000 images (CIFAR-10, Krizhevsky, 2009).

    Args:
        weights: (R, G, B) weights, each in [0, 1], summing to at most 1.
        crop: rows and columns kept from the top-left, in [1, 32].
        mean, std: normalisation on the [0, 1] scale.
    """

    kind: ClassVar[str] = "cifar10-grey"
    sources = (SOURCE,)
    examples: ClassVar[int] = 60_000
    weights: tuple[float, float, float] = (0.30, 0.11, 0.59)
    crop: int = 28
    mean: float = 0.5
    std: float = 0.5

    def __post_init__(self) -> None:
        w = self.weights
        ok = isinstance(w, (tuple, list)) and len(w) == 3
        ok = ok and all(isinstance(v, Real) and not isinstance(v, bool) and 0 <= v <= 1 for v in w)
        if not ok or sum(w) > 1 + 1e-9 or sum(w) <= 0:
            raise ConfigError(
                f"invalid {self.kind} weights: expected 3 numbers (R, G, B) in [0, 1] with a sum "
                f"in (0, 1], got {w!r}"
            )
        set_field(self, "weights", tuple(float(v) for v in w))
        set_field(self, "crop", check_integer(self.kind, "crop", self.crop, 1, 32))
        check_normalisation(self)

    @property
    def name(self) -> str:
        return derived_name(self, "cifar10grey")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.crop, self.crop)

    @property
    def num_classes(self) -> int:
        return 10

    def _load(self, data_dir: Path, download: bool) -> Splits:
        SOURCE.ensure(data_dir, download=download, dataset=self.kind)
        train_x, train_y, test_x, test_y = SOURCE.read(data_dir)
        return checked_splits(
            self.kind,
            data_dir / SOURCE.folder,
            greyscale_crop(train_x, self.weights, self.crop),
            train_y,
            greyscale_crop(test_x, self.weights, self.crop),
            test_y,
            self.num_classes,
            self.mean,
            self.std,
        )
