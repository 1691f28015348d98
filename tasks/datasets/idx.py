"""MNIST-style datasets: four gzipped IDX files under ``DATA/<Name>/raw``.

The format, the source that finds, verifies, downloads and extracts the files, and the
spec base class of every dataset stored this way (MNIST, Fashion-MNIST, KMNIST). A new
dataset in this layout needs only its spec class, its md5s and an :class:`IDXSource` (see
:mod:`l2lbench.tasks.datasets.kmnist`).
"""

from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np
import torch

from l2lbench.errors import DataCorruptError, DataMissingError
from l2lbench.tasks.datasets.base import DatasetSpec, Splits, check_normalisation, checked_splits, derived_name
from l2lbench.tasks.datasets.sources import (
    DOWNLOAD_ERRORS,
    RawSplits,
    ensure_gunzipped,
    expected_md5s,
    missing_error,
    unwritable_error,
    verify_file,
)

#: The four gzipped IDX files of every MNIST-style dataset, in DATA/<Name>/raw/.
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclasses.dataclass(frozen=True, eq=False)
class IDXSource:
    """MNIST, Fashion-MNIST or KMNIST: four gzipped IDX files under ``DATA/<name>/raw``.

    Args:
        name: torchvision class and folder name (``"MNIST"``, ``"FashionMNIST"``, ``"KMNIST"``);
            torchvision's class of that name downloads missing files.
        dataset: the benchmark's name for it, for messages (``"mnist"``).
        checksums: ``<name>/raw/<file>.gz`` -> published md5, for the four files.
    """

    name: str
    dataset: str
    checksums: Mapping[str, str] = dataclasses.field(repr=False)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f"{self.name}/raw/{f}" for f in IDX_FILES)

    @property
    def provide(self) -> str:
        return f"DIR/{self.name}/raw/*.gz"

    def ensure(self, data_dir: Path, *, download: bool, dataset: str) -> None:
        """Make verified archives and their extracted files ready to be parsed.

        Archives already present are verified first (a bad one raises at once rather
        than being "repaired" by a download that the network may not allow); missing
        ones are downloaded by torchvision when ``download`` is set; every extracted file
        is re-extracted from its verified archive unless its size matches the archive's.
        """
        table = expected_md5s(self)
        raw = data_dir / self.name / "raw"
        missing = [f for f in self.files if not (data_dir / f).is_file()]
        for rel in self.files:
            if rel not in missing:
                verify_file(data_dir / rel, table[rel])
        if missing:
            if not download:
                raise missing_error(dataset, raw, False, self.provide)
            import torchvision.datasets as tvd

            try:
                getattr(tvd, self.name)(root=str(data_dir), train=True, download=True)
            except DOWNLOAD_ERRORS as exc:
                raise missing_error(dataset, raw, True, self.provide) from exc
            if any(not (data_dir / f).is_file() for f in missing):
                raise missing_error(dataset, raw, True, self.provide)
            for rel in missing:
                verify_file(data_dir / rel, table[rel])
        for rel in self.files:
            try:
                ensure_gunzipped(data_dir / rel)
            except OSError as exc:  # read-only folder, disk full, ...
                raise unwritable_error(dataset, raw, exc) from exc

    def read(self, data_dir: Path) -> RawSplits:
        """Parse the extracted files: (N,28,28) uint8 images, (N,) int64 labels.

        The same tensors as torchvision's ``MNIST(...).data`` and ``.targets``, without
        importing torchvision (see :mod:`l2lbench.tasks.datasets.sources`).
        """
        raw = data_dir / self.name / "raw"
        legacy = data_dir / self.name / "processed"
        if (legacy / "training.pt").is_file() and (legacy / "test.pt").is_file():
            # caches of torchvision < 0.9, which it would read instead of the verified raw files
            raise DataCorruptError(
                f"dataset {self.dataset!r}: {legacy} holds torchvision's old training.pt/test.pt, "
                "which would be read instead of the verified archives; delete that folder"
            )
        splits = []
        for prefix in ("train", "t10k"):
            images = read_idx(raw / f"{prefix}-images-idx3-ubyte", (28, 28))
            labels = read_idx(raw / f"{prefix}-labels-idx1-ubyte", ())
            splits += [torch.from_numpy(images), torch.from_numpy(labels).to(torch.int64)]
        train_x, train_y, test_x, test_y = splits
        return train_x, train_y, test_x, test_y

    def importable(self, source_dir: Path) -> list[str]:
        """The files to import from ``source_dir``: all four, or none if none is there."""
        present = [f for f in self.files if (source_dir / f).is_file()]
        if present and len(present) != len(self.files):
            lacking = [Path(f).name for f in self.files if f not in present]
            raise DataMissingError(
                f"{source_dir / self.name / 'raw'} lacks {', '.join(lacking)}: "
                f"import needs all four files of {self.dataset!r} ({', '.join(IDX_FILES)})"
            )
        return present


class MNISTShaped:
    """1x28x28 greyscale images in 10 classes: MNIST, its look-alikes and its transforms."""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    @property
    def num_classes(self) -> int:
        return 10


class IDXDatasetSpec(MNISTShaped, DatasetSpec):
    """Base of the MNIST-style dataset specs: 10 classes of 1x28x28 images in IDX files.

    A subclass is a frozen dataclass with ``kind``, ``sources = (its IDXSource,)`` and
    ``mean``/``std`` fields; its name is its kind plus any non-default field.
    """

    sources: ClassVar[tuple[IDXSource, ...]]
    mean: float
    std: float

    def __post_init__(self) -> None:
        check_normalisation(self)

    @property
    def name(self) -> str:
        return derived_name(self, self.kind)

    def _load(self, data_dir: Path, download: bool) -> Splits:
        (source,) = self.sources
        source.ensure(data_dir, download=download, dataset=self.kind)
        train_x, train_y, test_x, test_y = source.read(data_dir)
        return checked_splits(
            self.kind,
            data_dir / source.name / "raw",
            train_x.unsqueeze(1),
            train_y,
            test_x.unsqueeze(1),
            test_y,
            self.num_classes,
            self.mean,
            self.std,
        )


#: Type byte of unsigned 8-bit data in an IDX magic number (0x0000 <type> <ndim>).
_IDX_UBYTE = 0x08


def read_idx(path: Path, item_shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 array stored in an (uncompressed) IDX file, checked item shape and size.

    IDX, the format of MNIST and its look-alikes: a big-endian uint32 magic
    ``0x000008<ndim>`` (``0x08``: unsigned bytes), ``ndim`` big-endian uint32 dimensions,
    then the values in row-major order. The file must hold exactly the values its header
    announces, so a truncated or padded file is refused rather than read as a smaller
    dataset.

    Args:
        path: the extracted file, e.g. ``DATA/MNIST/raw/train-images-idx3-ubyte``.
        item_shape: the shape of one item after the leading count: ``(28, 28)`` for
            images (magic 0x00000803), ``()`` for labels (magic 0x00000801).

    Returns:
        An array of shape ``(N, *item_shape)`` that owns its memory (writable, so
        :func:`torch.from_numpy` shares it without a copy or a warning).

    Raises:
        DataCorruptError: bad magic, other item shape, wrong size or unreadable file;
            the message names the file.
    """
    ndim = 1 + len(item_shape)
    header_size = 4 * (1 + ndim)
    magic_expected = (_IDX_UBYTE << 8) | ndim
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header = handle.read(header_size)
    except OSError as exc:
        raise _idx_error(path, exc.strerror or str(exc)) from exc
    if len(header) < header_size:
        raise _idx_error(
            path, f"{size} bytes, shorter than the {header_size}-byte header of {ndim}-d data"
        )
    magic, *dims = struct.unpack(f">{1 + ndim}I", header)
    if magic != magic_expected:
        raise _idx_error(
            path, f"magic 0x{magic:08x}, expected 0x{magic_expected:08x} for {ndim}-d uint8 data"
        )
    if tuple(dims[1:]) != item_shape:
        wanted = ", ".join(["N", *map(str, item_shape)]) + ("," if not item_shape else "")
        raise _idx_error(path, f"dimensions {tuple(dims)}, expected ({wanted})")
    count = math.prod(dims)
    if size != header_size + count:
        raise _idx_error(
            path,
            f"{size} bytes, expected {header_size + count} for dimensions {tuple(dims)} "
            "(truncated or padded)",
        )
    try:
        values = np.fromfile(path, dtype=np.uint8, count=count, offset=header_size)
    except OSError as exc:
        raise _idx_error(path, exc.strerror or str(exc)) from exc
    if values.size != count:  # the file shrank between the size check and the read
        raise _idx_error(path, f"{values.size} values read, expected {count}")
    return values.reshape(dims)


def _idx_error(path: Path, reason: str) -> DataCorruptError:
    return DataCorruptError(
        f"dataset files in {path.parent} cannot be parsed as IDX ({path.name}: {reason}); "
        "delete them and download or import them again"
    )
