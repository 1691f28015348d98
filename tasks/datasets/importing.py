"""``l2lbench data import``: copy verified dataset files into the data dir, all or nothing."""

from __future__ import annotations

import os
from pathlib import Path

from l2lbench.errors import DataMissingError, UsageError
from l2lbench.tasks.datasets.catalog import SOURCES, checksums, used_by
from l2lbench.tasks.datasets.idx import IDX_FILES
from l2lbench.tasks.datasets.sources import stage_copy


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
        cifar = SOURCES["CIFAR10"]
        raise DataMissingError(
            f"no dataset files found in {source_dir}: expected a torchvision layout such as "
            f"{source_dir}/MNIST/raw/{IDX_FILES[0]} (also FashionMNIST/raw/*.gz, KMNIST/raw/*.gz, "
            f"{cifar.archive} or {cifar.folder}/)"
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
                staged.append((rel, stage_copy(source_dir / rel, data_dir / rel, table[rel])))
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
            f"{SOURCES[key].dataset} (for {', '.join(used_by(key))}): {len(files)} file(s), "
            f"{size / 1e6:.1f} MB, md5 verified, copied to {', '.join(folders)}"
        )
    return lines
