"""minigrad: a from-scratch deep-learning engine in NumPy and Numba, written to be read."""
from . import config, functional, nn, optim
from .gradcheck import gradcheck
from .random import manual_seed
from .tensor import Parameter, Tensor, is_grad_enabled, no_grad, tensor

__version__ = "0.1.0"

__all__ = ["Tensor", "Parameter", "tensor", "no_grad", "is_grad_enabled", "gradcheck",
           "manual_seed", "config", "functional", "nn", "optim", "__version__"]
