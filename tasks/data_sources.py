"""Dataset files on disk: checksums, verification, extraction, download and import.

The benchmark trains on the original distributed files of MNIST, Fashion-MNIST, KMNIST
and CIFAR-10, laid out as torchvision lays them out under a *data dir*::

    DATA/MNIST/raw/train-images-idx3-ubyte.gz          (and the other three .gz files)
    DATA/FashionMNIST/raw/*.gz
    DATA/KMNIST/raw/*.gz
    DATA/cifar-10-python.tar.gz                        (and/or its extracted folder)
    DATA/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}

Every file is checked against the md5 that torchvision publishes for it before it is
parsed, because a truncated download would otherwise train silently on part of a dataset.
The checksums live in :data:`CHECKSUMS`, a copy of torchvision's published table, so that
tests can substitute the checksums of the tiny files they write while exercising the same
code path as production.

Files already on disk are parsed here (IDX with numpy, CIFAR-10 batches with a restricted
unpickler), never through torchvision: importing torchvision adds about 170 MB of resident
memory to the process, three times the size of MNIST itself. torchvision is imported only
to download files that are missing.

Nothing here writes a file in place: every write goes to a temporary file in the target
folder first and is moved over the final name with :func:`os.replace`, so a crash leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import pickle
import struct
import tarfile
import zlib
from pathlib import Path
from typing import IO
from urllib.error import URLError

import numpy as np
import torch

from l2lbench.atomic import temp_beside, write_atomically
from l2lbench.errors import DataCorruptError, DataMissingError, UsageError

#: source name (torchvision class name) -> path relative to the data dir -> md5 hex digest.
#: These are torchvision's published digests (``MNIST.resources``, ``CIFAR10.tgz_md5``, ...),
#: copied here so that loading files already on disk need not import torchvision; a test
#: keeps them equal to torchvision's. Tests patch whole entries with the md5s of tiny files.
CHECKSUMS: dict[str, dict[str, str]] = {
    "MNIST": {
        "MNIST/raw/train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "MNIST/raw/train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "MNIST/raw/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "MNIST/raw/t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "FashionMNIST": {
        "FashionMNIST/raw/train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "FashionMNIST/raw/train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "FashionMNIST/raw/t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "KMNIST": {
        "KMNIST/raw/train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "KMNIST/raw/train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "KMNIST/raw/t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "KMNIST/raw/t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    },
    "CIFAR10": {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
        "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
        "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
        "cifar-10-batches-py/batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
}

#: The four gzipped IDX files of every MNIST-style dataset, in DATA/<Name>/raw/.
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
CIFAR10_TEST = ("test_batch",)
CIFAR10_META = "batches.meta"

_HINT = "or set --data-dir / L2LBENCH_DATA"
_CHUNK = 1 << 20

RawSplits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def checksums(source: str) -> dict[str, str]:
    """md5 table of one source (``"MNIST"``, ``"CIFAR10"``, ...): path in the data dir -> md5.

    Looked up at each call (not bound at import) so that tests' patches of
    :data:`CHECKSUMS` take effect.
    """
    try:
        return CHECKSUMS[source]
    except KeyError:
        raise KeyError(
            f"no checksums known for dataset source {source!r}; expected one of {sorted(CHECKSUMS)}"
        ) from None


def md5_of(path: Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _corrupt(path: Path, expected: str, actual: str) -> DataCorruptError:
    return DataCorruptError(
        f"dataset file {path} fails its checksum: md5 {actual}, expected {expected} "
        "(truncated or wrong file?); delete it and download or import it again"
    )


def verify_file(path: Path, expected: str) -> None:
    """Raise :class:`DataCorruptError` naming ``path`` unless its md5 is ``expected``."""
    actual = md5_of(path)
    if actual != expected:
        raise _corrupt(path, expected, actual)


def _copy_hashing(reader: IO[bytes], writer: IO[bytes]) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    for chunk in iter(lambda: reader.read(_CHUNK), b""):
        digest.update(chunk)
        writer.write(chunk)
    return digest.hexdigest()


def _gzip_size(path: Path) -> int:
    """Uncompressed size recorded in a gzip trailer (ISIZE, modulo 2**32)."""
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return int.from_bytes(handle.read(4), "little")


def _missing_error(dataset: str, where: Path, download: bool, provide: str) -> DataMissingError:
    why = "could not be downloaded (no network?)" if download else "downloading is off"
    return DataMissingError(
        f"dataset {dataset!r} is not in {where} and {why}: run 'l2lbench data import DIR' "
        f"with {provide} from a machine with internet, {_HINT}"
    )


def _unwritable_error(dataset: str, where: Path, exc: OSError) -> DataMissingError:
    return DataMissingError(
        f"dataset {dataset!r}: cannot extract its files in {where} ({exc.strerror or exc}): "
        f"run 'l2lbench data import DIR' into a writable data dir, {_HINT}"
    )


_DOWNLOAD_ERRORS = (URLError, RuntimeError, OSError)
_PARSE_ERRORS = (
    AssertionError, RuntimeError, ValueError, TypeError, KeyError, EOFError, OSError,
    pickle.UnpicklingError,
)


@dataclasses.dataclass(frozen=True)
class IDXSource:
    """MNIST, Fashion-MNIST or KMNIST: four gzipped IDX files under ``DATA/<name>/raw``.

    Args:
        name: torchvision class and folder name (``"MNIST"``, ``"FashionMNIST"``, ``"KMNIST"``).
        dataset: the benchmark's name for it, for messages (``"mnist"``).
    """

    name: str
    dataset: str

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
        table = checksums(self.name)
        raw = data_dir / self.name / "raw"
        missing = [f for f in self.files if not (data_dir / f).is_file()]
        for rel in self.files:
            if rel not in missing:
                verify_file(data_dir / rel, table[rel])
        if missing:
            if not download:
                raise _missing_error(dataset, raw, False, self.provide)
            import torchvision.datasets as tvd

            try:
                getattr(tvd, self.name)(root=str(data_dir), train=True, download=True)
            except _DOWNLOAD_ERRORS as exc:
                raise _missing_error(dataset, raw, True, self.provide) from exc
            if any(not (data_dir / f).is_file() for f in missing):
                raise _missing_error(dataset, raw, True, self.provide)
            for rel in missing:
                verify_file(data_dir / rel, table[rel])
        for rel in self.files:
            try:
                _ensure_gunzipped(data_dir / rel)
            except OSError as exc:  # read-only folder, disk full, ...
                raise _unwritable_error(dataset, raw, exc) from exc

    def read(self, data_dir: Path) -> RawSplits:
        """Parse the extracted files: (N,28,28) uint8 images, (N,) int64 labels.

        The same tensors as torchvision's ``MNIST(...).data`` and ``.targets``, without
        importing torchvision (see the module docstring).
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


def _ensure_gunzipped(archive: Path) -> None:
    """Extract ``x.gz`` to ``x`` (what :func:`read_idx` parses) unless ``x`` has the right size."""
    target = archive.with_suffix("")
    expected = _gzip_size(archive)
    if target.is_file() and target.stat().st_size == expected:
        return

    def fill(handle: IO[bytes]) -> None:
        try:
            with gzip.open(archive, "rb") as src:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    handle.write(chunk)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataCorruptError(
                f"dataset file {archive} cannot be decompressed ({exc}); "
                "delete it and download or import it again"
            ) from exc

    write_atomically(target, fill)


@dataclasses.dataclass(frozen=True)
class CIFAR10Source:
    """CIFAR-10 (python version): the archive and/or its extracted batch folder in the data dir."""

    name: str = "CIFAR10"
    dataset: str = "cifar10"

    @property
    def members(self) -> tuple[str, ...]:
        names = (*CIFAR10_TRAIN, *CIFAR10_TEST, CIFAR10_META)
        return tuple(f"{CIFAR10_FOLDER}/{n}" for n in names)

    @property
    def provide(self) -> str:
        return f"DIR/{CIFAR10_ARCHIVE}"

    def ensure(self, data_dir: Path, *, download: bool, dataset: str) -> None:
        """Make a verified ``cifar-10-batches-py`` folder ready to be parsed.

        A verified archive in the data dir is the source of truth: batch files that are
        missing or fail their checksum are (re-)extracted from it. Without an archive a
        bad batch file raises, and missing ones are downloaded when ``download`` is set.
        """
        table = checksums(self.name)
        archive = data_dir / CIFAR10_ARCHIVE
        has_archive = archive.is_file()
        if has_archive:
            verify_file(archive, table[CIFAR10_ARCHIVE])
        redo = []
        for rel in self.members:
            path = data_dir / rel
            if not path.is_file():
                redo.append(rel)
                continue
            actual = md5_of(path)
            if actual != table[rel]:
                if not has_archive:
                    raise _corrupt(path, table[rel], actual)
                redo.append(rel)
        if not redo:
            return
        if has_archive:
            try:
                _extract_members(archive, data_dir, redo, table)
            except OSError as exc:
                raise _unwritable_error(dataset, data_dir, exc) from exc
            return
        where = data_dir / CIFAR10_FOLDER
        if not download:
            raise _missing_error(dataset, where, False, self.provide)
        try:
            _torchvision_cifar10(table)(root=str(data_dir), train=True, download=True)
        except _DOWNLOAD_ERRORS as exc:
            raise _missing_error(dataset, where, True, self.provide) from exc
        for rel in self.members:
            if not (data_dir / rel).is_file():
                raise _missing_error(dataset, where, True, self.provide)
            verify_file(data_dir / rel, table[rel])

    def read(self, data_dir: Path) -> RawSplits:
        """Parse the batches: (N,3,32,32) uint8 images, (N,) int64 labels.

        The same values as torchvision's ``CIFAR10(...).data`` (there NHWC) and
        ``.targets``, without importing torchvision (see the module docstring).
        """
        folder = data_dir / CIFAR10_FOLDER
        train_x, train_y = _read_cifar_batches([folder / n for n in CIFAR10_TRAIN])
        test_x, test_y = _read_cifar_batches([folder / n for n in CIFAR10_TEST])
        return train_x, train_y, test_x, test_y

    def importable(self, source_dir: Path) -> list[str]:
        """The archive if present, plus the extracted folder if it is there and complete."""
        found = [CIFAR10_ARCHIVE] if (source_dir / CIFAR10_ARCHIVE).is_file() else []
        present = [m for m in self.members if (source_dir / m).is_file()]
        if present and len(present) != len(self.members):
            lacking = [Path(m).name for m in self.members if m not in present]
            raise DataMissingError(
                f"{source_dir / CIFAR10_FOLDER} lacks {', '.join(lacking)}: import needs the "
                f"complete folder or {CIFAR10_ARCHIVE}"
            )
        return found + present


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
    except _PARSE_ERRORS as exc:
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


def _torchvision_cifar10(table: dict[str, str]) -> type:
    """torchvision's CIFAR10 reading its md5s from ``table`` (equal to its own in production).

    Used only to download: torchvision checks the archive and every batch against its class
    attributes, and routing those through :data:`CHECKSUMS` keeps one source of truth for
    the expected md5s (and lets tests exercise the download path with their own files).
    """
    from torchvision.datasets import CIFAR10

    def md5(name: str) -> str:
        return table[f"{CIFAR10_FOLDER}/{name}"]

    return type(
        "CIFAR10",
        (CIFAR10,),
        {
            "tgz_md5": table[CIFAR10_ARCHIVE],
            "train_list": [[n, md5(n)] for n in CIFAR10_TRAIN],
            "test_list": [[n, md5(n)] for n in CIFAR10_TEST],
            "meta": {**CIFAR10.meta, "md5": md5(CIFAR10_META)},
        },
    )


def _extract_members(
    archive: Path, data_dir: Path, members: list[str], table: dict[str, str]
) -> None:
    """Extract the named regular files of a verified tar archive, verifying each one.

    Only the expected member names are read (never ``extractall``), so an archive cannot
    write outside the data dir.
    """
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for rel in members:
                try:
                    info = tar.getmember(rel)
                except KeyError:
                    raise DataCorruptError(
                        f"dataset archive {archive} has no member {rel}"
                    ) from None
                src = tar.extractfile(info) if info.isfile() else None
                if src is None:
                    raise DataCorruptError(f"dataset archive {archive}: member {rel} is not a file")
                dest = data_dir / rel

                def fill(handle: IO[bytes], src: IO[bytes] = src, dest: Path = dest) -> None:
                    actual = _copy_hashing(src, handle)
                    if actual != table[rel]:
                        raise _corrupt(dest, table[rel], actual)

                write_atomically(dest, fill)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataCorruptError(f"dataset archive {archive} cannot be read ({exc})") from exc


SOURCES: dict[str, IDXSource | CIFAR10Source] = {
    "MNIST": IDXSource("MNIST", "mnist"),
    "FashionMNIST": IDXSource("FashionMNIST", "fashion-mnist"),
    "KMNIST": IDXSource("KMNIST", "kmnist"),
    "CIFAR10": CIFAR10Source(),
}

_USED_BY = {
    "MNIST": "mnist, rotated-mnist, permuted-mnist",
    "FashionMNIST": "fashion-mnist",
    "KMNIST": "kmnist",
    "CIFAR10": "cifar10-grey",
}


def import_archives(source_dir: Path, data_dir: Path) -> list[str]:
    """Copy verified dataset files from a torchvision-style folder into the data dir.

    For machines without internet: fetch the files elsewhere (or let torchvision download
    them there), carry the folder over, and run ``l2lbench data import DIR``. Every file is
    hashed while it is copied to a temporary file beside its destination; only when every
    file of every dataset found has passed is anything moved into place, so a bad file
    leaves the data dir as it was. ``source_dir`` is only read.

    Args:
        source_dir: laid out as a torchvision root: ``MNIST/raw/*.gz``,
            ``FashionMNIST/raw/*.gz``, ``KMNIST/raw/*.gz``, ``cifar-10-python.tar.gz``
            and/or ``cifar-10-batches-py/``.
        data_dir: the benchmark's data dir; created if needed.

    Returns:
        One line per dataset imported, for people.

    Raises:
        DataCorruptError: a file's md5 is not the published one (names file, expected, actual).
        DataMissingError: nothing importable in ``source_dir``, or a dataset only partly there.
        UsageError: ``data_dir`` would write into ``source_dir``.
    """
    source_dir, data_dir = Path(source_dir).expanduser(), Path(data_dir).expanduser()
    if not source_dir.is_dir():
        raise DataMissingError(f"import folder {source_dir} does not exist or is not a folder")
    plan = [(key, files) for key, src in SOURCES.items() if (files := src.importable(source_dir))]
    if not plan:
        raise DataMissingError(
            f"no dataset files found in {source_dir}: expected a torchvision layout such as "
            f"{source_dir}/MNIST/raw/{IDX_FILES[0]} (also FashionMNIST/raw/*.gz, KMNIST/raw/*.gz, "
            f"{CIFAR10_ARCHIVE} or {CIFAR10_FOLDER}/)"
        )
    source_root = source_dir.resolve()
    for _, files in plan:
        for rel in files:
            if (data_dir / rel).resolve().is_relative_to(source_root):
                raise UsageError(
                    f"data dir {data_dir} would write into the import folder {source_dir}: "
                    "pick a data dir outside it"
                )

    staged: list[tuple[str, Path]] = []
    try:
        for key, files in plan:
            table = checksums(key)
            for rel in files:
                staged.append((rel, _stage_copy(source_dir / rel, data_dir / rel, table[rel])))
        for rel, tmp in staged:
            os.replace(tmp, data_dir / rel)
        staged.clear()
    finally:
        for _, tmp in staged:
            tmp.unlink(missing_ok=True)

    lines = []
    for key, files in plan:
        size = sum((data_dir / rel).stat().st_size for rel in files)
        folders = sorted({str(data_dir / Path(rel).parent) for rel in files})
        lines.append(
            f"{SOURCES[key].dataset} (for {_USED_BY[key]}): {len(files)} file(s), "
            f"{size / 1e6:.1f} MB, md5 verified, copied to {', '.join(folders)}"
        )
    return lines


def _stage_copy(src: Path, dest: Path, expected: str) -> Path:
    """Copy ``src`` to a temporary file beside ``dest`` while hashing it; return the temp path."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(dest, ".part")
    try:
        with os.fdopen(fd, "wb") as writer, open(src, "rb") as reader:
            actual = _copy_hashing(reader, writer)
        if actual != expected:
            raise _corrupt(src, expected, actual)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
