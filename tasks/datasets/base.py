"""What every dataset shares: the spec base class, the in-memory splits, the validation
split, normalisation, field checks, derived names and the per-process load cache.

A dataset is a frozen dataclass subclassing :class:`DatasetSpec` (one file per dataset in
this package, or a third-party module registered under the entry-point group
``l2lbench.datasets``). Its config and hash key stored results; its ``name`` is derived
from its fields for people.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from numbers import Real
from pathlib import Path
from typing import Any, ClassVar

import torch

from l2lbench.errors import ConfigError, DataCorruptError
from l2lbench.spec.base import format_value, non_default_fields
from l2lbench.tasks.datasets.sources import Source

__all__ = [
    "VALIDATION_SHARE",
    "DatasetSpec",
    "Splits",
    "check_integer",
    "check_normalisation",
    "check_number",
    "checked_splits",
    "clear_cache",
    "default_data_dir",
    "derived_name",
    "format_field",
    "load_splits",
    "normalise",
    "set_field",
    "with_validation",
]


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


def checked_splits(
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


# --------------------------------------------------------------------------- field checks


def check_number(
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


def check_integer(kind: str, field: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi]; a one-line ConfigError otherwise (bools refused)."""
    if not (isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi):
        raise ConfigError(
            f"invalid {kind} {field}: expected an integer in [{lo}, {hi}], got {value!r}"
        )
    return int(value)


def set_field(spec: Any, field: str, value: Any) -> None:
    """Store a normalised field value on a frozen spec (45 -> 45.0 keeps hashes equal)."""
    object.__setattr__(spec, field, value)


def check_normalisation(spec: Any) -> None:
    """Check and normalise a spec's ``mean`` in [0, 1] and ``std`` in (0, 1]."""
    set_field(spec, "mean", check_number(spec.kind, "mean", spec.mean, 0.0, 1.0))
    set_field(spec, "std", check_number(spec.kind, "std", spec.std, 0.0, 1.0, lo_open=True))


# --------------------------------------------------------------------------- names


def format_field(value: Any) -> str:
    """:func:`format_value`, falling back to ``repr`` for floats that ``%g`` would round.

    Names must differ whenever fields differ, and ``%g`` keeps only 6 significant digits.

    >>> format_field(0.5), format_field(0.1234567), format_field((0.3, 0.11))
    ('0.5', '0.1234567', '0.3x0.11')
    """
    if isinstance(value, float) and float(format_value(value)) != value:
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "x".join(format_field(v) for v in value)
    return format_value(value)


def derived_name(spec: Any, base: str, *, shown: tuple[str, ...] = ()) -> str:
    """``base`` then ``-<field><value>`` for each non-default field not already in ``base``."""
    extra = [f"{k}{format_field(v)}" for k, v in non_default_fields(spec).items() if k not in shown]
    return "-".join([base, *extra])


# --------------------------------------------------------------------------- spec base


class DatasetSpec:
    """Base of the dataset specs: a frozen dataclass with ``kind`` and a derived ``name``.

    A subclass defines ``kind``, ``name``, ``input_shape``, ``num_classes`` and
    ``_load(data_dir, download) -> Splits`` (the files' train and test sets; the validation
    split and the cache are added here). ``sources`` names the files it reads, so that
    ``l2lbench data import`` can say which datasets a source serves.
    """

    kind: ClassVar[str]

    #: The file sources (see :mod:`l2lbench.tasks.datasets.sources`) this dataset reads.
    sources: ClassVar[tuple[Source, ...]] = ()

    #: Training plus test images, for estimating a job's memory before loading anything
    #: (the MNIST family's 60,000 + 10,000; a dataset of another size says so).
    examples: ClassVar[int] = 70_000

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
