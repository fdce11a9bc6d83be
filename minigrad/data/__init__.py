"""Datasets and the thread-pool data loader. Everything here yields plain numpy arrays.

from minigrad.data import DataLoader, load_iris, load_mnist

X, y, X_test, y_test = load_mnist()            # $MINIGRAD_DATA, else ~/.cache/minigrad/mnist
with DataLoader((X, y), batch_size=64, num_workers=4) as loader:
    for epoch in range(10):
        for xb, yb in loader:                  # one `for` = one epoch
            ...
        print(f"waited {loader.wait_seconds:.3f} s on data")
"""

from .iris import load_iris
from .loader import DataLoader, DataLoaderError
from .mnist import (
    ChecksumError,
    MNISTNotFoundError,
    data_dir,
    download_mnist,
    load_mnist,
    read_idx,
)

__all__ = [
    "ChecksumError",
    "DataLoader",
    "DataLoaderError",
    "MNISTNotFoundError",
    "data_dir",
    "download_mnist",
    "load_iris",
    "load_mnist",
    "read_idx",
]
