"""Helpers for the distributed tests: a small synthetic task and an MLP."""
import numpy as np

from minigrad import nn
from minigrad.random import manual_seed


def blobs(n=1200, d=20, classes=4, seed=0):
    """A linearly separable-ish problem: labels = argmax of a random linear map."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ rng.normal(size=(d, classes))).argmax(axis=1).astype(np.int64)
    return X, y


def mlp(d=20, hidden=32, classes=4, seed=0):
    manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def split(n=1000, extra=200, seed=0):
    X, y = blobs(n + extra, seed=seed)
    return (X[:n], y[:n]), (X[n:], y[n:])
