"""Datasets, batch transforms and the thread-pool data loader. Everything here yields plain
numpy arrays.

from minigrad.data import DataLoader, load_iris, load_mnist, transforms

X, y, X_test, y_test = load_mnist()            # $MINIGRAD_DATA, else ~/.cache/minigrad/mnist
augment = transforms.mnist_augment()           # normalise, then random shift/rotation/elastic
with DataLoader((X, y), batch_size=64, transform=augment) as loader:
    for epoch in range(10):                    # num_workers=None: the thread budget decides
        for xb, yb in loader:                  # one `for` = one epoch
            ...
        print(f"waited {loader.wait_seconds:.3f} s on data")

num_workers (loader threads) defaults to None, the thread budget's choice
(minigrad.threads): 0 for a deterministic transform such as transforms.mnist_normalize,
which costs less than handing a batch to a thread, and at least 1 for a random one such as
transforms.mnist_augment(). Batches are the same for any num_workers.
"""

from . import transforms
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
    "transforms",
]
