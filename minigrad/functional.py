"""Differentiable functions built from fused kernels, each with its backward beside it.

These are the ops a network is made of. Fusing `linear` and `cross_entropy` into single graph
nodes keeps the per-step Python overhead low and the numerics stable; `conv2d` and
`max_pool2d` call the lowering kernels in `kernels/`, so the algorithm (im2col, kn2row, ...)
and backend (numpy, numba, cupy) are a keyword away.
"""
import numpy as np

from . import config, kernels
from .backend import get_array_module
from .kernels import channel as _channel
from .kernels.gemm import matmul as _gemm_matmul
from .tensor import Tensor, _check_same_device


def _mm(a, b):
    """a @ b; 2-D products on the CPU go to kernels.gemm (its GEMM or BLAS, see its MODE)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.ndim == b.ndim == 2:
        return _gemm_matmul(a, b)
    return a @ b


def relu(x):
    return x.relu()


def linear(x, weight, bias=None):
    """y = x @ weight.T + bias, with weight of shape (out_features, in_features)."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input of shape {x.shape} does not fit weight of shape "
                         f"{weight.shape} (in_features {weight.shape[1]} != {x.shape[-1]})")
    _check_same_device("linear", x, weight)
    y = _mm(x.data, weight.data.T)
    if bias is not None:
        _check_same_device("linear", x, bias)
        y += bias.data
    parents = (x, weight) if bias is None else (x, weight, bias)

    def backward(g):
        g2 = g.reshape(-1, g.shape[-1])
        x2 = x.data.reshape(-1, x.shape[-1])
        gx = _mm(g, weight.data) if x.requires_grad else None
        gw = _mm(g2.T, x2) if weight.requires_grad else None
        if bias is None:
            return gx, gw
        return gx, gw, g2.sum(axis=0)

    return Tensor._make(y, parents, backward, "linear")


def log_softmax(x, axis=-1):
    xp = get_array_module(x.data)
    m = x.data.max(axis=axis, keepdims=True)
    shifted = x.data - m
    out_data = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g):
        return (g - xp.exp(out_data) * g.sum(axis=axis, keepdims=True),)

    return Tensor._make(out_data, (x,), backward, "log_softmax")


def cross_entropy(logits, target):
    """Mean softmax cross-entropy of (N, K) logits against N integer class labels.

    One fused node: loss = mean(logsumexp(z) - z[target]) computed with the max subtracted,
    and d loss / dz = (softmax(z) - onehot(target)) / N.
    """
    z = logits.data
    t = target.data if isinstance(target, Tensor) else target
    xp = get_array_module(z)
    t = xp.asarray(t)
    if z.ndim != 2 or t.shape != (z.shape[0],):
        raise ValueError(f"cross_entropy: expected logits (N, K) and targets (N,), got logits "
                         f"{z.shape} and targets {t.shape}")
    if t.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: targets must be integer class labels, got dtype "
                         f"{t.dtype}")
    n = z.shape[0]
    rows = xp.arange(n)
    m = z.max(axis=1, keepdims=True)
    e = xp.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    lse = xp.log(s) + m
    loss = (lse[:, 0] - z[rows, t]).mean()

    def backward(g):
        p = e / s
        p[rows, t] -= 1
        return (p * (g / n),)

    return Tensor._make(xp.asarray(loss, dtype=z.dtype), (logits,), backward, "cross_entropy")


def conv2d(x, weight, bias=None, stride=1, padding=0, algo=None, backend=None):
    """2-D convolution (NCHW input, MCKK weight) through `kernels`, with bias added here.

    `algo` and `backend` default to `minigrad.config` (settable in one place); on a GPU
    tensor the backend is always "cupy".
    """
    _check_same_device("conv2d", x, weight)
    algo = algo or config.conv_algo
    if get_array_module(x.data) is not np:
        backend = "cupy"
    else:
        backend = backend or config.conv_backend
    saved = {}  # what the forward lowering keeps for the backward (im2col: its patch matrix)
    y = kernels.conv2d_forward(x.data, weight.data, stride=stride, padding=padding,
                               algo=algo, backend=backend,
                               saved=saved if weight.requires_grad else None)
    if bias is not None:
        _check_same_device("conv2d", x, bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"conv2d: bias of shape {bias.shape} does not match weight "
                             f"{weight.shape} (expected ({weight.shape[0]},))")
        if backend == "numba":
            _channel.bias_add(y, bias.data)
        else:
            y += bias.data.reshape(1, -1, 1, 1)
    parents = (x, weight) if bias is None else (x, weight, bias)

    def backward(g):
        dx, dw = kernels.conv2d_backward(g, x.data, weight.data, stride=stride,
                                         padding=padding, algo=algo, backend=backend,
                                         saved=saved, need_dx=x.requires_grad)
        if bias is None:
            return dx, dw
        db = _channel.bias_grad(g) if backend == "numba" else g.sum(axis=(0, 2, 3))
        return dx, dw, db

    return Tensor._make(y, parents, backward, "conv2d")


def max_pool2d(x, kernel_size, stride=None, backend=None):
    """Max pooling over NCHW windows; the gradient goes to each window's arg-max."""
    backend = "cupy" if get_array_module(x.data) is not np else (backend or config.conv_backend)
    y, argmax = kernels.maxpool2d_forward(x.data, kernel_size, stride, backend=backend)
    shape = x.shape

    def backward(g):
        return (kernels.maxpool2d_backward(g, argmax, shape, kernel_size, stride,
                                           backend=backend),)

    return Tensor._make(y, (x,), backward, "max_pool2d")


def flatten(x, start_dim=1):
    return x.flatten(start_dim)
