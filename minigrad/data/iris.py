"""Iris (Fisher, 1936): 150 flowers, 4 features, 3 classes, shipped with minigrad as a CSV.

`iris.csv` beside this file is scikit-learn's copy of the table (the UCI data with the two
corrections from Fisher's paper), so nothing needs downloading and scikit-learn is not a
dependency.

The split is the one most tutorials use, scikit-learn's ``train_test_split(X, y,
test_size=0.2, random_state=42)`` without stratification, reproduced here without
scikit-learn: the test set is the first ``ceil(test_size * 150)`` indices of
``numpy.random.RandomState(seed).permutation(150)``, the training set the rest, in that
order. Results therefore compare with theirs, and the same seed always gives the same
split. Features are standardised with the mean and (population) standard deviation of the
*training* split only: using the test split's statistics would leak information about it
into training.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

__all__ = ["load_iris", "load_iris_table", "IRIS_CSV"]

IRIS_CSV = Path(__file__).with_name("iris.csv")
IRIS_SHA256 = "f0fe808281ccda2256461fee9141d2a89424337e66195918fb17742c979b86ed"


def load_iris_table() -> tuple[np.ndarray, np.ndarray]:
    """The whole table: X float64 (150, 4) in cm, y int64 (150,) with 0, 1, 2."""
    raw = IRIS_CSV.read_bytes()
    if hashlib.sha256(raw).hexdigest() != IRIS_SHA256:
        raise ValueError(f"load_iris: {IRIS_CSV} does not match its sha256; reinstall minigrad")
    rows = [line for line in raw.decode("ascii").splitlines() if line and line[0] != "#"]
    table = np.loadtxt(rows[1:], delimiter=",")  # rows[0] is the header
    return table[:, :4].astype(np.float64), table[:, 4].astype(np.int64)


def split_indices(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices as scikit-learn's ShuffleSplit draws them for random_state=seed."""
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"load_iris: test_size must be in (0, 1), got {test_size}")
    n_test = math.ceil(test_size * n)
    perm = np.random.RandomState(seed).permutation(n)
    return perm[n_test:], perm[:n_test]


def load_iris(seed: int = 42, test_size: float = 0.2):
    """Return ``(X_train, y_train, X_test, y_test)``: X float32 (n, 4), y int64 (n,).

    With the defaults: 120 training and 30 test samples. ``seed`` is ``train_test_split``'s
    ``random_state``; the same seed always gives the same split.
    """
    X, y = load_iris_table()
    train, test = split_indices(len(y), test_size, seed)
    X_train, X_test, y_train, y_test = X[train], X[test], y[train], y[test]
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)  # population std (ddof=0), as sklearn's StandardScaler
    X_train = (X_train - mean) / std
    X_test = (X_test - mean) / std
    return (
        np.ascontiguousarray(X_train, dtype=np.float32),
        np.ascontiguousarray(y_train, dtype=np.int64),
        np.ascontiguousarray(X_test, dtype=np.float32),
        np.ascontiguousarray(y_test, dtype=np.int64),
    )
