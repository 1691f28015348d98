"""Kuzushiji-MNIST cursive hiragana (Clanuwat et al., 2018): spec, files and md5s."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from l2lbench.tasks.datasets.idx import IDXDatasetSpec, IDXSource

#: torchvision's published md5s (``KMNIST.resources``).
CHECKSUMS = {
    "KMNIST/raw/train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
    "KMNIST/raw/train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
    "KMNIST/raw/t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
    "KMNIST/raw/t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
}

SOURCE = IDXSource("KMNIST", "kmnist", CHECKSUMS)


@dataclasses.dataclass(frozen=True)
class KMNISTSpec(IDXDatasetSpec):
    """Kuzushiji-MNIST cursive hiragana, 60000/10000 of 1x28x28 (Clanuwat et al., 2018).

    Normalised with 0.5/0.5 (to [-1, 1]).
    """

    kind: ClassVar[str] = "kmnist"
    sources = (SOURCE,)
    mean: float = 0.5
    std: float = 0.5
