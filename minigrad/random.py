"""The engine's random generator, used for parameter initialisation.

`manual_seed(s)` makes every later `nn` layer's initial weights reproducible.
"""
import numpy as np

_rng = np.random.default_rng(0)


def manual_seed(seed):
    global _rng
    _rng = np.random.default_rng(seed)
    return _rng


def generator():
    return _rng
