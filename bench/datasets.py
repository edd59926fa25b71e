"""Real data that installs offline, and a seeded synthetic set for tests and docs.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (``scripts/setup.sh``
installs it); nothing is downloaded at run time.
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DatasetMissingError(FileNotFoundError):
    """A data package is not installed."""


def _idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def load_fashion_mnist(split: str = "train", root: str | Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Load Fashion-MNIST.

    Parameters
    ----------
    split:
        ``"train"`` (60,000 images) or ``"test"`` (10,000).
    root:
        Folder holding the IDX files.

    Returns
    -------
    (images, labels)
        ``(n, 28, 28)`` uint8 and ``(n,)`` int64.

    Raises
    ------
    DatasetMissingError
        When the files are absent (install Debian's ``dataset-fashion-mnist``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test'; got {split!r}")
    root = Path(root)
    prefix = "train" if split == "train" else "t10k"
    img, lab = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not img.exists() or not lab.exists():
        raise DatasetMissingError(
            f"Fashion-MNIST not found in {root}: install it with "
            "`apt-get install dataset-fashion-mnist` (scripts/setup.sh does)"
        )
    images = _idx(img, 16).reshape(-1, 28, 28)
    labels = _idx(lab, 8).astype(np.int64)
    return images, labels


@dataclasses.dataclass(frozen=True)
class SyntheticDataset:
    """Seeded Gaussian classes: ``n`` points in ``d`` dims around ``classes`` centres.

    >>> ds = SyntheticDataset(d=8, n=100, classes=4, seed=0)
    >>> ds.x.shape, ds.y.shape
    ((100, 8), (100,))
    """

    d: int = 32
    n: int = 1000
    classes: int = 10
    noise: float = 0.5
    seed: int = 0

    @property
    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        centres = rng.standard_normal((self.classes, self.d))
        y = rng.integers(0, self.classes, self.n)
        x = centres[y] + self.noise * rng.standard_normal((self.n, self.d))
        return x.astype(np.float32), y.astype(np.int64)

    @property
    def x(self) -> np.ndarray:
        return self._data[0]

    @property
    def y(self) -> np.ndarray:
        return self._data[1]
