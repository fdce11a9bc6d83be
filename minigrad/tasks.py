"""The training tasks the `minigrad train` command knows: a model and its data, by name.

Both the single-process path (`minigrad.cli`) and the distributed one
(`minigrad.distributed.cli`) build their task here, so neither imports the other.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

TASKS = ("iris", "mnist")
DEFAULT_EPOCHS = {"iris": 100, "mnist": 10}


class Task(NamedTuple):
    model: object                    # a minigrad.nn.Module
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    transform: Callable | None       # per-batch transform of the inputs (None: as stored)


def build_task(name: str, *, seed: int = 0, limit: int | None = None,
               conv: str | None = None) -> Task:
    """The model (initialised from `seed`), train and test arrays, and batch transform.

    `limit` keeps the first N training samples; `conv` picks the convolution algorithm of
    a model that has convolutions (MNIST).
    """
    from . import models
    from .random import manual_seed

    manual_seed(seed)
    if name == "iris":
        from .data.iris import load_iris

        X_train, y_train, X_test, y_test = load_iris()
        if limit:
            X_train, y_train = X_train[:limit], y_train[:limit]
        return Task(models.IrisMLP(), (X_train, y_train), (X_test, y_test), None)
    if name == "mnist":
        from .data.mnist import load_mnist
        from .data.transforms import mnist_normalize

        X_train, y_train, X_test, y_test = load_mnist()
        if limit:
            X_train, y_train = X_train[:limit], y_train[:limit]
        return Task(models.MnistCNN(algo=conv), (X_train, y_train), (X_test, y_test),
                    mnist_normalize)
    raise ValueError(f"unknown task {name!r}: expected one of {TASKS}")


def task_from_args(args) -> Task:
    """build_task from `minigrad train`'s parsed arguments."""
    return build_task(args.task, seed=args.seed, limit=getattr(args, "limit", None),
                      conv=getattr(args, "conv", None))
