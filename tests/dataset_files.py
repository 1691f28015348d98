"""Tiny dataset files in the original distributed formats, for the dataset tests.

The real archives are tens of megabytes and mostly unavailable offline, so the tests
write a few images in exactly the formats the loaders read (gzipped IDX for the MNIST
family, pickled python batches for CIFAR-10) and patch the expected checksums with the
md5s these helpers return.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = ["test_batch"]


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, then data.

    Images are 3-d (magic 2051), labels 1-d (magic 2049).
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def write_gzip(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 makes the archive bytes, hence the md5, reproducible
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(data)


def make_idx_arrays(n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 uint8 images and labels in 0..9 for a train and a test split."""
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_idx_dataset(root: Path, folder: str, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Write ``root/<folder>/raw/*.gz`` as in the original distribution.

    Returns:
        path relative to ``root`` -> md5, the shape of ``CHECKSUMS[folder]``.
    """
    md5s = {}
    for (split, what), name in IDX_NAMES.items():
        rel = f"{folder}/raw/{name}"
        write_gzip(Path(root) / rel, idx_bytes(arrays[f"{split}_{what}"]))
        md5s[rel] = md5(Path(root) / rel)
    return md5s


def make_cifar_arrays(per_batch: int = 3, n_test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Random (N, 3, 32, 32) uint8 images and labels: 5 train batches of ``per_batch``."""
    rng = np.random.default_rng(seed)
    n_train = 5 * per_batch
    return {
        "train_images": rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.int64),
        "test_images": rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.int64),
    }


def py2_pickle(obj: object) -> bytes:
    """A protocol-2 pickle whose byte strings are Python 2 ``str`` opcodes.

    The CIFAR-10 batches were pickled by Python 2, so their keys load as ``b"data"`` with
    ``encoding="bytes"`` and as ``"data"`` with ``encoding="latin1"`` (torchvision's
    choice); Python 3's own pickler cannot write such strings, hence this small encoder.
    Byte strings, dicts and lists are encoded here; anything else (ints, numpy arrays)
    by the standard pickler with memoisation off, so that the pieces can be concatenated.
    """
    out = bytearray(b"\x80\x02")
    _py2_body(obj, out)
    return bytes(out + b".")


def _py2_body(obj: object, out: bytearray) -> None:
    if isinstance(obj, bytes):
        if len(obj) < 256:
            out += b"U" + bytes([len(obj)]) + obj  # SHORT_BINSTRING
        else:
            out += b"T" + struct.pack("<I", len(obj)) + obj  # BINSTRING
    elif isinstance(obj, dict):
        out += b"}("  # EMPTY_DICT, MARK
        for key, value in obj.items():
            _py2_body(key, out)
            _py2_body(value, out)
        out += b"u"  # SETITEMS
    elif isinstance(obj, list):
        out += b"]("  # EMPTY_LIST, MARK
        for value in obj:
            _py2_body(value, out)
        out += b"e"  # APPENDS
    else:
        buf = io.BytesIO()
        pickler = pickle.Pickler(buf, protocol=2)
        pickler.fast = True  # no memo (PUT/GET), so the opcodes stand alone
        pickler.dump(obj)
        out += buf.getvalue()[2:-1]  # drop PROTO 2 and STOP


def _batch(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    # rows of 3072 bytes: the 1024 red values (row-major), then green, then blue
    entry = {
        b"batch_label": name.encode(),
        b"labels": [int(v) for v in labels],
        b"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), 3 * 32 * 32),
        b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))],
    }
    return py2_pickle(entry)


def write_cifar10(
    root: Path, arrays: dict[str, np.ndarray], *, folder: bool = True, archive: bool = False
) -> dict[str, str]:
    """Write ``root/cifar-10-batches-py/`` and/or ``root/cifar-10-python.tar.gz``.

    Returns:
        path relative to ``root`` -> md5 for the archive and every batch file (the batch md5s
        are returned even when only the archive is written), the shape of ``CHECKSUMS["CIFAR10"]``.
    """
    root = Path(root)
    per_batch = len(arrays["train_images"]) // 5
    members: dict[str, bytes] = {}
    for i, name in enumerate(CIFAR_TRAIN):
        part = slice(i * per_batch, (i + 1) * per_batch)
        members[name] = _batch(arrays["train_images"][part], arrays["train_labels"][part], name)
    members["test_batch"] = _batch(arrays["test_images"], arrays["test_labels"], "test_batch")
    labels = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    labels += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    members["batches.meta"] = py2_pickle(
        {b"num_cases_per_batch": per_batch, b"label_names": labels, b"num_vis": 3072}
    )

    md5s = {f"cifar-10-batches-py/{n}": hashlib.md5(b).hexdigest() for n, b in members.items()}
    if folder:
        for name, data in members.items():
            path = root / "cifar-10-batches-py" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    md5s["cifar-10-python.tar.gz"] = hashlib.md5(buf.getvalue()).hexdigest()
    if archive:
        root.mkdir(parents=True, exist_ok=True)
        (root / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    return md5s


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every entry under ``root``, to prove it untouched."""
    root = Path(root)
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }
