"""Dataset specs: which images a task trains on, loaded once into memory as uint8.

A dataset spec is a small frozen dataclass (see :mod:`l2lbench.specs`): its config and
hash key stored results, its ``name`` is derived from its fields for people. ``load``
returns :class:`Splits`, the whole train, validation and test sets as uint8 tensors plus
the normalisation to apply, because the harness samples mini-batches by index from seeded
generators (no DataLoader, no worker processes, no per-batch decoding); keeping the
stored form uint8 keeps MNIST at 55 MB and makes the pixel values exact.

**Three splits.** Every dataset's validation split is carved from its training split by one
rule (:func:`with_validation`): the last sixth of the training images, in file order, not
stratified (MNIST, Fashion-MNIST, KMNIST: 10,000 of 60,000, leaving 50,000 to train on;
CIFAR-10: 8,333 of 50,000). The test split is never touched. Rotated and permuted MNIST
transform MNIST's three splits; the synthetic dataset's ``n_train`` images are split the same
way. Training, meta-training and every choice the harness makes (tuning, selection) read
the training and validation splits only; the test split is evaluated and reported.

Kinds:

============== ================= ==================================================
kind           example name      data
============== ================= ==================================================
mnist          ``mnist``         MNIST (LeCun et al., 1998)
fashion-mnist  ``fashion-mnist`` Fashion-MNIST (Xiao et al., 2017)
kmnist         ``kmnist``        Kuzushiji-MNIST (Clanuwat et al., 2018)
cifar10-grey   ``cifar10grey``   CIFAR-10 made 28x28 grey as in MTL2L, Appendix B.2
rotated-mnist  ``rotmnist45``    MNIST rotated by a fixed angle (DomainBed domains)
permuted-mnist ``permmnist-s0``  MNIST with one fixed pixel permutation
synthetic      ``synthetic``     class prototypes plus noise; needs no files
============== ================= ==================================================

Example:
    >>> spec = dataset_from_config({"kind": "rotated-mnist", "angle": 45})
    >>> spec.name, spec.input_shape, spec.num_classes
    ('rotmnist45', (1, 28, 28), 10)
    >>> splits = SyntheticSpec(n_train=60, n_test=16).load(Path("unused"))
    >>> splits.train_images.shape, splits.train_images.dtype, len(splits.validation_labels)
    (torch.Size([50, 1, 28, 28]), torch.uint8, 10)
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from numbers import Real
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

from l2lbench.errors import ConfigError, DataCorruptError
from l2lbench.hashing import derive_seed
from l2lbench.specs import build_spec, format_value, non_default_fields

from .data_sources import CHECKSUMS, SOURCES, checksums, import_archives

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "CIFAR10GreySpec",
    "DatasetSpec",
    "FashionMNISTSpec",
    "KMNISTSpec",
    "MNISTSpec",
    "PermutedMNISTSpec",
    "RotatedMNISTSpec",
    "Splits",
    "SyntheticSpec",
    "checksums",
    "clear_cache",
    "dataset_from_config",
    "default_data_dir",
    "greyscale_crop",
    "import_archives",
    "load_splits",
    "with_validation",
]

#: MNIST normalisation used throughout the literature (mean and std of the training pixels).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """A dataset in memory: uint8 images, int64 labels, and the normalisation to apply.

    The harness feeds ``(images.float() / 255 - mean) / std`` to the learner (see
    :meth:`normalise`). Loads are cached and shared, so never modify these tensors in place.
    A dataset's ``_load`` gives the files' train and test sets; :func:`load_splits` then
    carves the validation split out of the training images (:func:`with_validation`).

    Attributes:
        train_images: (N, C, H, W) uint8.
        train_labels: (N,) int64 in [0, num_classes).
        test_images: (M, C, H, W) uint8.
        test_labels: (M,) int64.
        mean, std: normalisation on the [0, 1] pixel scale.
        validation_images, validation_labels: (V, C, H, W) uint8 and (V,) int64; ``None``
            only before :func:`with_validation`.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: float
    std: float
    validation_images: torch.Tensor | None = None
    validation_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        splits = ("train", "test") + (("validation",) if self.validation_images is not None else ())
        for split in splits:
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(
                    f"invalid {split}_images: expected a (N, C, H, W) uint8 tensor, "
                    f"got {tuple(images.shape)} {images.dtype}"
                )
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"invalid {split}_labels: expected ({images.shape[0]},) int64, "
                    f"got {tuple(labels.shape)} {labels.dtype}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"train and test images differ in shape: {tuple(self.train_images.shape[1:])} "
                f"vs {tuple(self.test_images.shape[1:])}"
            )
        if not (math.isfinite(self.std) and self.std > 0 and math.isfinite(self.mean)):
            raise ValueError(
                "invalid normalisation: expected finite mean and std > 0, "
                f"got {self.mean}, {self.std}"
            )

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32 ``(x / 255 - mean) / std``."""
        return normalise(images, self.mean, self.std)


#: The validation split is the last 1/VALIDATION_SHARE of the training images.
VALIDATION_SHARE = 6


def with_validation(splits: Splits) -> Splits:
    """``splits`` with the last sixth of its training images (at least one) moved into the
    validation split, in file order; unchanged when it already has one (a dataset derived
    from another's carved splits, e.g. rotated MNIST)."""
    if splits.validation_images is not None:
        return splits
    n = len(splits.train_labels)
    held = max(1, n // VALIDATION_SHARE)
    if n - held < 1:
        raise ValueError(f"a training split of {n} image(s) leaves none to train on after the validation split (expected at least 2)")
    return dataclasses.replace(
        splits,
        train_images=splits.train_images[: n - held],
        train_labels=splits.train_labels[: n - held],
        validation_images=splits.train_images[n - held :],
        validation_labels=splits.train_labels[n - held :],
    )


def normalise(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 pixels -> float32 ``(x / 255 - mean) / std`` (torchvision ToTensor + Normalize).

    The one place this formula lives: the runner applies it to every minibatch on the
    device, so the uint8 data never needs a float copy of the whole training set. The
    arithmetic runs in place on the one float copy (the same numbers as out of place).
    """
    return images.to(torch.float32, copy=True).div_(255.0).sub_(mean).div_(std)


# --------------------------------------------------------------------------- validation


def _number(
    kind: str, field: str, value: Any, lo: float, hi: float, *, lo_open: bool = False
) -> float:
    """``value`` as a float in [lo, hi] (or (lo, hi]); a one-line ConfigError otherwise."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise ConfigError(
            f"invalid {kind} {field}: expected a number in {bracket}{lo:g}, {hi:g}], got {value!r}"
        )
    return float(value)


def _integer(kind: str, field: str, value: Any, lo: int, hi: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi):
        raise ConfigError(
            f"invalid {kind} {field}: expected an integer in [{lo}, {hi}], got {value!r}"
        )
    return int(value)


def _set(spec: Any, field: str, value: Any) -> None:
    """Store a normalised field value on a frozen spec (45 -> 45.0 keeps hashes equal)."""
    object.__setattr__(spec, field, value)


def _check_normalisation(spec: Any) -> None:
    _set(spec, "mean", _number(spec.kind, "mean", spec.mean, 0.0, 1.0))
    _set(spec, "std", _number(spec.kind, "std", spec.std, 0.0, 1.0, lo_open=True))


# --------------------------------------------------------------------------- names


def _format(value: Any) -> str:
    """:func:`format_value`, falling back to ``repr`` for floats that ``%g`` would round.

    Names must differ whenever fields differ, and ``%g`` keeps only 6 significant digits.
    """
    if isinstance(value, float) and float(format_value(value)) != value:
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "x".join(_format(v) for v in value)
    return format_value(value)


def _derived_name(spec: Any, base: str, *, shown: tuple[str, ...] = ()) -> str:
    """``base`` then ``-<field><value>`` for each non-default field not already in ``base``."""
    extra = [f"{k}{_format(v)}" for k, v in non_default_fields(spec).items() if k not in shown]
    return "-".join([base, *extra])


# --------------------------------------------------------------------------- specs


class DatasetSpec:
    """Base of the dataset specs: a frozen dataclass with ``kind`` and derived ``name``."""

    kind: ClassVar[str]

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image, without loading anything."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    #: Training plus test images, for estimating a job's memory before loading anything
    #: (the MNIST family's 60,000 + 10,000; a dataset of another size says so).
    examples: ClassVar[int] = 70_000

    @property
    def num_examples(self) -> int:
        """Training plus test images (an estimate where the files decide)."""
        return self.examples

    def load(self, data_dir: Path, *, download: bool = True) -> Splits:
        """Load both splits into memory, once per process (see :func:`load_splits`).

        Raises:
            DataMissingError: the files are not in ``data_dir`` and cannot be downloaded.
            DataCorruptError: a file fails its checksum or cannot be parsed.
        """
        return load_splits(self, data_dir, download=download)

    def _load(self, data_dir: Path, download: bool) -> Splits:
        raise NotImplementedError


class _TorchvisionIDX(DatasetSpec):
    """MNIST-style datasets: four gzipped IDX files, verified, extracted and parsed (torchvision
    only downloads them)."""

    _source: ClassVar[str]
    mean: float
    std: float

    def __post_init__(self) -> None:
        _check_normalisation(self)

    @property
    def name(self) -> str:
        return _derived_name(self, self.kind)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    @property
    def num_classes(self) -> int:
        return 10

    def _load(self, data_dir: Path, download: bool) -> Splits:
        source = SOURCES[self._source]
        source.ensure(data_dir, download=download, dataset=self.kind)
        train_x, train_y, test_x, test_y = source.read(data_dir)
        return _checked_splits(
            self.kind,
            data_dir / self._source / "raw",
            train_x.unsqueeze(1),
            train_y,
            test_x.unsqueeze(1),
            test_y,
            self.num_classes,
            self.mean,
            self.std,
        )


@dataclasses.dataclass(frozen=True)
class MNISTSpec(_TorchvisionIDX):
    """MNIST handwritten digits, 60000/10000 images of 1x28x28 (LeCun et al., 1998)."""

    kind: ClassVar[str] = "mnist"
    _source: ClassVar[str] = "MNIST"
    mean: float = MNIST_MEAN
    std: float = MNIST_STD


@dataclasses.dataclass(frozen=True)
class FashionMNISTSpec(_TorchvisionIDX):
    """Fashion-MNIST clothing images, 60000/10000 of 1x28x28 (Xiao et al., 2017).

    Normalised with 0.5/0.5 (to [-1, 1]), the usual choice for it; its pixel statistics
    are about 0.286/0.353.
    """

    kind: ClassVar[str] = "fashion-mnist"
    _source: ClassVar[str] = "FashionMNIST"
    mean: float = 0.5
    std: float = 0.5


@dataclasses.dataclass(frozen=True)
class KMNISTSpec(_TorchvisionIDX):
    """Kuzushiji-MNIST cursive hiragana, 60000/10000 of 1x28x28 (Clanuwat et al., 2018).

    Normalised with 0.5/0.5 (to [-1, 1]).
    """

    kind: ClassVar[str] = "kmnist"
    _source: ClassVar[str] = "KMNIST"
    mean: float = 0.5
    std: float = 0.5


def _checked_splits(
    dataset: str,
    where: Path,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    mean: float,
    std: float,
) -> Splits:
    """Splits from parsed files, refusing files that parse but do not fit together."""
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.dtype != torch.uint8 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise DataCorruptError(
                f"dataset {dataset!r} in {where}: {split} split has {x.shape[0]} {x.dtype} images "
                f"but {y.shape[0]} labels; delete the files and download or import them again"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataCorruptError(
                f"dataset {dataset!r} in {where}: {split} labels outside [0, {num_classes}): "
                f"found {int(y.min())}..{int(y.max())}"
            )
    return Splits(
        train_images=train_x.contiguous(),
        train_labels=train_y.to(torch.int64).contiguous(),
        test_images=test_x.contiguous(),
        test_labels=test_y.to(torch.int64).contiguous(),
        mean=mean,
        std=std,
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
        _set(self, "weights", tuple(float(v) for v in w))
        _set(self, "crop", _integer(self.kind, "crop", self.crop, 1, 32))
        _check_normalisation(self)

    @property
    def name(self) -> str:
        return _derived_name(self, "cifar10grey")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.crop, self.crop)

    @property
    def num_classes(self) -> int:
        return 10

    def _load(self, data_dir: Path, download: bool) -> Splits:
        source = SOURCES["CIFAR10"]
        source.ensure(data_dir, download=download, dataset=self.kind)
        train_x, train_y, test_x, test_y = source.read(data_dir)
        return _checked_splits(
            self.kind,
            data_dir / "cifar-10-batches-py",
            greyscale_crop(train_x, self.weights, self.crop),
            train_y,
            greyscale_crop(test_x, self.weights, self.crop),
            test_y,
            self.num_classes,
            self.mean,
            self.std,
        )


@dataclasses.dataclass(frozen=True)
class RotatedMNISTSpec(DatasetSpec):
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
    angle: float
    mean: float = MNIST_MEAN
    std: float = MNIST_STD

    def __post_init__(self) -> None:
        _set(self, "angle", _number(self.kind, "angle (degrees)", self.angle, -360.0, 360.0))
        _check_normalisation(self)

    @property
    def name(self) -> str:
        return _derived_name(self, f"rotmnist{_format(self.angle)}", shown=("angle",))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    @property
    def num_classes(self) -> int:
        return 10

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


@dataclasses.dataclass(frozen=True)
class PermutedMNISTSpec(DatasetSpec):
    """MNIST with one fixed permutation of the 784 pixels, the same for every image.

    The permutation is ``torch.randperm(784, generator=torch.Generator().manual_seed(seed))``,
    so a seed names the same task in every process (Goodfellow et al., 2014; Kirkpatrick et
    al., 2017). It destroys spatial structure but not what an MLP can learn.

    Args:
        seed: in [0, 2**63 - 1]; part of the name (``permmnist-s0``).
        mean, std: normalisation (MNIST's by default; permuting keeps the pixel statistics).
    """

    kind: ClassVar[str] = "permuted-mnist"
    seed: int = 0
    mean: float = MNIST_MEAN
    std: float = MNIST_STD

    def __post_init__(self) -> None:
        _set(self, "seed", _integer(self.kind, "seed", self.seed, 0, 2**63 - 1))
        _check_normalisation(self)

    @property
    def name(self) -> str:
        return _derived_name(self, f"permmnist-s{self.seed}", shown=("seed",))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    @property
    def num_classes(self) -> int:
        return 10

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
        _set(self, "seed", _integer(self.kind, "seed", self.seed, 0, 2**63 - 1))
        # At least 2: one to train on and one for the validation split.
        _set(self, "n_train", _integer(self.kind, "n_train", self.n_train, 2, 1_000_000))
        _set(self, "n_test", _integer(self.kind, "n_test", self.n_test, 1, 1_000_000))
        _set(self, "num_classes", _integer(self.kind, "num_classes", self.num_classes, 2, 256))
        _set(self, "size", _integer(self.kind, "size", self.size, 4, 128))
        _check_normalisation(self)

    @property
    def name(self) -> str:
        return _derived_name(self, "synthetic")

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


#: kind -> spec class, the built-in datasets.
DATASETS: dict[str, type[DatasetSpec]] = {
    "mnist": MNISTSpec,
    "fashion-mnist": FashionMNISTSpec,
    "kmnist": KMNISTSpec,
    "cifar10-grey": CIFAR10GreySpec,
    "rotated-mnist": RotatedMNISTSpec,
    "permuted-mnist": PermutedMNISTSpec,
    "synthetic": SyntheticSpec,
}


def dataset_from_config(config: Mapping[str, Any]) -> DatasetSpec:
    """Build a dataset spec from ``{"kind": ..., field: value}`` (ConfigError on bad input).

    >>> dataset_from_config({"kind": "permuted-mnist", "seed": 3}).name
    'permmnist-s3'
    """
    return build_spec(DATASETS, config, "dataset")


def default_data_dir() -> Path:
    """``$L2LBENCH_DATA`` if set, else the per-user cache folder ``.../l2lbench/data``."""
    env = os.environ.get("L2LBENCH_DATA")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("l2lbench")) / "data"


# --------------------------------------------------------------------------- cache

_CACHE: dict[tuple[DatasetSpec, Path], Splits] = {}
_CACHE_LOCK = threading.RLock()


def load_splits(spec: DatasetSpec, data_dir: Path | str, *, download: bool = True) -> Splits:
    """``spec``'s splits, loaded at most once per (spec, resolved data dir) in a process.

    ``download`` is not part of the key: it only matters when files are missing, and then
    nothing was cached. Failed loads are not cached, so importing the files and calling
    again works without a restart.
    """
    key = (spec, Path(data_dir).expanduser().resolve())
    with _CACHE_LOCK:
        splits = _CACHE.get(key)
        if splits is None:
            splits = with_validation(spec._load(key[1], download))
            _CACHE[key] = splits
        return splits


def clear_cache() -> None:
    """Forget every loaded dataset (tests; freeing memory between suites)."""
    with _CACHE_LOCK:
        _CACHE.clear()
