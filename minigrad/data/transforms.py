"""Batch transforms, run inside the loader's worker threads."""

import numpy as np

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def mnist_normalize(batch):
    """(uint8 images (N, 28, 28), labels) -> (float32 (N, 1, 28, 28) standardised, labels)."""
    x, y = batch
    x = x.reshape(len(x), 1, 28, 28).astype(np.float32)
    x *= np.float32(1.0 / (255.0 * MNIST_STD))
    x -= np.float32(MNIST_MEAN / MNIST_STD)
    return x, y
