"""Iris (Fisher, 1936), the scikit-learn copy: 150 flowers, 4 features, 3 classes.

The split is the one most tutorials use, ``train_test_split(X, y, test_size=0.2,
random_state=42)`` without stratification, so results compare with theirs. Features are
standardised with the mean and standard deviation of the *training* split only: using the
test split's statistics would leak information about it into training.
"""

from __future__ import annotations

import numpy as np

__all__ = ["load_iris"]


def load_iris(seed: int = 42, test_size: float = 0.2):
    """Return ``(X_train, y_train, X_test, y_test)``: X float32 (n, 4), y int64 (n,).

    With the defaults: 120 training and 30 test samples. ``seed`` is ``train_test_split``'s
    ``random_state``; the same seed always gives the same split.
    """
    # Imported here: scikit-learn takes about a second to import, and most users of
    # minigrad.data (the DataLoader, MNIST) never need it.
    from sklearn.datasets import load_iris as _sk_load_iris
    from sklearn.model_selection import train_test_split

    data = _sk_load_iris()
    X, y = data.data.astype(np.float64), data.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, random_state=seed
    )
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
