"""Tests of l2lbench.tasks.datasets on tiny files in the original formats.

No test touches the network or /work/shared: every data dir is a tmp_path, expected
checksums are patched to the md5s of the files the tests write, and download URLs are
pointed at a closed local port so that the real download code path fails fast.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import platformdirs
import pytest
import torch
import torchvision

import l2lbench.tasks.datasets as datasets
import l2lbench.tasks.datasets.cifar as cifar
import l2lbench.tasks.datasets.cifar10_grey as cifar10_grey
import l2lbench.tasks.datasets.idx as idx
from l2lbench.errors import ConfigError, DataCorruptError, DataMissingError, UsageError
from l2lbench.spec.hashing import content_hash
from l2lbench.spec.base import spec_config, spec_hash
from l2lbench.tasks.datasets import (
    CHECKSUMS,
    DATASETS,
    CIFAR10GreySpec,
    FashionMNISTSpec,
    KMNISTSpec,
    MNISTSpec,
    PermutedMNISTSpec,
    RotatedMNISTSpec,
    Splits,
    SyntheticSpec,
    clear_cache,
    dataset_from_config,
    default_data_dir,
    greyscale_crop,
    import_archives,
    load_splits,
)


def _load_helpers():
    # --import-mode=importlib keeps tests/ off sys.path, so load the sibling by file
    path = Path(__file__).with_name("dataset_files.py")
    spec = importlib.util.spec_from_file_location("l2lbench_tests_dataset_files", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


files = _load_helpers()

IDX_KINDS = {  # spec class -> torchvision folder / CHECKSUMS key
    MNISTSpec: "MNIST",
    FashionMNISTSpec: "FashionMNIST",
    KMNISTSpec: "KMNIST",
}
CLOSED_URL = "http://127.0.0.1:9/"  # discard port: connection refused at once


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Point every download at a closed local port: the real code path, failing fast."""
    for name in IDX_KINDS.values():
        monkeypatch.setattr(getattr(torchvision.datasets, name), "mirrors", [CLOSED_URL])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", CLOSED_URL + "cifar-10-python.tar.gz")


def write_idx(monkeypatch, root: Path, folder: str, **kwargs) -> dict[str, np.ndarray]:
    arrays = files.make_idx_arrays(**kwargs)
    monkeypatch.setitem(CHECKSUMS, folder, files.write_idx_dataset(root, folder, arrays))
    return arrays


def write_cifar(monkeypatch, root: Path, arrays=None, **kwargs) -> dict[str, np.ndarray]:
    arrays = arrays if arrays is not None else files.make_cifar_arrays()
    monkeypatch.setitem(CHECKSUMS, "CIFAR10", files.write_cifar10(root, arrays, **kwargs))
    return arrays


def whole_train(splits: Splits, what: str = "images") -> torch.Tensor:
    """The files' training set: the training split followed by the validation split carved from its end."""
    return torch.cat([getattr(splits, f"train_{what}"), getattr(splits, f"validation_{what}")])


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- readers


@pytest.mark.parametrize("cls", list(IDX_KINDS), ids=lambda c: c.kind)
def test_idx_reader_returns_exact_pixels_and_labels(tmp_path, monkeypatch, cls):
    arrays = write_idx(monkeypatch, tmp_path, IDX_KINDS[cls])
    splits = cls().load(tmp_path, download=False)

    assert isinstance(splits, Splits)
    # The files' 6 training images: the first 5 to train on, the last sixth (1) to validate.
    assert splits.train_images.shape == (5, 1, 28, 28)
    assert splits.validation_images.shape == (1, 1, 28, 28)
    assert splits.test_images.shape == (4, 1, 28, 28)
    assert splits.train_images.dtype == torch.uint8 and splits.train_labels.dtype == torch.int64
    assert np.array_equal(splits.train_images[:, 0].numpy(), arrays["train_images"][:5])
    assert np.array_equal(splits.validation_images[:, 0].numpy(), arrays["train_images"][5:])
    assert np.array_equal(splits.test_images[:, 0].numpy(), arrays["test_images"])
    assert splits.train_labels.tolist() == arrays["train_labels"][:5].tolist()
    assert splits.validation_labels.tolist() == arrays["train_labels"][5:].tolist()
    assert splits.test_labels.tolist() == arrays["test_labels"].tolist()
    assert (splits.mean, splits.std) == (cls().mean, cls().std)
    assert cls().input_shape == (1, 28, 28) and cls().num_classes == 10
    # the parser reads the extracted files, which the loader made from the archives
    assert (tmp_path / IDX_KINDS[cls] / "raw" / "train-images-idx3-ubyte").is_file()


@pytest.mark.parametrize("folder", ["MNIST", "FashionMNIST", "KMNIST", "CIFAR10"])
def test_own_parsers_give_torchvisions_tensors(tmp_path, monkeypatch, folder):
    """The numpy/pickle parsers return what torchvision's dataset classes hold."""
    if folder == "CIFAR10":
        write_cifar(monkeypatch, tmp_path)
        CIFAR10GreySpec().load(tmp_path, download=False)
        reference = cifar10_grey.SOURCE.torchvision_class(CHECKSUMS["CIFAR10"])
    else:
        write_idx(monkeypatch, tmp_path, folder)
        next(c for c, f in IDX_KINDS.items() if f == folder)().load(tmp_path, download=False)
        reference = getattr(torchvision.datasets, folder)

    ours = datasets.SOURCES[folder].read(tmp_path)

    theirs = []
    for train in (True, False):
        tv = reference(root=str(tmp_path), train=train, download=False)
        if folder == "CIFAR10":  # torchvision keeps NHWC numpy and a list of labels
            theirs += [torch.from_numpy(tv.data).permute(0, 3, 1, 2), torch.tensor(tv.targets)]
        else:
            theirs += [tv.data, tv.targets]
    for mine, expected in zip(ours, theirs):
        assert mine.dtype == expected.dtype and mine.shape == expected.shape
        assert torch.equal(mine, expected) and mine.is_contiguous()


def test_loading_files_on_disk_does_not_import_torchvision(tmp_path, monkeypatch):
    # torchvision costs ~170 MB of resident memory; a fresh process has a clean sys.modules
    tables = {f: files.write_idx_dataset(tmp_path, f, files.make_idx_arrays()) for f in
              IDX_KINDS.values()}
    tables["CIFAR10"] = files.write_cifar10(tmp_path, files.make_cifar_arrays())
    code = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        import l2lbench.tasks.datasets as d

        d.CHECKSUMS.update(json.loads(sys.argv[2]))
        specs = [d.MNISTSpec(), d.FashionMNISTSpec(), d.KMNISTSpec(), d.CIFAR10GreySpec(),
                 d.PermutedMNISTSpec()]
        for spec in specs:
            spec.load(Path(sys.argv[1]), download=False)
        imported = sorted(m for m in sys.modules if m.partition(".")[0] == "torchvision")
        assert not imported, f"loading imported {imported}"
        print("loaded", len(specs))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), json.dumps(tables)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded 5"


def _malformed_idx(arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, bytes, str]]:
    """case -> (file name, uncompressed content, text the error must contain)."""
    images = files.idx_bytes(arrays["train_images"])  # 6 images: 16 + 6*28*28 = 4720 bytes
    labels = files.idx_bytes(arrays["test_labels"])  # 4 labels: 8 + 4 = 12 bytes
    name = files.IDX_NAMES
    return {
        "bad-magic": (name["train", "images"], b"\0\0\x09\x03" + images[4:],
                      "magic 0x00000903, expected 0x00000803"),
        "labels-as-images": (name["test", "labels"], images, "expected 0x00000801"),
        "truncated": (name["train", "images"], images[:-5], "4715 bytes, expected 4720"),
        "padded": (name["test", "labels"], labels + b"\0", "13 bytes, expected 12"),
        "short-header": (name["test", "labels"], labels[:6], "6 bytes, shorter than"),
        "not-28x28": (name["train", "images"], files.idx_bytes(arrays["train_images"][:, 1:]),
                      "dimensions (6, 27, 28), expected (N, 28, 28)"),
    }


@pytest.mark.parametrize("case", list(_malformed_idx(files.make_idx_arrays())))
def test_malformed_idx_file_is_one_line_corrupt_error_naming_it(tmp_path, monkeypatch, case):
    arrays = write_idx(monkeypatch, tmp_path, "MNIST")
    name, content, needle = _malformed_idx(arrays)[case]
    archive = tmp_path / "MNIST" / "raw" / name
    files.write_gzip(archive, content)
    CHECKSUMS["MNIST"][f"MNIST/raw/{name}"] = files.md5(archive)  # the test's own table

    with pytest.raises(DataCorruptError) as exc:
        MNISTSpec().load(tmp_path, download=False)

    message = one_line(exc)
    raw = tmp_path / "MNIST" / "raw"
    assert f"dataset files in {raw} cannot be parsed as IDX ({archive.stem}: " in message
    assert needle in message and "download or import them again" in message


def test_idx_parser_reads_labels_and_refuses_a_missing_file(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(struct.pack(">II", 0x801, 3) + bytes([7, 0, 9]))
    labels = idx.read_idx(path, ())
    assert labels.dtype == np.uint8 and labels.tolist() == [7, 0, 9] and labels.flags.writeable
    with pytest.raises(DataCorruptError, match="nowhere-idx1-ubyte: No such file"):
        idx.read_idx(tmp_path / "nowhere-idx1-ubyte", ())


def _py2_array(array: np.ndarray) -> bytes:
    """Pickle opcodes for a 2-d uint8 array as Python 2 with numpy < 2 wrote them.

    That is the form of the published CIFAR-10 batches: globals
    ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``, and the
    raw bytes as a Python 2 ``str``; the test helpers' pickler would write numpy 2's names.
    """
    rows, cols = array.shape
    dtype = (b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
             b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    raw = array.tobytes()
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        + b"(K\x01J" + struct.pack("<i", rows) + b"J" + struct.pack("<i", cols) + b"\x86"
        + dtype + b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb"
    )


def test_cifar_batch_in_the_original_python2_numpy1_form_is_read(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    batch = (b"\x80\x02}(U\x04data" + _py2_array(images.reshape(3, -1))
             + b"U\x06labels](K\x07K\x00K\x09eu.")
    path = tmp_path / "data_batch_1"
    path.write_bytes(batch)

    x, y = cifar.read_cifar_batch(path)

    assert x.dtype == np.uint8 and np.array_equal(x, images)
    assert y.dtype == np.int64 and y.tolist() == [7, 0, 9]


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"\x80\x02cos\nsystem\nU\x04true\x85R.", "global os.system is not allowed"),
        (files.py2_pickle({b"data": np.zeros((2, 5), np.uint8), b"labels": [1, 2]}),
         "'data' is (2, 5) uint8, expected (N, 3072) uint8"),
        (files.py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}),
         "'labels' is a list of 1, expected a list of 2 ints"),
        (files.py2_pickle({b"data": np.zeros((1, 3072), np.uint8), b"labels": [b"3"]}),
         "'labels' is a list of 1, expected a list of 1 ints"),
        (b"\x80\x02]q\x00.", "a pickled list, expected a dict"),
        (b"\x80\x02}(U\x04data", "EOFError"),
    ],
    ids=["foreign-global", "data-shape", "label-count", "label-type", "not-a-dict", "truncated"],
)
def test_malformed_cifar_batch_is_one_line_corrupt_error_naming_it(
    tmp_path, monkeypatch, content, needle
):
    write_cifar(monkeypatch, tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(content)
    CHECKSUMS["CIFAR10"]["cifar-10-batches-py/data_batch_2"] = files.md5(batch)

    with pytest.raises(DataCorruptError) as exc:
        CIFAR10GreySpec().load(tmp_path, download=False)

    message = one_line(exc)
    assert f"in {batch.parent} cannot be parsed as CIFAR-10 batches (data_batch_2: " in message
    assert needle in message


def test_default_normalisations():
    assert (MNISTSpec().mean, MNISTSpec().std) == (0.1307, 0.3081)
    assert (FashionMNISTSpec().mean, FashionMNISTSpec().std) == (0.5, 0.5)
    assert (KMNISTSpec().mean, KMNISTSpec().std) == (0.5, 0.5)
    assert (CIFAR10GreySpec().mean, CIFAR10GreySpec().std) == (0.5, 0.5)


def test_load_is_cached_per_spec_and_resolved_dir(tmp_path, monkeypatch):
    write_idx(monkeypatch, tmp_path, "MNIST")
    first = MNISTSpec().load(tmp_path, download=False)
    assert MNISTSpec().load(tmp_path / "MNIST" / "..", download=False) is first
    assert load_splits(MNISTSpec(), str(tmp_path)) is first
    assert MNISTSpec(mean=0.5).load(tmp_path) is not first


def test_splits_normalise_and_validate():
    splits = SyntheticSpec(n_train=4, n_test=2).load(Path("unused"))
    x = splits.normalise(torch.tensor([0, 255], dtype=torch.uint8))
    assert torch.allclose(x, torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match="train_images"):
        dataclasses.replace(splits, train_images=splits.train_images.float())
    with pytest.raises(ValueError, match="test_labels"):
        dataclasses.replace(splits, test_labels=splits.test_labels[:1])


# --------------------------------------------------------------------------- CIFAR-10 grey


def test_greyscale_crop_on_hand_computed_pixels():
    rgb = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    rgb[0, :, 0, 0] = torch.tensor([100, 50, 200])  # 30 + 5.5 + 118 = 153.5 -> 154
    rgb[0, :, 27, 27] = torch.tensor([255, 255, 255])  # weights sum to 1 -> 255
    rgb[0, :, 0, 1] = torch.tensor([10, 0, 0])  # 3.0 -> 3
    rgb[0, :, 1, 0] = torch.tensor([0, 0, 1])  # 0.59 -> 1
    rgb[0, :, 28:, :] = 255  # rows 28-31 and columns 28-31 are dropped
    rgb[0, :, :, 28:] = 255

    grey = greyscale_crop(rgb, (0.30, 0.11, 0.59), 28)

    assert grey.shape == (1, 1, 28, 28) and grey.dtype == torch.uint8
    assert grey[0, 0, 0, 0] == round(0.30 * 100 + 0.11 * 50 + 0.59 * 200) == 154
    assert grey[0, 0, 27, 27] == 255
    assert grey[0, 0, 0, 1] == 3 and grey[0, 0, 1, 0] == 1
    assert int(grey.sum()) == 154 + 255 + 3 + 1  # nothing from the cropped-off border


def test_cifar10_grey_reader_matches_formula(tmp_path, monkeypatch):
    arrays = files.make_cifar_arrays()
    arrays["train_images"][0, :, 0, 0] = [100, 50, 200]
    write_cifar(monkeypatch, tmp_path, arrays)

    splits = CIFAR10GreySpec().load(tmp_path, download=False)

    def expected(rgb: np.ndarray) -> np.ndarray:
        r, g, b = (rgb[:, c, :28, :28].astype(np.float64) for c in range(3))
        return np.floor(0.30 * r + 0.11 * g + 0.59 * b + 0.5 + 1e-9).astype(np.uint8)[:, None]

    assert whole_train(splits).shape == (15, 1, 28, 28) and len(splits.validation_labels) == 2
    assert splits.test_images.shape == (4, 1, 28, 28)
    assert splits.train_images.dtype == torch.uint8 and splits.test_labels.dtype == torch.int64
    assert splits.train_images[0, 0, 0, 0] == 154
    assert np.array_equal(whole_train(splits).numpy(), expected(arrays["train_images"]))
    assert np.array_equal(splits.test_images.numpy(), expected(arrays["test_images"]))
    assert whole_train(splits, "labels").tolist() == arrays["train_labels"].tolist()
    assert splits.test_labels.tolist() == arrays["test_labels"].tolist()

    full = CIFAR10GreySpec(weights=(1.0, 0.0, 0.0), crop=32).load(tmp_path, download=False)
    assert CIFAR10GreySpec(crop=32).input_shape == (1, 32, 32)
    assert np.array_equal(whole_train(full)[:, 0].numpy(), arrays["train_images"][:, 0])


def test_cifar10_from_archive_only_extracts_verified_members(tmp_path, monkeypatch):
    arrays = write_cifar(monkeypatch, tmp_path, folder=False, archive=True)
    splits = CIFAR10GreySpec(weights=(0.0, 1.0, 0.0)).load(tmp_path, download=False)
    assert np.array_equal(splits.test_images[:, 0].numpy(), arrays["test_images"][:, 1, :28, :28])
    assert (tmp_path / "cifar-10-batches-py" / "batches.meta").is_file()
    assert not list(tmp_path.rglob("*.part"))


def test_cifar10_corrupt_batch_is_reextracted_from_a_verified_archive(tmp_path, monkeypatch):
    arrays = write_cifar(monkeypatch, tmp_path, folder=True, archive=True)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    splits = CIFAR10GreySpec().load(tmp_path, download=False)
    assert len(whole_train(splits, "labels")) == len(arrays["train_labels"])
    assert files.md5(batch) == CHECKSUMS["CIFAR10"]["cifar-10-batches-py/data_batch_3"]


def test_cifar10_corrupt_batch_without_archive_raises_naming_it(tmp_path, monkeypatch):
    write_cifar(monkeypatch, tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-10])
    with pytest.raises(DataCorruptError) as exc:
        CIFAR10GreySpec().load(tmp_path, download=False)
    message = one_line(exc)
    assert str(batch) in message
    assert CHECKSUMS["CIFAR10"]["cifar-10-batches-py/test_batch"] in message
    assert files.md5(batch) in message


# --------------------------------------------------------------------------- rotated / permuted


def test_rotation_by_90_degrees_is_counter_clockwise_rot90():
    image = (torch.arange(28 * 28) % 251).to(torch.uint8).view(1, 1, 28, 28)
    rotated = RotatedMNISTSpec(angle=90).rotate(image)
    assert torch.equal(rotated, torch.rot90(image, 1, dims=(-2, -1)))

    corner = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    corner[0, 0, 0, 27] = 200  # top right
    turned = RotatedMNISTSpec(angle=90).rotate(corner)
    assert turned[0, 0, 0, 0] == 200 and int(turned.sum()) == 200  # now top left


def test_rotation_by_0_is_identity_and_45_keeps_dtype(tmp_path, monkeypatch):
    write_idx(monkeypatch, tmp_path, "MNIST")
    mnist = MNISTSpec().load(tmp_path, download=False)
    same = RotatedMNISTSpec(angle=0).load(tmp_path, download=False)
    assert torch.equal(same.train_images, mnist.train_images)
    assert same.train_labels is mnist.train_labels  # reuses the cached MNIST load

    rotated = RotatedMNISTSpec(angle=45).load(tmp_path, download=False)
    assert rotated.train_images.dtype == torch.uint8
    assert rotated.train_images.shape == (5, 1, 28, 28) and rotated.validation_images.shape == (1, 1, 28, 28)
    assert not torch.equal(rotated.train_images, mnist.train_images)
    assert torch.equal(rotated.test_labels, mnist.test_labels)
    assert (rotated.mean, rotated.std) == (0.1307, 0.3081)
    r90 = RotatedMNISTSpec(angle=90).load(tmp_path, download=False)
    assert torch.equal(r90.test_images, torch.rot90(mnist.test_images, 1, dims=(-2, -1)))
    assert torch.equal(r90.validation_images, torch.rot90(mnist.validation_images, 1, dims=(-2, -1)))


def test_derived_mnist_datasets_parse_the_files_once(tmp_path, monkeypatch):
    write_idx(monkeypatch, tmp_path, "MNIST")
    calls = []
    real_read = idx.IDXSource.read

    def counting_read(self, data_dir):
        calls.append(self.name)
        return real_read(self, data_dir)

    monkeypatch.setattr(idx.IDXSource, "read", counting_read)
    for spec in (RotatedMNISTSpec(angle=30), PermutedMNISTSpec(seed=1), MNISTSpec()):
        spec.load(tmp_path, download=False)
    assert calls == ["MNIST"]


def test_permutation_is_fixed_per_seed():
    perm = PermutedMNISTSpec(seed=0).permutation()
    assert torch.equal(perm, torch.randperm(784, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.sort(perm).values, torch.arange(784))
    assert not torch.equal(perm, torch.arange(784))
    assert torch.equal(perm, PermutedMNISTSpec(seed=0).permutation())
    assert not torch.equal(perm, PermutedMNISTSpec(seed=1).permutation())


def test_permuted_mnist_applies_one_permutation_to_every_image(tmp_path, monkeypatch):
    write_idx(monkeypatch, tmp_path, "MNIST")
    mnist = MNISTSpec().load(tmp_path, download=False)
    spec = PermutedMNISTSpec(seed=7)
    perm = spec.permutation()
    permuted = spec.load(tmp_path, download=False)
    for split in ("train", "test"):
        before = getattr(mnist, f"{split}_images").reshape(-1, 784)
        after = getattr(permuted, f"{split}_images")
        assert after.shape == (before.shape[0], 1, 28, 28) and after.dtype == torch.uint8
        assert torch.equal(after.reshape(-1, 784), before[:, perm])
    assert torch.equal(permuted.train_labels, mnist.train_labels)
    other = PermutedMNISTSpec(seed=8).load(tmp_path, download=False)
    assert not torch.equal(other.train_images, permuted.train_images)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed():
    a = SyntheticSpec(seed=3).load(Path("a"))
    clear_cache()
    b = SyntheticSpec(seed=3).load(Path("b"))
    assert a is not b
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    c = SyntheticSpec(seed=4).load(Path("a"))
    assert not torch.equal(a.train_images, c.train_images)
    assert not torch.equal(a.test_labels, c.test_labels)


def test_synthetic_shapes_labels_and_independent_test_set():
    spec = SyntheticSpec(n_train=100, n_test=30, num_classes=3, size=12)
    s = spec.load(Path("unused"))
    assert spec.input_shape == (1, 12, 12) and spec.num_classes == 3
    assert s.train_images.shape == (84, 1, 12, 12) and s.validation_images.shape == (16, 1, 12, 12)
    assert s.test_images.shape == (30, 1, 12, 12)
    assert s.train_images.dtype == torch.uint8 and s.train_labels.dtype == torch.int64
    assert set(s.train_labels.tolist()) == {0, 1, 2} and int(s.test_labels.max()) < 3
    assert s.train_images.min() < 30 and s.train_images.max() > 225  # uses the uint8 range
    bigger = SyntheticSpec(n_train=200, n_test=30, num_classes=3, size=12).load(Path("unused"))
    assert torch.equal(bigger.test_images, s.test_images)


def test_synthetic_is_learnable_but_not_trivially():
    s = SyntheticSpec().load(Path("unused"))
    torch_gen = torch.Generator().manual_seed(0)
    w1 = torch.randn(784, 32, generator=torch_gen) / 28
    w2 = torch.randn(32, 10, generator=torch_gen) / math.sqrt(32)
    params = [w1.requires_grad_(), torch.zeros(32, requires_grad=True), w2.requires_grad_(),
              torch.zeros(10, requires_grad=True)]

    def logits(x):
        return torch.sigmoid(x.flatten(1) @ params[0] + params[1]) @ params[2] + params[3]

    x, y = s.normalise(s.train_images), s.train_labels
    for _ in range(100):
        idx = torch.randint(len(y), (128,), generator=torch_gen)
        loss = torch.nn.functional.cross_entropy(logits(x[idx]), y[idx])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= 0.1 * g
    with torch.no_grad():
        acc = (logits(s.normalise(s.test_images)).argmax(1) == s.test_labels).float().mean().item()
    assert 0.4 < acc < 0.99, acc


# --------------------------------------------------------------------------- names, hashes, configs

VARIANTS = [
    MNISTSpec(),
    MNISTSpec(mean=0.5),
    MNISTSpec(std=0.5),
    MNISTSpec(mean=0.1307001),
    FashionMNISTSpec(),
    FashionMNISTSpec(mean=0.1307, std=0.3081),
    KMNISTSpec(),
    CIFAR10GreySpec(),
    CIFAR10GreySpec(weights=(0.299, 0.587, 0.114)),
    CIFAR10GreySpec(crop=32),
    RotatedMNISTSpec(angle=0),
    RotatedMNISTSpec(angle=15),
    RotatedMNISTSpec(angle=-15),
    RotatedMNISTSpec(angle=22.5),
    RotatedMNISTSpec(angle=45, std=0.5),
    PermutedMNISTSpec(),
    PermutedMNISTSpec(seed=1),
    PermutedMNISTSpec(mean=0.5),
    SyntheticSpec(),
    SyntheticSpec(seed=1),
    SyntheticSpec(n_train=100),
    SyntheticSpec(n_test=100),
    SyntheticSpec(num_classes=3),
    SyntheticSpec(size=12),
]


def test_names_are_derived_and_short_for_defaults():
    names = [MNISTSpec().name, FashionMNISTSpec().name, KMNISTSpec().name]
    assert names == ["mnist", "fashion-mnist", "kmnist"]
    assert CIFAR10GreySpec().name == "cifar10grey"
    assert RotatedMNISTSpec(angle=45).name == "rotmnist45"
    assert RotatedMNISTSpec(angle=22.5).name == "rotmnist22.5"
    assert PermutedMNISTSpec().name == "permmnist-s0"
    assert SyntheticSpec().name == "synthetic" and SyntheticSpec(seed=1).name == "synthetic-seed1"
    assert CIFAR10GreySpec(crop=32).name == "cifar10grey-crop32"


def test_distinct_specs_get_distinct_names_and_hashes():
    assert len({s.name for s in VARIANTS}) == len(VARIANTS)
    assert len({spec_hash(s) for s in VARIANTS}) == len(VARIANTS)


def test_configs_round_trip_and_hashes_are_stable():
    for spec in VARIANTS:
        assert dataset_from_config(spec_config(spec)) == spec
    assert spec_config(MNISTSpec()) == {"kind": "mnist", "mean": 0.1307, "std": 0.3081}
    assert spec_hash(MNISTSpec()) == content_hash({"kind": "mnist", "mean": 0.1307, "std": 0.3081})
    # ints and floats, lists and tuples: one spec, one hash
    built = dataset_from_config({"kind": "rotated-mnist", "angle": 45.0})
    assert spec_hash(RotatedMNISTSpec(angle=45)) == spec_hash(built)
    built = dataset_from_config({"kind": "cifar10-grey", "weights": [0.3, 0.11, 0.59]})
    assert built == CIFAR10GreySpec() and spec_hash(built) == spec_hash(CIFAR10GreySpec())
    assert set(DATASETS) == {
        "mnist", "fashion-mnist", "kmnist", "cifar10-grey",
        "rotated-mnist", "permuted-mnist", "synthetic",
    }
    assert all(cls.kind == kind for kind, cls in DATASETS.items())


@pytest.mark.parametrize(
    "config, needle",
    [
        ({"kind": "mnistt"}, "'mnistt'"),
        ({"kind": "mnist", "meen": 0.1}, "'meen'"),
        ({"kind": "synthetic", "n_train": -5}, "-5"),
        ({"kind": "synthetic", "n_test": 0}, "n_test"),
        ({"kind": "synthetic", "num_classes": 1}, "num_classes"),
        ({"kind": "synthetic", "seed": True}, "True"),
        ({"kind": "synthetic", "size": 2.5}, "2.5"),
        ({"kind": "rotated-mnist", "angle": "45"}, "'45'"),
        ({"kind": "rotated-mnist", "angle": float("nan")}, "nan"),
        ({"kind": "rotated-mnist", "angle": 400}, "400"),
        ({"kind": "rotated-mnist"}, "angle"),
        ({"kind": "cifar10-grey", "weights": [0.5, 0.5]}, "(0.5, 0.5)"),
        ({"kind": "cifar10-grey", "weights": [0.5, 0.5, 0.5]}, "(0.5, 0.5, 0.5)"),
        ({"kind": "cifar10-grey", "weights": [0.5, "g", 0.5]}, "'g'"),
        ({"kind": "cifar10-grey", "crop": 33}, "33"),
        ({"kind": "permuted-mnist", "seed": -1}, "-1"),
        ({"kind": "mnist", "std": 0}, "std"),
        ({"kind": "kmnist", "mean": "0.5"}, "'0.5'"),
        ("mnist", "'mnist'"),
    ],
)
def test_bad_configs_raise_one_line_config_errors(config, needle):
    with pytest.raises(ConfigError) as exc:
        dataset_from_config(config)
    assert needle in one_line(exc)


# --------------------------------------------------------------------------- missing / corrupt


@pytest.mark.parametrize("download", [False, True], ids=["offline", "download-fails"])
@pytest.mark.parametrize(
    "spec", [MNISTSpec(), FashionMNISTSpec(), RotatedMNISTSpec(angle=15)], ids=lambda s: s.name
)
def test_missing_dataset_is_one_line_naming_dataset_folder_and_import(tmp_path, spec, download):
    with pytest.raises(DataMissingError) as exc:
        spec.load(tmp_path, download=download)
    message = one_line(exc)
    folder = {"fashion-mnist": "FashionMNIST"}.get(spec.kind, "MNIST")
    dataset = "fashion-mnist" if spec.kind == "fashion-mnist" else "mnist"
    assert f"'{dataset}'" in message
    assert str(tmp_path / folder / "raw") in message
    assert f"DIR/{folder}/raw/*.gz" in message and "'l2lbench data import DIR'" in message
    assert ("could not be downloaded" in message) == download


@pytest.mark.parametrize("download", [False, True], ids=["offline", "download-fails"])
def test_missing_cifar_is_one_line(tmp_path, download):
    with pytest.raises(DataMissingError) as exc:
        CIFAR10GreySpec().load(tmp_path, download=download)
    message = one_line(exc)
    assert "'cifar10-grey'" in message and str(tmp_path) in message
    assert "l2lbench data import" in message and "cifar-10-python.tar.gz" in message


def test_partial_mnist_is_missing_not_loaded(tmp_path, monkeypatch):
    write_idx(monkeypatch, tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataMissingError, match="'mnist'"):
        MNISTSpec().load(tmp_path, download=True)


def test_truncated_archive_raises_corrupt_naming_file_and_md5s(tmp_path, monkeypatch):
    write_idx(monkeypatch, tmp_path, "KMNIST")
    archive = tmp_path / "KMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:40])
    with pytest.raises(DataCorruptError) as exc:
        KMNISTSpec().load(tmp_path, download=True)
    message = one_line(exc)
    expected = CHECKSUMS["KMNIST"]["KMNIST/raw/train-images-idx3-ubyte.gz"]
    assert str(archive) in message and expected in message and files.md5(archive) in message


def test_unpublished_files_fail_with_the_real_checksums(tmp_path):
    # no patching: tiny files are not the published MNIST, so the real md5s refuse them
    files.write_idx_dataset(tmp_path, "MNIST", files.make_idx_arrays())
    published = "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert CHECKSUMS["MNIST"]["MNIST/raw/train-images-idx3-ubyte.gz"] == published
    with pytest.raises(DataCorruptError, match=published):
        MNISTSpec().load(tmp_path, download=False)


def _torchvision_table() -> dict[str, dict[str, str]]:
    """The md5s torchvision's dataset classes publish, in the shape of CHECKSUMS."""
    tvd = torchvision.datasets
    table = {
        name: {f"{name}/raw/{file}": md5 for file, md5 in getattr(tvd, name).resources}
        for name in ("MNIST", "FashionMNIST", "KMNIST")
    }
    cifar = tvd.CIFAR10
    table["CIFAR10"] = {"cifar-10-python.tar.gz": cifar.tgz_md5}
    for file, md5 in [*cifar.train_list, *cifar.test_list]:
        table["CIFAR10"][f"{cifar.base_folder}/{file}"] = md5
    table["CIFAR10"][f"{cifar.base_folder}/{cifar.meta['filename']}"] = cifar.meta["md5"]
    return table


def test_checksum_table_is_torchvisions_published_table():
    published = _torchvision_table()
    assert CHECKSUMS == published
    for source, table in published.items():
        assert datasets.checksums(source) == table
        assert set(table) == set(datasets.SOURCES[source].files if source != "CIFAR10"
                                 else [cifar10_grey.SOURCE.archive,
                                       *datasets.SOURCES[source].members])
    with pytest.raises(KeyError, match="'SVHN'"):
        datasets.checksums("SVHN")


def test_truncated_extracted_file_is_extracted_again(tmp_path, monkeypatch):
    arrays = write_idx(monkeypatch, tmp_path, "MNIST")
    MNISTSpec().load(tmp_path, download=False)
    clear_cache()
    extracted = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    extracted.write_bytes(extracted.read_bytes()[:-100])
    splits = MNISTSpec().load(tmp_path, download=False)
    assert np.array_equal(whole_train(splits)[:, 0].numpy(), arrays["train_images"])


def test_files_that_do_not_fit_together_are_corrupt(tmp_path, monkeypatch):
    arrays = files.make_idx_arrays()
    arrays["train_labels"] = arrays["train_labels"][:5]  # 6 images, 5 labels
    monkeypatch.setitem(CHECKSUMS, "MNIST", files.write_idx_dataset(tmp_path, "MNIST", arrays))
    with pytest.raises(DataCorruptError) as exc:
        MNISTSpec().load(tmp_path, download=False)
    assert "'mnist'" in one_line(exc) and "6" in str(exc.value) and "5 labels" in str(exc.value)


# --------------------------------------------------------------------------- import


@pytest.fixture
def source_dir(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_idx(monkeypatch, source, "MNIST")
    write_idx(monkeypatch, source, "KMNIST", seed=1)
    write_cifar(monkeypatch, source, folder=False, archive=True)
    return source


def test_import_copies_verified_files_and_leaves_source_untouched(tmp_path, source_dir):
    before = files.listing(source_dir)
    data = tmp_path / "data"

    lines = import_archives(source_dir, data)

    assert files.listing(source_dir) == before
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    assert lines[0].startswith("mnist") and "md5 verified" in lines[0]
    copied = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    assert copied == sorted(
        [f"MNIST/raw/{n}" for n in idx.IDX_FILES]
        + [f"KMNIST/raw/{n}" for n in idx.IDX_FILES]
        + ["cifar-10-python.tar.gz"]
    )
    for rel in copied:
        assert (data / rel).read_bytes() == (source_dir / rel).read_bytes()
    assert whole_train(MNISTSpec().load(data, download=False)).shape == (6, 1, 28, 28)
    assert CIFAR10GreySpec().load(data, download=False).test_images.shape == (4, 1, 28, 28)
    assert files.listing(source_dir) == before


def test_import_of_the_batch_folder(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_cifar(monkeypatch, source, folder=True)
    lines = import_archives(source, tmp_path / "data")
    assert len(lines) == 1 and "cifar10" in lines[0] and "7 file(s)" in lines[0]
    assert (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").is_file()


def test_import_rejects_a_bad_checksum_and_copies_nothing(tmp_path, source_dir):
    bad = source_dir / "KMNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    flipped = bytearray(bad.read_bytes())
    flipped[20] ^= 0xFF
    bad.write_bytes(bytes(flipped))
    before = files.listing(source_dir)
    data = tmp_path / "data"

    with pytest.raises(DataCorruptError) as exc:
        import_archives(source_dir, data)

    message = one_line(exc)
    assert str(bad) in message
    assert CHECKSUMS["KMNIST"]["KMNIST/raw/t10k-images-idx3-ubyte.gz"] in message
    assert files.md5(bad) in message
    assert files.listing(source_dir) == before
    assert not [p for p in data.rglob("*") if p.is_file()]  # no half import, no temp files


def test_import_of_nothing_says_which_layout_it_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train-images-idx3-ubyte.gz").write_bytes(b"flat, not in MNIST/raw")
    with pytest.raises(DataMissingError) as exc:
        import_archives(tmp_path / "empty", tmp_path / "data")
    assert "MNIST/raw/train-images-idx3-ubyte.gz" in one_line(exc)
    with pytest.raises(DataMissingError, match="does not exist"):
        import_archives(tmp_path / "nowhere", tmp_path / "data")


def test_import_of_a_partial_dataset_is_refused(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_idx(monkeypatch, source, "FashionMNIST")
    (source / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataMissingError) as exc:
        import_archives(source, tmp_path / "data")
    assert "train-labels-idx1-ubyte.gz" in one_line(exc)


def test_import_never_writes_into_the_source(source_dir):
    before = files.listing(source_dir)
    for target in (source_dir, source_dir / "data"):
        with pytest.raises(UsageError, match="import folder"):
            import_archives(source_dir, target)
    assert files.listing(source_dir) == before


# --------------------------------------------------------------------------- misc


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("L2LBENCH_DATA", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("L2LBENCH_DATA")
    assert default_data_dir() == Path(platformdirs.user_cache_dir("l2lbench")) / "data"


def test_import_has_no_side_effects():
    code = (
        "import sys, l2lbench.tasks.datasets as d\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported eagerly'\n"
        "assert d._CACHE == {}\n"
        "assert set(d.CHECKSUMS) == {'MNIST', 'FashionMNIST', 'KMNIST', 'CIFAR10'}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_docstring_examples_run():
    for module in (datasets, *(importlib.import_module(f"l2lbench.tasks.datasets.{name}") for name in (
            "base", "catalog", "cifar", "cifar10_grey", "idx", "sources", "synthetic"))):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0


def _mnist_source() -> Path:
    repo = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("L2LBENCH_MNIST_SOURCE", repo.parent / "shared" / "datasets"))


@pytest.mark.skipif(
    not (_mnist_source() / "MNIST" / "raw").is_dir(),
    reason="no offline MNIST copy (set L2LBENCH_MNIST_SOURCE)",
)
def test_real_mnist_imports_and_loads(tmp_path):
    source = _mnist_source()
    before = files.listing(source)
    lines = import_archives(source, tmp_path)
    assert files.listing(source) == before
    assert any(line.startswith("mnist") for line in lines)

    splits = MNISTSpec().load(tmp_path, download=False)
    assert splits.train_images.shape == (50000, 1, 28, 28) and splits.validation_images.shape == (10000, 1, 28, 28)
    assert splits.test_images.shape == (10000, 1, 28, 28)
    assert splits.train_images.dtype == torch.uint8 and splits.train_labels.dtype == torch.int64
    assert sorted(set(splits.test_labels.tolist())) == list(range(10))
    assert abs(splits.train_images.float().mean().item() / 255 - 0.1307) < 1e-3
