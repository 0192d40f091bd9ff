"""Offline data sets for the demo, examples, tests and benchmarks (nothing is downloaded).

- `digits`: scikit-learn's bundled 8x8 digits (1,797 images), always available.
- `mnist1d`: MNIST-1D generated locally by the `mnist1d` package.
- `fashion_mnist`: the four IDX files of Fashion-MNIST from a directory: the `directory`
  argument, else `$TFPRUNE_FASHION_MNIST`, else Debian's `dataset-fashion-mnist` package
  (`apt-get install -y dataset-fashion-mnist`, files in /usr/share/datasets/fashion-mnist).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["digits", "fashion_mnist", "mnist1d"]

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def digits(test_fraction: float = 0.25, seed: int = 0) -> Split:
    """scikit-learn's 8x8 digits as float32 images in [0, 1], shape (n, 8, 8, 1).

    Args:
        test_fraction: Fraction of the 1,797 images held out for testing.
        seed: Seed of the (stratified) shuffle that makes the split.

    Returns:
        `((x_train, y_train), (x_test, y_test))`, labels as int32.

    Raises:
        ValueError: If `test_fraction` is not in (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"Expected `test_fraction` in (0, 1). Received: test_fraction={test_fraction!r}"
        )
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return (x_train, y_train), (x_test, y_test)


def mnist1d(seed: int = 42) -> Split:
    """MNIST-1D (Greydanus 2020), generated locally: 4,000 train and 1,000 test signals.

    Args:
        seed: Seed of the generator.

    Returns:
        `((x_train, y_train), (x_test, y_test))`; signals have shape (n, 40, 1), float32.

    Raises:
        ImportError: If the `mnist1d` package is not installed.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError(
            "MNIST-1D needs the `mnist1d` package: pip install mnist1d (or tfprune[test])."
        ) from e
    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    x_train = np.asarray(data["x"], "float32")[..., None]
    x_test = np.asarray(data["x_test"], "float32")[..., None]
    return (x_train, np.asarray(data["y"], "int32")), (x_test, np.asarray(data["y_test"], "int32"))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(directory: str | os.PathLike | None = None) -> Split:
    """Fashion-MNIST as float32 images in [0, 1], shape (n, 28, 28, 1), from local IDX files.

    Args:
        directory: Folder holding the four IDX files (gzipped or not). Default:
            `$TFPRUNE_FASHION_MNIST`, else /usr/share/datasets/fashion-mnist.

    Returns:
        `((x_train, y_train), (x_test, y_test))` with 60,000 / 10,000 examples.

    Raises:
        FileNotFoundError: If the files are not found; the message says how to get them.
    """
    candidates = (
        [Path(directory)]
        if directory is not None
        else [Path(p) for p in (os.environ.get("TFPRUNE_FASHION_MNIST"),) if p]
        + [Path(p) for p in FASHION_MNIST_DIRS]
    )
    for folder in candidates:
        found = {}
        for key, stem in _FASHION_FILES.items():
            for name in (stem + ".gz", stem):
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
        if len(found) == len(_FASHION_FILES):
            x_train = _read_idx(found["x_train"]).astype("float32")[..., None] / 255.0
            x_test = _read_idx(found["x_test"]).astype("float32")[..., None] / 255.0
            y_train = _read_idx(found["y_train"]).astype("int32")
            y_test = _read_idx(found["y_test"]).astype("int32")
            return (x_train, y_train), (x_test, y_test)
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found in {[str(c) for c in candidates]}. Install them "
        "with `apt-get install -y dataset-fashion-mnist` (Debian), or pass `directory=` / set "
        "TFPRUNE_FASHION_MNIST to a folder holding train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz."
    )
