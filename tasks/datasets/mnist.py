"""MNIST handwritten digits (LeCun et al., 1998): spec, files and md5s."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from l2lbench.tasks.datasets.idx import IDXDatasetSpec, IDXSource

#: MNIST normalisation used throughout the literature (mean and std of the training pixels).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

#: torchvision's published md5s (``MNIST.resources``); a test keeps them equal to its own.
CHECKSUMS = {
    "MNIST/raw/train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "MNIST/raw/train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "MNIST/raw/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "MNIST/raw/t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

SOURCE = IDXSource("MNIST", "mnist", CHECKSUMS)


@dataclasses.dataclass(frozen=True)
class MNISTSpec(IDXDatasetSpec):
    """MNIST handwritten digits, 60000/10000 images of 1x28x28 (LeCun et al., 1998)."""

    kind: ClassVar[str] = "mnist"
    sources = (SOURCE,)
    mean: float = MNIST_MEAN
    std: float = MNIST_STD
