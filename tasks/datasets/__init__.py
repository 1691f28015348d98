"""Dataset specs: which images a task trains on, loaded once into memory as uint8.

A dataset spec is a small frozen dataclass (see :mod:`l2lbench.spec.base`): its config and
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

**One file per dataset.** Each built-in dataset's file holds everything about it: its spec
class, the md5s of its files and the source that finds, downloads and parses them
(``mnist.py``, ``fashion_mnist.py``, ``kmnist.py``, ``cifar10_grey.py``,
``rotated_mnist.py``, ``permuted_mnist.py``, ``synthetic.py``). What they share lives in
``base.py`` (spec base, splits, cache), ``sources.py`` (verification and extraction),
``idx.py`` and ``cifar.py`` (the two file formats). :mod:`~l2lbench.tasks.datasets.catalog`
lists the built-ins; installed packages add datasets through the entry-point group
``l2lbench.datasets`` (:mod:`l2lbench.tasks.registry`).

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

from pathlib import Path  # noqa: F401 - for the example above

from l2lbench.tasks.datasets.base import (  # noqa: F401 - _CACHE: tests check that importing loads nothing
    _CACHE,
    VALIDATION_SHARE,
    DatasetSpec,
    Splits,
    clear_cache,
    default_data_dir,
    load_splits,
    normalise,
    with_validation,
)
from l2lbench.tasks.datasets.catalog import (
    CHECKSUMS,
    DATASETS,
    ENTRY_POINT_GROUP,
    REGISTRY,
    SOURCES,
    checksums,
    dataset_from_config,
    used_by,
)
from l2lbench.tasks.datasets.cifar10_grey import CIFAR10GreySpec, greyscale_crop
from l2lbench.tasks.datasets.fashion_mnist import FashionMNISTSpec
from l2lbench.tasks.datasets.importing import import_archives
from l2lbench.tasks.datasets.kmnist import KMNISTSpec
from l2lbench.tasks.datasets.mnist import MNIST_MEAN, MNIST_STD, MNISTSpec
from l2lbench.tasks.datasets.permuted_mnist import PermutedMNISTSpec
from l2lbench.tasks.datasets.rotated_mnist import RotatedMNISTSpec
from l2lbench.tasks.datasets.synthetic import SyntheticSpec

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "ENTRY_POINT_GROUP",
    "MNIST_MEAN",
    "MNIST_STD",
    "REGISTRY",
    "SOURCES",
    "VALIDATION_SHARE",
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
    "normalise",
    "used_by",
    "with_validation",
]
