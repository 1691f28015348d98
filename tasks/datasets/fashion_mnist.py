"""Fashion-MNIST clothing images (Xiao et al., 2017): spec, files and md5s."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from l2lbench.tasks.datasets.idx import IDXDatasetSpec, IDXSource

#: torchvision's published md5s (``FashionMNIST.resources``).
CHECKSUMS = {
    "FashionMNIST/raw/train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "FashionMNIST/raw/train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "FashionMNIST/raw/t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

SOURCE = IDXSource("FashionMNIST", "fashion-mnist", CHECKSUMS)


@dataclasses.dataclass(frozen=True)
class FashionMNISTSpec(IDXDatasetSpec):
    """Fashion-MNIST clothing images, 60000/10000 of 1x28x28 (Xiao et al., 2017).

    Normalised with 0.5/0.5 (to [-1, 1]), the usual choice for it; its pixel statistics
    are about 0.286/0.353.
    """

    kind: ClassVar[str] = "fashion-mnist"
    sources = (SOURCE,)
    mean: float = 0.5
    std: float = 0.5
