"""The training tasks the `minigrad train` command knows: a model and its data, by name.

Both the single-process path (`minigrad.cli`) and the distributed one
(`minigrad.distributed.cli`) build their task here, so neither imports the other.

    task = build_task("mnist", seed=0, limit=3000, conv="kn2row", model="lenet5")
    train, val = split_validation(task.train, 0.1)   # a held-out split, the same every run
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

TASKS = ("iris", "mnist")
DEFAULT_EPOCHS = {"iris": 100, "mnist": 10}
# The networks each task can train (--model); the first is the default. MNIST's come from
# minigrad.models.MNIST_MODELS; iris has one small MLP.
MODELS = {"iris": ("mlp",), "mnist": ("cnn", "lenet5", "resnet")}
# The validation split is carved with this fixed seed, not --seed, so that runs with
# different seeds are scored on the same held-out images.
VAL_SPLIT_SEED = 0


class Task(NamedTuple):
    model: object                    # a minigrad.nn.Module
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    transform: Callable | None       # per-batch transform of the inputs (None: as stored)


def default_model(task: str) -> str:
    return MODELS[task][0]


def _mnist_models() -> dict:
    from . import models

    return getattr(models, "MNIST_MODELS", None) or {"cnn": models.MnistCNN}


def available_models(task: str) -> tuple[str, ...]:
    """The names in MODELS[task] that this installation can build."""
    if task == "mnist":
        return tuple(m for m in MODELS[task] if m in _mnist_models())
    return MODELS[task]


def _mnist_model(name: str, conv: str | None):
    table = _mnist_models()
    if name not in table:
        raise ValueError(f"model {name!r} is not available for mnist in this version of "
                         f"minigrad (available: {', '.join(sorted(table))})")
    return table[name](algo=conv)


def build_task(name: str, *, seed: int = 0, limit: int | None = None,
               conv: str | None = None, model: str | None = None) -> Task:
    """The model (initialised from `seed`), train and test arrays, and batch transform.

    `limit` keeps the first N training samples (N >= 1); `conv` picks the convolution
    algorithm of a model that has convolutions (MNIST only: iris refuses it); `model` picks
    the network by name from MODELS[name] (default: the first).
    """
    from . import models
    from .random import manual_seed

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: expected one of {TASKS}")
    model = model or default_model(name)
    if model not in MODELS[name]:
        raise ValueError(f"task {name} has no model {model!r} (choose from "
                         f"{', '.join(MODELS[name])})")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of samples, got {limit}")
    manual_seed(seed)
    if name == "iris":
        if conv is not None:
            raise ValueError("the iris model has no convolutions, so a convolution "
                             "algorithm (conv) does not apply to it")
        from .data.iris import load_iris

        X_train, y_train, X_test, y_test = load_iris()
        if limit:
            X_train, y_train = X_train[:limit], y_train[:limit]
        return Task(models.IrisMLP(), (X_train, y_train), (X_test, y_test), None)
    from .data.mnist import load_mnist
    from .data.transforms import mnist_normalize

    X_train, y_train, X_test, y_test = load_mnist()
    if limit:
        X_train, y_train = X_train[:limit], y_train[:limit]
    return Task(_mnist_model(model, conv), (X_train, y_train), (X_test, y_test),
                mnist_normalize)


def split_validation(train, fraction: float):
    """(train, val): hold out `fraction` of the training samples for validation.

    The held-out samples are the first ceil(fraction * n) indices of a permutation drawn
    with the fixed seed VAL_SPLIT_SEED, so the split is the same in every run (and on
    resume) whatever --seed is; the remaining training samples keep their order.
    """
    X, y = train
    n = len(y)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be between 0 and 1, got {fraction}")
    n_val = math.ceil(fraction * n)
    if n_val >= n:
        raise ValueError(f"a validation split of {fraction} leaves no training samples out "
                         f"of {n}")
    order = np.random.default_rng(VAL_SPLIT_SEED).permutation(n)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return (X[train_idx], y[train_idx]), (X[val_idx], y[val_idx])


def task_from_args(args) -> Task:
    """build_task from `minigrad train`'s parsed arguments."""
    return build_task(args.task, seed=args.seed, limit=getattr(args, "limit", None),
                      conv=getattr(args, "conv", None), model=getattr(args, "model", None))
