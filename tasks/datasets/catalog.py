"""The built-in datasets in one table, the registry that adds installed ones, and what
derives from the table: the file sources, their md5s and which datasets use each."""

from __future__ import annotations

from typing import Any, Mapping

from l2lbench.spec.base import build_spec
from l2lbench.tasks.datasets.base import DatasetSpec
from l2lbench.tasks.datasets.cifar10_grey import CIFAR10GreySpec
from l2lbench.tasks.datasets.fashion_mnist import FashionMNISTSpec
from l2lbench.tasks.datasets.kmnist import KMNISTSpec
from l2lbench.tasks.datasets.mnist import MNISTSpec
from l2lbench.tasks.datasets.permuted_mnist import PermutedMNISTSpec
from l2lbench.tasks.datasets.rotated_mnist import RotatedMNISTSpec
from l2lbench.tasks.datasets.synthetic import SyntheticSpec
from l2lbench.tasks.registry import SpecRegistry

ENTRY_POINT_GROUP = "l2lbench.datasets"

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

#: The built-ins, then the entry points of ``l2lbench.datasets`` (see :mod:`l2lbench.tasks.registry`).
REGISTRY = SpecRegistry("dataset", ENTRY_POINT_GROUP, DATASETS, DatasetSpec)

#: source name -> the source (the files of one distribution), in the order of DATASETS.
SOURCES: dict[str, Any] = {source.name: source for cls in DATASETS.values() for source in cls.sources}

#: source name -> path relative to the data dir -> md5 hex digest, copied from each dataset's
#: file. Every built-in source's files are checked against this table, read at each check,
#: so that tests can patch whole entries with the md5s of tiny files.
CHECKSUMS: dict[str, dict[str, str]] = {name: dict(s.checksums) for name, s in SOURCES.items()}


def checksums(source: str) -> dict[str, str]:
    """md5 table of one built-in source (``"MNIST"``, ``"CIFAR10"``, ...): path in the data dir -> md5.

    Looked up at each call (not bound at import) so that tests' patches of
    :data:`CHECKSUMS` take effect.
    """
    try:
        return CHECKSUMS[source]
    except KeyError:
        raise KeyError(
            f"no checksums known for dataset source {source!r}; expected one of {sorted(CHECKSUMS)}"
        ) from None


def used_by(source: str) -> list[str]:
    """The built-in dataset kinds that read the files of ``source``, in table order.

    >>> used_by("MNIST")
    ['mnist', 'rotated-mnist', 'permuted-mnist']
    """
    return [kind for kind, cls in DATASETS.items() if any(s.name == source for s in cls.sources)]


def dataset_from_config(config: Mapping[str, Any]) -> DatasetSpec:
    """Build a dataset spec from ``{"kind": ..., field: value}`` (ConfigError on bad input;
    PluginError naming an installed plug-in that cannot be used).

    >>> dataset_from_config({"kind": "permuted-mnist", "seed": 3}).name
    'permmnist-s3'
    """
    return build_spec(REGISTRY, config, "dataset")
