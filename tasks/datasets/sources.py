"""Dataset files on disk: checksums, verification, extraction and the messages around them.

The benchmark trains on the original distributed files of each dataset, laid out as
torchvision lays them out under a *data dir* (``DATA/MNIST/raw/*.gz``,
``DATA/cifar-10-python.tar.gz``, ...). A *source* is one such set of files: its name, the
md5 of every file, how to check that they are there, download the missing ones, parse
them, and pick them out of a folder for ``l2lbench data import``. The formats live in
:mod:`~l2lbench.tasks.datasets.idx` (MNIST and its look-alikes) and
:mod:`~l2lbench.tasks.datasets.cifar` (pickled CIFAR batches); each dataset's file declares
its own source and md5s.

Every file is checked against its published md5 before it is parsed, because a truncated
download would otherwise train silently on part of a dataset. The md5s of the built-in
sources are looked up in :data:`l2lbench.tasks.datasets.CHECKSUMS` at each check, so that
tests can substitute the checksums of the tiny files they write while exercising the same
code path as production.

Files already on disk are parsed here, never through torchvision: importing torchvision
adds about 170 MB of resident memory to the process, three times the size of MNIST
itself. torchvision is imported only to download files that are missing.

Nothing here writes a file in place: every write goes to a temporary file in the target
folder first and is moved over the final name with :func:`os.replace`, so a crash leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import IO, Any, Mapping, Protocol
from urllib.error import URLError

import torch

from l2lbench.errors import DataCorruptError, DataMissingError
from l2lbench.store.atomic import temp_beside, write_atomically

RawSplits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

_HINT = "or set --data-dir / L2LBENCH_DATA"
_CHUNK = 1 << 20

DOWNLOAD_ERRORS = (URLError, RuntimeError, OSError)
PARSE_ERRORS = (
    AssertionError, RuntimeError, ValueError, TypeError, KeyError, EOFError, OSError,
    pickle.UnpicklingError,
)


class Source(Protocol):
    """One dataset's files in the data dir (see :class:`~l2lbench.tasks.datasets.idx.IDXSource`).

    ``name`` keys :data:`~l2lbench.tasks.datasets.CHECKSUMS`; ``dataset`` names it in
    messages; ``checksums`` maps each file's path in the data dir to its published md5.
    """

    name: str
    dataset: str
    checksums: Mapping[str, str]

    def ensure(self, data_dir: Path, *, download: bool, dataset: str) -> None: ...

    def read(self, data_dir: Path) -> RawSplits: ...

    def importable(self, source_dir: Path) -> list[str]: ...


def expected_md5s(source: Any) -> Mapping[str, str]:
    """The md5 table that ``source``'s files are checked against.

    A built-in source's table is read from ``CHECKSUMS`` at each call (not bound at
    import) so that tests' patches take effect; any other source brings its own.
    """
    from l2lbench.tasks.datasets import catalog  # it imports the dataset files, which import this

    if catalog.SOURCES.get(source.name) is source:
        return catalog.checksums(source.name)
    return source.checksums


def md5_of(path: Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def corrupt_error(path: Path, expected: str, actual: str) -> DataCorruptError:
    return DataCorruptError(
        f"dataset file {path} fails its checksum: md5 {actual}, expected {expected} "
        "(truncated or wrong file?); delete it and download or import it again"
    )


def verify_file(path: Path, expected: str) -> None:
    """Raise :class:`DataCorruptError` naming ``path`` unless its md5 is ``expected``."""
    actual = md5_of(path)
    if actual != expected:
        raise corrupt_error(path, expected, actual)


def copy_hashing(reader: IO[bytes], writer: IO[bytes]) -> str:
    """Copy ``reader`` to ``writer``; return the hex md5 of what was copied."""
    digest = hashlib.md5(usedforsecurity=False)
    for chunk in iter(lambda: reader.read(_CHUNK), b""):
        digest.update(chunk)
        writer.write(chunk)
    return digest.hexdigest()


def missing_error(dataset: str, where: Path, download: bool, provide: str) -> DataMissingError:
    why = "could not be downloaded (no network?)" if download else "downloading is off"
    return DataMissingError(
        f"dataset {dataset!r} is not in {where} and {why}: run 'l2lbench data import DIR' "
        f"with {provide} from a machine with internet, {_HINT}"
    )


def unwritable_error(dataset: str, where: Path, exc: OSError) -> DataMissingError:
    return DataMissingError(
        f"dataset {dataset!r}: cannot extract its files in {where} ({exc.strerror or exc}): "
        f"run 'l2lbench data import DIR' into a writable data dir, {_HINT}"
    )


def _gzip_size(path: Path) -> int:
    """Uncompressed size recorded in a gzip trailer (ISIZE, modulo 2**32)."""
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return int.from_bytes(handle.read(4), "little")


def ensure_gunzipped(archive: Path) -> None:
    """Extract ``x.gz`` to ``x`` unless ``x`` already has the size the archive records."""
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


def extract_members(
    archive: Path, data_dir: Path, members: list[str], table: Mapping[str, str]
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
                    actual = copy_hashing(src, handle)
                    if actual != table[rel]:
                        raise corrupt_error(dest, table[rel], actual)

                write_atomically(dest, fill)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataCorruptError(f"dataset archive {archive} cannot be read ({exc})") from exc


def stage_copy(src: Path, dest: Path, expected: str) -> Path:
    """Copy ``src`` to a temporary file beside ``dest`` while hashing it; return the temp path."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(dest, ".part")
    try:
        with os.fdopen(fd, "wb") as writer, open(src, "rb") as reader:
            actual = copy_hashing(reader, writer)
        if actual != expected:
            raise corrupt_error(src, expected, actual)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
