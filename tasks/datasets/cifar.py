"""CIFAR-style datasets: pickled batches, as a ``.tar.gz`` archive and/or its extracted folder.

The reader (a restricted unpickler: a verified batch can still name any callable) and the
source that verifies, extracts and downloads the files. The file names and md5s of a
particular dataset live in its own file (:mod:`l2lbench.tasks.datasets.cifar10_grey`).
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from l2lbench.errors import DataCorruptError, DataMissingError
from l2lbench.tasks.datasets.sources import (
    DOWNLOAD_ERRORS,
    PARSE_ERRORS,
    RawSplits,
    corrupt_error,
    expected_md5s,
    extract_members,
    md5_of,
    missing_error,
    unwritable_error,
    verify_file,
)


@dataclasses.dataclass(frozen=True, eq=False)
class CIFARSource:
    """A CIFAR-10-style dataset (python version): the archive and/or its batch folder.

    Args:
        name: key of its md5 table and torchvision's class name (``"CIFAR10"``), whose
            class downloads missing files.
        dataset: the benchmark's name for it, for messages (``"cifar10"``).
        checksums: path in the data dir (the archive, ``<folder>/<batch>``) -> published md5.
        archive: the archive's file name in the data dir.
        folder: the folder the archive extracts to.
        train, test: the batch files of each split, in order.
        meta: the metadata file in the folder.
    """

    name: str
    dataset: str
    checksums: Mapping[str, str] = dataclasses.field(repr=False)
    archive: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str

    @property
    def members(self) -> tuple[str, ...]:
        names = (*self.train, *self.test, self.meta)
        return tuple(f"{self.folder}/{n}" for n in names)

    @property
    def provide(self) -> str:
        return f"DIR/{self.archive}"

    def ensure(self, data_dir: Path, *, download: bool, dataset: str) -> None:
        """Make a verified batch folder ready to be parsed.

        A verified archive in the data dir is the source of truth: batch files that are
        missing or fail their checksum are (re-)extracted from it. Without an archive a
        bad batch file raises, and missing ones are downloaded when ``download`` is set.
        """
        table = expected_md5s(self)
        archive = data_dir / self.archive
        has_archive = archive.is_file()
        if has_archive:
            verify_file(archive, table[self.archive])
        redo = []
        for rel in self.members:
            path = data_dir / rel
            if not path.is_file():
                redo.append(rel)
                continue
            actual = md5_of(path)
            if actual != table[rel]:
                if not has_archive:
                    raise corrupt_error(path, table[rel], actual)
                redo.append(rel)
        if not redo:
            return
        if has_archive:
            try:
                extract_members(archive, data_dir, redo, table)
            except OSError as exc:
                raise unwritable_error(dataset, data_dir, exc) from exc
            return
        where = data_dir / self.folder
        if not download:
            raise missing_error(dataset, where, False, self.provide)
        try:
            self.torchvision_class(table)(root=str(data_dir), train=True, download=True)
        except DOWNLOAD_ERRORS as exc:
            raise missing_error(dataset, where, True, self.provide) from exc
        for rel in self.members:
            if not (data_dir / rel).is_file():
                raise missing_error(dataset, where, True, self.provide)
            verify_file(data_dir / rel, table[rel])

    def read(self, data_dir: Path) -> RawSplits:
        """Parse the batches: (N,3,32,32) uint8 images, (N,) int64 labels.

        The same values as torchvision's ``CIFAR10(...).data`` (there NHWC) and
        ``.targets``, without importing torchvision (see :mod:`l2lbench.tasks.datasets.sources`).
        """
        folder = data_dir / self.folder
        train_x, train_y = _read_cifar_batches([folder / n for n in self.train])
        test_x, test_y = _read_cifar_batches([folder / n for n in self.test])
        return train_x, train_y, test_x, test_y

    def importable(self, source_dir: Path) -> list[str]:
        """The archive if present, plus the extracted folder if it is there and complete."""
        found = [self.archive] if (source_dir / self.archive).is_file() else []
        present = [m for m in self.members if (source_dir / m).is_file()]
        if present and len(present) != len(self.members):
            lacking = [Path(m).name for m in self.members if m not in present]
            raise DataMissingError(
                f"{source_dir / self.folder} lacks {', '.join(lacking)}: import needs the "
                f"complete folder or {self.archive}"
            )
        return found + present

    def torchvision_class(self, table: Mapping[str, str]) -> type:
        """torchvision's class of this name, reading its md5s from ``table``.

        Used only to download: torchvision checks the archive and every batch against its
        class attributes, and routing those through ``table`` (equal to its own in
        production) keeps one source of truth for the expected md5s and lets tests exercise
        the download path with their own files.
        """
        import torchvision.datasets as tvd

        base = getattr(tvd, self.name)

        def md5(name: str) -> str:
            return table[f"{self.folder}/{name}"]

        return type(
            self.name,
            (base,),
            {
                "tgz_md5": table[self.archive],
                "train_list": [[n, md5(n)] for n in self.train],
                "test_list": [[n, md5(n)] for n in self.test],
                "meta": {**base.meta, "md5": md5(self.meta)},
            },
        )


#: The only globals a CIFAR-10 batch may name: what unpickling a numpy array needs.
_CIFAR10_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),  # arrays pickled by numpy < 2 (the originals)
    ("numpy._core.multiarray", "_reconstruct"),  # arrays pickled by numpy >= 2
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
})
_CIFAR10_ROW = 3 * 32 * 32


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that can build dicts, lists and numpy arrays but call nothing else.

    The batches are md5-verified before they are read, but a pickle can run any callable
    it names; refusing all but numpy's reconstruction keeps a bad file a parse error.
    """

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _CIFAR10_GLOBALS:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed; expected only numpy arrays"
            )
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N,3,32,32) uint8 images and (N,) int64 labels of one pickled CIFAR-10 batch.

    A batch is a Python 2 pickle of a dict whose ``data`` is an (N, 3072) uint8 array
    (each row the 1024 red values, then green, then blue, row-major) and whose ``labels``
    is a list of N ints. Read with ``encoding="latin1"`` as torchvision does, which gives
    ``str`` keys and the arrays' raw bytes unchanged.

    Raises:
        DataCorruptError: unreadable, not such a dict, or an unexpected global; names the file.
    """
    try:
        with open(path, "rb") as handle:
            entry = _BatchUnpickler(handle, encoding="latin1").load()
    except PARSE_ERRORS as exc:
        raise _cifar_error(path, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(entry, dict):
        raise _cifar_error(path, f"a pickled {type(entry).__name__}, expected a dict")
    data = entry.get("data")
    is_array = isinstance(data, np.ndarray)
    if not (is_array and data.dtype == np.uint8 and data.shape[1:] == (_CIFAR10_ROW,)):
        found = f"{data.shape} {data.dtype}" if is_array else type(data).__name__
        raise _cifar_error(path, f"'data' is {found}, expected (N, {_CIFAR10_ROW}) uint8")
    labels = entry.get("labels")
    is_list = isinstance(labels, list)
    if not (is_list and len(labels) == len(data) and all(type(v) is int for v in labels)):
        found = f"a list of {len(labels)}" if is_list else type(labels).__name__
        raise _cifar_error(path, f"'labels' is {found}, expected a list of {len(data)} ints")
    return data.reshape(-1, 3, 32, 32), np.array(labels, dtype=np.int64)


def _read_cifar_batches(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """The batches in ``paths`` read and joined in order: (N,3,32,32) uint8, (N,) int64."""
    batches = [read_cifar_batch(p) for p in paths]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return torch.from_numpy(images), torch.from_numpy(labels)


def _cifar_error(path: Path, reason: str) -> DataCorruptError:
    return DataCorruptError(
        f"dataset files in {path.parent} cannot be parsed as CIFAR-10 batches "
        f"({path.name}: {reason}); delete them and download or import them again"
    )
