"""Differentiable functions built from fused kernels, each with its backward beside it.

These are the ops a network is made of. Fusing `linear`, `cross_entropy`, `batch_norm` and
the pooling ops into single graph nodes keeps the per-step Python overhead low and the
numerics stable; `conv2d` and `max_pool2d` call the lowering kernels in `kernels/`, so the
algorithm (im2col, kn2row, ...) and backend (numpy, numba, cupy) are a keyword away.
`relu`, `tanh`, `sigmoid` and `softmax` are the Tensor methods of the same names (their
derivatives sit beside them in `minigrad/tensor.py`).
"""
from __future__ import annotations

import numpy as np

from . import config, kernels
from .backend import get_array_module
from .random import generator
from .tensor import Tensor, _check_same_device

IntPair = int | tuple[int, int]


def _mm(a, b):
    """a @ b; 2-D products on the CPU go to kernels.gemm (its GEMM or BLAS, see its MODE)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.ndim == b.ndim == 2:
        return kernels.matmul(a, b)
    return a @ b


def relu(x: Tensor) -> Tensor:
    return x.relu()


def tanh(x: Tensor) -> Tensor:
    return x.tanh()


def sigmoid(x: Tensor) -> Tensor:
    return x.sigmoid()


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    return x.softmax(axis)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
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


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    xp = get_array_module(x.data)
    m = x.data.max(axis=axis, keepdims=True)
    shifted = x.data - m
    out_data = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g):
        return (g - xp.exp(out_data) * g.sum(axis=axis, keepdims=True),)

    return Tensor._make(out_data, (x,), backward, "log_softmax")


def cross_entropy(logits: Tensor, target: Tensor | np.ndarray) -> Tensor:
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
    n, k = z.shape
    if n and (int(t.min()) < 0 or int(t.max()) >= k):  # -1 would silently pick class K-1
        bad = t[(t < 0) | (t >= k)]
        raise ValueError(f"cross_entropy: class labels must lie in [0, {k - 1}] for logits "
                         f"{z.shape}; targets {t.shape} hold {int(bad[0])} "
                         f"({bad.size} out of range)")
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


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: IntPair = 1,
           padding: IntPair = 0, algo: str | None = None, backend: str | None = None) -> Tensor:
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
            kernels.bias_add(y, bias.data)
        else:
            y += bias.data.reshape(1, -1, 1, 1)
    parents = (x, weight) if bias is None else (x, weight, bias)

    def backward(g):
        dx, dw = kernels.conv2d_backward(g, x.data, weight.data, stride=stride,
                                         padding=padding, algo=algo, backend=backend,
                                         saved=saved, need_dx=x.requires_grad)
        if bias is None:
            return dx, dw
        db = kernels.bias_grad(g) if backend == "numba" else g.sum(axis=(0, 2, 3))
        return dx, dw, db

    return Tensor._make(y, parents, backward, "conv2d")


def max_pool2d(x: Tensor, kernel_size: IntPair, stride: IntPair | None = None,
               backend: str | None = None, relu: bool = False) -> Tensor:
    """Max pooling over NCHW windows; the gradient goes to each window's arg-max.

    relu=True is max_pool2d(x).relu() (equally x.relu() pooled) in one fused pass: one
    kernel instead of two, and no ReLU mask to keep for backward (kernels/pool.py)."""
    backend = "cupy" if get_array_module(x.data) is not np else (backend or config.conv_backend)
    y, argmax = kernels.maxpool2d_forward(x.data, kernel_size, stride, backend=backend,
                                          relu=relu)
    shape = x.shape

    def backward(g):
        return (kernels.maxpool2d_backward(g, argmax, shape, kernel_size, stride,
                                           backend=backend),)

    return Tensor._make(y, (x,), backward, "max_pool2d_relu" if relu else "max_pool2d")


def _pair(v, op, name):
    p = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(p) != 2 or not all(isinstance(i, (int, np.integer)) for i in p):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    return int(p[0]), int(p[1])


def avg_pool2d(x: Tensor, kernel_size: IntPair, stride: IntPair | None = None,
               padding: IntPair = 0) -> Tensor:
    """Average pooling over NCHW windows, zero padding counted in the average (PyTorch's
    default count_include_pad=True, ceil_mode=False).

    The window sum is KH*KW strided slices of the (padded) input added up; each output's
    gradient is shared equally, g / (KH*KW), by the inputs of its window: the same slices,
    in reverse, added into a zero array (overlapping windows add up).
    """
    op = "avg_pool2d"
    (kh, kw) = _pair(kernel_size, op, "kernel_size")
    (sh, sw) = (kh, kw) if stride is None else _pair(stride, op, "stride")
    (ph, pw) = _pair(padding, op, "padding")
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {x.shape}")
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0 or ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{op}: need kernel and stride >= 1 and 0 <= padding <= kernel // 2, "
                         f"got kernel {(kh, kw)}, stride {(sh, sw)}, padding {(ph, pw)}")
    n, c, h, w = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"{op}: kernel {(kh, kw)} with padding {(ph, pw)} does not fit "
                         f"the input of shape {x.shape}")
    xp = get_array_module(x.data)
    xpad = x.data
    if ph or pw:
        xpad = xp.pad(x.data, ((0, 0), (0, 0), (ph, ph), (pw, pw)))

    def window(i, j):  # tap (i, j) of every window: a strided (N, C, Ho, Wo) view
        return (slice(None), slice(None), slice(i, i + sh * (ho - 1) + 1, sh),
                slice(j, j + sw * (wo - 1) + 1, sw))

    y = xp.zeros((n, c, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y += xpad[window(i, j)]
    y /= kh * kw

    def backward(g):
        gs = g / (kh * kw)
        gpad = xp.zeros(xpad.shape, dtype=g.dtype)
        for i in range(kh):
            for j in range(kw):
                gpad[window(i, j)] += gs
        return (xp.ascontiguousarray(gpad[:, :, ph:ph + h, pw:pw + w]),)

    return Tensor._make(y, (x,), backward, "avg_pool2d")


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout, as PyTorch: in training each element is zeroed with probability p
    and the survivors are scaled by 1 / (1 - p), so the expected output is x and evaluation
    needs no rescaling; outside training it is the identity. The gradient goes through the
    same mask, with the same scale. Masks come from `minigrad.manual_seed`'s generator
    (CuPy's on a GPU)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability p must lie in [0, 1], got {p} "
                         f"(input shape {x.shape})")
    if not training or p == 0.0:
        return x
    xp = get_array_module(x.data)
    if p == 1.0:
        mask = xp.zeros(x.shape, dtype=x.dtype)
    else:
        if xp is np:
            u = generator().random(x.shape, dtype=np.float32)
        else:
            u = xp.random.random(x.shape, dtype=xp.float32)
        mask = (u >= p).astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))

    def backward(g):
        return (g * mask,)

    return Tensor._make(x.data * mask, (x,), backward, "dropout")


def batch_norm(x: Tensor, running_mean: np.ndarray | None, running_var: np.ndarray | None,
               weight: Tensor | None = None, bias: Tensor | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalisation of (N, C) or (N, C, H, W) inputs over every axis but C, as
    PyTorch's F.batch_norm.

    training:  mean and biased variance of this batch normalise x; the running statistics
               (arrays, updated in place) move by `momentum` toward the batch mean and the
               *unbiased* batch variance (times m/(m-1), m values per channel).
    otherwise: running_mean and running_var normalise x.

        xhat = (x - mean) / sqrt(var + eps);   y = xhat * weight + bias

    Backward, with s = 1/sqrt(var + eps), dxhat = g * weight and sums over a channel's m
    values: in training (mean and var depend on x)
        dx = s/m * (m*dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)),
    with running statistics dx = dxhat * s; and dweight = sum(g * xhat), dbias = sum(g).
    """
    op = "batch_norm"
    if x.ndim not in (2, 4):
        raise ValueError(f"{op}: input must be (N, C) or (N, C, H, W), got shape {x.shape}")
    c = x.shape[1]
    for name, a in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if a is not None and tuple(a.shape) != (c,):
            raise ValueError(f"{op}: {name} of shape {tuple(a.shape)} does not match the "
                             f"input's {c} channels (input shape {x.shape})")
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: evaluation needs running_mean and running_var")
    xp = get_array_module(x.data)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, c) if x.ndim == 2 else (1, c, 1, 1)  # a per-channel array, broadcastable
    m = x.size // c
    if training:
        if m < 2:
            raise ValueError(f"{op}: training needs more than one value per channel, got "
                             f"input shape {x.shape}")
        mean = x.data.mean(axis=axes, keepdims=True)
        centered = x.data - mean
        var = (centered * centered).mean(axis=axes, keepdims=True)  # biased
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean.reshape(c).astype(running_mean.dtype)
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += (momentum * m / (m - 1)) * var.reshape(c).astype(running_var.dtype)
    else:
        mean = running_mean.reshape(shape).astype(x.dtype, copy=False)
        var = running_var.reshape(shape).astype(x.dtype, copy=False)
        centered = x.data - mean
    inv_std = 1 / xp.sqrt(var + x.dtype.type(eps))
    xhat = centered * inv_std
    y = xhat
    if weight is not None:
        y = y * weight.data.reshape(shape)
    if bias is not None:
        y = y + bias.data.reshape(shape)
    parents = tuple(t for t in (x, weight, bias) if t is not None)

    def backward(g):
        dxhat = g if weight is None else g * weight.data.reshape(shape)
        if training:
            s1 = dxhat.sum(axis=axes, keepdims=True)
            s2 = (dxhat * xhat).sum(axis=axes, keepdims=True)
            dx = (inv_std / m) * (m * dxhat - s1 - xhat * s2)
        else:
            dx = dxhat * inv_std
        grads = [dx]
        if weight is not None:
            grads.append((g * xhat).sum(axis=axes))
        if bias is not None:
            grads.append(g.sum(axis=axes))
        return tuple(grads)

    return Tensor._make(y, parents, backward, "batch_norm")


def flatten(x: Tensor, start_dim: int = 1) -> Tensor:
    return x.flatten(start_dim)
